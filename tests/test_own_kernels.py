"""Our own CPU kernels (core.inference.own_kernels): the int8 x int8 product against an fp32
reference of its own arithmetic, each row alone, the fallbacks; the one-query attention against
float64 and torch's kernel; the real packaged SmolLM2 on both, alone and in Compare; a
compiled step that runs on them (tiny random Llama). The two builds against each other, and a
build that fails: tests/test_kernel_builds.py.

    .venv/bin/python -m pytest tests/test_own_kernels.py
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from core.errors import LabError
from core.inference import compiled_decode, compiled_store, own_kernels
from core.inference.chat import base_only
from core.inference.compiled_views import base_view
from core.inference.decode_attention import OWN_KERNEL_ATTENTION
from core.inference.fast_decode import Int8Linear, quantized_rows
from core.inference.fast_decode import rows_times_int8 as torch_rows_times_int8
from core.inference.models import _load_fresh, resolve_model
from core.settings import settings

# The Xeon and EPYC hosts the suite runs on have AVX512-VNNI; elsewhere the fallback test runs.
WHY_NOT = own_kernels.unavailable()
needs_own = pytest.mark.skipif(bool(WHY_NOT), reason=f"our own kernels do not serve here: {WHY_NOT}")


def reference(rows: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The op's arithmetic in fp32: each row quantized per block to two int8 bytes a value (a high
    byte in steps of the block's largest / 127, a low one in 1/254 of those), then multiplied.
    The row goes in chunks of 64 values, 16 lanes of 4; a block is one lane's values in 8 chunks."""
    width = rows.shape[1]
    padded = torch.nn.functional.pad(rows.float(), (0, -width % (64 * 8)))
    blocks = padded.view(rows.shape[0], -1, 8, 16, 4)  # (row, group of chunks, chunk, lane, value)
    largest = blocks.abs().amax(dim=(2, 4), keepdim=True)
    steps = blocks * torch.where(largest > 0, 127 / largest, 0)
    high = torch.round(steps)
    low = torch.round((steps - high) * 254)
    assert high.abs().max() <= 127 and low.abs().max() <= 127  # each fits a signed byte
    dequantized = ((high * 254 + low) * largest / (127 * 254)).view(rows.shape[0], -1)[:, :width]
    return (dequantized @ qweight.float().t() * scales.float()).to(torch.bfloat16)


