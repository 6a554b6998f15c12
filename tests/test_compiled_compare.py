"""The views the compiled steps run on, and Compare's compiled step (core.inference.compiled_views,
core.inference.compiled_decode) on a tiny random Llama: the views share the weights and stay the
plain base when peft wraps the model; a Compare view computes exactly what the int8 rows path
computes, and its in-graph update agrees with the kernel's; on our kernels, layers that read
one input as one product (core.inference.shared_products) compute what they compute apart;
the routes and their status words. On the real packaged model, with the compile and a
restart: tests/test_compiled_decode.py.

    .venv/bin/python -m pytest tests/test_compiled_compare.py
"""
from __future__ import annotations

import pytest
import torch

from core.inference import compiled_views, own_kernels, shared_products
from core.inference.compiled_decode import SLOTS, CompiledStep, choose
from core.inference.fast_decode import BASE, quantize_linears
from core.inference.lora_rows import adapter_rows

IDS = torch.tensor([[1, 9690, 198, 2683, 359], [1, 9690, 198, 2683, 359]])


def tiny_tuned(folder, int8: bool = True, own: bool = False):
    """(view made before peft wrapped the model, the peft model): int8 weights in bf16 (else
    float Linears in fp32; `own`: int8 on our own kernels, the weights packed), adapters "one" and "two" of one layout, "wide" of another, and
    some a compare view cannot run: "dropped" (dropout), "embedded" (LoRA on the embeddings
    too), "saved" (a fully trained LM head)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    if int8:
        quantize_linears(base.to(torch.bfloat16), *((own_kernels.rows_times_int8, own_kernels.pack) if own else ()))
    view = compiled_views.base_view(base)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "one")
    model.add_adapter("two", LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.add_adapter("wide", LoraConfig(r=20, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.add_adapter("dropped", LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
    model.add_adapter("embedded", LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    model.add_adapter("saved", LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    return view, model.eval()


@pytest.fixture(scope="module")
def tuned(tiny_model_dir):
    return tiny_tuned(tiny_model_dir)


def test_a_view_shares_the_weights_and_stays_the_plain_base(tuned):
    from peft.tuners.lora import LoraLayer

    view, model = tuned
    assert not any(isinstance(m, LoraLayer) for m in view.modules())
    assert view.model.layers[0].self_attn.q_proj is model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert view.model.layers is not model.get_base_model().model.layers  # its own tree above the leaves
    with torch.inference_mode(), model.disable_adapter():
        assert torch.equal(view(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_a_compare_view_computes_what_the_rows_path_computes(tuned):
    """Eager, the view's last row is the rows path's tuned row bit for bit, and its first row the
    base's; `use` swaps in another adapter of the layout; inside the graph, the update (summed in
    fp32, unrolled) stays within bf16 rounding of the kernel's."""
    view, model = tuned
    layers = compiled_views.lora_layers(model, "one")
    assert len(layers) == 2 * 7 and compiled_views.layout(layers, "one") == compiled_views.layout(
        compiled_views.lora_layers(model, "two"), "two") != compiled_views.layout(compiled_views.lora_layers(model, "wide"), "wide")
    compare = compiled_views.compare_view(view, layers, "one")

    def rows_path(name):
        with torch.inference_mode(), adapter_rows(model, [BASE, name]):
            return model(input_ids=IDS).logits

    with torch.inference_mode():
        assert torch.equal(compare(input_ids=IDS).logits, rows_path("one"))
        compiled_views.use(compare, compiled_views.lora_layers(model, "two"), "two")
        two = compare(input_ids=IDS).logits
        assert torch.equal(two, rows_path("two")) and torch.equal(two[0], view(input_ids=IDS).logits[0])
    layer = compare.model.layers[1].mlp.down_proj
    x = torch.randn(2, 1, layer.base.in_features, dtype=torch.bfloat16)
    both = layer.base.rows_product(x.reshape(2, -1), layer.packed, layer.packed_scales)
    low_rank = both[:, layer.base.out_features:]
    kernel = compiled_views.rows_times_int8(low_rank, layer.qb, layer.sb).float()
    in_graph = layer._update_in_graph(low_rank).float()
    assert (in_graph - kernel).abs().max() <= kernel.abs().max() / 128  # bf16 keeps 8 bits


