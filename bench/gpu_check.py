"""One short check of the GPU-only paths on a CUDA machine: QLoRA (bitsandbytes NF4 on CUDA),
LoRA and full SFT through the real `python -m training.run`, and chat decoding on the GPU, eager
and with the compiled decode step (FINETUNE_LAB_DECODE=compiled: CUDA graphs), a single pane and
Compare with the LoRA run's adapter.

    python bench/gpu_check.py --shape FOLDER [--steps 30] [--out results.json]
    python bench/gpu_check.py --shape FOLDER --decode-only --out results.json   # chat decoding alone

With --decode-only, no training: Compare's adapter is bench/bench_chat.py's random LoRA (r=16
on every Linear, seeded), and the figures are written to --out after each phase, so a
run cut short by its time limit still leaves what it measured.

FOLDER holds a model's config.json and tokenizer files without weights: the check builds a
model of that shape with random weights (seeded), because the device machine has no Hub and
the packaged SmolLM2 is too large to carry. Throughput and memory are those of the real shape;
the losses are those of a random model (they start near ln(vocabulary)) and only show that the
steps learn. Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_chat import make_adapter  # noqa: E402


def build_model(shape: Path, folder: Path) -> int:
    """A random-weight model of `shape`'s config, saved as safetensors with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape))
    model.save_pretrained(folder)
    for name in shape.iterdir():
        if name.name != "config.json":
            shutil.copy(name, folder / name.name)
    return sum(p.numel() for p in model.parameters())


class GpuMemoryPeak:
    """The device-wide GPU memory in use, sampled every 50 ms while a child process trains,
    above what was in use when sampling began."""

    def __enter__(self):
        import threading

        import torch

        self.peak_mib, self.stop = 0.0, threading.Event()
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            self.start_used = total - free
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def sample(self):
        import torch

        while not self.stop.wait(0.05):
            free, total = torch.cuda.mem_get_info()
            self.peak_mib = max(self.peak_mib, round((total - free - self.start_used) / 2**20, 1))

    def __exit__(self, *exc):
        self.stop.set()


