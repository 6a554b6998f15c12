"""Training throughput: this engine vs a competent plain transformers.Trainer, side by side.

    .venv/bin/python bench/bench_train.py [--steps 8] [--no-rss] [--compile]

Both sides: SmolLM2-135M, LoRA r16 all-linear, batch 4, max length 256, the same mixed-length
SFT rows (answers of 10-150 words), the same number of optimizer steps.
  baseline: transformers.Trainer at the strongest plain precision for this hardware (bf16=True
            where bf16 is native: a CPU with AVX512-BF16/AMX or a recent GPU; fp16 on an older
            GPU; else fp32), dynamic padding to the longest row of each batch, no packing, no
            gradient checkpointing, loss on answers only; again in fp32 ("baseline_fp32");
  engine:   the model, peft and SFTConfig that training.fit builds for the same TrainConfig,
            at its default precision (auto: bf16 autocast on a CPU with native bf16), and
            again forced to fp32 ("engine_fp32") to show what a CPU without bf16 gets.
Reports real (non-pad) tokens/s and their ratio, achieved GFLOP/s against this machine's
measured matmul peak at each side's precision, and the peak RSS of full, LoRA and QLoRA runs (each in a fresh
process). The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import machine  # noqa: E402
from core.inference.models import torch_dtype  # noqa: E402
from training.device import training_precision  # noqa: E402
PARAMS = 134.5e6


def write_rows(path: Path, n: int = 240, seed: int = 0) -> str:
    """Q/A rows with answers of 10-150 words of Shakespeare: mixed lengths, as in real SFT data."""
    from core.data.rows import load_rows

    words = " ".join(load_rows("shakespeare").select(range(2))["text"]).split()
    questions = load_rows("chatterbot")["question"]
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            length, start = rng.randint(10, 150), rng.randrange(len(words) - 200)
            row = {"question": rng.choice(questions), "answer": " ".join(words[start:start + length])}
            handle.write(json.dumps(row) + "\n")
    return str(path)


def bench_config(rows: str, steps: int, adapter: str = "lora", precision: str = "auto",
                 torch_compile: bool = False):
    from training.config import TrainConfig

    return TrainConfig(dataset=rows, adapter=adapter, max_steps=steps, batch_size=4, max_length=256,
                       eval_fraction=0, save_steps=100_000, learning_rate=2e-4, logging_steps=1,
                       precision=precision, torch_compile=torch_compile)


def run_engine(cfg, out: Path) -> dict:
    from transformers import TrainerCallback

    from core import threads
    from core.runs import RunFolder
    from training.device import compile_layers
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples
    from training import objectives

    stamps = []  # (seconds, tokens so far) at each logged step

    class Stamp(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                stamps.append((time.perf_counter(), logs["num_tokens"]))

    threads.apply(threads.for_training(cfg.threads))
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    trainer = objectives.get(cfg.objective).trainer(cfg, RunFolder(out), tokenizer, build_examples(cfg, tokenizer),
                                                    None, [Stamp()])
    if cfg.torch_compile:
        compile_layers(trainer.model)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    (t1, n1), (tn, nn) = stamps[0], stamps[-1]
    return {"seconds": seconds, "tokens": nn, "final_loss": losses[-1],
            "after_first_step_tokens_per_s": round((nn - n1) / (tn - t1), 1)}


def run_baseline(cfg, out: Path, precision: str) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from core.inference.models import resolve_model
    from core import threads
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples
    from training.model_setup import lora_config

    threads.apply(threads.for_training(cfg.threads))
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)

    def tokenize(row):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"][:cfg.max_length]
        return {"input_ids": full, "attention_mask": [1] * len(full),
                "labels": [-100] * len(prompt) + full[len(prompt):]}

    examples = build_examples(cfg, tokenizer)
    data = examples.map(tokenize, remove_columns=examples.column_names)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model)), lora_config(cfg))
    counted = {"tokens": 0}

    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest")

    def collate(rows):
        batch = collator(rows)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(output_dir=str(out), max_steps=cfg.max_steps, per_device_train_batch_size=4,
                             learning_rate=cfg.learning_rate, logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed,
                             dataloader_num_workers=0, disable_tqdm=True,
                             bf16=precision == "bf16", fp16=precision == "fp16")
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": seconds, "tokens": counted["tokens"], "final_loss": losses[-1]}


def matmul_peak_gflops(dtype: str = "fp32", size: int = 1024, repeats: int = 20) -> float:
    import torch

    kind = torch_dtype(dtype)
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def summarize(side: dict, peak_gflops: float) -> dict:
    rate = side["tokens"] / side["seconds"]
    gflops = 4 * PARAMS * rate / 1e9  # LoRA: forward 2N + input-gradient backward 2N per token
    return {"real_tokens": side["tokens"], "seconds": round(side["seconds"], 1),
            "real_tokens_per_s": round(rate, 1), "final_loss": round(side["final_loss"], 3),
            "gflops": round(gflops, 1), "fraction_of_peak": round(gflops / peak_gflops, 3),
            **{k: v for k, v in side.items() if k.startswith("after_first_step")}}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of this (by then
# multi-GB) process would report the parent's peak.
RSS_CHILD = """
import re, sys, tempfile, pathlib
sys.path.insert(0, {root!r}); sys.argv = ['x']
from bench.bench_train import bench_config, run_engine
with tempfile.TemporaryDirectory() as tmp:
    run_engine(bench_config({rows!r}, 3, {adapter!r}), pathlib.Path(tmp))