@pytest.mark.parametrize("int8,own", [(True, False), (True, True), (False, False)], ids=["int8", "own", "float"])
def test_a_compiled_compare_view_computes_as_the_eager_one(tiny_model_dir, int8, own):
    """Eager, a Compare view computes what the rows path computes, on float weights too (a
    GPU's, or a CPU's with FINETUNE_LAB_DECODE=eager); compiled (its in-graph update), the eager
    view's logits to rounding, and the base row the base's where the weights are float. On our
    own kernels one op call adds each layer's adapter (s B in fp32, not torch's int8 kernel):
    the rows path's logits to rounding, the base row exactly."""
    if own and own_kernels.unavailable():
        pytest.skip(f"our own kernels do not serve here: {own_kernels.unavailable()}")
    view, model = tiny_tuned(tiny_model_dir, int8, own)
    compare = compiled_views.compare_view(view, compiled_views.lora_layers(model, "one"), "one")
    # On our kernels every layer adds the adapter in its product's own call; else a RowLoraLinear does.
    row_lora = [m for m in compare.modules() if isinstance(m, compiled_views.RowLoraLinear)]
    one_call = [m for m in compare.modules() if isinstance(m, shared_products.LoraProduct)]
    assert (len(one_call), len(row_lora)) == ((2 * 4, 0) if own else (0, 2 * 7))
    # As the app compiles a step: no guards, so an adapter put in by `use` must reach the graph as
    # its input. dynamo's cache is reset around it: a step without guards would serve any model.
    step = torch.compile(compare, fullgraph=True, options={"guard_filter_fn": lambda guards: [False] * len(guards)})
    torch._dynamo.reset()
    try:
        with torch.inference_mode():
            eager = compare(input_ids=IDS).logits.float()
            compiled = step(input_ids=IDS).logits.float()
            base = view(input_ids=IDS).logits.float()
            with adapter_rows(model, [BASE, "one"]):
                rows_path = model(input_ids=IDS).logits.float()
            compiled_views.use(compare, compiled_views.lora_layers(model, "two"), "two")
            eager_two, compiled_two = compare(input_ids=IDS).logits.float(), step(input_ids=IDS).logits.float()
    finally:
        torch._dynamo.reset()
    effect = (eager[1] - eager[0]).norm()
    if own:
        assert torch.equal(eager[0], rows_path[0]) and (eager[1] - rows_path[1]).norm() / effect < 0.02
    else:
        assert torch.equal(eager, rows_path)
    assert (compiled[1] - eager[1]).norm() / effect < 0.02 and (compiled[0] - eager[0]).norm() / effect < 0.02
    assert int8 or torch.allclose(compiled[0], base[0], atol=1e-5)
    assert (compiled_two[1] - eager_two[1]).norm() / (eager_two[1] - eager[1]).norm() < 0.02


def test_on_float_weights_compare_adds_a_product_per_group_of_layers_not_two_per_layer(tiny_model_dir):
    """On float weights (a GPU's), each product in the compiled step is a kernel launch, and a
    decoding step's kernels take a few microseconds each: Compare's step adds one product per
    group of layers that read one input (x A of q, k and v; of gate and up; o; down), none for
    s B (a sum fused with the row's addition). Before, two a layer: Compare ran 2.0x a single
    pane on an H100. The layers' own products and fused kernels are the single pane's."""
    import re

    from torch._inductor.utils import run_and_get_code

    view, model = tiny_tuned(tiny_model_dir, int8=False)
    compare = compiled_views.compare_view(view, compiled_views.lora_layers(model, "one"), "one")
    counts = []
    with torch.inference_mode():
        for module, ids in ((view, IDS[:1]), (compare, IDS)):
            code = "\n".join(run_and_get_code(torch.compile(module, fullgraph=True), input_ids=ids)[1])
            counts.append((len(re.findall(r"extern_kernels\.\w+\(", code)), len(re.findall(r"^\s+cpp_fused_\w+\(", code, re.M))))
    (single_products, single_kernels), (compare_products, compare_kernels) = counts
    assert single_products == 2 * 7 + 1  # two layers of seven, and the LM head
    assert compare_products == single_products + 2 * 4 and compare_kernels == single_kernels


def apart(view):
    """`view` with each group of shared_products back as its layers, one product each."""
    view = compiled_views.tree_copy(view)
    for parent in list(view.modules()):
        for group in shared_products.groups(parent):
            parent._modules.update(zip(group.names, group.layers))
    return view


def test_layers_sharing_an_input_compute_in_one_call_what_they_compute_apart(tiny_model_dir):
    """On our kernels, q/k/v and gate/up are one product each in the views, the base's and
    Compare's (its adapters on all of them, or on q and v only at a rank over 16), to the bit as
    each layer alone; `use` swaps the adapter in them too; a layer called out of turn says so."""
    if own_kernels.unavailable():
        pytest.skip(f"our own kernels do not serve here: {own_kernels.unavailable()}")
    view, model = tiny_tuned(tiny_model_dir, own=True)
    attention = view.model.layers[0].self_attn
    assert [type(m).__name__ for m in (attention.q_proj, attention.k_proj, attention.o_proj)] == ["Part", "Part", "Int8Linear"]
    with torch.inference_mode():
        assert torch.equal(view(input_ids=IDS).logits, apart(view)(input_ids=IDS).logits)
        for name, groups in (("wide", 2), ("one", 2 * 4)):
            layers = compiled_views.lora_layers(model, name)
            compare = compiled_views.compare_view(view, layers, name)
            assert sum(isinstance(m, shared_products.LoraProduct) for m in compare.modules()) == groups
            logits = compare(input_ids=IDS).logits
            assert torch.equal(logits, compiled_views.compare_view(apart(view), layers, name)(input_ids=IDS).logits)
            assert torch.equal(logits[0], view(input_ids=IDS).logits[0]) and not torch.equal(logits[1], logits[0])
        compiled_views.use(compare, compiled_views.lora_layers(model, "two"), "two")  # the same layout as one's
        assert {m.adapter for m in compare.modules() if isinstance(m, shared_products.LoraProduct)} == {"two"}
        assert torch.equal(compare(input_ids=IDS).logits, compiled_views.compare_view(
            view, compiled_views.lora_layers(model, "two"), "two")(input_ids=IDS).logits)
        with pytest.raises(RuntimeError, match="^k_proj was called before q_proj, which computes it$"):
            attention.k_proj(torch.zeros(1, 32, dtype=torch.bfloat16))


