"""Train tab: pick data, see what the model sees, configure from TrainConfig, run live.

Every handler is a plain function over widget values that calls core/ and training/; tests
call them directly. The job runs out of process (training.jobs), and all progress is read
back from the run folder, so a page reload re-attaches to the running job with its full curve.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import gradio as gr

from core.access import require_user
from core.data import BUNDLED, chatterbot_categories, detect_format, load_rows
from core.paths import check_name, data_dir
from tabs import train_form
from tabs.train_plots import loss_figure, progress_html
from training import jobs
from training.config import TrainConfig, list_recipes, load_config

MAX_PREVIEW_ROWS = 10


def dataset_choices() -> list[str]:
    return list(BUNDLED) + [f"chatterbot:{c}" for c in chatterbot_categories()]


def save_upload(upload: str | None) -> str | None:
    """Copy an uploaded file into the data directory, so the training process can read it."""
    if not upload:
        return None
    source = Path(upload)
    safe = check_name("".join(c if c.isalnum() or c in "._-" else "_" for c in source.name)[-80:] or "data")
    folder = data_dir() / "uploads"
    folder.mkdir(exist_ok=True)
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    shutil.copyfile(source, target)
    return str(target)


def inspect_data(dataset: str, columns: str = ""):
    """(summary markdown, first rows as a table, column names) for a dataset source."""
    try:
        rows = load_rows(dataset, columns)
        fmt = detect_format(rows.column_names)
    except ValueError as exc:
        return f"⚠️ {exc}", None, []
    head = rows.select(range(min(MAX_PREVIEW_ROWS, len(rows)))).to_pandas()
    head = head.map(lambda v: (str(v)[:300] + "…") if len(str(v)) > 300 else str(v))
    summary = f"**{len(rows)} rows** · detected format: **{fmt}** · columns: {', '.join(rows.column_names)}"
    return summary, head, list(rows.column_names)


def mapping_string(prompt_col: str, answer_col: str, text_col: str) -> str:
    """Column-mapping dropdowns to the config's 'role=column' string."""
    pairs = [("question", prompt_col), ("answer", answer_col), ("text", text_col)]
    return ",".join(f"{role}={col}" for role, col in pairs if col)


def preview_example(row, *values):
    """(highlighted segments, info line): the exact text the model sees for one example."""
    from training.prepare import preview

    try:
        cfg = train_form.values_to_config(values)
        shown = preview(cfg, int(row or 0))
    except ValueError as exc:
        return [(f"⚠️ {exc}", None)], ""
    info = f"{shown.total_tokens} tokens, {shown.trained_tokens} trained on (highlighted). {shown.note}"
    return shown.segments, info.strip()


def load_recipe(name: str) -> list:
    return train_form.config_to_values(load_config(name))


def cli_preview(*values):
    """(equivalent CLI command, YAML text, YAML file to download)."""
    try:
        cfg = train_form.values_to_config(values)
    except ValueError as exc:
        return f"# {exc}", "", None
    path = data_dir() / "uploads" / "train-config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(cfg.to_yaml())
    return f"python cli.py train --config {path}", cfg.to_yaml(), str(path)


def start_training(*values, request: gr.Request = None):
    """Start a job from the form; returns (message, run name to attach to)."""
    try:
        require_user(request, action="training")
        cfg = train_form.values_to_config(values)
        run_dir = jobs.start(cfg, threads=_training_threads())
    except (ValueError, PermissionError, jobs.JobBusy) as exc:
        return f"⚠️ {exc}", gr.update()
    return f"Started **{run_dir.name}**: `{' '.join(jobs.command_for(run_dir)[1:])}`", run_dir.name


def _training_threads() -> int:
    """Leave one core to chat: two busy processes on 2 cores collapse generation to ~1 tok/s."""
    import os

    return max(1, (os.cpu_count() or 2) - 1)


def stop_training(run: str, request: gr.Request = None) -> str:
    try:
        require_user(request, action="stopping a run")
        return f"Stopping **{run}**: saving a checkpoint…" if run and jobs.stop(run) else "No running job."
    except (ValueError, PermissionError) as exc:
        return f"⚠️ {exc}"


def resume_training(run: str, request: gr.Request = None):
    try:
        require_user(request, action="training")
        jobs.resume(run)
    except (ValueError, PermissionError, jobs.JobBusy) as exc:
        return f"⚠️ {exc}", gr.update()
    return f"Resumed **{run}** from its last checkpoint.", run


def api_start(recipe: str, overrides: str = "", request: gr.Request = None) -> str:
    """API: start a bundled recipe with YAML overrides (e.g. 'max_steps: 2'); returns the run name."""
    import yaml

    try:
        require_user(request, action="training")
        extra = yaml.safe_load(overrides or "") or {}
        if not isinstance(extra, dict):
            raise ValueError("overrides must be a YAML mapping, e.g. 'max_steps: 2'.")
        return jobs.start(load_config(recipe, **extra), threads=_training_threads()).name
    except (ValueError, PermissionError, jobs.JobBusy, yaml.YAMLError) as exc:
        raise gr.Error(str(exc)) from None