def random_layer(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    return quantized_rows(torch.randn(out_features, in_features), torch.bfloat16)


@needs_own
@pytest.mark.parametrize("rows,out_features,in_features", [(1, 576, 576), (2, 1552, 576), (5, 48, 1536), (9, 16, 32),
                                                          (37, 192, 576)])
def test_the_op_computes_its_arithmetic_and_each_row_alone(rows, out_features, in_features):
    torch.manual_seed(rows)
    x = torch.randn(rows, in_features).to(torch.bfloat16)
    x[0, 0::64] = x[0, 1::64] = x[0, 2::64] = x[0, 3::64] = 0  # lane 0's blocks are zeros: no scale to divide by
    qweight, scales = random_layer(out_features, in_features)
    packed = own_kernels.pack(qweight)
    assert packed.dtype == torch.uint8 and torch.equal(own_kernels.unpack(packed, in_features), qweight)
    got = own_kernels.rows_times_int8(x, packed, scales)
    want = reference(x, qweight, scales)
    assert got.shape == (rows, out_features) and got.dtype == torch.bfloat16
    assert (got.float() - want.float()).norm() / want.float().norm() < 1e-3  # bf16 rounding of the sums
    # Two bytes a value hold the rows to 1/32,258 of each block's largest: the product is the rows'
    # own, bf16 as they are, to its outputs' bf16 rounding (0.16-0.17%; one byte a value: 0.33-0.55%).
    exact = x.float() @ qweight.float().t() * scales.float()
    assert (got.float() - exact).norm() / exact.norm() < 2.5e-3
    # A row's answer does not depend on the batch it is in: Compare's base pane is the solo reply.
    assert torch.equal(torch.cat([own_kernels.rows_times_int8(x[i:i + 1], packed, scales) for i in range(rows)]), got)
    # A strided view (a batch row of a wider tensor) reads as its values.
    wide = torch.cat([x, x], dim=1)[:, in_features:]
    assert torch.equal(own_kernels.rows_times_int8(wide, packed, scales), got)


@needs_own
def test_weights_the_op_cannot_take_stay_rows_for_torchs_kernel():
    for out_features, in_features in [(64, 16), (33, 576)]:  # a LoRA B of rank 16; rows that fill no tile
        qweight, scales = random_layer(out_features, in_features)
        assert own_kernels.pack(qweight) is None
        x = torch.randn(3, in_features).to(torch.bfloat16)
        assert torch.equal(own_kernels.rows_times_int8(x, qweight, scales), torch_rows_times_int8(x, qweight, scales))
    layer = Int8Linear(torch.nn.Linear(576, 33, dtype=torch.bfloat16), own_kernels.rows_times_int8, own_kernels.pack)
    assert layer.pack is None and layer.qweight.shape == (33, 576)
    layer.append_rows(torch.randn(8, 576))  # an adapter's A under rows: rows too
    assert layer.appended[2].shape == (33 + 16, 576)


@needs_own
def test_one_call_adds_an_adapter_to_the_last_rows():
    """w8a8_lora_mm (Compare's tuned pane on our kernels): the rows before the tuned ones are the
    layer's product exactly; the tuned ones add s B times the same product's x A (to rounding)."""
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(576, 192, bias=False, dtype=torch.bfloat16), own_kernels.rows_times_int8, own_kernels.pack)
    layer.append_rows(torch.randn(8, 576) / 24)  # an adapter's A of rank 8, packed as 16 rows under the weight
    lora_b, lora_b_scales = quantized_rows(torch.randn(192, 16) / 4, torch.bfloat16)  # s B, int8 per output
    x = torch.randn(5, 576).to(torch.bfloat16)
    packed, scales = layer.appended[2:]
    adapter = own_kernels.pack_adapter(packed[12:], scales[192:], own_kernels.pack_lora_b(lora_b.t()), lora_b_scales,
                                       torch.zeros(12, dtype=torch.int64))
    got = own_kernels.lora_rows_times_int8(x, packed[:12], scales[:192], adapter, 16, 16, 2)
    with pytest.raises(RuntimeError, match="pack_adapter"):  # the parts' sizes are checked before any is read
        own_kernels.lora_rows_times_int8(x, packed[:12], scales[:192], adapter[:-2], 16, 16, 2)
    both = own_kernels.rows_times_int8(x, packed, scales)
    assert torch.equal(got[:3], both[:3, :192]) and torch.equal(got[:3], layer(x[:3]))
    update = both[3:, 192:].float() @ (lora_b.float() * lora_b_scales.float()[:, None]).t()
    assert update.norm() > 0.5 * both[3:, :192].float().norm()  # an adapter that is plain to see
    assert (got[3:].float() - both[3:, :192].float() - update).norm() / update.norm() < 0.02


