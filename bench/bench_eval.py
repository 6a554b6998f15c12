"""Evaluation benchmark: what scoring held-out answers costs per 100 rows, and the app's
generation (a chunk's base and tuned rows in one batch on one copy of the weights, as Compare
asks its panes) against the plain way (batched model.generate with the adapter disabled, then
enabled).

    FINETUNE_LAB_HOME=/tmp/ftl-bench .venv/bin/python bench/bench_eval.py [--rows 24] [--repeats 3]

Trains the `tiny` recipe once (kept as run `bench-eval-tiny`), then answers the first --rows rows
of the identity set greedily (64 new tokens, answer_eval.CHUNK conversations a batch), with
each path, --repeats times each, all on the decode thread (core.threads), and scores the app's
answers (exact match, ROUGE-L, MiniLM cosine). Prints medians per 100 rows, the ratio plain /
app, and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUN = "bench-eval-tiny"


def tiny_run():
    from core.runs import RunFolder
    from training import jobs
    from training.config import load_config

    run = RunFolder.named(RUN)
    if not run.is_finished:
        jobs.start(load_config("tiny", output_name=RUN, eval_rows=0))
        assert jobs.wait(RUN, 900).state == "completed"
    return run


def plain_generate(loaded, adapter_name, rows, tokens: int, chunk: int) -> float:
    """The plain baseline: batched model.generate, `chunk` base rows with the adapter disabled,
    then the same rows tuned."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    same = dict(max_new_tokens=tokens, do_sample=False, repetition_penalty=1.1,  # the app's defaults
                pad_token_id=tokenizer.pad_token_id)
    start = time.perf_counter()
    for first in range(0, len(rows), chunk):
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                 for m, _ in rows[first:first + chunk]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            with model.disable_adapter():
                model.generate(**batch, **same)
            model.set_adapter(adapter_name)
            model.generate(**batch, **same)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from core import threads
    from core.explore import embeddings
    from core.inference.adapters import attach_tuned
    from core.data.rows import load_rows
    from core.inference.models import load_model
    from training import answer_eval
    from training.config import load_config

    threads.apply(threads.cores())
    run = tiny_run()
    cfg = load_config(run.config)
    rows = [([{"role": "user", "content": r["question"]}], r["answer"]) for r in load_rows("identity")][:args.rows]
    base = load_model(cfg.model)
    tuned = attach_tuned(base, str(run.adapter))

    app, plain, scoring = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        answers = answer_eval.generate(cfg, run, rows, seconds=10**6, progress=lambda line: None)
        app.append(time.perf_counter() - start)
        # On the decode thread, as the app's paths generate: torch work on a second long-lived
        # thread gives it an OpenMP team of its own, and two teams slow both (core.threads).
        plain.append(threads.decode_thread().submit(plain_generate, base, tuned.adapter_name, rows, 64,
                                                    answer_eval.CHUNK).result())
        embeddings.RECENT.clear()  # the same answers each repeat: scored from memory otherwise
        start = time.perf_counter()
        for side in (0, 1):
            answer_eval.scores([pair[side] for pair in answers], [ref for _, ref in rows])
        scoring.append(time.perf_counter() - start)
    per_100 = {name: round(statistics.median(times) * 100 / args.rows, 1)
               for name, times in (("app_generate_s", app), ("plain_generate_s", plain), ("scoring_s", scoring))}
    result = {**per_100, "plain_over_app": round(statistics.median(plain) / statistics.median(app), 2),
              "rows": args.rows, "per_batch": answer_eval.CHUNK, "repeats": args.repeats, "threads": threads.cores()}
    print(f"per 100 rows: app generation {per_100['app_generate_s']} s, plain generation "
          f"{per_100['plain_generate_s']} s (plain/app {result['plain_over_app']}x), scoring {per_100['scoring_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
