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


GENERAL_WINDOWS = 32  # DAPT's forgetting check: 32 windows of general text, a few seconds
REPORT_PAIRS = 6  # held-out DPO prompts in the report: each is a pair to judge
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


def general_scores(trainer, cfg, tokenizer, when: str) -> dict:
    """DAPT only: perplexity on general English (ChatTerBot's questions and answers, in the same
    windows), so that forgetting shows beside the domain's gain. {} for other objectives."""
    if cfg.objective != "dapt":
        return {}
    from datasets import Dataset

    from core.data import load_rows
    from core.formats import dapt_windows
    from training.prepare import context_length

    rows = load_rows("chatterbot").shuffle(seed=cfg.seed)
    text = Dataset.from_dict({"text": [f"{row['question']}\n{row['answer']}" for row in rows]})
    windows = dapt_windows(text, tokenizer, cfg.block_size, cfg.stride, context_length(cfg.model), GENERAL_WINDOWS)
    loss = trainer.evaluate(eval_dataset=windows, metric_key_prefix="general")["general_loss"]
    return {f"general_{when}": round(math.exp(loss), 3)}


def manifest_scores(scores: dict) -> dict:
    """The manifest's before/after fields: perplexity, or DPO's held-out reward figures."""
    before, after = scores.get("before"), scores.get("after")
    if isinstance(before, dict) or isinstance(after, dict):
        return {"perplexity_before": None, "perplexity_after": None,
                "reward_accuracy_before": (before or {}).get("reward_accuracy"),
                "reward_accuracy_after": (after or {}).get("reward_accuracy"),
                "reward_margin_after": (after or {}).get("reward_margin")}
    answers = {k: v for k, v in (scores.get("answers") or {}).items() if k != "examples"} or None
    return {"perplexity_before": before, "perplexity_after": after, "answer_scores": answers,
            "general_perplexity_before": scores.get("general_before"),
            "general_perplexity_after": scores.get("general_after")}


def load_scores(run: RunFolder) -> dict:
    return read_json(run.eval_scores)


def save_scores(run: RunFolder, scores: dict) -> None:
    run.eval_scores.write_text(json.dumps(scores, indent=2))


def report_conversations(cfg, eval_set=None) -> list[list[dict]]:
    """The report's questions: the config's prompts; for DPO the held-out pairs' own prompts
    (capped), so the new adapter is judged on questions it never trained on."""
    if cfg.report_prompts:
        return [[{"role": "user", "content": prompt}] for prompt in cfg.report_prompts]
    if cfg.objective == "dpo" and eval_set is not None:
        unique = {json.dumps(prompt, sort_keys=True): prompt for prompt in eval_set["prompt"]}
        return [as_messages(prompt) for prompt in list(unique.values())[:REPORT_PAIRS]]
    return [[{"role": "user", "content": prompt}] for prompt in DEFAULT_PROMPTS.get(cfg.dataset, GENERIC_PROMPTS)]


def as_messages(prompt) -> list[dict]:
    """A preference row's prompt as messages: already a list, or training.dpo's plain text."""
    if isinstance(prompt, list):
        return prompt
    return [{"role": "user", "content": prompt.removeprefix("Question: ").removesuffix("\nAnswer:")}]


def before_after_report(cfg, run: RunFolder, eval_set=None, max_new_tokens: int = 48) -> list[dict]:
    """Answer each prompt greedily before and after training; write the run's report (JSON and
    markdown); return the rows. "Before" is the base, or for DPO with start_from the adapter it
    started from: both adapters then answer in one batch on one copy of the base weights."""
    from core.chat import GenerationSettings, attach_tuned
    from core.compare import stream_batch, stream_compare
    from core.models import load_model

    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))
    start = attach_tuned(base, cfg.start_from) if cfg.start_from else None
    settings = GenerationSettings(max_new_tokens=max_new_tokens, raw_text=cfg.objective == "dapt")
    rows = []
    for messages in report_conversations(cfg, eval_set):
        if start is None:
            *_, replies = stream_compare(base, tuned, messages, messages, settings)
        else:
            *_, replies = stream_batch(base, [messages, messages], [start.adapter_name, tuned.adapter_name], settings,
                                       [start.chat_template, tuned.chat_template])
        rows.append({"prompt": messages[-1]["content"], "messages": messages,
                     "base": replies[0].text.strip(), "tuned": replies[1].text.strip()})
    run.report_json.write_text(json.dumps(rows, indent=2))
    run.report_md.write_text(report_markdown(rows, cfg))
    return rows


def before_label(cfg) -> str:
    return f"Start ({cfg.start_from})" if cfg.start_from else "Base"


def report_markdown(rows: list[dict], cfg) -> str:
    lines = [f"#### Before/after: {cfg.objective.upper()} + {cfg.adapter.upper()} on {cfg.dataset}", ""]
    if cfg.objective == "dpo":
        lines += ["Held-out prompts. Judge these pairs blind in Train → Preference votes → "
                  "\"Judge a DPO run\"; the win rate goes into the model card.", ""]
    for row in rows:
        lines += [f"**Prompt:** {row['prompt']}", "", f"**{before_label(cfg)}:** {row['base']}", "",
                  f"**Tuned:** {row['tuned']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from training.config import load_config

    run = RunFolder(Path(sys.argv[1]))
    before_after_report(load_config(run.config), run)
    print(run.report())
