"""The packed decode attention of core.inference.decode_attention: a chat model on a CPU uses it, prompts take
transformers' own sdpa path unchanged, and a decoding step is as accurate as sdpa's.

    .venv/bin/python -m pytest tests/test_decode_attention.py
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from core.inference.chat import base_only
from core.inference.decode_attention import PACKED_ATTENTION, packed_decode_attention, packs, use_packed_decode_attention


@contextmanager
def attention(model, name: str):
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def test_chat_models_on_a_cpu_pack_their_decode_attention(smol, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert smol.model.config._attn_implementation == PACKED_ATTENTION
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_packed_decode_attention(eager) and eager.config._attn_implementation == "eager"


def test_packed_heads_read_their_own_key_value_heads(smol):
    """On SmolLM2's shapes (9 query heads over 3 key/value heads), against float64 attention that
    repeats each key/value head for its queries: as accurate as transformers' sdpa path. A query
    head paired with the wrong key/value head would be off by the size of the values. The same
    with a static cache's mask, which must hide the slots it masks."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = smol.model.get_decoder().layers[0].self_attn
    heads, groups = smol.model.config.num_attention_heads, module.num_key_value_groups
    torch.manual_seed(0)
    for batch, length in [(1, 37), (2, 150), (2, 251)]:
        query = torch.randn(batch, heads, 1, module.head_dim, dtype=torch.bfloat16) * 2
        key, value = (torch.randn(batch, heads // groups, length, module.head_dim, dtype=torch.bfloat16)
                      for _ in range(2))
        exact = torch.nn.functional.scaled_dot_product_attention(
            query.double(), key.double().repeat_interleave(groups, 1), value.double().repeat_interleave(groups, 1),
            scale=module.scaling).transpose(1, 2)
        packed, _ = packed_decode_attention(module, query, key, value, None, scaling=module.scaling)
        sdpa, _ = sdpa_attention_forward(module, query, key, value, None, scaling=module.scaling)
        assert packed.shape == sdpa.shape == exact.shape
        packed_error, sdpa_error = ((out.double() - exact).abs().max().item() for out in (packed, sdpa))
        assert packed_error <= max(sdpa_error, 1e-12) * 1.01 and packed_error < 0.02
        # A static cache's step: one mask per row hides the empty slots (here the last third).
        mask = torch.arange(length).view(1, 1, 1, length).expand(batch, 1, 1, length) < length * 2 // 3
        masked, _ = packed_decode_attention(module, query, key, value, mask, scaling=module.scaling)
        within = length * 2 // 3
        exact = torch.nn.functional.scaled_dot_product_attention(
            query.double(), *(t[:, :, :within].double().repeat_interleave(groups, 1) for t in (key, value)),
            scale=module.scaling).transpose(1, 2)
        sdpa, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=module.scaling)
        packed_error, sdpa_error = ((out.double() - exact).abs().max().item() for out in (masked, sdpa))
        assert packs(module, query, mask) and packed_error <= max(sdpa_error, 1e-12) * 1.01 and packed_error < 0.02


def test_prompt_is_sdpa_exactly_and_a_decode_step_agrees(smol):
    """The prompt (many query tokens) goes through transformers' sdpa untouched; the next step,
    one unmasked token per row (Compare's two equal rows), picks the same tokens with logits
    within bf16 rounding of sdpa's."""
    from transformers import AttentionInterface, DynamicCache

    model, packed_steps = smol.model, []

    def watched(module, query, key, value, attention_mask, **kwargs):
        packed_steps.append(packs(module, query, attention_mask, **kwargs))
        return packed_decode_attention(module, query, key, value, attention_mask, **kwargs)

    ids = smol.tokenizer(["The capital of France is"] * 2, return_tensors="pt")["input_ids"]
    steps = {}
    AttentionInterface.register(PACKED_ATTENTION, watched)
    try:
        with torch.inference_mode(), base_only(smol, None):
            for name in ("sdpa", PACKED_ATTENTION):
                with attention(model, name):
                    cache = DynamicCache(config=model.config)
                    prompt = model(input_ids=ids, past_key_values=cache).logits[:, -1]
                    mask = torch.ones(2, ids.shape[1] + 1, dtype=torch.long)
                    step = model(input_ids=prompt.argmax(-1, keepdim=True), attention_mask=mask,
                                 past_key_values=cache).logits[:, -1]
                    steps[name] = (prompt, step)
    finally:
        AttentionInterface.register(PACKED_ATTENTION, packed_decode_attention)
    assert any(packed_steps), "the decode step must take the packed path"
    (sdpa_prompt, sdpa_step), (packed_prompt, packed_step) = steps["sdpa"], steps[PACKED_ATTENTION]
    assert torch.equal(sdpa_prompt, packed_prompt)
    assert torch.equal(sdpa_step.argmax(-1), packed_step.argmax(-1))
    assert (sdpa_step - packed_step).abs().max() <= 0.02 * sdpa_step.abs().max()
