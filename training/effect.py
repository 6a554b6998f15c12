"""Where tuning helped or hurt: each held-out row's loss on its own reference under the base and
the tuned model, the rows grouped into topics, written to the run folder's effect.json.

    python cli.py effect --run RUN [--embedder NAME]   # prints the topics, best and worst
    python -m training.effect --run RUN                # the same, as the Result panel's job

A row is, for SFT, a held-out question with its reference answer, and its loss is the mean
negative log-likelihood of the answer's tokens after the prompt, tokenized as training did;
for DAPT, a held-out window, every token, plus the forgetting check's windows of general text as
their own group. Both sides run on one copy of the base weights (the adapter off, then on, per
batch). Where the objective scores answers, base and tuned also answer each row greedily, scored
by ROUGE-L. The rows are embedded (the packaged MiniLM, or a tuned embedder) and grouped with
BERTopic's "fast" model from 10 rows, as one group below that. Bounded by `eval_rows` (16 when
the run set 0) and `eval_seconds`; the note says when rows were cut.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time

from core import threads
from core.errors import LabError
from core.explore.embedders import embedder_source
from core.paths import write_json
from core.runs import RunFolder, read_json
from training import objectives
from training.config import load_config
from training.progress import run_as_job

DEFAULT_ROWS = 16
MIN_TOPIC_ROWS = 10  # BERTopic's fewest documents
GENERAL = "general text (forgetting)"
BATCH = 4


def row_losses(model, batches: list[tuple[list[int], int]], adapter_on: bool) -> list[float]:
    """Mean NLL of each row's tokens from its start index on, one forward per row group."""
    import contextlib

    import torch

    losses = []
    switch = contextlib.nullcontext() if adapter_on or not hasattr(model, "disable_adapter") else model.disable_adapter()
    with torch.inference_mode(), switch:
        for first in range(0, len(batches), BATCH):
            group = batches[first:first + BATCH]
            ids, mask = right_padded([row for row, _ in group])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            for n, (row, start) in enumerate(group):
                losses.append(float(nll[n, max(start, 1) - 1:len(row) - 1].mean()))
    return losses


def right_padded(rows: list[list[int]]):
    """(token ids, attention mask) of `rows` as one batch, padded on the right with 0."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    return ids, torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])


def sft_tokens(tokenizer, row) -> tuple[list[int], int]:
    """(prompt and answer token ids, where the answer starts), as trl tokenizes a prompt-completion row."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list):
        start = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + completion, return_dict=True)["input_ids"]
    else:
        start, ids = tokenizer(prompt)["input_ids"], tokenizer(prompt + completion)["input_ids"]
    return list(ids), len(start)


def held_out_rows(run: RunFolder, cfg, tokenizer, limit: int) -> tuple[list[dict], list, int]:
    """(rows as effect.json shows them, their (token ids, start), how many rows were held out)
    for the run's first `limit` held-out rows, then for DAPT the forgetting windows."""
    from training.answer_eval import held_out_set
    from training.objective import as_messages

    eval_set = held_out_set(run, cfg)
    if eval_set is None:
        raise LabError(f"'{run.name}' held out no rows (eval_fraction 0): nothing to map.")
    rows, tokens = [], []
    for row in eval_set.select(range(min(limit, len(eval_set)))):
        if "input_ids" in row:  # a DAPT window
            rows.append({"group": "held-out", "text": tokenizer.decode(row["input_ids"])})
            tokens.append((list(row["input_ids"]), 0))
            continue
        messages, completion = as_messages(row["prompt"]), row["completion"]
        reference = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        rows.append({"group": "held-out", "text": messages[-1]["content"], "prompt": messages,
                     "reference": reference.strip()})
        tokens.append(sft_tokens(tokenizer, row))
    general = objectives.get(cfg.objective).general_windows(cfg, tokenizer)
    for window in general["input_ids"] if general is not None else []:
        rows.append({"group": GENERAL, "text": tokenizer.decode(window)})
        tokens.append((list(window), 0))
    return rows, tokens, len(eval_set)


