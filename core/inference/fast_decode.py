"""Weight-only int8 decoding for chat on a CPU: the frozen base's Linear layers keep int8 weights.

    FINETUNE_LAB_DECODE=int8|eager|auto|compiled python app.py   # auto (default): int8 on a CPU
    # (and in the app, the compiled step on top: core.inference.compiled_decode)

Decoding one token at a time is bound by memory bandwidth, not arithmetic: every step reads all
the weights once. Int8 weights halve the bytes read against bf16. torch's own CPU kernel
(`aten._weight_int8pack_mm`) multiplies bf16 or fp32 activations by int8 weights with one scale
per output row. Measured on a 2-core EPYC (AVX512-BF16), SmolLM2-135M: 24.0 -> 41.1 tok/s
(bench/bench_chat.py, which also measures the greedy-token agreement with eager).

LoRA adapters still attach on top: `Int8Linear` is an `nn.Linear` to peft, which wraps it like
any other Linear and calls it as the base layer, and `append_rows` keeps an adapter's A under
the int8 weight, so that core.inference.lora_rows (each batch row its adapter or none) gets the
layer and x A from one product. (Every chat model on a CPU also gets
core.inference.decode_attention's packed grouped-query attention.) On a GPU,
auto keeps the eager weights: there the bf16 kernels are already fast. A CPU without native
bf16 decodes int8 too, with bf16 activations (core.inference.models.inference_dtype): the
kernel converts them to fp32 as it multiplies, so nothing emulates a bf16 product, while with
fp32 activations it is 10x slower. Timed on an AVX2-only CPU as torch runs one
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 EPYC): 48-63 tok/s against
22-25 for fp32 weights, eager.
"""
from __future__ import annotations

import torch

from core.errors import LabError
from core.settings import settings

CHOICES = ("auto", "int8", "eager", "compiled")
BASE = "__base__"  # a batch row without an adapter: peft's own name for it (`adapter_names`)


# torch's int8 kernel reads bf16 inputs 16 values at a time and crashes the process when a row's
# width or start is not a multiple of 16 (measured, torch 2.13 CPU: widths 8 and 24 and a start
# 8 values in segfault; 16, 32 and 48 work).
KERNEL_WIDTH = 16
int8_mm = torch.ops.aten._weight_int8pack_mm if hasattr(torch.ops.aten, "_weight_int8pack_mm") else None


def quantized_rows(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, one scale per row in `dtype`): symmetric, each row's largest value maps to 127."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(weight / scales[:, None]).to(torch.int8), scales.to(dtype)


