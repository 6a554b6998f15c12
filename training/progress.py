"""Reading a run's progress: its log entries, and the one-line form the console and the UI show.

    python -c "from training.progress import read_log; from core.runs import RunFolder; print(read_log(RunFolder.named('NAME')))"

The trainer process appends to the run's log (training.callbacks) and prints `progress_line` of each
entry; the Train tab reads the same file. Light to import: no torch, no job control.
"""
from __future__ import annotations

import json
import os

from core.paths import write_json
from core.runs import RunFolder


def read_log(run: RunFolder) -> list[dict]:
    """The run's log entries. A process killed mid-write leaves half a line, and the resumed
    run's next entry may land on it: each line is split where an entry starts, and only the
    pieces that parse are kept."""
    if not run.log.is_file():
        return []
    entries = []
    for line in run.log.read_text(errors="replace").splitlines():
        for piece in line.replace('{"step"', '\n{"step"').split("\n"):
            try:
                entry = json.loads(piece)
            except ValueError:
                continue
            if isinstance(entry, dict) and "step" in entry:
                entries.append(entry)
    return entries


def say_phase(run: RunFolder, text: str) -> None:
    """Tell the console and the Train tab what the run does outside its training steps (the
    evaluations before and after, saving, answering held-out rows); "" once the steps start.
    Only the main process of a multi-process job speaks."""
    if os.environ.get("RANK", "0") != "0":
        return
    if not text:
        run.phase_file.unlink(missing_ok=True)
        return
    print(text, flush=True)
    write_json(run.phase_file, {"phase": text})


def read_phase(run: RunFolder) -> str:
    try:
        return json.loads(run.phase_file.read_text()).get("phase", "")
    except (OSError, ValueError):
        return ""


def trim_log(run: RunFolder, step: int) -> None:
    """Drop log entries past the checkpoint a resume restarts from: they are trained again."""
    kept = [entry for entry in read_log(run) if entry["step"] <= step]
    tmp = run.log.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
    tmp.replace(run.log)


def duration_text(seconds: float) -> str:
    """'45 s' or '3 min 07 s': the Train tab's progress bar and the console line both use it."""
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(entry: dict) -> str:
    """'step 3/20 15% | loss 2.955 | lr 2.50e-04 | 214 tok/s | 7 s elapsed | ETA 38 s'."""
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
    parts.append(f"{duration_text(entry['elapsed_s'])} elapsed")
    if entry.get("eta_s") is not None:
        parts.append(f"ETA {duration_text(entry['eta_s'])}")
    return " | ".join(parts)


def batch_plan(cfg, trainer) -> dict:
    """The effective batch (rows per optimizer step over all processes) and the tokens per step
    it means for this data, stated once at the start."""
    world = trainer.args.world_size
    rows = cfg.batch_size * cfg.grad_accum * world
    data = trainer.train_dataset
    lengths = [len(ids) for ids in data["input_ids"]] if "input_ids" in data.column_names else []
    mean = sum(lengths) / len(lengths) if lengths else 0
    text = (f"Effective batch {rows} rows = batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x "
            f"{world} process(es)" + (f" · about {round(rows * mean):,} tokens per step "
                                      f"(rows average {mean:.0f} tokens)" if mean else ""))
    return {"rows_per_step": rows, "tokens_per_step": round(rows * mean), "text": text}


def run_as_job(run: RunFolder, label: str, work) -> int:
    """Run `work(progress)` as a job on a finished run (Evaluate again, the effect map): its
    progress goes to the run's phase, a LabError to its status (beside how training ended) and
    to stderr. Returns the exit code."""
    import sys

    from core.errors import LabError

    try:
        work(lambda text: say_phase(run, text))
    except LabError as exc:
        write_json(run.status_file, {**run.status(), "error": f"{label}: {exc}"})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        say_phase(run, "")
    return 0

