"""Take a trained model out of the app: merge a LoRA/QLoRA adapter into its base model.

    python cli.py export --run RUN --format merged        # -> <data dir>/runs/RUN/merged/

training.export_formats is the entry point for both formats (merged here, GGUF in
training.gguf_export, which builds on the merge).

The merged folder is a plain transformers model: safetensors weights, config, tokenizer and
chat template, loadable with `AutoModelForCausalLM.from_pretrained` alone, no peft needed.

How it merges: the base loads in fp32, peft attaches the adapter, and `merge_and_unload` adds
each B·A·scale into its weight in fp32; the result is saved in `dtype` (bf16 by default, the
size models are published in). A QLoRA adapter was trained against the base's NF4-rounded
weights, so its base loads in NF4 as in training and is de-quantized before the merge
(core.inference.qlora, which Chat runs it with too): merging
into the original full-precision weights instead moved the logits by 2.0 on average and changed
the top token at 19% of positions (bench/bench_export.py). `logit_gap` measures a merged model
against the unmerged adapter. A full fine-tune's adapter folder already is a model.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import LabError
from core.runs import RunFolder

DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class Export:
    """Where an export went, how big it is and how long it took."""

    folder: Path
    seconds: float

    @property
    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file()) / 1e6

    def describe(self) -> str:
        return f"{self.folder} ({self.size_mb:.0f} MB, {self.seconds:.1f} s)"


def merge_run(run_name: str, dtype: str = "bf16", progress=None) -> Export:
    """Merge run `run_name`'s adapter into its base; return the merged folder."""
    run = RunFolder.existing(run_name)
    if not run.is_finished:
        raise LabError(f"Run '{run_name}' has not finished training: nothing to merge yet.")
    if dtype not in DTYPES:
        raise LabError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}.")
    if not run.is_lora:
        return Export(run.adapter, 0.0)  # a full fine-tune is already a plain model folder
    start = time.perf_counter()
    note = progress or (lambda fraction, desc="": None)
    note(0.1, "Loading the base model and the adapter")
    merged, tokenizer = _merged_model(run)
    note(0.7, "Saving the merged model")
    _save(merged, tokenizer, run.merged, dtype)
    note(1.0, "Done")
    return Export(run.merged, time.perf_counter() - start)


def training_base(run: RunFolder):
    """The run's base as training loaded it (NF4 for QLoRA), computing in fp32."""
    from training.config import load_config
    from training.model_setup import load_base

    return load_base(load_config(run.config, precision="fp32"))


def _merged_model(run: RunFolder):
    """The adapter merged into its base; a QLoRA adapter into the base rounded to 4 bits as it
    trained, as Chat runs it (core.inference.qlora)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from core.inference.models import resolve_model
    from core.inference.qlora import merged_as_trained, trained_on_4bit
    from training.config import load_config

    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter), trust_remote_code=False)
    four_bit = trained_on_4bit(run.adapter)
    if four_bit is not None:
        return merged_as_trained(resolve_model(load_config(run.config).model), run.adapter, four_bit), tokenizer
    return PeftModel.from_pretrained(training_base(run), str(run.adapter)).merge_and_unload(), tokenizer


def _save(model, tokenizer, folder: Path, dtype: str) -> None:
    """Write into a side folder and rename it into place, so a crash never leaves half a model."""
    from core.inference.models import torch_dtype

    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.to(torch_dtype(dtype)).save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def logit_gap(run_name: str, merged: Path, prompts: list[str]) -> dict:
    """How far the merged model's logits are from the unmerged adapter's on its training-time
    base (NF4 for QLoRA), over every position of `prompts`: the largest and the mean absolute
    difference, and the share of positions whose top token agrees. Both sides compute in fp32,
    so the figures show what merging and storing in the export dtype change, not bf16 compute."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunFolder.existing(run_name)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    unmerged = PeftModel.from_pretrained(training_base(run), str(run.adapter)).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    gaps, agree, positions = [], 0, 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            want, got = unmerged(input_ids=ids).logits.float()[0], plain(input_ids=ids).logits.float()[0]
            gaps.append((want - got).abs())
            agree += int((want.argmax(-1) == got.argmax(-1)).sum())
            positions += ids.shape[1]
    every = torch.cat([gap.flatten() for gap in gaps])
    return {"max": every.max().item(), "mean": every.mean().item(), "top1_agreement": agree / positions}
