"""The int8 decode weights (core.inference.fast_decode) and LoRA adapters on their batch rows
(core.inference.lora_rows): the packaged model keeps its answers, the rows path agrees with
peft's mixed batches, and the int8 kernel is only given what it can take."""
from __future__ import annotations

import pytest
import torch

from core.errors import LabError
from core.inference.adapters import attach_tuned
from core.inference.fast_decode import Int8Linear, decode_path, quantize_linears


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    quantized = Int8Linear(linear)
    error = (quantized(x).float() - linear(x).float()).norm() / linear(x).float().norm()
    assert quantized(x).shape == (3, 5, 48) and error < 0.02
    assert quantized.qweight.dtype == torch.int8 and "weight" not in quantized._parameters


def test_decode_path_choice(monkeypatch):
    monkeypatch.delenv("FINETUNE_LAB_DECODE", raising=False)
    assert decode_path("cpu", torch.bfloat16) == "int8"
    assert decode_path("cpu", torch.float32) == decode_path("cuda", torch.bfloat16) == "eager"
    monkeypatch.setenv("FINETUNE_LAB_DECODE", "eager")
    assert decode_path("cpu", torch.bfloat16) == "eager"
    monkeypatch.setenv("FINETUNE_LAB_DECODE", "int4")
    with pytest.raises(LabError, match="FINETUNE_LAB_DECODE"):
        decode_path("cpu", torch.bfloat16)


def test_int8_real_model_keeps_its_answers_and_takes_an_adapter(loud_adapter, data_home):
    """On the packaged model, whatever path the app picked on this CPU: int8 weights answer
    like the bf16 ones on the first 16 greedy tokens, and a LoRA adapter attaches on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.inference.models import resolve_model

    source = resolve_model("smollm2-135m-instruct")
    ids = AutoTokenizer.from_pretrained(source)("The capital of France is", return_tensors="pt")["input_ids"]
    eager = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    fast = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    assert quantize_linears(fast) == 30 * 7 + 1  # every projection and the LM head
    with torch.inference_mode():
        want = eager.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        got = fast.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        assert got.tolist() == want.tolist()
        tuned = PeftModel.from_pretrained(fast, str(loud_adapter))
        assert isinstance(tuned.base_model.model.lm_head, Int8Linear)
        with_adapter = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                      do_sample=False)
    assert with_adapter.tolist() != want.tolist()


def test_adapter_rows_agree_with_peft_mixed_batches(smol, tiny_run):
    """The lean rows path adds peft's adapter output with one rounding less: for a trained
    adapter, the base row is exactly peft's, the adapter row agrees to bf16 rounding and picks
    the same tokens where they are not tied within it; peft's own forward is back afterwards."""
    from core.inference.lora_rows import adapter_rows

    tuned = attach_tuned(smol, tiny_run.name)
    chat = [{"role": "user", "content": "Who are you, and what can you do for me today?"}]
    ids = torch.tensor([smol.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)] * 2)
    names = ["__base__", tuned.adapter_name]
    with smol.lock, torch.inference_mode():
        by_peft = smol.model(input_ids=ids, adapter_names=names).logits
        with adapter_rows(smol.model, names):
            lean = smol.model(input_ids=ids).logits
        again = smol.model(input_ids=ids, adapter_names=names).logits
    assert torch.equal(lean[0], by_peft[0]) and torch.equal(again, by_peft)
    error = (lean[1].float() - by_peft[1].float()).abs().max()
    assert error / by_peft[1].float().abs().max() < 0.03, error
    # The same tokens wherever peft's choice is clearer than the rounding gap (a near tie may
    # flip either way, as it may between any two batch shapes).
    top = by_peft[1].float().topk(2, dim=-1).values
    decided = top[:, 0] - top[:, 1] > 2 * error
    same = lean[1].argmax(-1) == by_peft[1].argmax(-1)
    assert decided.sum() >= 10 and bool(same[decided].all()), (decided.sum(), error, top, same)
    assert not torch.equal(lean[0], lean[1]), "row 1 must run the adapter, row 0 not"
    assert not any("forward" in vars(m) for m in smol.model.modules()), "the override must be removed"


def test_adapter_rows_leave_dora_to_peft(tiny_model_dir):
    """DoRA, and adapters that hold more than LoRA on Linears, take peft's own mixed batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.inference.lora_rows import adapter_rows

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    assert adapter_rows(model, ["__base__", "default"]) is None
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear"))
    assert adapter_rows(plain, ["__base__", "default"]) is not None and adapter_rows(plain, ["__base__"]) is None
    for elsewhere in (LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]),  # LoRA on the embeddings too
                      LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])):  # a fully trained head
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), elsewhere)
        assert adapter_rows(model, ["__base__", "default"]) is None, elsewhere


def test_int8_linear_computes_appended_rows_in_the_same_product():
    """A LoRA A kept under the int8 weight: the layer's own output stays bit for bit what it was,
    the extra columns are x A (padded to the kernel's width), and only new or changed rows rebuild."""
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16))
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    alone = layer(x)
    lora_a = torch.randn(5, 64) * 0.1
    layer.append_rows(lora_a)
    both = layer.product_appended(x).view(2, 3, 48 + 16)
    own, extra = both[..., :48], both[..., 48:]
    assert torch.equal(own, alone) and torch.equal(layer(x), alone)
    want = x.float() @ lora_a.T
    assert (extra[..., :5].float() - want).norm() / want.norm() < 0.02 and not extra[..., 5:].any()
    packed = layer.appended[2]
    layer.append_rows(lora_a)
    assert layer.appended[2] is packed, "the same rows must not be packed again"
    with torch.no_grad():
        lora_a.mul_(2)  # an adapter whose weights changed in place
    layer.append_rows(lora_a)
    assert layer.appended[2] is not packed and torch.equal(layer(x), alone)


