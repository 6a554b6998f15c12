"""Train tab, "Preference votes": the leaderboard of every adapter and base that has blind votes
(core.feedback.leaderboard), the win / loss / tie table of each adapter against its base
(core.feedback.votes), votes pulled from a Space's Hub dataset and visitors' votes to review, one click to train DPO on
the owner's A/B votes (exported as preference pairs) or KTO on every rated answer (thumbs, and
both answers of an A/B vote), each set as the dataset with its objective; and "Judge a run":
a DPO or KTO run's held-out pairs, blind, until the win rate against the model it started from
is known (core/feedback/judge.py).
"""
from __future__ import annotations

import gradio as gr

from core.feedback import votes
from core.feedback.leaderboard import leaderboard, position_bias_line, win_table
from core.access import require_user
from core.errors import LabError
from core.paths import data_dir
from core.runs import RunFolder
from tabs.chat_votes import VOTE_BUTTONS, cast_vote
from tabs.feedback import shows_errors, warn
from core.feedback import judge
from core.hub.votes_pull import pull_votes
from training import objectives

BLANK_ANSWERS = (gr.update(value="", label="Answer A"), gr.update(value="", label="Answer B"))
COLUMNS = ["adapter", "base model", "wins", "losses", "ties", "both bad", "win share", "95% interval"]
BOARD_COLUMNS = ["#", "model", "rating (Elo scale)", "95% interval", "wins", "losses", "ties"]


@shows_errors(lambda message: ([], [], message))
def vote_summary(request: gr.Request = None):
    """(leaderboard rows, table rows, one line on the store, the left answer's share and the
    votes waiting for review); the owner's only: it reads both vote files whole."""
    require_user(request, action="reading the votes table")
    owned = votes.read()
    board = [[n, r["entrant"], r["rating"], f"{r['interval_95'][0]}-{r['interval_95'][1]}", r["wins"], r["losses"],
              r["ties"]] for n, r in enumerate(leaderboard(owned), 1)]
    rows = [[r["adapter"], r["model"], r["wins"], r["losses"], r["ties"], r["both_bad"], r["win_share"],
             f"{r['interval_95'][0]:.2f}-{r['interval_95'][1]:.2f}"] for r in win_table(owned)]
    waiting = len(votes.waiting())
    return board, rows, (f"{len(owned)} vote(s) in your store · {position_bias_line(owned)} · "
                         f"{waiting} vote(s) waiting for review (visitors', and pulled from the Hub)")


@shows_errors(lambda message: (gr.update(), gr.update(), message))
def accept_visitors(request: gr.Request = None):
    require_user(request, action="accepting visitors' votes")
    moved = votes.accept_waiting()
    board, rows, line = vote_summary(request)
    return board, rows, f"✅ {moved} vote(s) accepted. {line}"


@shows_errors(lambda message: (gr.update(), gr.update(), message))
def pull_from_hub(dataset: str, token: str, request: gr.Request = None):
    """Pull a published Space's votes into review; (leaderboard, table, line)."""
    require_user(request, action="pulling votes")
    pulled = pull_votes(dataset or "", token)
    board, rows, line = vote_summary(request)
    return board, rows, f"✅ {pulled.line()} {line}"


def train_on_votes(request: gr.Request = None):
    """Export the owner's decided A/B votes as pairs and point the form at them (DPO)."""
    return _export_for_training(votes.export_preferences, "preferences.jsonl", objectives.PAIRS,
                                "preference pair(s)", "Pick `start_from` (your SFT run) under Advanced, then Start.",
                                request)


def train_on_thumbs(request: gr.Request = None):
    """Export every answer the owner rated and point the form at them (KTO)."""
    return _export_for_training(votes.export_rated, "rated-answers.jsonl", objectives.THUMBS, "rated answer(s)",
                                "Start, or continue an SFT run with `start_from` under Advanced.", request)


@shows_errors(lambda message: (gr.update(), gr.update(), message))
def _export_for_training(export, file_name: str, objective: str, what: str, next_step: str, request):
    """(dataset, objective, line) for the form: the votes written by `export`, and what next."""
    require_user(request, action="training")
    out = data_dir() / "votes" / file_name
    count = export(out)
    return str(out), objective, (f"✅ {count} {what} exported and set as the dataset, objective {objective}. "
                                 f"{next_step}")