def padded(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """`weight` with zeros added along `dim` up to a multiple of the kernel's width."""
    missing = -weight.shape[dim] % KERNEL_WIDTH
    return weight if not missing else torch.cat([weight, weight.new_zeros(
        [missing if i == dim else size for i, size in enumerate(weight.shape)])], dim)


def kernel_rows(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2-D `rows` as the kernel can take them: in `dtype`, contiguous, starting on its width."""
    if rows.dtype != dtype:
        rows = rows.to(dtype)
    if rows.storage_offset() % KERNEL_WIDTH or not rows.is_contiguous():  # the kernel would crash
        rows = rows.clone(memory_format=torch.contiguous_format)
    return rows


def rows_times_int8(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """2-D `rows` times an int8 weight with per-row `scales`, made safe for the kernel first.
    Inside torch.compile the kernel gets a copy of the rows in a buffer of their own, which
    starts where an allocation does; inductor drops the copy where the rows already are such a
    buffer (same layout, offset 0). A Python op that checked the real tensors instead cost
    5.6 us a call, 1.2 ms of a 16 ms compiled step."""
    if torch.compiler.is_compiling():
        return int8_mm(rows.to(scales.dtype).clone(memory_format=torch.contiguous_format), qweight, scales)
    return int8_mm(kernel_rows(rows, scales.dtype), qweight, scales)


def int8_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, rows_product=rows_times_int8) -> torch.Tensor:
    return rows_product(x.reshape(-1, x.shape[-1]), qweight, scales).view(*x.shape[:-1], scales.shape[0])


class Int8Linear(torch.nn.Linear):
    """A frozen Linear whose weight is int8 with a per-row scale, multiplied by torch's kernel.

    It can hold extra rows under its weight (`append_rows`: a LoRA adapter's A), so that one
    product computes the layer and the adapter's first step; `qweight` stays a view of the rows
    that are the layer's own, so the layer alone reads and computes exactly what it did.
    `rows_product` multiplies: torch's kernel, or core.inference.own_kernels'. `pack` lays the
    int8 rows out as that product reads them (own_kernels.pack: tiles of 16 rows), or returns
    None where it cannot; the weight then stays rows, which own_kernels sends to torch's kernel."""

    def __init__(self, linear: torch.nn.Linear, rows_product=rows_times_int8, pack=None):
        torch.nn.Module.__init__(self)  # not Linear.__init__: it would allocate a float weight
        self.rows_product = rows_product
        self.in_features, self.out_features = linear.in_features, linear.out_features
        qweight, scales = quantized_rows(linear.weight, linear.weight.dtype)
        packed = pack(qweight) if pack is not None else None
        self.pack = pack if packed is not None else None
        self.register_buffer("qweight", qweight if packed is None else packed)
        self.register_buffer("scales", scales)
        self.bias = linear.bias
        self.appended = None  # (source rows, their version, the int8 weight with them under it, scales)

    def append_rows(self, rows: torch.Tensor) -> None:
        """Keep `rows` (float, in_features wide) under the weight, unless they already are."""
        if self.appended is not None and self.appended[0] is rows and self.appended[1] == rows._version:
            return
        extra, extra_scales = quantized_rows(padded(rows, 0), self.scales.dtype)
        own = len(self.qweight)  # rows, or packed tiles of rows: the layer's own come first either way
        packed = torch.cat([self.qweight, extra if self.pack is None else self.pack(extra)])
        packed_scales = torch.cat([self.scales, extra_scales])
        self.qweight, self.scales = packed[:own], packed_scales[:self.out_features]
        self.appended = (rows, rows._version, packed, packed_scales)

    def product_appended(self, x: torch.Tensor) -> torch.Tensor:
        """x (flattened to 2-D) times the weight and the appended rows, from one product: the
        first out_features columns are the layer's output without its bias, the rest x A."""
        *_, packed, packed_scales = self.appended
        return self.rows_product(x.reshape(-1, x.shape[-1]), packed, packed_scales)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight, for code that inspects a Linear's device or dtype (peft does). Packed for
        our kernels, its shape is the tiles' (own_kernels.pack): in_features and out_features say the layer's."""
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int8_product(x, self.qweight, self.scales, self.rows_product)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def decode_path(device: str, dtype: torch.dtype) -> str:
    """'int8' or 'eager' weights for a model on `device` held in `dtype`, from $FINETUNE_LAB_DECODE.

    auto (the default) picks int8 for bf16 weights on a CPU only (as they are there by default:
    decodes_int8_on_cpu): with fp32 activations the kernel measured 10x slower than bf16 ones
    (371 against 29 us for a 1536x576 product).
    compiled picks the weights as auto does; core.inference.compiled_decode.wanted says where
    its step comes on top."""
    choice = settings().decode
    if choice not in CHOICES:
        raise LabError(f"FINETUNE_LAB_DECODE={choice!r}: use one of {', '.join(CHOICES)}.")
    if choice in ("auto", "compiled"):
        fits = device == "cpu" and dtype == torch.bfloat16
        return "int8" if fits and int8_mm is not None else "eager"
    return choice


def decodes_int8_on_cpu() -> bool:
    """Whether $FINETUNE_LAB_DECODE leaves a CPU's chat model on int8 weights, so that its
    float weights and activations are best held in bf16 (all but eager)."""
    return settings().decode in ("auto", "compiled", "int8") and int8_mm is not None


def quantize_linears(model: torch.nn.Module, rows_product=rows_times_int8, pack=None) -> int:
    """Swap every plain float Linear in `model` (the LM head included) for an Int8Linear that
    multiplies with `rows_product` on its weight laid out by `pack`; return how many. Embeddings
    and norms stay as they are: they are a small share of each step's reads, and so does a
    Linear whose input width the kernel cannot take."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is torch.nn.Linear and child.weight.dtype.is_floating_point
                    and child.in_features % KERNEL_WIDTH == 0):
                setattr(parent, name, Int8Linear(child, rows_product, pack))
                swapped += 1
    return swapped
