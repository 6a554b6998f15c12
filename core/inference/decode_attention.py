"""Grouped-query attention for one decoding step on a CPU, packed per key/value head.

    from core.inference.decode_attention import use_packed_decode_attention
    use_packed_decode_attention(model)   # core.inference.models does it for every chat model on a CPU
    use_packed_decode_attention(model, own_kernel=True)   # with our op: core.inference.own_kernels

A decoding step's query heads that share a key/value head are packed into one short query block,
so torch's CPU attention kernel neither broadcasts nor copies the key/value heads (11% faster
per token on the int8 weights, SmolLM2-135M). It registers as its own attention choice through
transformers' AttentionInterface; every other call is transformers' sdpa as is. A model on our
own kernels (FINETUNE_LAB_CPU_KERNELS=own) gets a second choice, whose packed block goes to our
op `finetune_lab::one_query_attention`: over a static cache it reads only the slots in use,
where torch's kernel reads all 512.

Inside `rows_starting_at(starts)` (core.inference.running_batch), a decoding step's row b attends
to its own keys only, from slot starts[b] on, with no mask: rows that joined a batch at different
times sit left-padded in one cache, and each still computes exactly what it computes alone.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "sdpa_packed_decode"
OWN_KERNEL_ATTENTION = "packed_decode_own_kernel"
_ROWS = threading.local()  # the row starts of the step running on this thread, if any


@contextmanager
def rows_starting_at(starts: list[int]):
    """The context in which a decoding step's batch row b reads its keys from slot starts[b]."""
    _ROWS.starts = starts
    try:
        yield
    finally:
        _ROWS.starts = None


def packed_decode_attention(module, query, key, value, attention_mask, own_kernel: bool = False, **kwargs):
    """`one_query_attention` per batch row over its own keys inside `rows_starting_at`, else as is.
    Per row, the row's call is the one its solo reply makes (no mask, its keys only)."""
    starts = getattr(_ROWS, "starts", None)
    if starts is None or query.shape[2] != 1:
        return one_query_attention(module, query, key, value, attention_mask, own_kernel, **kwargs)
    rows = [one_query_attention(module, query[b:b + 1], key[b:b + 1, :, start:], value[b:b + 1, :, start:], None,
                                own_kernel, **kwargs)[0] for b, start in enumerate(starts)]
    return torch.cat(rows), None


def one_query_attention(module, query, key, value, attention_mask, own_kernel: bool = False, **kwargs):
    """transformers' sdpa attention, except for one query token (without a mask, or with one per
    row, as a static cache's step has) on a model whose query heads share key/value heads (GQA):
    there each key/value head's queries are packed into one short query block. Otherwise
    transformers asks torch's CPU kernel to broadcast the key/value heads, or copies them per
    query head when there is a mask. Measured per call (SmolLM2's 9 heads over 3): 4-7x slower
    with 100-250 cached tokens and no mask; 285 against 76 us over a 512-slot static cache. The
    results are as accurate against float64 (the two differ in the last bit in about 1 case in 10)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not packs(module, query, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, _, width = query.shape
    groups = module.num_key_value_groups
    packed = query.reshape(batch, heads // groups, groups, width)  # query head h reads key/value head h // groups
    if own_kernel and width % 16 == 0 and query.dtype == key.dtype == torch.bfloat16:
        scale = kwargs.get("scaling") or width ** -0.5
        out = torch.ops.finetune_lab.one_query_attention(packed, key, value, attention_mask, scale)
    else:
        out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, scale=kwargs.get("scaling"))
    return out.reshape(batch, heads, 1, width).transpose(1, 2).contiguous(), None


def packs(module, query, attention_mask, **kwargs) -> bool:
    """Whether `packed_decode_attention` packs this call (else it is transformers' sdpa as is)."""
    return (query.shape[2] == 1 and _one_mask_per_row(attention_mask) and getattr(module, "num_key_value_groups", 1) > 1
            and not module.training and kwargs.get("position_bias") is None and kwargs.get("softcap") is None)


def _one_mask_per_row(attention_mask) -> bool:
    """No mask, or one shared by all heads (batch, 1, 1, keys): what a static cache's decoding step
    passes to hide its empty slots. It then broadcasts over the packed query block unchanged."""
    return attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1))


def use_packed_decode_attention(model, own_kernel: bool = False) -> bool:
    """Switch a chat model on a CPU from "sdpa" to `packed_decode_attention` (with `own_kernel`,
    its packed block goes to our op, which core.inference.own_kernels must have loaded); return
    whether it did. Other attention choices (eager, flash kernels on a GPU) are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return False
    name = OWN_KERNEL_ATTENTION if own_kernel else PACKED_ATTENTION
    AttentionInterface.register(name, partial(packed_decode_attention, own_kernel=own_kernel))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks
    model.set_attn_implementation(name)
    return model.config._attn_implementation == name
