"""Held-out answers, scored: the base and the tuned model answer the held-out SFT rows greedily,
and each answer is scored against the row's reference answer.

    python cli.py eval --run RUN          # (re)score a finished run; writes the scores' "answers"
    python -m training.answer_eval --run RUN [--rows N]   # the same, as the Train tab's job

Three scores, each the mean over rows, for the base and the tuned model:
- exact match: the same text after lower-casing and dropping punctuation and extra spaces;
- ROUGE-L: the F1 of the longest common word subsequence (Google's rouge-score package);
- cosine: the cosine similarity of the answer's and the reference's MiniLM sentence embeddings
  (the packaged embedder the Embeddings tab uses), which credits a paraphrase.
Rows and time are capped (`eval_rows`, `eval_seconds`); the table says how many rows it scored.
Both models answer on one copy of the base weights, eight rows at a time, in one batch of sixteen.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import replace

import numpy as np

from core.errors import LabError
from core.explore.embedders import cosine_label
from core.runs import RunFolder
from training import objectives
from training.config import load_config
from training.evaluate import load_scores, save_scores
from training.model_setup import load_tokenizer
from training.prepare import build_examples, split_examples
from training.progress import run_as_job

CHUNK = 8  # conversations a batch (each asked of base and tuned: sixteen rows)
DEFAULT_ROWS = 16


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def reference_rows(eval_set, limit: int) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) of the first `limit` held-out prompt/completion rows."""
    from training.objective import as_messages

    rows = []
    for row in eval_set.select(range(min(limit, len(eval_set)))):
        completion = row["completion"]
        reference = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        rows.append((as_messages(row["prompt"]), reference.strip()))
    return rows


def generate(cfg, run: RunFolder, rows, seconds: float, progress=print, max_new_tokens: int = 64):
    """[(base answer, tuned answer)] for as many rows as fit in `seconds`, CHUNK rows at a time,
    each chunk asked of base and tuned in one batch (core.inference.compare.answer_pairs)."""
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings
    from core.inference.compare import answer_pairs
    from core.inference.models import load_model

    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    answers, deadline = [], time.monotonic() + seconds
    for pairs in answer_pairs(base, tuned, [messages for messages, _ in rows], settings, per_batch=CHUNK):
        answers += pairs
        progress(f"evaluation: {len(answers)}/{len(rows)} held-out rows answered by base and tuned")
        if time.monotonic() > deadline:
            break
    return answers


def scores(answers: list[str], references: list[str], embedder: str = "") -> dict:
    """Mean exact match, ROUGE-L F1 and embedding cosine (the packaged MiniLM, or `embedder`)
    of `answers` against `references`."""
    from rouge_score import rouge_scorer

    from core.explore.embeddings import embed

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    vectors = embed(answers + references, embedder, write_cache=False)  # normalised; answers are not worth caching
    cosine = (vectors[:len(answers)] * vectors[len(answers):]).sum(axis=1)
    return {"exact_match": round(float(np.mean([normalize(a) == normalize(r) for a, r in zip(answers, references)])), 3),
            "rouge_l": round(float(np.mean([scorer.score(r, a)["rougeL"].fmeasure
                                            for a, r in zip(answers, references)])), 3),
            "cosine": round(float(np.mean(cosine)), 3)}


def answer_scores(cfg, run: RunFolder, eval_set, progress=print) -> dict | None:
    """The before/after table for the run's scores: base and tuned on the held-out rows."""
    if eval_set is None or not objectives.get(cfg.objective).scores_answers or cfg.eval_rows < 1:
        return None
    started = time.monotonic()
    rows = reference_rows(eval_set, cfg.eval_rows)
    answers = generate(cfg, run, rows, cfg.eval_seconds, progress)
    references = [reference for _, reference in rows[:len(answers)]]
    return {"rows": len(answers), "of": len(eval_set), "seconds": round(time.monotonic() - started, 1),
            "embedder": cfg.eval_embedder,
            "base": scores([b for b, _ in answers], references, cfg.eval_embedder),
            "tuned": scores([t for _, t in answers], references, cfg.eval_embedder),
            "examples": [{"prompt": m[-1]["content"], "reference": r, "base": b, "tuned": t}
                         for (m, r), (b, t) in zip(rows[:3], answers[:3])]}


def table_markdown(table: dict | None) -> str:
    """The Result panel's and the model card's rows."""
    if not table:
        return ""
    lines = [f"Held-out answers ({table['rows']} of {table['of']} rows, greedy, scored against the reference):", "",
             "| score | base | tuned |", "|---|---|---|"]
    for key, label in (("exact_match", "exact match"), ("rouge_l", "ROUGE-L F1"), ("cosine", cosine_label(table.get("embedder")))):
        lines.append(f"| {label} | {table['base'][key]} | {table['tuned'][key]} |")
    return "\n".join(lines)


def evaluate_run(name: str, progress=print, rows: int = 0) -> dict:
    """Score a finished run's held-out answers again (after a change of `eval_rows`, or for a
    run trained before this existed), on the rows the run held out; updates the run's scores
    and its manifest."""
    if rows < 0:
        raise LabError(f"rows={rows}: use 0 (the run's own eval_rows) or more.")
    run = RunFolder.existing(name)
    manifest = run.manifest()
    objectives.require_scored_answers(name, manifest)
    cfg = load_config(run.config)
    # Asked for explicitly: a run trained with eval_rows 0 is scored on the default number of rows.
    cfg = replace(cfg, eval_rows=rows or cfg.eval_rows or DEFAULT_ROWS)
    eval_set = held_out_set(run, cfg)
    if eval_set is None:
        raise LabError(f"'{name}' held out no rows (eval_fraction 0): nothing to score against.")
    table = answer_scores(cfg, run, eval_set, progress)
    save_scores(run, {**load_scores(run), "answers": table})
    run.write_manifest(replace(manifest, answer_scores={k: v for k, v in table.items() if k != "examples"}))
    return table


def held_out_set(run: RunFolder, cfg):
    """The rows the run held out: as it kept them, or (a run from before they were kept) split
    again from its dataset with its seed."""
    from datasets import Dataset

    kept = run.read_held_out()
    if kept is not None:
        return Dataset.from_list(kept)
    _, eval_set = split_examples(build_examples(cfg, load_tokenizer(cfg.model, cfg.chat_template)), cfg)
    return eval_set


def main(argv=None) -> int:
    """The "Evaluate again" job (training.jobs.evaluate): progress goes to the run's phase, and a
    failure to its status, beside how training ended."""
    import argparse

    parser = argparse.ArgumentParser(description="Score a finished run's held-out answers again.")
    parser.add_argument("--run", required=True)
    parser.add_argument("--rows", type=int, default=0)
    args = parser.parse_args(argv)
    run = RunFolder.existing(args.run)
    return run_as_job(run, "Evaluate again",
                      lambda progress: print(table_markdown(evaluate_run(run.name, progress, args.rows))))


if __name__ == "__main__":
    sys.exit(main())