def train_once(model: Path, adapter: str, steps: int, home: Path) -> dict:
    """Run one SFT job out of process, as the app does; return its measured figures."""
    from core.runs import RunFolder

    config = {"model": str(model), "dataset": "identity", "adapter": adapter,
              "learning_rate": 2e-5 if adapter == "full" else 5e-4, "max_steps": steps,
              "batch_size": 16, "max_length": 256, "save_steps": steps, "eval_fraction": 0.1,
              "eval_rows": 0, "report_prompts": ["Who are you?"], "output_name": f"gpu-{adapter}"}
    recipe = home / f"{adapter}.yaml"
    recipe.write_text(json.dumps(config))
    env = {**os.environ, "FINETUNE_LAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with GpuMemoryPeak() as memory:
        done = subprocess.run([sys.executable, "-m", "training.run", "--config", str(recipe)], cwd=ROOT,
                              env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run = home / "runs" / f"gpu-{adapter}"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").exists() else []
    losses = [e["loss"] for e in log if e.get("loss") is not None]
    rates = sorted(e["tokens_per_s"] for e in log if e.get("tokens_per_s"))
    manifest = RunFolder(run).manifest()
    return {"adapter": adapter, "rc": done.returncode, "wall_s": round(wall, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "median_tokens_per_s": rates[len(rates) // 2] if rates else None,
            "peak_gpu_used_mib": memory.peak_mib, "adapter_saved": (run / "adapter").is_dir(),
            "held_out": manifest.held_out_line() if manifest else None,
            "stderr_tail": done.stderr[-1500:] if done.returncode else ""}


def qlora_layers(model: Path) -> dict:
    """What the QLoRA path builds on CUDA: how many 4-bit layers, and the footprint."""
    import torch

    from training.config import config_from_dict
    from training.model_setup import load_base

    cfg = config_from_dict({"model": str(model), "adapter": "qlora"})
    base = load_base(cfg)
    base = base[0] if isinstance(base, tuple) else base
    kinds = [type(m).__name__ for m in base.modules()]
    out = {"linear4bit": kinds.count("Linear4bit"), "device": str(next(base.parameters()).device),
           "footprint_mib": round(base.get_memory_footprint() / 2**20, 1),
           "cuda_allocated_mib": round(torch.cuda.memory_allocated() / 2**20, 1)}
    del base
    torch.cuda.empty_cache()
    return out


def decode_rate(model: Path, tokens: int = 128, adapter: Path | None = None) -> dict:
    """Greedy decode of `tokens` new tokens through the chat path, and the model's dtype; with
    `adapter`, Compare too (base and tuned panes, on its compiled step where one was asked for)."""
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.models import load_model

    loaded = load_model(str(model))
    if loaded.compiled is not None:  # FINETUNE_LAB_DECODE=compiled: CUDA graphs on a GPU
        loaded.compiled.settled.wait()
    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    list(stream_reply(loaded, messages, settings))  # warm-up
    last = list(stream_reply(loaded, messages, settings))[-1]
    figures = {"dtype": str(loaded.model.dtype), "device": str(loaded.model.device), "decode": loaded.decode,
               "status": last.stats, "compile_s": round(loaded.compiled.seconds, 1) if loaded.compiled else None,
               "new_tokens": last.new_tokens, "tokens_per_s": round(last.new_tokens / last.seconds, 1)}
    return {**figures, **(compare_rate(loaded, adapter, settings, last.seconds) if adapter else {})}


def compare_rate(loaded, adapter: Path, settings, single_s: float) -> dict:
    """Compare's rate with `adapter` attached, after its compiled step (if any) is ready."""
    from core.inference.adapters import attach_tuned
    from core.inference.compare import stream_compare

    tuned = attach_tuned(loaded, str(adapter))
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    list(stream_compare(loaded, tuned, messages, messages, settings))  # warm-up; starts Compare's compile
    steps = list(loaded.compiled.compare.values()) if loaded.compiled else []
    for step in steps:
        step.settled.wait()
    list(stream_compare(loaded, tuned, messages, messages, settings))
    start = time.perf_counter()
    base, tuned_reply = list(stream_compare(loaded, tuned, messages, messages, settings))[-1]
    seconds = time.perf_counter() - start
    return {"compare_status": tuned_reply.stats, "compare_compile_s": [round(step.seconds, 1) for step in steps],
            "compare_tokens_per_s": round(max(base.new_tokens, tuned_reply.new_tokens) / seconds, 1),
            "compare_over_single": round(seconds / single_s, 3)}


def compiled_decode_rate(model: Path, adapter: Path, timeout: float = 900) -> dict:
    """decode_rate with FINETUNE_LAB_DECODE=compiled, in a process of its own (settings are read once)."""
    try:
        out = subprocess.run([sys.executable, __file__, "--chat-only", str(model), "--adapter", str(adapter)],
                             capture_output=True, text=True,
                             env={**os.environ, "FINETUNE_LAB_DECODE": "compiled"}, timeout=timeout)
    except subprocess.TimeoutExpired as late:
        return {"error": f"no answer in {timeout:.0f} s", "stderr_tail": (late.stderr or b"")[-800:].decode(errors="replace")}
    return json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=Path)
    parser.add_argument("--chat-only", type=Path, help="print decode_rate of this model folder and stop")
    parser.add_argument("--adapter", type=Path, help="with --chat-only: a LoRA adapter folder for Compare")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--decode-only", action="store_true", help="chat decoding alone, with a random adapter")
    parser.add_argument("--compile-timeout", type=float, default=900, help="seconds for the compiled decode's process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.chat_only:
        print(json.dumps(decode_rate(args.chat_only, adapter=args.adapter)))
        return

    home = Path("/tmp/ftl-gpu-check")
    shutil.rmtree(home, ignore_errors=True)
    (home / "runs").mkdir(parents=True)
    model = home / "model"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    result = {"gpu": gpu, "torch": torch.__version__,
              "params": build_model(args.shape, model)}
    if args.decode_only:
        adapter = Path(make_adapter(home / "random-adapter", model))
    else:
        result["qlora_layers"] = qlora_layers(model)
        result["runs"] = [train_once(model, adapter, args.steps, home) for adapter in ("qlora", "lora", "full")]
        adapter = home / "runs" / "gpu-lora" / "adapter"  # the LoRA run's, for Compare
    result["chat"] = decode_rate(model, adapter=adapter)
    keep(result, args.out)
    result["chat_compiled"] = compiled_decode_rate(model, adapter, args.compile_timeout)
    keep(result, args.out)
    print(json.dumps(result))


def keep(result: dict, out: Path | None) -> None:
    """The figures so far, written whole to `out` (if given)."""
    if out:
        out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
