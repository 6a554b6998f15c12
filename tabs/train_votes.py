"""Train tab, "Preference votes": the win / loss / tie table of each adapter against its base
from the blind Compare votes (core.votes), visitors' votes to review, and one click to train
DPO on the owner's votes (they are exported as preference pairs and set as the dataset).
"""
from __future__ import annotations

import gradio as gr

from core import votes
from core.access import require_user
from core.errors import LabError
from core.paths import data_dir
from tabs.feedback import warn

COLUMNS = ["adapter", "base model", "wins", "losses", "ties", "both bad", "win share", "95% interval"]


def vote_summary():
    """(table rows, one line on the visitors' votes waiting for review)."""
    rows = [[r["adapter"], r["model"], r["wins"], r["losses"], r["ties"], r["both_bad"], r["win_share"],
             f"{r['interval_95'][0]:.2f}-{r['interval_95'][1]:.2f}"] for r in votes.win_table(votes.read())]
    waiting = len(votes.read(visitor=True))
    return rows, f"{len(votes.read())} vote(s) in your store · {waiting} visitor vote(s) waiting for review"


def accept_visitors(request: gr.Request = None):
    try:
        require_user(request, action="accepting visitors' votes")
        moved = votes.accept_visitor_votes()
    except LabError as exc:
        return gr.update(), warn(exc)
    rows, line = vote_summary()
    return rows, f"✅ {moved} visitor vote(s) accepted. {line}"


def train_on_votes(request: gr.Request = None):
    """Export the owner's decided votes and point the form at them with objective=dpo."""
    try:
        require_user(request, action="training")
        out = data_dir() / "votes" / "preferences.jsonl"
        pairs = votes.export_preferences(out)
    except LabError as exc:
        return gr.update(), gr.update(), warn(exc)
    return str(out), "dpo", (f"✅ {pairs} preference pair(s) exported and set as the dataset, objective dpo. "
                             "Pick `start_from` (your SFT run) under Advanced, then Start.")


def build(dataset: gr.Dropdown, objective: gr.Radio) -> None:
    with gr.Accordion("Preference votes (blind Compare)", open=False):
        table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="votes-table")
        line = gr.Markdown(elem_id="votes-line")
        with gr.Row():
            refresh = gr.Button("↻ Refresh", size="sm")
            accept = gr.Button("Accept visitors' votes", size="sm")
            use = gr.Button("Train DPO on my votes", size="sm", variant="primary", elem_id="train-on-votes")
    refresh.click(vote_summary, None, [table, line], api_name="votes_table")
    accept.click(accept_visitors, None, [table, line], api_name="votes_accept")
    use.click(train_on_votes, None, [dataset, objective, line], api_name="votes_to_dataset")
