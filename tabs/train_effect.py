"""Train tab, "5 · Where tuning helped or hurt": the effect map of a finished SFT or DAPT run
(training.effect). Compute it (a job, like training), then: a map of the topics of the held-out
rows, each placed by its mean change in loss (and in answer score), sized by its rows and
coloured by the change; a table of the topics; clicking one lists its rows, the most harmed
first, with both answers side by side. On a topic's rows: "Make preference pairs" (base answer
chosen over the tuned one, for each row whose loss rose, into the votes review queue) and
"Export these rows" (jsonl, to fix the data). Owner only on a public app.
"""
from __future__ import annotations

import json

import gradio as gr

from core.access import require_user
from core.runs import RunFolder
from tabs.feedback import shows_errors
from tabs.session import download_path
from training import effect as effect_core
from training import jobs

TOPIC_COLUMNS = ["topic", "rows", "loss change (tuned - base)", "perplexity ×", "ROUGE-L change", "rows worse"]
ROW_COLUMNS = ["text", "base loss", "tuned loss", "change", "base answer", "tuned answer"]


def effect_figure(effect: dict):
    """Each topic a point: x its mean loss change (left: tuning helped), y its mean answer-score
    change, size its rows, colour the loss change; the forgetting windows a diamond."""
    import plotly.graph_objects as go

    topics = effect["topics"]
    figure = go.Figure(go.Scatter(
        x=[t["mean_change"] for t in topics], y=[t["mean_score_change"] or 0 for t in topics],
        mode="markers+text", text=[t["topic"][:28] for t in topics], textposition="top center",
        marker=dict(size=[14 + 6 * t["rows"] ** 0.5 for t in topics], color=[t["mean_change"] for t in topics],
                    colorscale="RdYlGn", reversescale=True, cmid=0, showscale=True,
                    colorbar=dict(title="loss change"), symbol=["diamond" if t["general"] else "circle" for t in topics],
                    line=dict(width=1, color="#333")),
        customdata=[[t["rows"], t["worse"], round(effect_core.perplexity_change(t), 3)] for t in topics],
        hovertemplate="<b>%{text}</b><br>%{customdata[0]} rows, %{customdata[1]} worse<br>loss change %{x:+.3f}"
                      " (perplexity ×%{customdata[2]})<br>ROUGE-L change %{y:+.3f}<extra></extra>"))
    figure.add_vline(x=0, line_dash="dot", line_color="#888")
    figure.update_layout(title=f"Where tuning helped (left) or hurt (right): {effect['run']}", height=420,
                         xaxis_title="mean change in loss on the reference (tuned - base)",
                         yaxis_title="mean change in ROUGE-L of the greedy answer", margin=dict(t=50, b=40))
    return figure


def topic_table(effect: dict) -> list[list]:
    return [[t["topic"], t["rows"], t["mean_change"], round(effect_core.perplexity_change(t), 3),
             t["mean_score_change"], t["worse"]] for t in sorted(effect["topics"], key=lambda t: -t["mean_change"])]


@shows_errors(lambda message: (message, gr.update()))
def compute(run: str, embedder: str, request: gr.Request = None):
    """Start the effect map's job; the Train tab's poll follows it like training."""
    require_user(request, action="computing an effect map")
    started = jobs.effect(run or "", embedder or "")
    return f"Computing the effect map of {started.name}: press Show when the phase line clears.", started.name


@shows_errors(lambda message: (gr.update(), [], message))
def show(run: str, request: gr.Request = None):
    """(map, topics table, note) of the run's effect map."""
    require_user(request, action="reading an effect map")
    effect = effect_core.read_effect(RunFolder.existing(run or ""))
    return effect_figure(effect), topic_table(effect), f"{effect['note']} Click a topic for its rows."


@shows_errors(toast=True)
def pick_topic(run: str, event: gr.SelectData, request: gr.Request = None):
    """The clicked topic's rows, most harmed first. Returns (topic, rows table)."""
    require_user(request, action="reading an effect map")
    effect = effect_core.read_effect(RunFolder.existing(run or ""))
    topic = topic_table(effect)[event.index[0]][0]
    rows = [[r["text"][:300], r["base_loss"], r["tuned_loss"], r["change"], r.get("base_answer", ""),
             r.get("tuned_answer", "")] for r in effect_core.topic_rows(effect, topic)]
    return topic, rows


@shows_errors()
def make_pairs(run: str, topic: str, request: gr.Request = None) -> str:
    require_user(request, action="making preference pairs")
    made = effect_core.make_pairs(run or "", topic or "")
    return (f"✅ {made} preference pair(s) from '{topic}' (base answer chosen) wait for review in Preference "
            "votes; accept them, then Train DPO on my votes.")


@shows_errors(lambda message: (None, message))
def export_rows(run: str, topic: str, request: gr.Request = None):
    require_user(request, action="exporting rows")
    rows = effect_core.topic_rows(effect_core.read_effect(RunFolder.existing(run or "")), topic or "")
    out = download_path(request, f"{run}-topic-rows.jsonl")
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(out), f"✅ {len(rows)} row(s) of '{topic}' exported."


def build(run: gr.State) -> None:
    with gr.Accordion("5 · Where tuning helped or hurt (effect map)", open=False):
        with gr.Row():
            embedder = gr.Textbox(label="Embedder that groups the rows", placeholder="all-MiniLM-L6-v2 or a tuned "
                                  "embedder's run", scale=3)
            start = gr.Button("Compute the effect map", elem_id="effect-compute", scale=1)
            load = gr.Button("Show", elem_id="effect-show", scale=1)
        line = gr.Markdown(elem_id="effect-line")
        figure = gr.Plot(elem_id="effect-map")
        topics = gr.Dataframe(headers=TOPIC_COLUMNS, interactive=False, elem_id="effect-topics",
                              label="Topics (most harmed first): click one")
        topic = gr.Textbox(label="Topic", interactive=False, elem_id="effect-topic")
        rows = gr.Dataframe(headers=ROW_COLUMNS, interactive=False, wrap=True, elem_id="effect-rows")
        with gr.Row():
            pairs = gr.Button("Make preference pairs", elem_id="effect-pairs")
            export = gr.Button("Export these rows", elem_id="effect-export")
        download = gr.File(label="Rows", interactive=False)
    start.click(compute, [run, embedder], [line, run], api_name="effect_compute")
    load.click(show, run, [figure, topics, line], api_name="effect_show")
    topics.select(pick_topic, run, [topic, rows], api_name=False)
    pairs.click(make_pairs, [run, topic], line, api_name="effect_pairs")
    export.click(export_rows, [run, topic], [download, line], api_name="effect_export")