def test_the_setting_picks_the_kernel_and_says_why_it_does_not_serve(monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", "torch")  # as the suite chats (conftest.py)
    assert own_kernels.int8_product(torch.bfloat16) == (torch_rows_times_int8, None, "bfloat16 activations")
    monkeypatch.delenv("FINETUNE_LAB_CPU_KERNELS")
    assert settings().cpu_kernels == "auto"  # the default: ours where they serve
    for choice in ("auto", "own"):
        monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", choice)
        product, pack, words = own_kernels.int8_product(torch.float32)
        assert product is torch_rows_times_int8 and pack is None
        assert words == "float32 activations (our own kernels do not serve: the weights are not bf16)"
        # Asked for by name, the log says why not too; by default only the model's status does.
        assert ("keeping torch's: the weights are not bf16" in capsys.readouterr().out) == (choice == "own")
        product, pack, words = own_kernels.int8_product(torch.bfloat16)
        if WHY_NOT:
            assert product is torch_rows_times_int8 and pack is None and words.endswith(f"do not serve: {WHY_NOT})")
        else:
            assert (product, pack, words) == (own_kernels.rows_times_int8, own_kernels.pack, "16-bit activations (own kernels)")
    monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", "vnni")
    with pytest.raises(LabError, match=r"^FINETUNE_LAB_CPU_KERNELS='vnni' is not one of: auto, torch, own\.$"):
        settings()


@needs_own
def test_the_real_model_on_our_kernels_answers_as_the_int8_path_to_rounding(smol, monkeypatch):
    """The packaged SmolLM2 loaded with FINETUNE_LAB_CPU_KERNELS=own: its status names them,
    every int8 layer multiplies with our op, as the fp32 reference of its arithmetic does on the
    real activations, and attention takes our op; its next-token logits are the int8 path's to
    rounding; and a batch of two rows answers each as one row alone."""
    monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", "own")
    own = _load_fresh("smollm2-135m-instruct", resolve_model("smollm2-135m-instruct"))
    assert "int8 weights, 16-bit activations (own kernels)" in own.describe()
    assert own.model.config._attn_implementation == OWN_KERNEL_ATTENTION
    layers = [m for m in own.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 30 * 7 + 1 and all(m.rows_product is own_kernels.rows_times_int8 for m in layers)
    assert all(m.qweight.dtype == torch.uint8 for m in layers)  # packed for our op
    errors = []

    def checked(rows, packed, scales):
        got = own_kernels.rows_times_int8(rows, packed, scales)
        want = reference(rows, own_kernels.unpack(packed, rows.shape[1]), scales)
        errors.append(((got.float() - want.float()).norm() / want.float().norm()).item())
        return got

    for prompt in ("What is the capital of France?", "Explain LoRA in one sentence.", "How do I boil an egg?"):
        ids = smol.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode(), base_only(smol, None):  # other tests may have attached adapters
            want = smol.model(input_ids=ids).logits[0, -1].float()
            for layer in layers:
                layer.rows_product = checked
            got = own.model(input_ids=ids).logits[0, -1].float()
            for layer in layers:
                layer.rows_product = own_kernels.rows_times_int8
        # 30 layers amplify each product's bf16 rounding: 0.99995-0.99999 measured (0.994-0.9999
        # with one byte a value, which still passed 0.99)
        assert torch.cosine_similarity(got, want, dim=0) > 0.999
    assert len(errors) == 3 * len(layers) and max(errors) < 1e-3  # 2.9e-4 measured: bf16 rounding
    with torch.inference_mode():
        options = dict(max_new_tokens=12, do_sample=False, top_p=None, top_k=None, pad_token_id=smol.tokenizer.pad_token_id)
        with torch.profiler.profile() as profile:
            one = own.model.generate(input_ids=ids, **options)
        two = own.model.generate(input_ids=ids.repeat(2, 1), **options)
    assert torch.equal(two[0], one[0]) and torch.equal(two[1], one[0])
    calls = Counter(event.name for event in profile.events())
    assert calls["finetune_lab::one_query_attention"] == 11 * 30  # every decoding step's layers


@needs_own
def test_compare_on_our_own_kernels_keeps_each_pane_its_solo_reply(loud_adapter, monkeypatch):
    """FINETUNE_LAB_CPU_KERNELS=own (core.inference.own_kernels): our int8 product and attention
    compute each batch row alone, so Compare's panes are still exactly the solo replies."""
    from core.inference.adapters import attach_tuned
    from core.inference.compare import stream_compare
    from tests.test_compare import GREEDY, PROMPTS, ask, solo

    monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", "own")
    own = _load_fresh("smollm2-135m-instruct", resolve_model("smollm2-135m-instruct"))
    assert own_kernels.serves(own.model)
    tuned = attach_tuned(own, str(loud_adapter))
    for prompt in PROMPTS[:2]:
        *_, (base, tuned_reply) = stream_compare(own, tuned, ask(prompt), ask(prompt), GREEDY)
        assert base.text == solo(own, ask(prompt)).text
        assert tuned_reply.text == solo(own, ask(prompt), tuned.adapter_name).text != base.text


@needs_own
def test_a_compiled_step_runs_on_our_kernels_and_is_kept_apart(tiny_model_dir, tmp_path, monkeypatch):
    """On our kernels, the compiled step is compiled with both ops in its graph, kept under a
    file name of its own (not torch's kernels' step), and loaded again (tiny random Llama); its
    view multiplies q, k, v and gate, up as one product each, on the model's own weights."""
    monkeypatch.setenv("FINETUNE_LAB_MODELS", str(tmp_path))
    plain = _load_fresh("tiny", str(tiny_model_dir))
    monkeypatch.setenv("FINETUNE_LAB_CPU_KERNELS", "own")
    loaded = _load_fresh("tiny", str(tiny_model_dir))
    assert loaded.activations == "16-bit activations (own kernels)"
    assert compiled_store.step_file(loaded, compiled_decode.SLOTS) != compiled_store.step_file(plain, compiled_decode.SLOTS)
    assert compiled_decode._install_kept_step(loaded, compiled_decode.CompiledStep(model=base_view(loaded.model))) is False
    again = _load_fresh("tiny", str(tiny_model_dir))
    step = compiled_decode.CompiledStep(model=base_view(again.model))
    assert compiled_decode._install_kept_step(again, step) is True  # loaded, not compiled
    ids = again.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode(), torch.profiler.profile() as profile:
        step.model.generate(input_ids=ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, top_p=None,
                             top_k=None, pad_token_id=again.tokenizer.pad_token_id,
                             **compiled_decode.generate_options("cpu"))
    calls = Counter(event.name for event in profile.events())
    # the eager prefill and 15 steps of the kept compiled graph, each multiplying 2 * 7 + 1 layers
    # in 2 * 4 + 1 calls: q, k, v and gate, up as one product each (core.inference.shared_products)
    assert calls["## Call CompiledFxGraph None ##"] == 15
    assert calls["finetune_lab::w8a8_mm"] == 16 * (2 * 4 + 1)
    assert calls["finetune_lab::one_query_attention"] == 15 * 2  # decoding steps only: the prefill has 6 queries
    attention, layer = step.model.model.layers[1].self_attn, again.model.model.layers[1]
    assert attention.q_proj.product.packed.untyped_storage().data_ptr() == layer.self_attn.v_proj.qweight.untyped_storage().data_ptr()
    with torch.inference_mode():  # each weight held once, and the view's logits the model's to the bit
        assert torch.equal(step.model(input_ids=ids).logits, again.model(input_ids=ids).logits)


def attention_inputs(rows: int, slots: int, used: list[int], mask: str):
    """A packed query (3 key/value heads of 3 query heads each, width 64), a static cache of
    `slots` slots with `used[b]` in use in row b, and its mask: bool, additive bf16, or none."""
    torch.manual_seed(slots)
    query = torch.randn(rows, 3, 3, 64).to(torch.bfloat16)
    key, value = (torch.randn(rows, 3, slots, 64).to(torch.bfloat16) for _ in range(2))
    allowed = torch.arange(slots)[None, :] < torch.tensor(used)[:, None]
    masks = {"bool": allowed[:, None, None, :], "none": None,
             "additive": torch.zeros(rows, 1, 1, slots, dtype=torch.bfloat16).masked_fill(~allowed[:, None, None, :], float("-inf"))}
    return query, key, value, masks[mask]


@needs_own
@pytest.mark.parametrize("mask", ["bool", "additive", "none"])
def test_our_attention_reads_the_slots_in_use_as_accurately_as_torchs(mask):
    import torch.nn.functional as F

    rows, slots = 2, 512
    used = [100, 7] if mask != "none" else [slots, slots]
    query, key, value, attention_mask = attention_inputs(rows, slots, used, mask)
    got = torch.ops.finetune_lab.one_query_attention(query, key, value, attention_mask, 0.125)
    exact = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), scale=0.125,
                                           attn_mask=None if attention_mask is None else attention_mask.to(
                                               torch.bool if mask == "bool" else torch.double))
    torchs = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=0.125)
    assert got.shape == query.shape and got.dtype == torch.bfloat16
    assert (got.double() - exact).abs().max() <= 1.5 * (torchs.double() - exact).abs().max()
    # The slots past the last one in use are never read: what they hold changes nothing.
    key[1, :, used[1]:], value[1, :, used[1]:] = float("nan"), float("nan")
    if mask != "none":
        assert torch.equal(torch.ops.finetune_lab.one_query_attention(query, key, value, attention_mask, 0.125), got)