def load_sides(cfg, run: RunFolder):
    """The tuned model for the run: the base with the adapter (its off switch gives the base),
    or for a full fine-tune two models."""
    from transformers import AutoModelForCausalLM

    from training.model_setup import load_base

    base = load_base(cfg).eval()
    if run.is_lora:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(run.adapter)).eval()
        return tuned, tuned
    return base, AutoModelForCausalLM.from_pretrained(str(run.adapter), use_safetensors=True).eval()


def side_losses(cfg, run: RunFolder, tokens: list) -> list[tuple[float, float]]:
    """(base loss, tuned loss) of each row."""
    base_model, tuned_model = load_sides(cfg, run)
    return list(zip(row_losses(base_model, tokens, False), row_losses(tuned_model, tokens, True)))


def check_effect(run: RunFolder, embedder: str = "") -> None:
    """Refuse, in one line, a run that has no effect to map, or a run's name given as the
    embedder that is no embedder: before a model loads, and from the app before the job starts."""
    manifest = run.manifest()
    if manifest is None:
        raise LabError(f"'{run.name}' has not finished: the effect map compares a finished run with its base.")
    if not objectives.get(manifest.objective).maps_effect:
        able = " or ".join(name.upper() for name in objectives.NAMES if objectives.get(name).maps_effect)
        raise LabError(f"'{run.name}' is not a finished {able} run: the effect map compares losses on "
                       "reference text, which its held-out rows do not have.")
    if embedder:
        embedder_source(embedder)


