"""Held-out answers, scored: the base and the tuned model answer the held-out SFT rows greedily,
and each answer is scored against the row's reference answer.

    python cli.py eval --run RUN          # (re)score a finished run; writes eval.json's "answers"

Three scores, each the mean over rows, for the base and the tuned model:
- exact match: the same text after lower-casing and dropping punctuation and extra spaces;
- ROUGE-L: the F1 of the longest common word subsequence (Google's rouge-score package);
- cosine: the cosine similarity of the answer's and the reference's MiniLM sentence embeddings
  (the packaged embedder the Embeddings tab uses), which credits a paraphrase.
Rows and time are capped (`eval_rows`, `eval_seconds`); the table says how many rows it scored.
Both models answer in one batch on one copy of the base weights (core.compare.stream_batch).
"""
from __future__ import annotations

import re
import time

import numpy as np

from core.runs import RunFolder

CHUNK = 4  # rows per generate call: 8 sequences (base and tuned) in one batch


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def reference_rows(eval_set, limit: int) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) of the first `limit` held-out prompt/completion rows."""
    from training.evaluate import as_messages

    rows = []
    for row in eval_set.select(range(min(limit, len(eval_set)))):
        completion = row["completion"]
        reference = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        rows.append((as_messages(row["prompt"]), reference.strip()))
    return rows


def generate(cfg, run: RunFolder, rows, seconds: float, progress=print, max_new_tokens: int = 64):
    """[(base answer, tuned answer)] for as many rows as fit in `seconds`."""
    from core.chat import GenerationSettings, attach_tuned
    from core.compare import stream_batch, stream_compare
    from core.models import load_model

    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    answers, deadline = [], time.monotonic() + seconds
    for start in range(0, len(rows), CHUNK):
        if time.monotonic() > deadline:
            break
        chunk = [messages for messages, _ in rows[start:start + CHUNK]]
        if tuned.adapter_name is None:  # a full fine-tune: a second model, one row at a time
            for messages in chunk:
                *_, replies = stream_compare(base, tuned, messages, messages, settings)
                answers.append((replies[0].text.strip(), replies[1].text.strip()))
        else:
            *_, replies = stream_batch(base, chunk * 2, ["__base__"] * len(chunk) + [tuned.adapter_name] * len(chunk),
                                       settings, [None] * len(chunk) + [tuned.chat_template] * len(chunk))
            answers += [(b.text.strip(), t.text.strip()) for b, t in zip(replies[:len(chunk)], replies[len(chunk):])]
        progress(f"evaluation: {len(answers)}/{len(rows)} held-out rows answered by base and tuned")
    return answers


def scores(answers: list[str], references: list[str]) -> dict:
    """Mean exact match, ROUGE-L F1 and MiniLM cosine of `answers` against `references`."""
    from rouge_score import rouge_scorer

    from core.embeddings import embed

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    vectors = embed(answers + references)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cosine = (vectors[:len(answers)] * vectors[len(answers):]).sum(axis=1)
    return {"exact_match": round(float(np.mean([normalize(a) == normalize(r) for a, r in zip(answers, references)])), 3),
            "rouge_l": round(float(np.mean([scorer.score(r, a)["rougeL"].fmeasure
                                            for a, r in zip(answers, references)])), 3),
            "cosine": round(float(np.mean(cosine)), 3)}


def answer_scores(cfg, run: RunFolder, eval_set, progress=print) -> dict | None:
    """The before/after table for eval.json: scores of base and tuned on the held-out rows."""
    if eval_set is None or cfg.objective != "sft" or cfg.eval_rows < 1:
        return None
    started = time.monotonic()
    rows = reference_rows(eval_set, cfg.eval_rows)
    answers = generate(cfg, run, rows, cfg.eval_seconds, progress)
    references = [reference for _, reference in rows[:len(answers)]]
    return {"rows": len(answers), "of": len(eval_set), "seconds": round(time.monotonic() - started, 1),
            "base": scores([b for b, _ in answers], references),
            "tuned": scores([t for _, t in answers], references),
            "examples": [{"prompt": m[-1]["content"], "reference": r, "base": b, "tuned": t}
                         for (m, r), (b, t) in zip(rows[:3], answers[:3])]}


def table_markdown(table: dict | None) -> str:
    """The Result panel's and the model card's rows."""
    if not table:
        return ""
    lines = [f"Held-out answers ({table['rows']} of {table['of']} rows, greedy, scored against the reference):", "",
             "| score | base | tuned |", "|---|---|---|"]
    for key, label in (("exact_match", "exact match"), ("rouge_l", "ROUGE-L F1"), ("cosine", "MiniLM cosine")):
        lines.append(f"| {label} | {table['base'][key]} | {table['tuned'][key]} |")
    return "\n".join(lines)


def evaluate_run(name: str, progress=print) -> dict:
    """Score a finished SFT run's held-out answers again (after a change of `eval_rows`, or for a
    run trained before this existed); updates eval.json and the manifest."""
    from core.errors import LabError
    from core.paths import write_json
    from training.config import load_config
    from training.evaluate import load_scores, save_scores
    from training.prepare import build_examples, load_tokenizer, split_examples

    run = RunFolder.existing(name)
    cfg = load_config(run.config)
    if not run.is_finished or cfg.objective != "sft":
        raise LabError(f"'{name}': held-out answers are scored for finished SFT runs only.")
    _, eval_set = split_examples(build_examples(cfg, load_tokenizer(cfg.model, cfg.chat_template)), cfg)
    if eval_set is None:
        raise LabError(f"'{name}' held out no rows (eval_fraction 0): nothing to score against.")
    table = answer_scores(cfg, run, eval_set, progress)
    scores = {**load_scores(run), "answers": table}
    save_scores(run, scores)
    write_json(run.manifest_file, {**run.manifest(), "answer_scores": {k: v for k, v in table.items() if k != "examples"}})
    return table
