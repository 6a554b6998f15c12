"""Chat's int8 path with bench/kernels/w8a8_vnni.c for its one-row products, against torch's
kernel, in one run: the lead of BENCHMARKS.md's "One step's weight products", end to end.

    .venv/bin/python bench/probe_w8a8_chat.py [--tokens 64] [--repeats 3]

A probe, not the app: it swaps core.inference.fast_decode's kernel for one row in this process
only (prompts and batches keep torch's), calls the C kernel through ctypes (a few microseconds
of Python a call), and answers through the Chat tab's `stream_reply`, the two kernels taking
turns. Prints each kernel's tok/s, the ratio, and where the greedy answers first part.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.decode_speed import PROMPTS  # noqa: E402
from bench.int8_kernels import w8a8_kernel  # noqa: E402


def swapped_in(kernel, torch_kernel):
    """An int8 product like fast_decode.int8_mm that sends one row to `kernel`."""
    unsigned = {}  # the kernel's weight layout (w + 128), made once per weight

    def product(rows, qweight, scales):
        if rows.shape[0] != 1 or qweight.shape[1] % 64:
            return torch_kernel(rows, qweight, scales)
        weight = unsigned.get(qweight.data_ptr())
        if weight is None:
            weight = unsigned[qweight.data_ptr()] = (qweight.to(torch.int16) + 128).to(torch.uint8)
        out = torch.empty(1, qweight.shape[0], dtype=scales.dtype)
        kernel(*(ctypes.c_void_p(t.data_ptr()) for t in (rows, weight, scales, out)), qweight.shape[0],
               qweight.shape[1], torch.get_num_threads())
        return out
    return product


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from core import threads
    from core.inference import fast_decode
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    kernel = w8a8_kernel()
    if kernel is None:
        raise SystemExit("needs gcc and a CPU with AVX512-VNNI")
    loaded = load_model("smollm2-135m-instruct")
    kernels = {"torch": fast_decode.int8_mm, "w8a8": swapped_in(kernel, fast_decode.int8_mm)}
    settings = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    messages, rates, words = [{"role": "user", "content": PROMPTS[1]}], {name: [] for name in kernels}, {}
    for round_ in range(args.repeats + 1):  # the first round warms both up
        for name, product in kernels.items():
            fast_decode.int8_mm = product
            start = time.perf_counter()
            words[name] = list(stream_reply(loaded, messages, settings))[-1].text.split()
            if round_:
                rates[name].append(args.tokens / (time.perf_counter() - start))
    fast_decode.int8_mm = kernels["torch"]
    tok_s = {name: round(statistics.median(rate), 1) for name, rate in rates.items()}
    common = next((i for i, (a, b) in enumerate(zip(*words.values())) if a != b), min(map(len, words.values())))
    print(json.dumps({"tok_s": tok_s, "w8a8_over_torch": round(tok_s["w8a8"] / tok_s["torch"], 3),
                      "common_words": common}))


if __name__ == "__main__":
    main()