def test_int8_kernel_is_only_given_inputs_it_can_take():
    """torch's kernel crashes the process on bf16 inputs whose width or start is not a multiple of
    16 values: such Linear layers stay float, and a misaligned view is copied first."""
    from core.inference.fast_decode import int8_product

    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 24)).to(torch.bfloat16)
    assert quantize_linears(model) == 1
    assert type(model[0]) is torch.nn.Linear and isinstance(model[1], Int8Linear)
    layer = model[1]
    storage = torch.randn(4 * 40 + 8, dtype=torch.bfloat16)
    misaligned = storage[8:].view(4, 40)[:, :32]  # starts 8 values in, rows 40 apart
    assert torch.equal(int8_product(misaligned, layer.qweight, layer.scales),
                       int8_product(misaligned.clone(), layer.qweight, layer.scales))


def test_adapter_rows_switch_adapters_on_int8_weights(tiny_model_dir):
    """Two adapters on one int8 model: each reply packs its adapter's A under the weights, and going
    back to the first adapter gives its logits again, close to peft's own."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.inference.lora_rows import adapter_rows

    torch.manual_seed(0)  # the tiny model's weights too: random ones of another draw err up to 4%
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir)).to(torch.bfloat16).eval()
    assert quantize_linears(base) == 2 * 7 + 1
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "one")
    model.add_adapter("two", LoraConfig(r=20, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359], [1, 9690, 198, 2683, 359]])

    def logits(name):
        with torch.inference_mode(), adapter_rows(model, ["__base__", name]):
            return model(input_ids=ids).logits

    first, other, again = logits("one"), logits("two"), logits("one")
    assert torch.equal(first, again) and not torch.equal(first[1], other[1])
    assert torch.equal(first[0], other[0]), "the base row must not see any adapter"
    with torch.inference_mode():
        by_peft = model(input_ids=ids, adapter_names=["__base__", "one"]).logits
    # The int8 A and s B move the adapter's effect on the logits by 2.2% here (a wrong or missing
    # adapter would move it by about 100%).
    effect = (by_peft[1] - by_peft[0]).float().norm()
    assert (first[1] - by_peft[1]).float().norm() / effect < 0.05


def test_int8_rows_path_quantizes_each_adapters_b_once(tiny_model_dir):
    """A tuned reply's preparation reuses each LoRA layer's int8 s B, and quantizes it again only
    when B changed in place (its version) or its scale did; the logits follow the new B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.inference.lora_rows import adapter_rows, int8_adapter

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir)).to(torch.bfloat16).eval()
    quantize_linears(base)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    ids = torch.tensor([[1, 9690, 198, 2683, 359]] * 2)

    def logits():
        with torch.inference_mode(), adapter_rows(model, ["__base__", "default"]):
            return model(input_ids=ids).logits[1]

    first = logits()
    kept = int8_adapter(layer, "default", slice(1, 2))[3]
    assert int8_adapter(layer, "default", slice(1, 2))[3] is kept and torch.equal(logits(), first)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # every lora_B (and A): the adapter's effect doubles, or more
                param.mul_(2)
    assert int8_adapter(layer, "default", slice(1, 2))[3] is not kept and not torch.equal(logits(), first)
    before = int8_adapter(layer, "default", slice(1, 2))
    layer.scaling["default"] *= 2
    after = int8_adapter(layer, "default", slice(1, 2))
    assert torch.equal(after[3], before[3]) and torch.equal(after[4].float(), 2 * before[4].float())  # scales doubled


def test_int8_rows_path_keeps_biases():
    """A base Linear with a bias and a LoRA B with one (peft's lora_bias): on int8 weights the
    adapter's row matches peft's own forward, and the base row is the layer without the adapter."""
    from peft import LoraConfig, get_peft_model

    from core.inference.lora_rows import adapter_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48)).to(torch.bfloat16)
    assert quantize_linears(model) == 1
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["0"], lora_bias=True, init_lora_weights=False))
    with torch.no_grad():
        model.base_model.model[0].lora_B["default"].bias.normal_()
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        with model.disable_adapter():
            base = model(x)
        by_peft = model(x)
        with adapter_rows(model, ["__base__", "default"]):
            rows = model(x)
    assert torch.equal(rows[0], base[0])
    effect = (by_peft[1] - base[1]).float().norm()
    assert effect > 0 and (rows[1] - by_peft[1]).float().norm() / effect < 0.05
