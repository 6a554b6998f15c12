"""Compare's two LoRA paths on int8 weights, side by side in one process: the int8 path (A packed
under the base layer's int8 weight, B int8) against the fp32 path (A and s B in fp32, as before).

    FINETUNE_LAB_HOME=/tmp/ftl-bench .venv/bin/python bench/probe_lora_paths.py [--tokens 128] [--repeats 7]

Both run the app's own streaming (`stream_reply`, `stream_compare`) with bench_chat's random
r16 all-linear adapter; the runs take turns within each repeat, so the host's noise hits them
alike. Prints ms per token (median and min over the repeats) and each over the base pane.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_chat import make_adapter  # noqa: E402
from core.inference import lora_rows  # noqa: E402
from core import threads  # noqa: E402


def with_fp32_lora(run):
    """`run` with the fp32 path for every LoRA layer: what `_lean_forward` picked before the int8 one."""
    def wrapped():
        chosen, lora_rows._lean_forward = lora_rows._lean_forward, lora_rows.fp32_lora_forward
        try:
            return run()
        finally:
            lora_rows._lean_forward = chosen
    return wrapped


def main() -> None:
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.compare import stream_compare
    from core.inference.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads.apply(threads.for_chat(job_running=False))
    settings = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    messages = [{"role": "user", "content": "Write a short paragraph about the history of Paris."}]
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model("smollm2-135m-instruct")
        tuned = attach_tuned(loaded, threads.in_own_thread(make_adapter, Path(tmp) / "adapter"))
    runs = {"base": lambda: list(stream_reply(loaded, messages, settings)),
            "tuned": lambda: list(stream_reply(loaded, messages, settings, tuned.adapter_name)),
            "compare": lambda: list(stream_compare(loaded, tuned, messages, messages, settings))}
    runs.update(tuned_fp32_lora=with_fp32_lora(runs["tuned"]), compare_fp32_lora=with_fp32_lora(runs["compare"]))
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    figures = {"decode_path": loaded.decode, "tokens": args.tokens}
    for stat in (statistics.median, min):
        per_token = {name: stat(values) / args.tokens * 1000 for name, values in times.items()}
        figures[stat.__name__] = {"ms_per_token": {k: round(v, 2) for k, v in per_token.items()},
                                  "over_base": {k: round(v / per_token["base"], 3) for k, v in per_token.items()}}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