def test_a_group_keeps_its_biases_and_an_adapter_with_a_bias_keeps_its_layers_apart(tiny_model_dir):
    """A group of layers with biases (Qwen's q, k, v) adds them after its one product, to the
    bit as each layer alone; an adapter with a bias of its own (peft's lora_bias, which our op
    does not add) runs its group's layers apart, each a RowLoraLinear, as the same view would
    without groups."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if own_kernels.unavailable():
        pytest.skip(f"our own kernels do not serve here: {own_kernels.unavailable()}")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_bias = True
    base = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in base.modules():
            if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
                layer.bias.normal_()
    quantize_linears(base.to(torch.bfloat16), own_kernels.rows_times_int8, own_kernels.pack)
    view = compiled_views.base_view(base)
    assert view.model.layers[0].self_attn.q_proj.product.bias is not None
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False,
                                             lora_bias=True), "biased")
    layers = compiled_views.lora_layers(model.eval(), "biased")
    compare = compiled_views.compare_view(view, layers, "biased")
    assert isinstance(compare.model.layers[0].self_attn.k_proj, compiled_views.RowLoraLinear)
    assert not any(isinstance(m, shared_products.LoraProduct) for m in compare.modules())
    with torch.inference_mode():
        assert torch.equal(view(input_ids=IDS).logits, apart(view)(input_ids=IDS).logits)
        assert torch.equal(compare(input_ids=IDS).logits, compiled_views.compare_view(apart(view), layers, "biased")(input_ids=IDS).logits)


def test_only_plain_lora_gets_a_compare_view(tuned):
    _, model = tuned
    assert compiled_views.lora_layers(model, "dropped") == {}
    assert compiled_views.lora_layers(model, "embedded") == compiled_views.lora_layers(model, "saved") == {}
    assert len(compiled_views.lora_layers(model, "wide")) == 2 * 2
    assert compiled_views.lora_layers(model, "absent") == {}


def test_compare_routes_and_their_status_words(tuned, smol):
    """Compare's two rows (the base, then the adapter) take the Compare step of the adapter's
    layout once it is ready, which then holds that adapter; before, the weights' path says why."""
    from dataclasses import replace

    path = f"{smol.decode} path"  # int8 on a CPU
    view, model = tuned
    base = CompiledStep(model=view, state="ready")
    loaded = replace(smol, model=model, compiled=base, adapters={"/one": "one"})
    layout = compiled_views.layout(compiled_views.lora_layers(model, "one"), "one")
    compare = base.compare[layout] = CompiledStep(rows=2, layout=layout)  # no compile started here
    assert choose(loaded, 2, 64, [BASE, "one"]).words == f"{path} (the compiled Compare step is still compiling)"
    compare.model, compare.state = compiled_views.compare_view(view, compiled_views.lora_layers(model, "two"), "two"), "ready"
    route = choose(loaded, 2, 64, [BASE, "one"])
    assert route.words == "compiled Compare step" and route.model is compare.model and route.options["max_cache_len"] == SLOTS
    with route.context:
        assert {m.adapter for m in compare.model.modules() if isinstance(m, compiled_views.RowLoraLinear)} == {"one"}
    assert choose(loaded, 2, SLOTS + 1, [BASE, "one"]).words == f"{path} (over the compiled step's {SLOTS} tokens)"
    assert choose(loaded, 2, 64, [BASE, "dropped"]).words == (
        f"{path} (the Compare step takes plain LoRA on Linear layers only)")
    # Each adapter's layers are found once, not on every Compare: an attached adapter stays as it is.
    assert base.lora_layers["one"] == compiled_views.lora_layers(model, "one") and base.lora_layers["dropped"] == {}
    assert choose(loaded, 1, 64, [BASE]).model is view  # base replies keep their step after adapters attach
    compiling = replace(loaded, compiled=replace(base, state="compiling"))
    assert choose(compiling, 2, 64, [BASE, "one"]).words == f"{path} (the compiled step is still compiling)"
