"""Probe, not a path the app takes yet: decoding with inductor's generated int8 GEMM.

    .venv/bin/python bench/probe_compiled_decode.py [--rows 1|2] [--tokens 64]
    .venv/bin/python bench/probe_compiled_decode.py --compare    # base pane vs Compare's batch

The app's int8 path (core.inference.fast_decode) multiplies with aten's `_weight_int8pack_mm`. Under
`torch.compile(mode="max-autotune")` with inductor's `freezing`, inductor autotunes every int8
product against a C++ micro-GEMM it generates (BENCHMARKS.md lists both kernels' timings). This
script measures what that is worth end to end: greedy decoding of the packaged SmolLM2 on the
app's int8 weights, eager against compiled, one decode loop over a static cache (prefill
eager, each next token one compiled forward), `--rows` identical prompts per step.

With `--compare` it attaches bench_chat's random LoRA (r16, all linear layers) and measures the
base pane (one row, adapter off) against Compare's batch ([base, tuned]); the adapter's rows
are computed for the whole batch and masked, one A and one B product per group of layers that
share an input (q/k/v, gate/up), so the compiled graph has as few small kernels as it can.

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
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

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


def grouped_lora_rows(model, adapter: str, mask: torch.Tensor) -> None:
    """Install on every decoder layer's LoRA layers a forward that adds the adapter to the rows
    where `mask` is 1: layers that share an input get one A product and one block-diagonal B."""
    for block in model.model.layers:
        attention, mlp = block.self_attn, block.mlp
        for group in ([attention.q_proj, attention.k_proj, attention.v_proj], [attention.o_proj],
                      [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]):
            _install_group(group, adapter, mask)


def _install_group(layers, adapter: str, mask: torch.Tensor) -> None:
    lora_a = torch.cat([layer.lora_A[adapter].weight for layer in layers])
    scaled_b = torch.block_diag(*[layer.lora_B[adapter].weight * layer.scaling[adapter] for layer in layers])
    widths, later = [layer.out_features for layer in layers], {}

    def first(x, *args, **kwargs):  # the group's first layer runs first (q before k and v)
        out = layers[0].base_layer(x)
        delta = (F.linear(F.linear(x.to(lora_a.dtype), lora_a), scaled_b) * mask).to(out.dtype)
        head, *later["deltas"] = torch.split(delta, widths, dim=-1)
        return out + head

    layers[0].forward = first
    for index, layer in enumerate(layers[1:]):
        layer.forward = partial(_add_later_delta, layer.base_layer, later, index)


def _add_later_delta(base_layer, later: dict, index: int, x, *args, **kwargs):
    return base_layer(x) + later["deltas"][index]


def timed_pair(model, ids, tokens: int, repeats: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Eager and compiled ms per token for `ids` (and the first compiled reply's seconds, which
    include compiling and autotuning), with the last eager and compiled greedy tokens."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + tokens + 1)
    greedy_loop(model, ids, cache, tokens, model.forward)  # warm-up
    compiled = torch.compile(model.forward, mode="max-autotune", dynamic=False)
    start = time.perf_counter()
    greedy_loop(model, ids, cache, tokens, compiled)
    first = time.perf_counter() - start  # inductor's cache makes reruns quicker
    eager_ms, compiled_ms = [], []
    for _ in range(repeats):  # interleaved, so the host's noise hits both alike
        ms, eager_tokens = greedy_loop(model, ids, cache, tokens, model.forward)
        eager_ms.append(ms)
        ms, compiled_tokens = greedy_loop(model, ids, cache, tokens, compiled)
        compiled_ms.append(ms)
    torch._dynamo.reset()
    eager, fast = statistics.median(eager_ms), statistics.median(compiled_ms)
    figures = {"first_compiled_decode_s": round(first, 1), "eager_ms_per_token": round(eager, 2),
               "compiled_ms_per_token": round(fast, 2), "compiled_speedup": round(eager / fast, 2)}
    return figures, eager_tokens, compiled_tokens


def compare_probe(loaded, ids, tokens: int, repeats: int) -> dict:
    import tempfile

    from bench.bench_chat import make_adapter
    from core.inference.chat import attach_tuned

    with tempfile.TemporaryDirectory() as tmp:
        tuned = attach_tuned(loaded, threads.in_own_thread(make_adapter, Path(tmp) / "adapter"))
    model = loaded.model.get_base_model()
    with loaded.model.disable_adapter():
        base = timed_pair(model, ids, tokens, repeats)[0]
    grouped_lora_rows(model, tuned.adapter_name, torch.tensor([0.0, 1.0]).view(2, 1, 1))
    compare = timed_pair(model, ids.repeat(2, 1), tokens, repeats)[0]
    return {"base_pane": base, "compare": compare,
            "compare_over_base_eager": round(compare["eager_ms_per_token"] / base["eager_ms_per_token"], 3),
            "compare_over_base_compiled": round(compare["compiled_ms_per_token"] / base["compiled_ms_per_token"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="base pane against Compare's batch, with a LoRA")
    args = parser.parse_args()
    import torch._inductor.config as inductor_config

    from core.inference.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    inductor_config.freezing = True
    loaded = load_model("smollm2-135m-instruct")  # the app's int8 weights on a bf16 CPU
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    if args.compare:
        print(json.dumps({"decode_path": loaded.decode, "tokens": args.tokens,
                          **compare_probe(loaded, ids, args.tokens, args.repeats)}))
        return
    figures, eager_tokens, compiled_tokens = timed_pair(model, ids.repeat(args.rows, 1), args.tokens, args.repeats)
    same = (eager_tokens == compiled_tokens).all(0).int()
    print(json.dumps({"decode_path": loaded.decode, "rows": args.rows, "tokens": args.tokens, **figures,
                      "greedy_common_prefix": int(same.cumprod(0).sum()),
                      "compiled_text": tokenizer.decode(compiled_tokens[0], skip_special_tokens=True)}))


if __name__ == "__main__":
    main()