def api_status(run: str) -> dict:
    """API: a run's state, step, max_steps, ETA, loss log and manifest."""
    try:
        status = jobs.read_status(jobs.run_path(run))
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    return {"name": status.name, "state": status.state, "step": status.step, "max_steps": status.max_steps,
            "eta_s": status.eta_s, "log": status.log, "manifest": status.manifest, "error": status.error}


def attach_latest() -> str | None:
    """The run to show after a (re)load: the live job, else the newest run."""
    runs = jobs.list_runs()
    return jobs.current_job() or (runs[0].name if runs else None)


def poll(run: str | None, last_state: str | None):
    """Everything the Run and Result steps show, read from the run folder."""
    if not run:
        return "", None, "No run yet.", "", "", last_state, gr.update()
    try:
        status = jobs.read_status(jobs.run_path(run))
    except ValueError as exc:
        return "", None, f"⚠️ {exc}", "", "", last_state, gr.update()
    stats = f"**{status.name}** · {status.state}" + (
        f" · {status.tokens_per_s:.0f} tokens/s" if status.tokens_per_s else "")
    if status.error:
        stats += f"\n\n```\n{status.error[-1500:]}\n```"
    tail = "\n".join(_log_line(e) for e in status.log[-12:])
    refresh = gr.update(choices=_adapters()) if status.state != last_state else gr.update()
    return (progress_html(status), loss_figure(status.log), stats, tail, result_markdown(status),
            status.state, refresh)


def _adapters():
    from tabs.chat import adapter_choices

    return adapter_choices()


def _log_line(entry: dict) -> str:
    parts = [f"step {entry.get('step')}"] + [f"{k}={entry[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate")
                                              if entry.get(k) is not None]
    return " · ".join(parts)


def result_markdown(status) -> str:
    if status.state != "completed":
        return ""
    m = status.manifest
    lines = [f"### {m.get('method')} on {m.get('dataset')}: {m.get('steps')} steps in {m.get('train_runtime_s')} s",
             f"Loss {m.get('first_loss', 0):.3f} → {m.get('final_loss', 0):.3f} · perplexity "
             f"{m.get('perplexity_before')} → {m.get('perplexity_after')}",
             f"Adapter: `{jobs.run_path(status.name) / 'adapter'}` (now in the Chat tab's picker)", ""]
    report = jobs.run_path(status.name) / "report.md"
    return "\n".join(lines) + (report.read_text() if report.is_file() else "")


def runs_table():
    import pandas as pd

    rows = [{"name": r.name, "method": f"{r.manifest.get('method', '')}", "dataset": r.manifest.get("dataset", ""),
             "status": r.state, "steps": f"{r.step}/{r.max_steps}",
             "ppl before → after": f"{r.manifest.get('perplexity_before', '')} → {r.manifest.get('perplexity_after', '')}"}
            for r in jobs.list_runs()]
    return pd.DataFrame(rows, columns=["name", "method", "dataset", "status", "steps", "ppl before → after"])


def delete_run(run: str, confirmed: bool, request: gr.Request = None) -> str:
    try:
        require_user(request, action="deleting runs")
        if not confirmed:
            return "Tick the confirmation box to delete."
        jobs.delete(run)
    except (ValueError, PermissionError, jobs.JobBusy) as exc:
        return f"⚠️ {exc}"
    return f"Deleted {run}."


