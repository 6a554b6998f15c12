"""A QLoRA adapter as it trained: on its base rounded to 4 bits (NF4 or FP4) by bitsandbytes.

    from core.inference.adapters import attach_tuned
    tuned = attach_tuned(load_model("smollm2"), "my-qlora-run")   # its model, as it trained

A QLoRA adapter learnt to correct the 4-bit base, not the original weights, and on those it
answers differently (a 9-step `tiny` QLoRA run: 0 of 6 prompts the same, 69% of next tokens).
So Chat, the run's report and its held-out scores run it on the base rounded as in training,
de-quantized, with the adapter merged in: what its merged and GGUF exports hold
(training.export builds them with `merged_as_trained` too). It is a second model in memory,
as a full fine-tune is.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from core.inference.models import LoadedModel, ModelError, cached_model, inference_dtype, ready_to_chat
from core.runs import RunFolder


def four_bit_load_args(quant_type: str, double_quant: bool, compute_dtype) -> dict:
    """`from_pretrained`'s arguments for a base rounded to 4 bits by bitsandbytes, as training
    loads a QLoRA base."""
    import torch
    from transformers import BitsAndBytesConfig

    args = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                                      bnb_4bit_use_double_quant=double_quant,
                                                      bnb_4bit_compute_dtype=compute_dtype)}
    if torch.cuda.is_available():  # bitsandbytes quantizes where the weights load, and the
        # Trainer never moves a 4-bit model: without this it would train on the CPU.
        args["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return args


def trained_on_4bit(adapter: Path) -> dict | None:
    """The 4-bit settings of the QLoRA run this adapter folder belongs to; None for any other."""
    run = RunFolder(adapter.parent)
    settings = run.settings() if adapter == run.adapter else {}
    if settings.get("adapter") != "qlora":
        return None
    return {"quant_type": settings.get("quant_type", "nf4"), "double_quant": bool(settings.get("double_quant", True))}


def merged_as_trained(base_source: str, adapter: Path, four_bit: dict):
    """The base rounded to 4 bits as the run trained on it, de-quantized to fp32, with the
    adapter merged in (peft would re-quantize the merged weights on a 4-bit base)."""
    import importlib.util

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("A QLoRA adapter runs on its 4-bit base, which needs bitsandbytes: pip install bitsandbytes.")
    # The weights are rounded from the dtype they are stored in, as training loaded them.
    base = AutoModelForCausalLM.from_pretrained(
        base_source, use_safetensors=True, trust_remote_code=False,
        **four_bit_load_args(four_bit["quant_type"], four_bit["double_quant"], torch.float32))
    return PeftModel.from_pretrained(base.dequantize().float(), str(adapter)).merge_and_unload()


def as_trained(base: LoadedModel, adapter: Path, four_bit: dict) -> LoadedModel:
    """The QLoRA adapter's model as Chat runs it, loaded once (cached beside the base)."""
    def load() -> LoadedModel:
        from transformers import AutoTokenizer

        start = time.perf_counter()
        model = merged_as_trained(base.source, adapter, four_bit)
        for weight in model.parameters():  # not model.to(): it would round RoPE's fp32 frequencies too,
            weight.data = weight.data.to(inference_dtype())  # which a model loaded in bf16 keeps
        tokenizer = AutoTokenizer.from_pretrained(base.source, trust_remote_code=False)
        return ready_to_chat(f"{adapter.parent.name} (QLoRA, on its 4-bit base)", str(adapter), model, tokenizer, start)

    return cached_model(f"{adapter} as trained", load)
