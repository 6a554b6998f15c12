"""Probe, not a path the app takes yet: decoding with inductor's generated int8 GEMM.

    .venv/bin/python bench/probe_compiled_decode.py [--rows 1|2] [--tokens 64]

The app's int8 path (core.fast_decode) multiplies with aten's `_weight_int8pack_mm`. Under
`torch.compile(mode="max-autotune")` with inductor's `freezing`, inductor autotunes every int8
product against a C++ micro-GEMM it generates (BENCHMARKS.md lists both kernels' timings). This
script measures what that is worth end to end: greedy decoding of the packaged SmolLM2 on the
app's int8 weights, eager against compiled, one decode loop over a static cache (prefill
eager, each next token one compiled forward), `--rows` identical prompts per step.

One StaticCache serves every decode: with freezing, a second cache object made the compiled
step fail with an index-out-of-bounds in its cache-update kernel (as `generate` does, which
builds a cache per call). The last line printed is a JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import threads  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short paragraph about the history of Paris."}]


def greedy_loop(model, ids: torch.Tensor, cache, tokens: int, step) -> tuple[float, torch.Tensor]:
    """(ms per decoded token after the prefill, the greedy tokens), `step` doing each forward."""
    with torch.inference_mode():
        cache.reset()
        out = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(ids.shape[1]), use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        chosen, start = [token], time.perf_counter()
        for position in range(ids.shape[1], ids.shape[1] + tokens - 1):
            out = step(input_ids=token, past_key_values=cache, cache_position=torch.tensor([position]),
                       position_ids=torch.full((ids.shape[0], 1), position), use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            chosen.append(token)
        return (time.perf_counter() - start) / (tokens - 1) * 1000, torch.cat(chosen, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch._inductor.config as inductor_config
    from transformers import StaticCache

    from core.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    inductor_config.freezing = True
    loaded = load_model("smollm2-135m-instruct")  # the app's int8 weights on a bf16 CPU
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].repeat(args.rows, 1)
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + args.tokens + 1)
    greedy_loop(model, ids, cache, args.tokens, model.forward)  # warm-up
    compiled = torch.compile(model.forward, mode="max-autotune", dynamic=False)
    start = time.perf_counter()
    greedy_loop(model, ids, cache, args.tokens, compiled)
    first = time.perf_counter() - start  # compile and autotune; inductor's cache makes reruns quicker
    eager_ms, compiled_ms = [], []
    for _ in range(args.repeats):  # interleaved, so the host's noise hits both alike
        ms, eager_tokens = greedy_loop(model, ids, cache, args.tokens, model.forward)
        eager_ms.append(ms)
        ms, compiled_tokens = greedy_loop(model, ids, cache, args.tokens, compiled)
        compiled_ms.append(ms)
    same = (eager_tokens == compiled_tokens).all(0).int()
    figures = {"decode_path": loaded.decode, "rows": args.rows, "tokens": args.tokens,
               "first_compiled_decode_s": round(first, 1),
               "eager_ms_per_token": round(statistics.median(eager_ms), 2),
               "compiled_ms_per_token": round(statistics.median(compiled_ms), 2),
               "compiled_speedup": round(statistics.median(eager_ms) / statistics.median(compiled_ms), 2),
               "greedy_common_prefix": int(same.cumprod(0).sum()),
               "compiled_text": tokenizer.decode(compiled_tokens[0], skip_special_tokens=True)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
