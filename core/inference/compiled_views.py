"""The module trees the compiled decode steps run on: views of a loaded model that share its weights.

    used by core.inference.compiled_decode; tests/test_compiled_compare.py checks them

A compiled step reads its weights through attribute paths from the model it is given, so it must
get a tree shaped as it was compiled. peft changes a loaded model's tree when an adapter
attaches (each targeted Linear becomes a LoRA layer), and Compare's adapter changes per
request. So the steps never run on the loaded model itself, but on views: copies of its
modules down to the leaves, which are shared, so no weight is copied.
- `base_view`: the plain base model, made before any adapter attaches; peft's later changes
  land in the loaded model's own modules, not the view's, so base replies keep their step. On
  our own kernels, the layers that read one input (q, k, v; gate, up) are one product each
  (core.inference.shared_products).
- `compare_view`: the base view with an adapter on the last batch row only (Compare's tuned
  pane; row 0 is the base) at each of its LoRA layers: on our own kernels, the layer (or its
  group of shared_products) and the adapter in one op call; elsewhere a `RowLoraLinear`. Its A
  and s B are quantized as core.inference.lora_rows' path quantizes them, and `use` swaps in
  another adapter of the same `layout` without compiling again. On float weights (a GPU's),
  where each product in the step is a kernel launch, the RowLoraLinears that read one input
  compute x A in one product (a shared_products `Group`) and s B as a sum fused with the row's addition:
  Compare's step adds 4 products a layer to the single pane's 7, where it added 14.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from core.inference.fast_decode import Int8Linear, rows_times_int8
from core.inference.lora_rows import int8_adapter, plain_lora_layers, scaled_lora
from core.inference.shared_products import (GROUPS, Group, LoraProduct, Part, alone_with_adapter, groups,
                                            one_call_serves, share_products, with_adapter)

# Per-call state transformers keeps on a model; a view starts without the original's.
_PER_MODEL = ("_cache", "_compiled_call", "_last_compile_config")


class RowLoraLinear(torch.nn.Module):
    """A base layer plus one LoRA adapter on the batch's last row, with the arithmetic of
    lora_rows' path, where our op cannot add it in the layer's own call (shared_products:
    torch's int8 kernel, float weights, a LoRA bias). On an Int8Linear, A (int8) rides under
    the base weight, so one product yields the layer and x A, then s B (int8) is one more small
    product (in the compiled graph, a sum that inductor fuses with what follows). On a float
    Linear (a GPU, or a CPU without native bf16), A and s B as peft keeps them, after the
    layer's own product (in the compiled graph, x A shared with the layers beside it that
    read the same input, and s B a fused sum, as on int8)."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base  # shared with the loaded model
        self.int8, self.adapter = isinstance(base, Int8Linear), ""
        self.group, self.index, self.group_lora_a = None, 0, None  # set by _share_low_rank

    def use(self, lora_layer, name: str) -> None:
        """Take adapter `name`'s A and s B (and its bias) from peft's LoRA layer."""
        if self.int8:
            _, _, _, qb, sb, bias = int8_adapter(lora_layer, name, slice(0, 1))
            # The packed weight is held here as well: if the loaded model's own path packs another
            # adapter's A under the shared base layer, this view keeps computing with its own.
            self.packed, self.packed_scales = self.base.appended[2:]
            self.qb, self.sb, self.qb_columns = qb, sb, qb.t().contiguous()
        else:
            _, self.lora_a, self.scaled_b, bias = scaled_lora(lora_layer, name, slice(0, 1))
            self.scaled_b_columns = self.scaled_b.t().contiguous()
        self.lora_bias, self.adapter = bias, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.int8:
            return self._float_forward(x)
        both = self.base.rows_product(x.reshape(-1, x.shape[-1]), self.packed, self.packed_scales)
        own, per_row = self.base.out_features, both.shape[0] // x.shape[0]
        result = both[:, :own]
        if self.base.bias is not None:
            result = result + self.base.bias
        if torch.compiler.is_compiling():
            return (result + torch.where(_tuned_rows(both, per_row), self._update_in_graph(both[:, own:]), 0)
                    ).view(*x.shape[:-1], own)
        update = rows_times_int8(both[-per_row:, own:], self.qb, self.sb)
        if self.lora_bias is not None:
            update = update + self.lora_bias
        return torch.cat([result[:-per_row], result[-per_row:] + update]).view(*x.shape[:-1], own)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if torch.compiler.is_compiling():  # every row's update, kept for the last: no in-place write
            # On a GPU each product is a kernel launch, and a decoding step's kernels are each a
            # few microseconds: x A is one product for the layers that read one input, and s B a
            # sum that inductor fuses with the row's addition, not a product of its own.
            rows, flat = x.reshape(-1, x.shape[-1]), result.reshape(-1, result.shape[-1])
            update = (self._low_rank(rows.to(self.lora_a.dtype))[:, :, None] * self.scaled_b_columns).sum(1)
            update = update if self.lora_bias is None else update + self.lora_bias
            tuned = _tuned_rows(rows, rows.shape[0] // x.shape[0])
            return torch.where(tuned, flat + update, flat).to(result.dtype).view(result.shape)
        result[-1:] += F.linear(F.linear(x[-1:].to(self.lora_a.dtype), self.lora_a), self.scaled_b, self.lora_bias)
        return result

    def _low_rank(self, rows: torch.Tensor) -> torch.Tensor:
        """x A for `rows`: this layer's part of its group's one product (as a shared_products
        Part takes its output), or its own product where it has no group."""
        group = self.group
        if group is None:
            return F.linear(rows, self.lora_a)
        if self.group_lora_a is not None:  # the group's first layer: their A's one under another
            group.outputs = F.linear(rows, self.group_lora_a).split([m.lora_a.shape[0] for m in group.layers], -1)
        if group.outputs is None:
            raise RuntimeError(f"{group.names[self.index]} was called before {group.names[0]}, which computes its x A")
        own = group.outputs[self.index]
        if self.index == len(group.layers) - 1:
            group.outputs = None  # nothing held between steps, nor carried out of a compiled one
        return own

    def _update_in_graph(self, low_rank: torch.Tensor) -> torch.Tensor:
        # (x A) (s B) for every row as a sum down the columns of s B transposed, which inductor
        # vectorizes along the outputs and fuses with the row's addition. Measured on SmolLM2
        # with r=8 on every Linear, 2 cores: the int8 kernel called here, or a matmul, made
        # Compare 1.47-1.51x a single pane, this 1.32; a sum along the rows (a horizontal
        # reduction per output) 1.41; unrolling the sum over the rank was as fast as this but
        # took 114 s to compile, not 36.
        update = (low_rank.float()[:, :, None] * self.qb_columns.float()).sum(1)
        update = (update * self.sb.float()).to(self.sb.dtype)
        return update if self.lora_bias is None else update + self.lora_bias


def _tuned_rows(flat: torch.Tensor, per_row: int) -> torch.Tensor:
    """Which rows of a flattened batch (`per_row` tokens each) belong to its last batch row: the tuned pane."""
    return torch.arange(flat.shape[0], device=flat.device)[:, None] >= flat.shape[0] - per_row


def tree_copy(module: torch.nn.Module, replace=None, path: str = "") -> torch.nn.Module:
    """`module` with every module that has children copied (leaves shared), and the module at a
    dotted path swapped for replace(path, module) wherever that returns one."""
    copied = copy.copy(module)
    for attribute in _PER_MODEL:
        copied.__dict__.pop(attribute, None)
    copied._modules = {}
    for name, child in module._modules.items():
        where = f"{path}.{name}" if path else name
        swapped = replace(where, child) if replace else None
        copied._modules[name] = swapped if swapped is not None else (
            tree_copy(child, replace, where) if child is not None and child._modules else child)
    return copied


def base_view(model: torch.nn.Module) -> torch.nn.Module:
    """The plain base model's tree, apart from the loaded model's (call before adapters attach),
    with the layers that read one input as one product where our kernels serve (shared_products)."""
    return share_products(tree_copy(model))


def lora_layers(peft_model, name: str) -> dict:
    """{dotted path in the base model: peft LoRA layer} for adapter `name`, or {} unless it is
    plain LoRA on Linear layers only (lora_rows.plain_lora_layers): what a compare view can run."""
    from peft.tuners.lora import LoraLayer  # peft loads with the first adapter, not at the app's start

    if plain_lora_layers(peft_model, [name]) is None:
        return {}
    inner = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return {path: layer for path, layer in inner.named_modules() if isinstance(layer, LoraLayer) and name in layer.lora_A}


def layout(layers: dict, name: str) -> str:
    """What a compare step is compiled for: which layers carry the adapter, their ranks and biases."""
    return ";".join(f"{path}:{layer.r[name]}:{int(layer.lora_B[name].bias is not None)}"
                    for path, layer in sorted(layers.items()))


def compare_view(base: torch.nn.Module, layers: dict, name: str) -> torch.nn.Module:
    """The base view with adapter `name` on the last batch row at each of `layers`."""
    def swap(path, module):
        if path not in layers or isinstance(module, Part):
            return None
        if isinstance(module, Int8Linear) and module.pack is not None and one_call_serves([layers[path]], name):
            return alone_with_adapter(path.rpartition(".")[2], module, layers[path], name)
        row_lora = RowLoraLinear(module)
        row_lora.use(layers[path], name)
        return row_lora

    view = tree_copy(base, swap)  # every module above the leaves is the view's own: changed below
    for path, parent in list(view.named_modules()):
        for group in groups(parent):
            paths = [f"{path}.{child}" for child in group.names]
            if any(where in layers for where in paths):
                _add_adapter(parent, group, [layers.get(where) for where in paths], name)
    _share_low_rank(view)
    return view


def _share_low_rank(view: torch.nn.Module) -> None:
    """Make the float RowLoraLinears of each parent that read one input one `Group`, their A's
    one under another on the first; again after `use` has put in another adapter."""
    for parent in view.modules():
        for names in GROUPS:
            linked = [(name, parent._modules.get(name)) for name in names]
            linked = [(name, m) for name, m in linked if isinstance(m, RowLoraLinear) and not m.int8]
            if len(linked) < 2 or len({m.lora_a.dtype for _, m in linked}) > 1:
                continue
            group = Group(*map(tuple, zip(*linked)))
            for index, layer in enumerate(group.layers):
                layer.group, layer.index, layer.group_lora_a = group, index, None
            group.layers[0].group_lora_a = torch.cat([layer.lora_a for layer in group.layers])


def _add_adapter(parent: torch.nn.Module, group, lora_layers: list, name: str) -> None:
    """The group's Parts in `parent` with the adapter on the tuned row, in one op call; or, where
    an adapter has a LoRA bias (the op adds no bias), its layers apart as RowLoraLinears."""
    if one_call_serves(lora_layers, name):
        parts = with_adapter(group, parent._modules[group.names[0]].product, tuple(lora_layers), name)
    else:
        parts = [layer if lora is None else RowLoraLinear(layer) for layer, lora in zip(group.layers, lora_layers)]
        for part, lora in zip(parts, lora_layers):
            if lora is not None:
                part.use(lora, name)
    parent._modules.update(zip(group.names, parts))


def use(view: torch.nn.Module, layers: dict, name: str) -> None:
    """Put adapter `name` (of the same layout) into a compare view, unless it is there already."""
    swapped = False
    for path, module in view.named_modules():
        if isinstance(module, RowLoraLinear) and module.adapter != name:
            module.use(layers[path], name)
            swapped = True
        elif isinstance(module, Part) and isinstance(module.product, LoraProduct) and module.product.adapter != name:
            parent = path.rpartition(".")[0]
            module.product.use(tuple(layers.get(f"{parent}.{child}") for child in module.group.names), name)
    if swapped:
        _share_low_rank(view)  # the groups' A's, of the adapter now in
