"""How a training run uses the hardware (training/device.py): the precision `auto` picks and the
timing it keeps per machine, fp32 master weights for a full fine-tune, 4-bit layers that keep
their gradients after an eval pass.

    .venv/bin/python -m pytest tests/test_training_device.py
"""
from __future__ import annotations

import json

import torch

from core.inference.models import resolve_precision
from training.device import training_precision


def test_qlora_gradients_reach_the_first_layer_after_an_eval_pass():
    """The 'before' perplexity runs a no-grad eval first; on an AVX512-BF16 CPU bitsandbytes
    then switched to a kernel without backward, and layer 0's adapter got zero gradient."""
    from peft import get_peft_model

    from training.config import TrainConfig
    from training.model_setup import load_base, lora_config

    cfg = TrainConfig(dataset="identity", adapter="qlora")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    model = get_peft_model(load_base(cfg), lora_config(cfg))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    first = [g for name, g in grads.items() if ".layers.0." in name and "lora_B" in name]
    assert len(first) == 7 and all(g is not None and g.abs().sum() > 0 for g in first)


def test_auto_trains_in_bf16_only_where_its_matmuls_are_faster_here(capfd):
    """training_precision: explicit choices stand, and bf16 on a CPU that only emulates it says
    so once; on a CPU with native bf16, auto picks bf16 only if bf16 matmuls clearly beat fp32
    ones, checked against a second timing wherever the two differ by more than a third (bf16
    2.2-6.8x faster on the EPYC and the AMX Xeon, 0.5-0.67x on the Xeon without AMX)."""
    from core.inference.models import cpu_has_native_bf16
    from training.device import _best_times, _say_bf16_is_emulated, bf16_matmuls_pay

    _say_bf16_is_emulated.cache_clear()
    assert training_precision("bf16") == "bf16" == training_precision("bf16") and training_precision("fp32") == "fp32"
    said = capfd.readouterr().err.count("its matmuls are emulated")
    assert said == (0 if torch.cuda.is_available() or cpu_has_native_bf16() else 1)
    if torch.cuda.is_available() or resolve_precision("auto") != "bf16":
        assert training_precision("auto") == resolve_precision("auto")
        return
    assert training_precision("auto") == ("bf16" if bf16_matmuls_pay() else "fp32")
    again = _best_times()  # a timing of its own, after the kept one
    speedup = again["fp32_s"] / again["bf16_s"]
    if not 0.75 < speedup < 1.33:
        assert bf16_matmuls_pay() == (speedup > 1), again


def test_the_matmul_timing_is_kept_per_machine_so_every_process_trains_alike(tmp_path, monkeypatch):
    """The timing is read from the model cache, not taken again, so the ranks of a multi-process
    run and a resume all take the precision the run started with; bf16 must be a tenth faster."""
    from training.device import _cpu_flags, bf16_matmuls_pay

    monkeypatch.setattr("core.paths.models_dir", lambda: tmp_path)
    kept, key = tmp_path / "cpu-matmuls.json", f"{_cpu_flags()} torch {torch.__version__}"
    answers = []
    for bf16_s in (0.5, 0.95, 2.0):  # against fp32's 1.0
        kept.write_text(json.dumps({key: {"bf16_s": bf16_s, "fp32_s": 1.0}}))
        answers.append(bf16_matmuls_pay.__wrapped__())  # as a new process would, past the cache
    assert answers == [True, False, False]
    kept.write_text(json.dumps({"another CPU": {"bf16_s": 0.5, "fp32_s": 1.0}}))
    bf16_matmuls_pay.__wrapped__()
    timed = json.loads(kept.read_text())
    assert set(timed) == {"another CPU", key} and timed[key]["bf16_s"] > 0, "timed here and added"


def test_bf16_training_keeps_fp32_master_weights_for_a_full_fine_tune():
    """A frozen LoRA base may live in bf16; full fine-tuning weights must stay fp32, since a
    bf16 AdamW update of 2e-5 on a weight near 0.05 rounds away to nothing."""
    from training.config import TrainConfig
    from training.device import precision_flags
    from training.model_setup import load_base

    assert resolve_precision("auto") in ("bf16", "fp32") and resolve_precision("fp16") == "fp16"
    assert precision_flags("bf16") == {"bf16": True, "fp16": False}
    lora = load_base(TrainConfig(dataset="identity", adapter="lora", precision="bf16"))
    full = load_base(TrainConfig(dataset="identity", adapter="full", precision="bf16"))
    assert {p.dtype for p in lora.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.parameters()} == {torch.float32}