def build(adapter_picker: gr.Dropdown):
    """Lay out the Train tab; `adapter_picker` is the Chat tab's, refreshed when a run ends."""
    from core.models import KNOWN_MODELS

    cfg = TrainConfig()
    run, last_state = gr.State(None), gr.State(None)
    with gr.Accordion("1 · Data", open=True):
        with gr.Row():
            dataset = gr.Dropdown(dataset_choices(), value=cfg.dataset, allow_custom_value=True,
                                  label="dataset", info=train_form.FIELDS[1].metadata["help"], elem_id="cfg-dataset")
            upload = gr.File(label="…or upload csv / json / jsonl / parquet / txt / md", type="filepath",
                             file_types=[".csv", ".json", ".jsonl", ".parquet", ".txt", ".md"])
        summary = gr.Markdown(elem_id="data-summary")
        table = gr.Dataframe(label="First rows", interactive=False, max_height=260)
        with gr.Row():
            maps = [gr.Dropdown([], label=f"{role} column", allow_custom_value=True)
                    for role in ("prompt/question", "answer", "text (DAPT)")]
        fields = train_form.build_fields(["columns"], cfg)
        with gr.Row():
            row = gr.Number(0, precision=0, label="Preview row", scale=0)
            preview_btn = gr.Button("Show what the model sees", scale=0)
        seen = gr.HighlightedText(label="What the model sees (highlighted: trained on)", elem_id="model-sees",
                                  color_map={"trained": "green", "trained, overlaps next window": "orange"})
        seen_info = gr.Markdown()
    with gr.Accordion("2 · Method", open=True):
        with gr.Row():
            recipe = gr.Dropdown(list_recipes(), label="Recipe (loads its settings)", value=None)
            fields["model"] = gr.Dropdown([s.name for s in KNOWN_MODELS], value=cfg.model, allow_custom_value=True,
                                          label="model", info=train_form.FIELDS[0].metadata["help"], elem_id="cfg-model")
        with gr.Row():
            fields.update(train_form.build_fields(["objective", "adapter"], cfg))
        explanation = gr.Markdown(_explain(cfg.objective, cfg.adapter))
        with gr.Accordion("Advanced", open=False):
            rest = [n for n in train_form.NAMES if n not in train_form.MAIN]
            with gr.Row():
                fields.update(train_form.build_fields(rest, cfg))
        with gr.Accordion("Equivalent CLI command and YAML", open=False):
            command = gr.Textbox(label="CLI", interactive=False)
            yaml_box = gr.Code(language="yaml", label="config.yaml", interactive=False)
            yaml_file = gr.File(label="Download YAML", interactive=False)
    fields["dataset"] = dataset
    form = [fields[n] for n in train_form.NAMES]
    with gr.Accordion("3 · Run", open=True):
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="train-start")
            stop = gr.Button("Stop", elem_id="train-stop")
            resume = gr.Button("Resume", elem_id="train-resume")
        message = gr.Markdown(elem_id="train-message")
        progress = gr.HTML()
        plot = gr.Plot(label="Loss", elem_id="loss-plot")
        stats = gr.Markdown(elem_id="train-stats")
        tail = gr.Textbox(label="Log", lines=6, interactive=False)
    with gr.Accordion("4 · Result", open=True):
        result = gr.Markdown(elem_id="train-result")
    with gr.Accordion("Runs", open=False):
        runs = gr.Dataframe(runs_table(), interactive=False, label="Past runs")
        with gr.Row():
            picked = gr.Textbox(label="Run name", scale=2)
            open_btn, resume_btn = gr.Button("Open"), gr.Button("Resume run")
            sure = gr.Checkbox(label="Yes, delete it")
            delete_btn = gr.Button("Delete", variant="stop")
        runs_msg = gr.Markdown()

    upload.upload(save_upload, upload, dataset)
    dataset.change(_on_dataset, [dataset, fields["columns"]], [summary, table, *maps])
    for dropdown in maps:
        dropdown.input(mapping_string, maps, fields["columns"])
    fields["columns"].submit(_on_dataset, [dataset, fields["columns"]], [summary, table, *maps])
    preview_btn.click(preview_example, [row, *form], [seen, seen_info])
    recipe.input(load_recipe, recipe, form)
    for name in ("objective", "adapter"):
        fields[name].change(_explain, [fields["objective"], fields["adapter"]], explanation)
    for widget in form:
        widget.change(cli_preview, form, [command, yaml_box, yaml_file], show_progress="hidden", api_name=False)
    polled = [progress, plot, stats, tail, result, last_state, adapter_picker]
    start.click(start_training, form, [message, run], api_name="train_start")
    stop.click(stop_training, run, message, api_name="train_stop")
    resume.click(resume_training, run, [message, run], api_name="train_resume")
    gr.api(api_start, api_name="train_recipe")
    gr.api(api_status, api_name="train_status")
    gr.Timer(2.0).tick(poll, [run, last_state], polled, show_progress="hidden", api_name=False)
    open_btn.click(lambda name: name, picked, run, api_name=False)
    resume_btn.click(resume_training, picked, [runs_msg, run], api_name=False)
    delete_btn.click(delete_run, [picked, sure], runs_msg, api_name="train_delete").then(runs_table, None, runs)
    runs.select(_pick_run, None, picked, api_name=False)
    gr.on([start.click, stop.click, resume.click], runs_table, None, runs, api_name=False)
    return run, [summary, table, *maps], dataset, fields["columns"], runs


def _pick_run(evt: gr.SelectData) -> str:
    return evt.row_value[0] if evt.row_value else ""


def _on_dataset(dataset: str, columns: str):
    text, head, names = inspect_data(dataset, columns)
    choices = [""] + names
    return (text, head, *[gr.update(choices=choices, value="") for _ in range(3)])


def _explain(objective: str, adapter: str) -> str:
    return (f"**Objective** — {train_form.explain('objective', objective)}  \n"
            f"**Adapter** — {train_form.explain('adapter', adapter)}")
