"""How a training run uses the hardware: precision per device, compile, 4-bit quirks.

Used by training.run and bench/bench_train.py. Check what this machine gets:

    python -c "from training.device import precision_flags; print(precision_flags('auto'))"
"""
from __future__ import annotations


from core.inference.models import resolve_precision


def precision_flags(precision: str) -> dict:
    """Trainer mixed-precision flags: the matmuls run in bf16/fp16 under autocast."""
    precision = resolve_precision(precision)
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
