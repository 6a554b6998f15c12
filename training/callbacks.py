"""Trainer callbacks: the JSONL progress log the UI tails, and a clean stop on request.

Each log line: step, max_steps, epoch, loss, eval_loss, learning_rate, tokens_per_s,
elapsed_s, eta_s. Used by training.run; read by training.jobs. The same entry is echoed to the
console as one readable line (`progress_line`), which is what the CLI user watches.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogger(TrainerCallback):
    """Append one JSON line per logging event (rank 0 only)."""

    def __init__(self, path: Path, resume: bool = False, echo: bool = True):
        self.path, self.echo = path, echo
        if not resume:
            path.write_text("")
        self.start = time.time()
        self.first_step = 0
        self.last_tokens, self.last_time = None, self.start

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.time(), state.global_step
        self.last_time = self.start
        if state.global_step == 0:
            self.last_tokens = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        done = state.global_step - self.first_step
        per_step = (now - self.start) / done if done else None
        tokens = logs.get("num_tokens")
        rate = None
        if tokens is not None and self.last_tokens is not None and now > self.last_time:
            rate = (tokens - self.last_tokens) / (now - self.last_time)
        if tokens is not None:
            self.last_tokens, self.last_time = tokens, now
        entry = {
            "step": state.global_step, "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0, 4), "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"), "learning_rate": logs.get("learning_rate"),
            "tokens_per_s": round(rate, 1) if rate else None, "elapsed_s": round(now - self.start, 2),
            "eta_s": round(per_step * (state.max_steps - state.global_step), 1) if per_step else None,
            "time": now,
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self.echo and (entry["loss"] is not None or entry["eval_loss"] is not None):
            print(progress_line(entry), flush=True)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(entry: dict) -> str:
    """'step 3/20 15% | loss 2.955 | lr 2.5e-04 | 214 tok/s | 0:07 elapsed | ETA 0:38'."""
    step, total = entry["step"], entry["max_steps"]
    if total:
        parts = [f"step {step}/{total} {100 * step // total}%"]
    else:  # the evaluation before training starts
        parts = ["before training"]
    if entry.get("loss") is not None:
        parts.append(f"loss {float(entry['loss']):.4g}")
    if entry.get("eval_loss") is not None:
        parts.append(f"eval loss {float(entry['eval_loss']):.4g}")
    if entry.get("learning_rate") is not None:
        parts.append(f"lr {float(entry['learning_rate']):.2e}")
    if entry.get("tokens_per_s"):
        parts.append(f"{entry['tokens_per_s']:.0f} tok/s")
    parts.append(f"{clock(entry['elapsed_s'])} elapsed")
    if entry.get("eta_s") is not None:
        parts.append(f"ETA {clock(entry['eta_s'])}")
    return " | ".join(parts)


class StopOnRequest(TrainerCallback):
    """When the flag is set (SIGTERM), save a checkpoint at the end of this step and stop."""

    def __init__(self, flag: dict):
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.flag["flag"]:
            control.should_save = True
            control.should_training_stop = True
        return control
