"""LoRA adapters on their own rows of a chat batch (each row its adapter or none), in fewer kernels than peft's.

    used by core.inference.chat, .compare, .running_batch, .compiled_views and .shared_products; tests/test_lora_rows.py checks it

`adapter_rows` is the context chat decodes in when a batch mixes adapters (Compare's base and
tuned panes, several visitors) or a tuned pane runs alone; on the int8 weights of
core.inference.fast_decode an adapter's A rides under the base weight (`Int8Linear.append_rows`).
`rows_forwards` and `installed` give the same forwards to a caller that installs them per step
(core.inference.running_batch), and `int8_adapter`, `int8_scaled_b` and `scaled_lora` the same
A and s B to the compiled Compare step's view (core.inference.compiled_views, .shared_products).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from itertools import groupby

import torch
import torch.nn.functional as F

from core.inference.fast_decode import BASE, Int8Linear, padded, quantized_rows, rows_times_int8


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
    bias = None if lora_b.bias is None else lora_b.bias * scale
    return (base, layer.lora_A[name].weight, (rows.start, rows.stop - rows.start), *int8_scaled_b(layer, name), bias)


def int8_scaled_b(layer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(s B in int8, its rank padded to 16, one scale per output) of adapter `name` on an int8
    base layer, quantized once and kept on peft's B module while its weight and scale stay."""
    scale, lora_b = layer.scaling[name], layer.lora_B[name]
    kept = getattr(lora_b, "int8_scaled", None)
    if kept is None or kept[:2] != (lora_b.weight._version, scale):
        kept = lora_b.int8_scaled = (lora_b.weight._version, scale,
                                     *quantized_rows(padded(lora_b.weight * scale, 1), layer.base_layer.scales.dtype))
    return kept[2:]


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
