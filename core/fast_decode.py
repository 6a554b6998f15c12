"""Weight-only int8 decoding for chat on a CPU: the frozen base's Linear layers keep int8 weights.

    FINETUNE_LAB_DECODE=int8|eager|auto python app.py     # auto (default): int8 for bf16 on a CPU

Decoding one token at a time is bound by memory bandwidth, not arithmetic: every step reads all
the weights once. Int8 weights halve the bytes read against bf16. torch's own CPU kernel
(`aten._weight_int8pack_mm`) multiplies bf16 or fp32 activations by int8 weights with one scale
per output row. Measured on a 2-core EPYC (AVX512-BF16), SmolLM2-135M: 24.0 -> 41.1 tok/s
(bench/bench_chat.py, which also measures the greedy-token agreement with eager).

LoRA adapters still attach on top: `Int8Linear` is an `nn.Linear` to peft, which wraps it like
any other Linear and calls it as the base layer, in solo and in mixed-adapter batches. On a GPU,
auto keeps the eager weights: there the bf16 kernels are already fast. So does a CPU without
native bf16, where the weights are fp32 and the int8 kernel is slow with fp32 activations.
"""
from __future__ import annotations

import os

import torch

from core.errors import LabError

CHOICES = ("auto", "int8", "eager")


class Int8Linear(torch.nn.Linear):
    """A frozen Linear whose weight is int8 with a per-row scale, multiplied by torch's kernel."""

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)  # not Linear.__init__: it would allocate a float weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("qweight", torch.round(weight / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight, for code that inspects a Linear's shape, device or dtype (peft does)."""
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def decode_path(device: str, dtype: torch.dtype) -> str:
    """'int8' or 'eager' for a model on `device` held in `dtype`, from $FINETUNE_LAB_DECODE.

    auto (the default) picks int8 for bf16 weights on a CPU only: with fp32 activations the
    kernel measured 10x slower than bf16 ones (371 against 29 us for a 1536x576 product)."""
    choice = os.environ.get("FINETUNE_LAB_DECODE", "auto")
    if choice not in CHOICES:
        raise LabError(f"FINETUNE_LAB_DECODE={choice!r}: use one of {', '.join(CHOICES)}.")
    if choice == "auto":
        fits = device == "cpu" and dtype == torch.bfloat16
        return "int8" if fits and hasattr(torch.ops.aten, "_weight_int8pack_mm") else "eager"
    return choice


def quantize_linears(model: torch.nn.Module) -> int:
    """Swap every plain float Linear in `model` (the LM head included) for an Int8Linear; return
    how many. Embeddings and norms stay as they are: they are a small share of each step's reads."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype.is_floating_point:
                setattr(parent, name, Int8Linear(child))
                swapped += 1
    return swapped
