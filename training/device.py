"""How a training run uses the hardware: precision per device, compile, 4-bit quirks.

Used by training.fit and bench/bench_train.py. Check what this machine gets:

    python -c "from training.device import precision_flags; print(precision_flags('auto'))"
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

from core.inference.models import cpu_has_native_bf16, resolve_precision


def training_precision(choice: str) -> str:
    """The precision a run trains in: resolve_precision's, except that on a CPU `auto` keeps
    bf16 only where bf16 matmuls beat fp32's by a tenth here (bf16_matmuls_pay). The CPU's flag
    does not say: bf16 ran at 2.2x fp32's speed on an EPYC and 6.8x on a Xeon with AMX, but at
    0.5-0.67x on a Xeon whose VM hides AMX (166 against 324 GFLOP/s)."""
    import torch

    precision = resolve_precision(choice)
    if choice == "auto" and precision == "bf16" and not torch.cuda.is_available() and not bf16_matmuls_pay():
        return "fp32"
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        _say_bf16_is_emulated()
    return precision


@functools.cache  # once a process: the run's log says it at the start
def _say_bf16_is_emulated() -> None:
    print("precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): its matmuls are emulated, far "
          "slower than fp32's (1.2 against 108 GFLOP/s on an AVX2-only EPYC). precision auto trains in fp32 here.",
          file=sys.stderr, flush=True)


@functools.cache
def bf16_matmuls_pay() -> bool:
    """Whether a bf16 matmul of a training step's size runs clearly faster (by a tenth) than
    fp32's on this CPU; where the two are close, fp32's accuracy wins. Timed once per machine
    (the two precisions taking turns, the best of 5 each, 0.2-0.5 s) and kept in the model
    cache by the CPU's flags and torch's version, under a lock: every process of a multi-process
    run and every resume then trains in the precision the run started in."""
    import torch

    from core.paths import file_lock, models_dir, write_json

    kept = models_dir() / "cpu-matmuls.json"
    key = f"{_cpu_flags()} torch {torch.__version__}"
    with file_lock(kept.with_suffix(".lock")):
        timings = json.loads(kept.read_text()) if kept.is_file() else {}
        if key not in timings:
            timings[key] = _best_times()
            write_json(kept, timings)
    return timings[key]["bf16_s"] < 0.9 * timings[key]["fp32_s"]


def _best_times() -> dict:
    """The best of 5 products of 1024 x 1536 by 1536 x 1536 in each precision, taking turns, so
    that a busy moment of a shared host slows both alike (timed apart, single products of a
    third of this size swung from 0.2x to 1x on a host whose cores another process used)."""
    import torch

    fp32 = torch.randn(1024, 1536), torch.randn(1536, 1536)
    pairs = {"fp32_s": fp32, "bf16_s": tuple(t.to(torch.bfloat16) for t in fp32)}
    best = {name: float("inf") for name in pairs}
    for round_ in range(6):
        for name, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            if round_:  # the first round sets the kernels up
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def _cpu_flags() -> str:
    """This CPU's model and feature flags (a VM may hide some of a model's, AMX among them)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in info if ":" in line}
    return f"{fields.get('model name', '')} [{hashlib.sha256(fields.get('flags', '').encode()).hexdigest()[:12]}]"


def precision_flags(precision: str) -> dict:
    """Trainer mixed-precision flags: the matmuls run in bf16/fp16 under autocast."""
    precision = training_precision(precision)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def attention_for(length: int) -> str:
    """The attention kernel for training. On a CPU, with rows of up to 512 tokens, plain matmul
    attention ("eager") ran LoRA steps 10-11% faster than torch's CPU flash kernel ("sdpa") in
    bf16 and 6% in fp32 (SmolLM2-135M, batch 4, 2-core EPYC; same loss). It keeps each layer's
    attention weights for the backward pass (batch x heads x length^2), so longer rows and GPUs,
    whose flash kernels are fast, keep sdpa."""
    import torch

    return "eager" if not torch.cuda.is_available() and length <= 512 else "sdpa"


def keep_4bit_layers_differentiable(model) -> None:
    """On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit weight for its inference kernel at
    the first no-grad eval forward (our "before" perplexity) and keeps it so. That kernel has no
    backward, so training afterwards silently got zero gradients below the last layer."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place. The layers share one code path, so dynamo
    builds a handful of graphs (dynamic lengths; training vs eval; batches with and without a
    padding mask) instead of tracing the whole model. The state-dict keys stay the same, so
    checkpoints and adapters are unchanged. The first layer's input is made to require grad
    like the others', which saves one more training graph."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.enable_input_require_grads()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
