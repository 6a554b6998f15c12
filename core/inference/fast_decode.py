"""Weight-only int8 decoding for chat on a CPU: the frozen base's Linear layers keep int8 weights.

    FINETUNE_LAB_DECODE=int8|eager|auto|compiled python app.py   # auto (default): int8 for bf16 on a CPU

Decoding one token at a time is bound by memory bandwidth, not arithmetic: every step reads all
the weights once. Int8 weights halve the bytes read against bf16. torch's own CPU kernel
(`aten._weight_int8pack_mm`) multiplies bf16 or fp32 activations by int8 weights with one scale
per output row. Measured on a 2-core EPYC (AVX512-BF16), SmolLM2-135M: 24.0 -> 41.1 tok/s
(bench/bench_chat.py, which also measures the greedy-token agreement with eager).

LoRA adapters still attach on top: `Int8Linear` is an `nn.Linear` to peft, which wraps it like
any other Linear and calls it as the base layer. In chat, `adapter_rows` applies the adapters
to their rows of a batch (each row its adapter or none) with fewer kernels than peft's 9 per
layer: on int8 weights, one adapter's A rides in the base layer's own product and its B is int8
too (2 kernels); otherwise 3 in fp32. It is `None` (then peft's `adapter_names` does it) where
an adapter is not plain LoRA on Linear layers. (Every chat model on a CPU also gets
core.inference.decode_attention's packed grouped-query attention.) On a GPU,
auto keeps the eager weights: there the bf16 kernels are already fast. So does a CPU without
native bf16, where the weights are fp32 and the int8 kernel is slow with fp32 activations.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from itertools import groupby

import torch
import torch.nn.functional as F

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

    auto (the default) picks int8 for bf16 weights on a CPU only: with fp32 activations the
    kernel measured 10x slower than bf16 ones (371 against 29 us for a 1536x576 product).
    compiled picks the weights as auto does; core.inference.compiled_decode adds its step."""
    choice = settings().decode
    if choice not in CHOICES:
        raise LabError(f"FINETUNE_LAB_DECODE={choice!r}: use one of {', '.join(CHOICES)}.")
    if choice in ("auto", "compiled"):
        fits = device == "cpu" and dtype == torch.bfloat16
        return "int8" if fits and int8_mm is not None else "eager"
    return choice


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


def adapter_rows(model: torch.nn.Module, adapter_names: list[str]):
    """A context in which batch row i gets adapter_names[i] (BASE: none), or None when an
    adapter is not plain LoRA on Linear layers only (DoRA, dropout, merged, LoRA on embeddings,
    fully trained modules: peft's path handles those).

    Per layer it adds x A (s B) to its rows in one in-place step, where peft's mixed-batch
    forward spends 9 kernels and some Python. The scaled B is computed once per reply. On an
    Int8Linear with one adapter in the batch, A (int8) is packed under the base weight once per
    adapter, so the base product also yields x A, and s B (int8) is one more small product:
    2 kernels. Otherwise A and s B stay fp32 (3 kernels). Either way the logits agree with
    peft's to bf16 rounding (tested on the trained adapter), the rows without an adapter are
    exactly the base's, and a solo reply and its Compare pane, which both take this path, agree
    exactly. Measured per all-linear LoRA layer of SmolLM2, batch of two, 2 CPU cores: peft
    147 us, fp32 path 44 us, the int8 base layer alone 23 us; end to end, the int8 path cut
    Compare's time per token by 8-14% against the fp32 path (BENCHMARKS.md).

    The forwards are prepared when the context is entered, so on the thread that decodes: torch
    work on a request thread gives it an OpenMP team of its own, and on a 2-core Xeon every
    decoding step ran half as fast afterwards (a tuned pane 15.5 tok/s, the base then 22.7,
    against 45; core.threads)."""
    layers = plain_lora_layers(model, adapter_names)  # walked once: the context reuses them
    return None if layers is None else _prepared_and_installed(layers, adapter_names)


@contextmanager
def _prepared_and_installed(layers: list, adapter_names: list[str]):
    with installed(forwards_for(layers, adapter_names)):
        yield


