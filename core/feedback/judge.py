"""Judge a DPO run against the model it started from, blind, on its report's held-out prompts.

    python cli.py votes table        # also prints each judged DPO run's head-to-head line

A DPO run's before/after report (training/evaluate.py) answers held-out prompts greedily with the
starting model (its start_from adapter, or the base) and with the new adapter. A stored vote
between exactly those two models on that prompt judges the pair; the pairs without one are
shown to the owner, in a random A/B order, to vote on. The votes go to the owner's store like
any blind Compare vote, so the win rate is `core.feedback.leaderboard.head_to_head` of the two sides.
"""
from __future__ import annotations

import random

from core.feedback import votes
from core.feedback.leaderboard import head_to_head
from core.errors import LabError
from core.runs import RunFolder, finished_runs, read_json


def judged_runs() -> list[str]:
    """Finished runs whose report's pairs are judged blind (DPO, KTO), with a report to judge."""
    return [run.name for run in finished_runs() if _judged_blind(run) and run.report_json.is_file()]


def _judged_blind(run: RunFolder) -> bool:
    manifest = run.manifest()
    return manifest is not None and manifest.judged_blind


def sides(run: RunFolder) -> tuple[dict, dict]:
    """(new adapter, the model it started from), as vote sides, from the run's manifest."""
    manifest = run.manifest()
    return ({"model": manifest.model, "adapter": run.name}, {"model": manifest.model, "adapter": manifest.start_from})


def unjudged_pairs(run: RunFolder) -> list[dict]:
    """The report rows that no stored vote between the two sides has judged yet."""
    pair = {votes.side_key(side) for side in sides(run)}
    judged = [v["prompt"] for v in votes.read()
              if len(v["sides"]) == 2 and {votes.side_key(s) for s in v["sides"].values()} == pair]
    return [row for row in read_json(run.report_json) or [] if row_messages(row) not in judged]


def row_messages(row: dict) -> list[dict]:
    return row.get("messages") or [{"role": "user", "content": row["prompt"]}]


def next_pair(run_name: str) -> votes.BlindPair | None:
    """The next unjudged pair as a blind pair waiting for a vote, or None when every pair has one."""
    run = RunFolder.existing(run_name)
    if not _judged_blind(run):
        raise LabError(f"'{run_name}' is not a finished run whose answers are judged blind (DPO, KTO).")
    pending = unjudged_pairs(run)
    if not pending:
        return None
    row, (new, start) = pending[0], sides(run)
    order = [("tuned", new), ("base", start)]
    random.shuffle(order)
    return votes.BlindPair(prompt=row_messages(row), answers={side: row[key] for side, (key, _) in zip("AB", order)},
                           sides={side: model for side, (_, model) in zip("AB", order)},
                           settings={"source": f"report of {run.name}", "temperature": 0.0}, run=run.name,
                           left=len(pending))


def win_rate(run: RunFolder) -> dict:
    """The head-to-head record of the run's adapter against the model it started from."""
    new, start = sides(run)
    return head_to_head(votes.read(), new, start)


def win_rate_line(run: RunFolder) -> str:
    """One sentence for the Result panel and the model card; empty before any vote."""
    row, (_, start) = win_rate(run), sides(run)
    if not row["wins"] + row["losses"] + row["ties"] + row["both_bad"]:
        return ""
    against = f"the SFT adapter it started from ({start['adapter']})" if start["adapter"] else "the base model"
    low, high = row["interval_95"]
    share = "no decided vote" if row["win_share"] is None else f"win share {row['win_share']}"
    return (f"Blind head-to-head against {against} on held-out prompts: {row['wins']} wins, "
            f"{row['losses']} losses, {row['ties']} ties, {row['both_bad']} both bad; {share} "
            f"(95% interval {low}-{high}).")
