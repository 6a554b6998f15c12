"""Evaluation: held-out perplexity before/after training, and the before/after report.

    python -m training.evaluate RUN_DIR      # (re)write a run's before/after report

The report answers a fixed list of prompts greedily with the base and the tuned model,
using the same compare machinery as the Chat tab (one copy of the base weights for LoRA).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from core.runs import RunFolder, read_json


DEFAULT_PROMPTS = {
    "identity": ["Who are you?", "What is your name?", "Who made you?"],
    "shakespeare": ["To be, or not to be,", "Now is the winter of our discontent", "O Romeo, Romeo,"],
}
GENERIC_PROMPTS = ["What is the capital of France?", "Give me one tip for learning to code."]


def perplexity(trainer) -> float:
    """exp(mean eval loss) on the held-out split."""
    return round(math.exp(trainer.evaluate()["eval_loss"]), 3)


def held_out(trainer, cfg):
    """Perplexity (SFT, DAPT), or reward accuracy and margin on held-out pairs (DPO)."""
    if cfg.objective == "dpo":
        from training.dpo import reward_scores

        return reward_scores(trainer)
    return perplexity(trainer)


def manifest_scores(scores: dict) -> dict:
    """The manifest's before/after fields: perplexity, or DPO's held-out reward figures."""
    before, after = scores.get("before"), scores.get("after")
    if isinstance(before, dict) or isinstance(after, dict):
        return {"perplexity_before": None, "perplexity_after": None,
                "reward_accuracy_before": (before or {}).get("reward_accuracy"),
                "reward_accuracy_after": (after or {}).get("reward_accuracy"),
                "reward_margin_after": (after or {}).get("reward_margin")}
    return {"perplexity_before": before, "perplexity_after": after}


def load_scores(run: RunFolder) -> dict:
    return read_json(run.eval_scores)


def save_scores(run: RunFolder, scores: dict) -> None:
    run.eval_scores.write_text(json.dumps(scores, indent=2))


def report_prompts(cfg) -> list[str]:
    if cfg.report_prompts:
        return list(cfg.report_prompts)
    return DEFAULT_PROMPTS.get(cfg.dataset, GENERIC_PROMPTS)


def before_after_report(cfg, run: RunFolder, max_new_tokens: int = 48) -> list[dict]:
    """Answer each prompt with base and tuned; write the run's report (JSON and markdown); return rows."""
    from core.chat import GenerationSettings, attach_tuned
    from core.compare import stream_compare
    from core.models import load_model

    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, raw_text=cfg.objective == "dapt")
    rows = []
    for prompt in report_prompts(cfg):
        messages = [{"role": "user", "content": prompt}]
        *_, (base_reply, tuned_reply) = stream_compare(base, tuned, messages, messages, settings)
        rows.append({"prompt": prompt, "base": base_reply.text.strip(), "tuned": tuned_reply.text.strip()})
    run.report_json.write_text(json.dumps(rows, indent=2))
    run.report_md.write_text(report_markdown(rows, cfg))
    return rows


def report_markdown(rows: list[dict], cfg) -> str:
    lines = [f"#### Before/after: {cfg.objective.upper()} + {cfg.adapter.upper()} on {cfg.dataset}", ""]
    for row in rows:
        lines += [f"**Prompt:** {row['prompt']}", "", f"**Base:** {row['base']}", "",
                  f"**Tuned:** {row['tuned']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from training.config import load_config

    run = RunFolder(Path(sys.argv[1]))
    before_after_report(load_config(run.config), run)
    print(run.report())