def plain_lora_layers(model: torch.nn.Module, adapter_names: list[str]) -> list | None:
    """Every LoRA layer of `model`, or None unless the adapters named are plain LoRA on Linear
    layers only: what the rows paths (here and core.inference.compiled_views) can run."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    wanted = set(adapter_names) - {BASE}
    layers, elsewhere = [], False
    for module in model.modules():  # one pass: a model of 30 layers has about 1,000 modules
        if isinstance(module, LoraLayer):
            layers.append(module)
        elsewhere = elsewhere or (not isinstance(module, LoraLinear) and _holds_adapter(module, wanted))
    return layers if wanted and not elsewhere and all(_plain_lora(m, wanted, LoraLinear) for m in layers) else None


def _holds_adapter(module: torch.nn.Module, names: set) -> bool:
    """Whether `module` carries one of the adapters `names`: LoRA on a Linear or an embedding, or
    a fully trained copy of the module (peft's modules_to_save), which the rows paths do not run.
    peft keeps each in a ModuleDict or ParameterDict child; `_modules.get` finds it without the
    exception nn.Module's getattr raises for every module that has none (12.8 -> 4.6 ms a walk)."""
    return any(isinstance(held, (torch.nn.ModuleDict, torch.nn.ParameterDict)) and not names.isdisjoint(held.keys())
               for held in map(module._modules.get, ("lora_A", "lora_embedding_A", "modules_to_save")))


def rows_forwards(model: torch.nn.Module, adapter_names: list[str]) -> list[tuple] | None:
    """(LoRA layer, its forward for these rows) for every LoRA layer: what `adapter_rows`
    installs, prepared once (scaling and quantizing B), so that a caller that runs many steps
    with one set of rows (core.inference.running_batch) can install them per step for little."""
    layers = plain_lora_layers(model, adapter_names)
    return None if layers is None else forwards_for(layers, adapter_names)


def forwards_for(layers: list, adapter_names: list[str]) -> list[tuple]:
    """`rows_forwards` for the LoRA layers `plain_lora_layers` found: the torch work (scaling and
    quantizing B), which belongs on the thread that decodes."""
    spans, start = [], 0
    for name, run in groupby(adapter_names):
        count = len(list(run))
        if name != BASE:
            spans.append((name, slice(start, start + count)))
        start += count
    with torch.no_grad():
        return [(layer, _lean_forward(layer, [(name, rows) for name, rows in spans if name in layer.lora_A]))
                for layer in layers]


def _plain_lora(layer, wanted: set, linear_type) -> bool:
    mine = wanted & set(layer.lora_A)
    return not mine or (isinstance(layer, linear_type) and not layer.merged and not mine & set(layer.lora_variant)
                        and all(isinstance(layer.lora_dropout[name], torch.nn.Identity) for name in mine))


@contextmanager
def installed(prepared: list[tuple]):
    """The context in which each layer of `rows_forwards`' list runs its prepared forward."""
    for layer, forward in prepared:
        layer.forward = forward
    try:
        yield
    finally:
        for layer, _ in prepared:
            del layer.forward  # back to peft's own forward


def _lean_forward(layer, spans: list[tuple[str, slice]]):
    if len(spans) == 1 and isinstance(layer.base_layer, Int8Linear):
        return partial(_int8_rows_forward, layer, int8_adapter(layer, *spans[0]))
    return fp32_lora_forward(layer, spans)


def fp32_lora_forward(layer, spans: list[tuple[str, slice]]):
    """The forward that adds each (adapter name, rows) of `spans` with A and s B in fp32."""
    return partial(_rows_forward, layer, [scaled_lora(layer, name, rows) for name, rows in spans])


def scaled_lora(layer, name: str, rows: slice) -> tuple:
    """(rows, A, s B, s bias): peft's (x A B + bias) s with the scale folded into B."""
    scale, lora_b = layer.scaling[name], layer.lora_B[name]
    bias = None if lora_b.bias is None else lora_b.bias * scale
    return rows, layer.lora_A[name].weight, lora_b.weight * scale, bias


def int8_adapter(layer, name: str, rows: slice) -> tuple:
    """(base layer, A, (first row, rows), int8 s B, its scales, s bias), with A kept under the int8
    base layer's weight (rebuilt only when another adapter, or other weights, were there) and s B
    quantized once, kept on peft's B module while its weight and scale stay (per reply, 210
    layers took about 20 ms before a tuned reply's first token)."""
    scale, lora_b, base = layer.scaling[name], layer.lora_B[name], layer.base_layer
    base.append_rows(layer.lora_A[name].weight)
    kept = getattr(lora_b, "int8_scaled", None)
    if kept is None or kept[:2] != (lora_b.weight._version, scale):
        kept = lora_b.int8_scaled = (lora_b.weight._version, scale,
                                     *quantized_rows(padded(lora_b.weight * scale, 1), base.scales.dtype))
    bias = None if lora_b.bias is None else lora_b.bias * scale
    return (base, layer.lora_A[name].weight, (rows.start, rows.stop - rows.start), *kept[2:], bias)


def _int8_rows_forward(layer, span: tuple, x: torch.Tensor) -> torch.Tensor:
    # The decode step's hot path (210 layers per token in SmolLM2): views and 2 kernels, no more.
    base, lora_a, (start, count), qweight_b, scales_b, bias = span
    base.append_rows(lora_a)  # at once unless another adapter's A was packed since this was prepared
    both = base.product_appended(x)
    own, per_row = base.out_features, both.shape[0] // x.shape[0]  # per_row: the tokens of a batch row
    low_rank = both.narrow(0, start * per_row, count * per_row).narrow(1, own, both.shape[1] - own)
    update = rows_times_int8(low_rank, qweight_b, scales_b)
    result = both.narrow(1, 0, own)
    if base.bias is not None:
        result = result + base.bias
    result.narrow(0, start * per_row, count * per_row).add_(update if bias is None else update + bias)
    return result.view(*x.shape[:-1], own)


def _rows_forward(layer, spans, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = layer.base_layer(x, *args, **kwargs)
    for rows, lora_a, scaled_b, bias in spans:
        result[rows] += F.linear(F.linear(x[rows].to(lora_a.dtype), lora_a), scaled_b, bias)
    return result