def compute(name: str, embedder: str = "", progress=print) -> dict:
    """Measure, answer and group the run's held-out rows; write and return effect.json's content."""
    from training.model_setup import load_tokenizer

    run = RunFolder.existing(name)
    check_effect(run, embedder)
    cfg = load_config(run.config)
    limit = cfg.eval_rows or DEFAULT_ROWS
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    rows, tokens, held = held_out_rows(run, cfg, tokenizer, limit)
    progress(f"effect map: loss of {len(rows)} rows under the base and the tuned model")
    # In a thread that ends before the answers are generated on the decode thread, taking its
    # OpenMP team along: two teams' threads outnumber the cores and sleep (core.threads).
    for row, (before, after) in zip(rows, threads.in_own_thread(side_losses, cfg, run, tokens)):
        row.update(base_loss=round(before, 4), tuned_loss=round(after, 4), change=round(after - before, 4))
    cut = add_answers(cfg, run, rows, progress) if objectives.get(cfg.objective).scores_answers else 0
    progress("effect map: grouping the rows into topics")
    topics, note = group(rows, embedder)
    if held > limit or cut:
        note += f" {min(held, limit) - cut} of {held} held-out rows measured (eval_rows, eval_seconds)."
    effect = {"run": run.name, "embedder": embedder or "all-MiniLM-L6-v2", "rows": rows, "topics": topics,
              "note": note.strip(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run.effect_file, effect)
    return effect


def add_answers(cfg, run: RunFolder, rows: list[dict], progress) -> int:
    """Greedy answers of both sides and their ROUGE-L against the reference; rows past
    eval_seconds keep their losses without answers. Returns how many went unanswered."""
    from rouge_score import rouge_scorer

    from training.answer_eval import generate

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    answers = generate(cfg, run, [(row["prompt"], row["reference"]) for row in rows], cfg.eval_seconds, progress)
    for row, (base, tuned) in zip(rows, answers):
        scored = [round(scorer.score(row["reference"], text)["rougeL"].fmeasure, 3) for text in (base, tuned)]
        row.update(base_answer=base, tuned_answer=tuned, base_score=scored[0], tuned_score=scored[1],
                   score_change=round(scored[1] - scored[0], 3))
    return len(rows) - len(answers)


def group(rows: list[dict], embedder: str) -> tuple[list[dict], str]:
    """Give each row a topic (the forgetting windows are one of their own); return the topics
    with their mean changes, and a note on how they were found."""
    from core.explore.embeddings import embed
    from core.explore.topics import fit_topics

    held = [row for row in rows if row["group"] != GENERAL]
    if len(held) >= MIN_TOPIC_ROWS:
        texts = [row["text"] for row in held]
        result = fit_topics(texts, embed(texts, embedder, write_cache=False), "fast", n_topics=max(2, len(held) // 5))
        info = result.model.get_topic_info()
        names = dict(zip(info["Topic"], info["Name"]))
        for row, topic in zip(held, result.model.topics_):
            row["topic"] = names[topic].split("_", 1)[-1].replace("_", " ")
        note = f"Topics: BERTopic (PCA + KMeans) on {len(held)} rows."
    else:
        for row in held:
            row["topic"] = "all held-out rows"
        note = f"Only {len(held)} held-out rows: one group (topics need {MIN_TOPIC_ROWS})."
    for row in rows:
        row.setdefault("topic", GENERAL)
    return [topic_summary(name, [row for row in rows if row["topic"] == name])
            for name in dict.fromkeys(row["topic"] for row in rows)], note


def topic_summary(name: str, rows: list[dict]) -> dict:
    scored = [row["score_change"] for row in rows if "score_change" in row]
    return {"topic": name, "rows": len(rows), "mean_change": round(sum(r["change"] for r in rows) / len(rows), 4),
            "mean_score_change": round(sum(scored) / len(scored), 3) if scored else None,
            "worse": sum(row["change"] > 0 for row in rows), "general": name == GENERAL}


def perplexity_change(topic: dict) -> float:
    """A topic's mean loss change as a perplexity ratio (tuned / base)."""
    return math.exp(topic["mean_change"])


def read_effect(run: RunFolder) -> dict:
    effect = read_json(run.effect_file)
    if not effect:
        raise LabError(f"'{run.name}' has no effect map yet: compute it first (cli.py effect --run {run.name}).")
    return effect


def topic_rows(effect: dict, topic: str) -> list[dict]:
    """The rows of `topic`, the ones tuning hurt most first."""
    rows = [row for row in effect["rows"] if row["topic"] == topic]
    if not rows:
        raise LabError(f"No topic {topic!r} in this effect map: pick one in the topics table.")
    return sorted(rows, key=lambda row: -row["change"])


def make_pairs(name: str, topic: str) -> int:
    """Queue for review a preference pair for each answered row of `topic` whose loss rose: the
    base's answer chosen over the tuned one, marked as generated. Returns how many were new."""
    from dataclasses import asdict

    from core.feedback import votes

    run = RunFolder.existing(name)
    model = run.manifest().model
    worse = [row for row in topic_rows(read_effect(run), topic) if row["change"] > 0 and "base_answer" in row]
    if not worse:
        raise LabError(f"No answered row of '{topic}' got worse: no pairs to make (DAPT rows have no answers; "
                       "export them instead).")
    known = {vote["id"] for vote in votes.read() + votes.waiting()}
    pairs = [asdict(votes.Vote(
        prompt=row["prompt"], answers={"A": row["base_answer"], "B": row["tuned_answer"]}, choice="A",
        sides={"A": {"model": model, "adapter": None}, "B": {"model": model, "adapter": run.name}},
        id=hashlib.sha1(json.dumps([run.name, row["prompt"]]).encode()).hexdigest(),
        source=f"{votes.GENERATED}effect map of {run.name}, '{topic}', loss {row['change']:+.3f}").check())
        for row in worse]
    fresh = [pair for pair in pairs if pair["id"] not in known]
    votes.queue_for_review(fresh)
    return len(fresh)


def main(argv=None) -> int:
    """The Result panel's job: progress to the run's phase, a failure to its status."""
    import argparse

    parser = argparse.ArgumentParser(description="Map where a finished run's tuning helped or hurt.")
    parser.add_argument("--run", required=True)
    parser.add_argument("--embedder", default="")
    args = parser.parse_args(argv)
    run = RunFolder.existing(args.run)

    def work(progress):
        effect = compute(run.name, args.embedder, progress)
        for topic in sorted(effect["topics"], key=lambda t: t["mean_change"]):
            print(f"{topic['mean_change']:+.3f}  {topic['rows']:3d} rows  {topic['topic']}")
        print(effect["note"])
    return run_as_job(run, "Effect map", work)


if __name__ == "__main__":
    sys.exit(main())
