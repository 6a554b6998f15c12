"""Layers that read the same input (q, k and v; gate and up) as one product in the compiled steps.

    used by core.inference.compiled_views; tests/test_compiled_compare.py checks it

A decoding step of SmolLM2 on our own kernels calls the int8 product 211 times, and each call
has a cost of its own (quantizing its input, waking the other core). q, k and v read the same
input, as do gate and up: with their packed tiles one under another (`Product`) a step makes
121 calls. The model's own code still calls each layer: the first of a group (`Part`) computes
the whole group's product and keeps the other layers' outputs on the group (`Group`) until they
are called, which the model's code does next (Llama's attention calls q, k, v; its MLP gate,
then up; a layer called out of turn raises). Each output is its layer's alone to the bit: the
op's arithmetic for one output does not depend on the tiles around it.

Only in compiled_views' views, on our kernels (the weights packed by tile), and only groups of
one parent's children: the model itself keeps its layers, whose weights become views of the
group's, so each weight is held once. In Compare's view a group with an adapter, or a layer
alone (a group of one: o and down), gets a `LoraProduct`: the product and the adapter on the
tuned rows in one op call, each tile adding its own layer's s B (own_kernels.lora_rows_times_int8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.inference import own_kernels
from core.inference.fast_decode import Int8Linear, quantized_rows
from core.inference.lora_rows import int8_scaled_b

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(eq=False)
class Group:
    """The layers of one parent that read the same input, and the outputs of their last product,
    each held until its layer takes it."""

    names: tuple
    layers: tuple  # the Int8Linear layers, shared with the loaded model (compiled_views: its RowLoraLinears)
    outputs: tuple | None = None


class Part(torch.nn.Module):
    """One layer of a group, in the layer's place: the first computes the group's product."""

    def __init__(self, group: Group, index: int, product: torch.nn.Module | None = None):
        super().__init__()
        self.group, self.index, self.product = group, index, product
        self.sizes = [layer.out_features for layer in group.layers]
        self.in_features, self.out_features = group.layers[index].in_features, group.layers[index].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.group
        if len(self.sizes) == 1:  # a layer alone: nothing to hold. The compiled step replays each
            return self.product(x)  # write to group.outputs after its graph: 60 calls a Compare step
        if self.product is not None:
            group.outputs = self.product(x).split(self.sizes, -1)
        if group.outputs is None:
            raise RuntimeError(f"{group.names[self.index]} was called before {group.names[0]}, which computes it")
        own = group.outputs[self.index]
        if self.index == len(group.layers) - 1:
            group.outputs = None  # nothing held between steps, nor carried out of a compiled one
        return own


class Product(torch.nn.Module):
    """A group's layers as one int8 weight on our kernels, their packed tiles one under another."""

    def __init__(self, layers: tuple):
        super().__init__()
        self.sizes = [layer.out_features for layer in layers]
        self.register_buffer("packed", _joined([layer.qweight for layer in layers]))
        self.register_buffer("scales", _joined([layer.scales for layer in layers]))
        biases = [layer.bias for layer in layers]
        self.bias = None if all(b is None for b in biases) else _joined(
            [layer.scales.new_zeros(layer.out_features) if b is None else b.detach() for layer, b in zip(layers, biases)])
        tile, row = 0, 0
        for layer in layers:  # the layers read their weights from here too: each weight held once
            tiles = len(layer.qweight)
            layer.qweight, layer.scales = self.packed[tile:tile + tiles], self.scales[row:row + layer.out_features]
            tile, row = tile + tiles, row + layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = own_kernels.rows_times_int8(x.reshape(-1, x.shape[-1]), self.packed, self.scales)
        return (out if self.bias is None else out + self.bias).view(*x.shape[:-1], out.shape[-1])


def share_products(view: torch.nn.Module) -> torch.nn.Module:
    """`view` (a tree of its own above the leaves: compiled_views.tree_copy) with each group of
    Int8Linear layers on our kernels as Parts of one Product."""
    for parent in list(view.modules()):
        for names in GROUPS:
            layers = tuple(parent._modules.get(name) for name in names)
            if all(type(layer) is Int8Linear and layer.pack is not None and layer.appended is None
                   and layer.in_features == layers[0].in_features for layer in layers):
                group = Group(names, layers)
                for index, name in enumerate(names):
                    parent._modules[name] = Part(group, index, Product(layers) if index == 0 else None)
    return view


