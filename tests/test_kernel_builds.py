"""Our CPU kernels' builds (core.inference.own_kernels): the AVX2 build against the AVX512-VNNI
one, where the CPU runs both, and a build that fails.

    .venv/bin/python -m pytest tests/test_kernel_builds.py
"""
from __future__ import annotations

import os

import pytest
import torch

from core.inference import own_kernels
from core.inference.fast_decode import Int8Linear, quantized_rows
from tests.test_own_kernels import WHY_NOT, attention_inputs, random_layer


AS_AVX2 = """
import sys, torch; sys.path.insert(0, {root!r})
from core.inference import own_kernels
assert own_kernels.instruction_set() == "avx2" and own_kernels.unavailable() == "", own_kernels.unavailable()
products, adapters, attention = torch.load({inputs!r})
torch.save(([own_kernels.rows_times_int8(*args) for args in products],
            [own_kernels.lora_rows_times_int8(*args) for args in adapters],
            [torch.ops.finetune_lab.one_query_attention(*args, 0.125) for args in attention]), {outputs!r})
"""


@pytest.mark.skipif(own_kernels.instruction_set() != "avx512-vnni" or bool(WHY_NOT),
                    reason="both builds run only on a CPU with AVX512-VNNI")
def test_the_avx2_build_answers_as_the_vnni_build_to_the_bit(tmp_path):
    """kernels/w8a8_avx2.cpp, run in a process torch runs as an AVX2 CPU (as an AVX2-only CPU
    runs it): the same products as the AVX512-VNNI build to the bit, with an adapter too (the
    same integers, the same float steps), and its 8-wide attention as accurate as torch's."""
    import subprocess
    import sys

    import torch.nn.functional as F

    from tests.conftest import ROOT

    torch.manual_seed(3)
    products, adapters = [], []
    for rows, out_features, in_features in [(1, 576, 576), (2, 1552, 576), (5, 48, 1536), (9, 16, 32), (37, 192, 576)]:
        x = torch.randn(rows, in_features).to(torch.bfloat16)
        x[0, 0::64] = 0  # a lane's blocks of zeros
        qweight, scales = random_layer(out_features, in_features)
        products.append((x, own_kernels.pack(qweight), scales))
        layer = Int8Linear(torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16),
                           own_kernels.rows_times_int8, own_kernels.pack)
        layer.append_rows(torch.randn(8, in_features) / 24)
        lora_b, lora_b_scales = quantized_rows(torch.randn(out_features, 16) / 4, torch.bfloat16)
        packed, both_scales = layer.appended[2:]
        tiles = out_features // 16
        adapter = own_kernels.pack_adapter(packed[tiles:], both_scales[out_features:], own_kernels.pack_lora_b(lora_b.t()),
                                           lora_b_scales, torch.zeros(tiles, dtype=torch.int64))
        adapters.append((x, packed[:tiles], both_scales[:out_features], adapter, 16, 16, min(rows, 2)))
    attention = [attention_inputs(2, 512, [100, 7], mask)[:4] for mask in ("bool", "additive")]
    torch.save((products, adapters, attention), tmp_path / "inputs.pt")
    script = AS_AVX2.format(root=str(ROOT), inputs=str(tmp_path / "inputs.pt"), outputs=str(tmp_path / "outputs.pt"))
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got_products, got_adapters, got_attention = torch.load(tmp_path / "outputs.pt")
    for args, got in zip(products, got_products):
        assert torch.equal(got, own_kernels.rows_times_int8(*args))
    for args, got in zip(adapters, got_adapters):
        assert torch.equal(got, own_kernels.lora_rows_times_int8(*args))
    for (query, key, value, mask), got in zip(attention, got_attention):
        mask_as = torch.bool if mask.dtype == torch.bool else torch.double
        exact = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), scale=0.125,
                                               attn_mask=mask.to(mask_as))
        torchs = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.125)
        assert (got.double() - exact).abs().max() <= 1.5 * (torchs.double() - exact).abs().max()


def test_a_failed_build_says_why_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """g++'s own message comes back (the model's status shows it), and no library or half-built
    object stays in the model cache: the next start builds again."""
    (tmp_path / "fine.cpp").write_text("int kernel() { return 0; }\n")
    (tmp_path / "broken.cpp").write_text("int kernel( {\n")  # compiled beside the fine one
    monkeypatch.setattr(own_kernels, "KERNELS", tmp_path)
    monkeypatch.setitem(own_kernels.BUILDS, "avx2", (["fine.cpp", "broken.cpp"], []))
    library = tmp_path / "kernels" / "own-avx2-test.so"
    with pytest.raises(RuntimeError, match="expected"):
        own_kernels.compile_build("avx2", library)
    assert list(library.parent.iterdir()) == []
