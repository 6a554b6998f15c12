"""Trainer callbacks: the JSONL progress log the UI tails, and a clean stop on request.

Each log line: step, max_steps, epoch, loss, eval_loss, learning_rate, grad_norm, tokens_per_s,
elapsed_s, eta_s; for DPO and KTO also rewards_accuracies and rewards_margins (and their eval_ twins). Used by training.fit; read by training.jobs. The same entry is echoed to the
console as one readable line (`training.progress.progress_line`), which the CLI user watches.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from training.progress import progress_line


class JsonlLogger(TrainerCallback):
    """Append one JSON line per logging event (rank 0 only)."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
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
            "grad_norm": round(logs["grad_norm"], 4) if logs.get("grad_norm") is not None else None,
            "tokens_per_s": round(rate, 1) if rate else None, "elapsed_s": round(now - self.start, 2),
            "eta_s": round(per_step * (state.max_steps - state.global_step), 1) if per_step else None,
            "time": now,
        }
        for key in ("rewards/accuracies", "rewards/margins", "eval_rewards/accuracies", "eval_rewards/margins"):
            if key in logs:  # the preference objectives (DPO, KTO)
                entry[key.replace("/", "_")] = round(logs[key], 4)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if entry["loss"] is not None or entry["eval_loss"] is not None:
            print(progress_line(entry), flush=True)


class StopOnRequest(TrainerCallback):
    """When the flag is set (SIGTERM) or the run's stop marker exists, save a checkpoint at the
    end of this step and stop. Under DDP the ranks agree first (one all-reduce of one number),
    so that they all stop at the same step: a rank that stopped alone would hang the others."""

    def __init__(self, flag: dict, marker: Path | None = None):
        self.flag, self.marker = flag, marker

    def on_step_end(self, args, state, control, **kwargs):
        wanted = self.flag["flag"] or bool(self.marker and self.marker.is_file())
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            vote = torch.tensor([1.0 if wanted else 0.0], device=args.device)  # NCCL: on the GPU
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
            wanted = bool(vote.item())
        if wanted:
            self.flag["flag"] = True  # training.fit then reports "stopped", not "completed"
            control.should_save = True
            control.should_training_stop = True
        return control
