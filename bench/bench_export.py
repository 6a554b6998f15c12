"""Export benchmark: merge time, merged size and logit difference for a LoRA and a QLoRA run;
GGUF export time, file size and logit difference for SmolLM2 and Gemma 3.

    FINETUNE_LAB_HOME=/tmp/ftl-bench .venv/bin/python bench/bench_export.py

Trains the `tiny` recipe (identity data, SmolLM2-135M) as LoRA and as QLoRA, merges each with
training.export.merge_run (bf16), and measures the largest next-token logit difference between the
merged model and the unmerged adapter on its training-time base (NF4 for QLoRA), both computed
in fp32, over every position of three prompts, and the share of positions whose top token
agrees. A QLoRA adapter merges into its de-quantized NF4 base (see training/export.py for what
merging into the original weights did instead).

GGUF: the LoRA run, and a two-step LoRA DAPT run on Gemma 3, are written as f16, q8_0 and q4_0
with training.gguf_export, loaded back with transformers' GGUF loader and compared with the
merged model: logit gaps over every prompt position, top-1 agreement, and on how many of five
prompts the first 20 greedy tokens are the same. The last line printed is JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = ["Who are you?", "What is the capital of France?", "Tell me about yourself."]
CHAT_PROMPTS = PROMPTS + ["Write a haiku about rain.", "How do I boil an egg?"]
TEXT_PROMPTS = ["The Eiffel Tower is located in the city of", "To be, or not to be,", "Once upon a time",
                "The capital of Japan is", "Water boils at"]


def prompt_ids(tokenizer, prompt: str):
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def gguf_gap(merged, tokenizer, exported, prompts) -> dict:
    import torch

    gaps, agree, positions, same_text = [], 0, 0, 0
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        with torch.inference_mode():
            want, got = merged(ids).logits[0], exported(ids).logits[0]
            texts = [m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
                     for m in (merged, exported)]
        gaps.append((want - got).abs().flatten())
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        positions += ids.shape[1]
        same_text += int(torch.equal(*texts))
    every = torch.cat(gaps)
    return {"max": round(every.max().item(), 4), "mean": round(every.mean().item(), 4),
            "top1_agreement": round(agree / positions, 4), "same_20_greedy_tokens": f"{same_text}/{len(prompts)}"}


def gguf_figures(run_name: str, quants: tuple, prompts: list[str]) -> dict:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.runs import RunFolder
    from training.gguf_export import export_gguf

    run = RunFolder.existing(run_name)
    figures = {}
    for quant in quants:
        export = export_gguf(run_name, quant)
        merged = AutoModelForCausalLM.from_pretrained(str(run.merged), dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(run.merged))
        file = next(export.folder.glob("*.gguf"))
        start = time.perf_counter()
        exported = AutoModelForCausalLM.from_pretrained(str(export.folder), gguf_file=file.name,
                                                        dtype=torch.float32).eval()
        figures[quant] = {"export_s": round(export.seconds, 1), "size_mb": round(file.stat().st_size / 1e6, 1),
                          "transformers_load_s": round(time.perf_counter() - start, 1),
                          "gap": gguf_gap(merged, tokenizer, exported, prompts)}
        print(run_name, quant, json.dumps(figures[quant]), flush=True)
    return figures


def main() -> None:
    from training.export import logit_gap, merge_run
    from core.runs import RunFolder
    from training.config import load_config
    from training.fit import train

    figures = {}
    for adapter in ("lora", "qlora"):
        name = f"bench-export-{adapter}"
        cfg = load_config("tiny", adapter=adapter, output_name=name)
        train(cfg, RunFolder.named(name).path)
        export = merge_run(name)
        figures[adapter] = {"merge_s": round(export.seconds, 1), "size_mb": round(export.size_mb, 1),
                            "logit_gap": {k: round(v, 4) for k, v in logit_gap(name, export.folder, PROMPTS).items()}}
        print(adapter, json.dumps(figures[adapter]), flush=True)
    figures["gguf_smollm2"] = gguf_figures("bench-export-lora", ("f16", "q8_0", "q4_0"), CHAT_PROMPTS)
    gemma = load_config("dapt_lora", model="gemma-3-270m", max_steps=2, batch_size=2, max_rows=1, block_size=64,
                        stride=64, save_steps=2, output_name="bench-export-gemma")
    train(gemma, RunFolder.named(gemma.output_name).path)
    figures["gguf_gemma3"] = gguf_figures("bench-export-gemma", ("f16", "q8_0", "q4_0"), TEXT_PROMPTS)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