print(re.search(r"VmHWM:\\s+(\\d+)", pathlib.Path("/proc/self/status").read_text()).group(1))
"""


def peak_rss_mb(rows: str, adapter: str) -> float:
    code = RSS_CHILD.format(root=str(ROOT), rows=rows, adapter=adapter)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return round(int(out.stdout.split()[-1]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-rss", action="store_true", help="skip the full/LoRA/QLoRA memory runs")
    parser.add_argument("--compile", action="store_true",
                        help="also run the engine with torch_compile (first step includes the compile)")
    args = parser.parse_args()
    # Each side leaves checkpoints (about 1.5 GB for the whole run), so nothing may outlive it.
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(args, Path(tmp))))


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    rows = write_rows(tmp / "rows.jsonl")
    cfg = bench_config(rows, args.steps)
    precision = training_precision("auto")
    base = run_baseline(cfg, tmp / "baseline", precision)
    base_fp32 = run_baseline(cfg, tmp / "baseline_fp32", "fp32")
    engine = run_engine(cfg, tmp / "engine")
    engine_fp32 = run_engine(bench_config(rows, args.steps, precision="fp32"), tmp / "engine_fp32")
    sides = [("baseline", base, precision), ("baseline_fp32", base_fp32, "fp32"), ("engine", engine, precision),
             ("engine_fp32", engine_fp32, "fp32")]
    if args.compile:
        compiled = run_engine(bench_config(rows, args.steps, torch_compile=True), tmp / "engine_compiled")
        sides.append(("engine_compiled", compiled, precision))
    peaks = {dtype: round(matmul_peak_gflops(dtype), 1) for dtype in {"fp32", precision}}
    result = {"steps": args.steps, **machine.describe(), "engine_precision": precision,
              "baseline_precision": precision, "matmul_peak_gflops": peaks}
    for name, side, dtype in sides:
        result[name] = summarize(side, peaks[dtype])
    for name, _, _ in sides[1:]:
        result[f"{name}_over_baseline"] = round(result[name]["real_tokens_per_s"]
                                                / result["baseline"]["real_tokens_per_s"], 2)
    # The headline: against the strongest plain configuration on the same hardware.
    result["engine_over_strongest_baseline"] = result["engine_over_baseline"]
    result["engine_fp32_over_baseline_fp32"] = round(result["engine_fp32"]["real_tokens_per_s"]
                                                     / result["baseline_fp32"]["real_tokens_per_s"], 2)
    if not args.no_rss:
        result["peak_rss_mb"] = {a: peak_rss_mb(rows, a) for a in ("full", "lora", "qlora")}
    return result


if __name__ == "__main__":
    main()
