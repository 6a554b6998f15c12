"""Chat batching benchmark: requests that arrive together (base and adapter rows on one copy of
SmolLM2; the endpoint's clients and the Chat tab's visitors alike) answered as one batch by
core.inference.batching, against the same requests answered one after
the other, which is how a server with one decode thread answers them without batching (and how
the endpoint answered before).

    .venv/bin/python bench/bench_api.py [--tokens 96] [--repeats 3]

Every request generates exactly --tokens tokens (min_new_tokens), greedy, on the app's default
decode path and thread count. For 2 requests (base + a random LoRA adapter) and 4 (two of
each): `together_s` is the wall time until the last answer, `one_after_other_s` the sum of the
solo times; `together_over_one_after_other` is their ratio (below 1: batching wins), and
`slowest_wait_over_alone` what the last client waits against a request served alone.
The last line printed is a JSON object with the figures (medians over the repeats).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import machine  # noqa: E402
from bench.bench_chat import make_adapter, rounded  # noqa: E402
from core import threads  # noqa: E402

PROMPTS = ["Write a short story about a dragon.", "Explain what a LoRA adapter is.",
           "List three facts about the Moon.", "How do plants make food?"]


def one_request(loaded, adapter, prompt: str, tokens: int) -> float:
    """Seconds until this request's answer is complete, through the batcher."""
    from core.inference.batching import BASE, Row, answer_together
    from core.inference.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    row = Row(adapter or BASE, [{"role": "user", "content": prompt}])
    start = time.perf_counter()
    replies = list(answer_together(loaded, [row], settings, threads.for_chat(job_running=False)))
    assert replies[-1][0].new_tokens == tokens, replies[-1][0].new_tokens
    return time.perf_counter() - start


def figures_for(loaded, adapters: list, tokens: int, repeats: int) -> dict:
    together, after, alone = [], [], []
    for _ in range(repeats):
        solo = [one_request(loaded, adapter, prompt, tokens) for adapter, prompt in zip(adapters, PROMPTS)]
        after.append(sum(solo))
        alone.append(statistics.median(solo))
        start = time.perf_counter()
        with ThreadPoolExecutor(len(adapters)) as pool:
            list(pool.map(lambda pair: one_request(loaded, *pair, tokens), zip(adapters, PROMPTS)))
        together.append(time.perf_counter() - start)
    together_s, after_s = statistics.median(together), statistics.median(after)
    return {"requests": len(adapters), "together_s": together_s, "one_after_other_s": after_s,
            "together_over_one_after_other": together_s / after_s,
            "slowest_wait_over_alone": together_s / statistics.median(alone)}


def main() -> None:
    from core.inference.adapters import attach_tuned
    from core.inference.models import load_model
    from core.inference.batching import BATCHER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads.apply(threads.for_chat(job_running=False))
    loaded = load_model("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = attach_tuned(loaded, threads.in_own_thread(make_adapter, Path(tmp) / "adapter")).adapter_name
        one_request(loaded, adapter, PROMPTS[0], 8)  # warm both paths
        figures = {**machine.describe(), "decode_path": loaded.decode, "tokens": args.tokens}
        for adapters in ([None, adapter], [None, adapter, None, adapter]):
            result = figures_for(loaded, adapters, args.tokens, args.repeats)
            figures[f"requests_{len(adapters)}"] = result
            print(json.dumps(rounded(result)), flush=True)
    figures["batch_sizes_seen"] = sorted(BATCHER.batch_sizes)
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    main()
