"""The run's held-out scores file, and the before/after report.

    python -m training.evaluate RUN_DIR      # (re)write a run's before/after report

The held-out figures themselves are the objective's (training/objectives/); the run folder
keeps them as {"before": {...}, "after": {...}, "answers": ...}. The report answers
the objective's prompts greedily with the base and the tuned model, using the same compare
machinery as the Chat tab (one copy of the base weights for LoRA).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from core.runs import RunFolder, read_json
from training import objectives


def load_scores(run: RunFolder) -> dict:
    return read_json(run.eval_scores)


def save_scores(run: RunFolder, scores: dict) -> None:
    run.eval_scores.write_text(json.dumps(scores, indent=2))


def before_after_report(cfg, run: RunFolder, eval_set=None, max_new_tokens: int = 48) -> list[dict]:
    """Answer each prompt greedily before and after training, both sides in one batch on one
    copy of the base weights; write the run's report (JSON and markdown); return the rows.
    "Before" is the base, or with start_from the adapter the run started from."""
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings
    from core.inference.compare import answer_pairs
    from core.inference.models import load_model

    objective = objectives.get(cfg.objective)
    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))
    start = attach_tuned(base, cfg.start_from) if cfg.start_from else None
    settings = GenerationSettings(max_new_tokens=max_new_tokens, raw_text=objective.raw_text)
    conversations = objective.report_conversations(cfg, eval_set)
    pairs = [pair for batch in answer_pairs(base, tuned, conversations, settings, start) for pair in batch]
    rows = [{"prompt": messages[-1]["content"], "messages": messages, "base": before, "tuned": after}
            for messages, (before, after) in zip(conversations, pairs)]
    run.report_json.write_text(json.dumps(rows, indent=2))
    run.report_md.write_text(report_markdown(rows, cfg))
    return rows


def method(cfg) -> str:
    return f"{cfg.objective.upper()} + {cfg.adapter.upper()}"


def before_label(cfg) -> str:
    return f"Start ({cfg.start_from})" if cfg.start_from else "Base"


def report_markdown(rows: list[dict], cfg) -> str:
    lines = [f"#### Before/after: {method(cfg)} on {cfg.dataset}", ""]
    note = objectives.get(cfg.objective).report_note()
    if note:
        lines += [note, ""]
    for row in rows:
        lines += [f"**Prompt:** {row['prompt']}", "", f"**{before_label(cfg)}:** {row['base']}", "",
                  f"**Tuned:** {row['tuned']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from training.config import load_config

    run = RunFolder(Path(sys.argv[1]))
    before_after_report(load_config(run.config), run)
    print(run.report())