def groups(parent: torch.nn.Module) -> list[Group]:
    """The groups among `parent`'s children that multiply without an adapter (a plain Product)."""
    return [part.group for part in parent.children() if isinstance(part, Part) and isinstance(part.product, Product)]


def one_call_serves(lora_layers, name: str) -> bool:
    """Whether our op can add adapter `name` over these peft LoRA layers (None: a layer without
    it) in their product's own call: not where the adapter has a LoRA bias, which the op does not add."""
    return all(layer is None or layer.lora_B[name].bias is None for layer in lora_layers)


def with_adapter(group: Group, product: Product, lora_layers: tuple, name: str) -> list[Part]:
    """`group`'s Parts with adapter `name` on the tuned rows over its `product` (lora_layers[i]:
    peft's LoRA layer over the group's layer i, or None where it has none)."""
    fresh = Group(group.names, group.layers)
    return [Part(fresh, i, LoraProduct(product, lora_layers, name) if i == 0 else None) for i in range(len(group.layers))]


def alone_with_adapter(child: str, layer: Int8Linear, lora_layer, name: str) -> Part:
    """One packed int8 layer (the parent's `child`) and adapter `name` on the tuned rows, in one
    op call: a group of one, whose product is the layer's own weight."""
    return with_adapter(Group((child,), (layer,)), Product((layer,)), (lora_layer,), name)[0]


class LoraProduct(torch.nn.Module):
    """A group's product and one LoRA adapter on the last rows (Compare's tuned pane) in one op
    call. Each layer's A is packed apart, all at one rank (the largest, padded to 16: zero rows
    add nothing), and s B by tile, each tile starting at its own layer's x A; all of it one byte
    tensor (own_kernels.pack_adapter), which the compiled step loads and passes as one argument.
    Five tensors a product were 600 more a step than a single pane's: with one, Compare's step
    was 0.2-0.7 ms faster (5.5-6.4 ms against 5.9-6.9, five processes of each taking turns, the
    EPYC Zen 5), and its time over a single pane's 1.23 against 1.32 (medians)."""

    def __init__(self, product: Product, lora_layers: tuple, name: str):
        super().__init__()
        self.product, self.adapter = product, ""
        self.use(lora_layers, name)

    def use(self, lora_layers: tuple, name: str) -> None:
        """Take adapter `name`'s A and s B from peft's LoRA layers (None: a layer without it)."""
        dtype, tile = self.product.scales.dtype, own_kernels.TILE
        rank = max(-(-layer.r[name] // tile) * tile for layer in lora_layers if layer is not None)
        a, a_scales, b, b_scales, starts = [], [], [], [], []
        for layer, out_features in zip(lora_layers, self.product.sizes):
            tiles = out_features // tile
            if layer is None:  # no x A to read: the tiles stay the base's
                b.append(torch.zeros(tiles, rank, tile, dtype=torch.int8))
                b_scales.append(torch.zeros(out_features, dtype=dtype))
                starts.append(torch.full((tiles,), -1))
                continue
            starts.append(torch.full((tiles,), len(a) * rank))
            # As Int8Linear.append_rows quantizes A (row by row) and int8_scaled_b s B: the same bytes.
            qa, sa = quantized_rows(_zero_padded(layer.lora_A[name].weight, rank, 0), dtype)
            a.append(own_kernels.pack(qa))
            a_scales.append(sa)
            qb, sb = int8_scaled_b(layer, name)
            b.append(own_kernels.pack_lora_b(_zero_padded(qb, rank, 1).t().contiguous()))
            b_scales.append(sb)
        self.lora = own_kernels.pack_adapter(torch.cat(a), torch.cat(a_scales), torch.cat(b), torch.cat(b_scales),
                                             torch.cat(starts))
        self.a_rows, self.rank, self.adapter = len(a) * rank, rank, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, product = x.reshape(-1, x.shape[-1]), self.product
        out = own_kernels.lora_rows_times_int8(rows, product.packed, product.scales, self.lora, self.a_rows, self.rank,
                                               rows.shape[0] // x.shape[0])
        return (out if product.bias is None else out + product.bias).view(*x.shape[:-1], out.shape[-1])


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors one under another; a single one as it is (a group of one keeps its layer's weight)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _zero_padded(weight: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """`weight` with zeros added along `dim` up to `size`."""
    missing = size - weight.shape[dim]
    return torch.cat([weight, weight.new_zeros([missing if i == dim else n for i, n in enumerate(weight.shape)])], dim)