@shows_errors(lambda message: ("", *BLANK_ANSWERS, None, message))
def judge_next(run_name: str, request: gr.Request = None):
    """Show the run's next unjudged pair blind. Returns (prompt, answer A, answer B, pending, line)."""
    require_user(request, action="judging runs")
    pending = judge.next_pair(run_name or "")
    run_line = judge.win_rate_line(RunFolder.existing(run_name))
    if pending is None:
        return "", *BLANK_ANSWERS, None, f"✅ Every held-out pair of {run_name} is judged. {run_line}"
    prompt = "\n\n".join(f"**{m['role']}:** {m['content']}" for m in pending.prompt)
    return (prompt, gr.update(value=pending.answers["A"], label="Answer A"),
            gr.update(value=pending.answers["B"], label="Answer B"), pending,
            f"{pending.left} pair(s) to judge. Which answer is better?")


def judge_handler(choice: str):
    def vote(pending, request: gr.Request = None):
        """Record the vote, reveal both sides. Returns (line, pending, label A, label B)."""
        try:
            require_user(request, action="judging runs")
        except LabError as exc:
            return warn(exc), pending, gr.update(), gr.update()
        line, pending, label_a, label_b = cast_vote(choice, pending, request)
        if pending and pending.voted:
            line += " " + judge.win_rate_line(RunFolder.existing(pending.run)) + " Next pair →"
        return line, pending, label_a, label_b
    return vote


def build_judge() -> None:
    with gr.Accordion("Judge a run against where it started (blind)", open=False) as section:
        with gr.Row():
            run = gr.Dropdown(judge.judged_runs(), label="DPO or KTO run", allow_custom_value=True, elem_id="judge-run")
            show = gr.Button("Next pair", size="sm", elem_id="judge-next")
        prompt = gr.Markdown(elem_id="judge-prompt")
        with gr.Row():
            answers = [gr.Textbox(label=f"Answer {side}", interactive=False, lines=4, elem_id=f"judge-{side}")
                       for side in "AB"]
        with gr.Row():
            buttons = {choice: gr.Button(label, size="sm", elem_id=f"judge-vote-{choice}")
                       for label, choice in VOTE_BUTTONS.items()}
        line = gr.Markdown(elem_id="judge-line")
        pending = gr.State(None)
    section.expand(lambda: gr.update(choices=judge.judged_runs()), None, run, api_name=False)
    show.click(judge_next, run, [prompt, *answers, pending, line], api_name="judge_next")
    for choice, button in buttons.items():
        button.click(judge_handler(choice), pending, [line, pending, *answers], api_name=f"judge_{choice}")


def build(dataset: gr.Dropdown, objective: gr.Radio) -> list:
    """Lay out and wire the votes panel; returns its events that set `dataset` and `objective`."""
    with gr.Accordion("Preference votes (blind Compare)", open=False):
        board = gr.Dataframe(headers=BOARD_COLUMNS, interactive=False, elem_id="votes-leaderboard",
                             label="Leaderboard: every model with blind votes (Bradley-Terry)")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="votes-table",
                             label="Each adapter against its own base")
        line = gr.Markdown(elem_id="votes-line")
        with gr.Row():
            refresh = gr.Button("↻ Refresh", size="sm", elem_id="votes-refresh")
            accept = gr.Button("Accept the votes waiting for review", size="sm", elem_id="votes-accept")
            use = gr.Button("Train DPO on my votes", size="sm", variant="primary", elem_id="train-on-votes")
            thumbs = gr.Button("Train KTO on my thumbs", size="sm", variant="primary", elem_id="train-on-thumbs")
        with gr.Row():
            dataset_box = gr.Textbox(label="A Space's votes dataset", placeholder="your-name/lumen-compare-votes",
                                     elem_id="votes-dataset", scale=3)
            token = gr.Textbox(label="Hugging Face token (optional if HF_TOKEN is set)", type="password", scale=2,
                               elem_id="votes-token")
            pull = gr.Button("Pull votes from the Hub", size="sm", elem_id="votes-pull", scale=1)
    refresh.click(vote_summary, None, [board, table, line], api_name="votes_table")
    accept.click(accept_visitors, None, [board, table, line], api_name="votes_accept")
    pull.click(pull_from_hub, [dataset_box, token], [board, table, line], api_name="votes_pull")
    setters = [use.click(train_on_votes, None, [dataset, objective, line], api_name="votes_to_dataset"),
               thumbs.click(train_on_thumbs, None, [dataset, objective, line], api_name="thumbs_to_dataset")]
    build_judge()
    return setters
