"""One decoding step's weight products on torch's CPU kernels and the app's own, against the read bandwidth.

    .venv/bin/python bench/int8_kernels.py [--repeats 7]

Decoding a token multiplies one row by every weight of the model once, so at best a step's
products take (bytes of weights) / (read bandwidth). This measures how close each kernel comes,
on the default chat model's own int8 weights (its 211 Linear layers, LM head included), each
product once, in model order, so every weight comes from memory as it does in a real step:
- `app_int8`: torch's `_weight_int8pack_mm`, bf16 row times int8 weight: the app's int8 path;
- `bf16`: the same weights as bf16 through `F.linear`: the eager path (twice the bytes);
- `int8_int8`: the row quantized to int8 too, then torch's `_int_mm` (VNNI/AMX, as llama.cpp's
  q8_0 multiplies): a w8a8 path the app does not take, for its kernel speed;
- `inductor_int8`: inductor's own code for the int8 product (dequantize, multiply, sum) over
  all the layers as one compiled graph;
- `app_vnni_w8a8` (`app_avx2_w8a8`): not a torch kernel but the app's own, where g++ is here
  and the CPU has AVX2 (core.inference.own_kernels, FINETUNE_LAB_CPU_KERNELS=own): the row
  quantized per block of 32 values (as llama.cpp's q8_0, though not 32 neighbours), multiplied
  with `vpdpbusd` (AVX512-VNNI) or `vpmaddwd` (AVX2).

Figures: milliseconds per step (the best of `repeats`), effective GB/s (weight bytes over time)
and `share_of_bandwidth` (against summing a 1 GB tensor), and the best kernel over the app's.
The last line is a JSON object. Issue 33's `compiled_over_int8` >= 2 needs products well under
the app's; where no kernel here is, the compiled step cannot get there by removing overhead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import machine  # noqa: E402
from bench.decode_speed import read_bandwidth_gbs  # noqa: E402


def int8_layers(model_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(int8 weight, per-row bf16 scales) of every Int8Linear of the loaded chat model, in order."""
    from core.inference import own_kernels
    from core.inference.fast_decode import Int8Linear
    from core.inference.models import load_model

    loaded = load_model(model_name)
    layers = [(m.qweight if m.pack is None else own_kernels.unpack(m.qweight, m.in_features), m.scales)
              for m in loaded.model.modules() if isinstance(m, Int8Linear)]  # rows, as torch's kernels take them
    if not layers:
        raise SystemExit(f"{model_name} has no int8 layers here (FINETUNE_LAB_DECODE must pick int8).")
    return layers


def step_products(layers, rows) -> dict:
    """{kernel: a function that runs one step's products}."""
    bf16 = [(q.to(torch.bfloat16) * s[:, None]).contiguous() for q, s in layers]
    int_t = [q.t() for q, _ in layers]  # _int_mm takes (K, N); a transposed view is its fast layout

    def app_int8():
        for (q, s), x in zip(layers, rows):
            torch.ops.aten._weight_int8pack_mm(x, q, s)

    def eager_bf16():
        for w, x in zip(bf16, rows):
            F.linear(x, w)

    def int8_int8():
        for (q, s), qt, x in zip(layers, int_t, rows):
            x_scale = x.abs().amax().float().clamp(min=1e-12) / 127
            x8 = torch.round(x.float() / x_scale).to(torch.int8)
            torch._int_mm(x8, qt).float().mul_(x_scale).mul_(s.float())

    def dequantized(xs, qs, ss):
        return [((x.float() * q.float()).sum(-1) * s.float()).to(torch.bfloat16) for x, q, s in zip(xs, qs, ss)]

    compiled = torch.compile(dequantized, dynamic=False)
    qs, ss = [q for q, _ in layers], [s for _, s in layers]
    kernels = {"app_int8": app_int8, "bf16": eager_bf16, "int8_int8": int8_int8,
               "inductor_int8": lambda: compiled(rows, qs, ss)}
    own = own_w8a8(layers, rows)
    if own is None:
        return kernels
    from core.inference.own_kernels import instruction_set

    return {**kernels, f"app_{instruction_set().split('-')[-1]}_w8a8": own}  # app_vnni_w8a8 or app_avx2_w8a8


def own_w8a8(layers, rows):
    """One step's products through core.inference.own_kernels' op, or None where it does not serve."""
    from core.inference import own_kernels

    if own_kernels.unavailable():
        return None

    packed = [(own_kernels.pack(q), q, s) for q, s in layers]  # None: rows our op cannot take

    def run():
        for (p, q, s), x in zip(packed, rows):
            own_kernels.rows_times_int8(x, q if p is None else p, s)
    return run


def best_ms(run, repeats: int) -> float:
    run()  # warm-up (and inductor's compile)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from core import threads

    threads.apply(threads.for_chat(job_running=False))
    layers = int8_layers(args.model)
    rows = [torch.randn(1, q.shape[1], dtype=torch.bfloat16) for q, _ in layers]
    weight_bytes = sum(q.numel() for q, _ in layers)
    bandwidth = read_bandwidth_gbs()
    figures = {}
    with torch.inference_mode():
        for name, run in step_products(layers, rows).items():
            ms = best_ms(run, args.repeats)
            read = weight_bytes * (2 if name == "bf16" else 1)
            figures[name] = {"ms": round(ms, 2), "gb_s": round(read / ms / 1e6, 1),
                             "share_of_bandwidth": round(read / ms / 1e6 / bandwidth, 3)}
    best = min(figures, key=lambda name: figures[name]["ms"])
    print(json.dumps({**machine.describe(), "model": args.model, "layers": len(layers),
                      "int8_weight_mb": round(weight_bytes / 1e6, 1), "read_bandwidth_gbs": round(bandwidth, 1),
                      "bandwidth_limit_ms": round(weight_bytes / bandwidth / 1e6, 2), **figures,
                      "best_kernel": best, "best_over_app_int8": round(figures["app_int8"]["ms"] / figures[best]["ms"], 2)}))


if __name__ == "__main__":
    main()
