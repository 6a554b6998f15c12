"""Weight-only int8 decoding for chat on a CPU: the frozen base's Linear layers keep int8 weights.

    FINETUNE_LAB_DECODE=int8|eager|auto python app.py     # auto (default): int8 for bf16 on a CPU

Decoding one token at a time is bound by memory bandwidth, not arithmetic: every step reads all
the weights once. Int8 weights halve the bytes read against bf16. torch's own CPU kernel
(`aten._weight_int8pack_mm`) multiplies bf16 or fp32 activations by int8 weights with one scale
per output row. Measured on a 2-core EPYC (AVX512-BF16), SmolLM2-135M: 24.0 -> 41.1 tok/s
(bench/bench_chat.py, which also measures the greedy-token agreement with eager).

LoRA adapters still attach on top: `Int8Linear` is an `nn.Linear` to peft, which wraps it like
any other Linear and calls it as the base layer. In chat, `adapter_rows` applies the adapters
to their rows of a batch (each row its adapter or none) in 3 kernels per layer instead of
peft's 9; `None` (then peft's `adapter_names` does it) where an adapter is not plain LoRA on
Linear layers. On a GPU,
auto keeps the eager weights: there the bf16 kernels are already fast. So does a CPU without
native bf16, where the weights are fp32 and the int8 kernel is slow with fp32 activations.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from itertools import groupby

import torch
import torch.nn.functional as F

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


def adapter_rows(model: torch.nn.Module, adapter_names: list[str]):
    """A context in which batch row i gets adapter_names[i] ("__base__": none), or None when an
    adapter is not plain LoRA on Linear layers (DoRA, dropout, merged: peft's path handles those).

    Per layer it adds x A (s B) to its rows in one in-place step: 3 kernels, where peft's
    mixed-batch forward spends 9 and some Python. The scaled B is computed once per reply. The
    output is rounded once to the activations' dtype, where peft rounds it and then the sum, so
    logits agree with peft's to bf16 rounding (tested), and a solo reply and its Compare pane,
    which both take this path, agree exactly. Measured per all-linear LoRA layer of SmolLM2,
    batch of two, 2 CPU cores: peft 147 us, this 44 us, the int8 base layer alone 23 us."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    wanted = set(adapter_names) - {"__base__"}
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not wanted or not all(_plain_lora(m, wanted, LoraLinear) for m in layers):
        return None
    spans, start = [], 0
    for name, run in groupby(adapter_names):
        count = len(list(run))
        if name != "__base__":
            spans.append((name, slice(start, start + count)))
        start += count
    return _rows_forward_installed(layers, spans)


def _plain_lora(layer, wanted: set, linear_type) -> bool:
    mine = wanted & set(layer.lora_A)
    return not mine or (isinstance(layer, linear_type) and not layer.merged and not mine & set(layer.lora_variant)
                        and all(isinstance(layer.lora_dropout[name], torch.nn.Identity) for name in mine))


@contextmanager
def _rows_forward_installed(layers, spans):
    with torch.no_grad():
        for layer in layers:
            layer.forward = partial(_rows_forward, layer, [_scaled(layer, name, rows) for name, rows in spans
                                                           if name in layer.lora_A])
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to peft's own forward


def _scaled(layer, name: str, rows: slice) -> tuple:
    """(rows, A, s B, s bias): peft's (x A B + bias) s with the scale folded into B."""
    scale, lora_b = layer.scaling[name], layer.lora_B[name]
    bias = None if lora_b.bias is None else lora_b.bias * scale
    return rows, layer.lora_A[name].weight, lora_b.weight * scale, bias


def _rows_forward(layer, spans, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = layer.base_layer(x, *args, **kwargs)
    for rows, lora_a, scaled_b, bias in spans:
        result[rows] += F.linear(F.linear(x[rows].to(lora_a.dtype), lora_a), scaled_b, bias)
    return result
