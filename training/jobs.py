"""Start, stop, resume and attach to the training subprocess; read its run folder.

    python -c "from training.jobs import list_runs; print(list_runs())"

A job is `python -m training.run --run-dir RUN` in its own session (so a UI crash or reload
never kills it, and the UI never dies with it). All state lives in the run folder: job.json
(pid, command), log.jsonl, status.json (written by the run when it ends), stderr.log.
`progress_line` turns one log.jsonl entry into the line the run prints; the Train tab shares
its `duration_text`. Importing this module stays light (no torch), since the app imports it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import check_name, runs_dir, write_json
from training.config import TrainConfig, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_MARKER = "stop-requested"


class JobBusy(RuntimeError):
    """Another training job is running; one runs at a time."""


def default_run_name(cfg: TrainConfig) -> str:
    data = Path(cfg.dataset).stem.replace(":", "-") or "data"
    return check_name(f"{cfg.objective}-{cfg.adapter}-{data}-{time.strftime('%Y%m%d-%H%M%S')}", "run name")


def command_for(run_dir: Path, resume: bool = False) -> list[str]:
    """The exact command the job runs; the UI shows it as the CLI equivalent."""
    cmd = [sys.executable, "-m", "training.run", "--run-dir", str(run_dir)]
    return cmd + (["--resume"] if resume else ["--config", str(run_dir / "config.yaml")])


# What the training process inherits: no tokens, admin key or --auth string ever reaches it.
_CHILD_ENV_PREFIXES = ("PATH", "HOME", "USER", "LANG", "LC_", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHON",
                       "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_", "FINETUNE_LAB_HOME", "FINETUNE_LAB_MODELS",
                       "FINETUNE_LAB_DTYPE", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HUB_DISABLE",
                       "HF_ENDPOINT", "HF_DATASETS_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM", "TORCH",
                       "PYTORCH_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NCCL_", "ACCELERATE_", "SPACE_ID")
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "AUTH")


def child_env(threads: int | None = None) -> dict:
    """The training process's environment: an allow-list, minus anything that names a secret."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(_CHILD_ENV_PREFIXES) and not any(word in k for word in _SECRET_WORDS)}
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def start(cfg: TrainConfig, threads: int | None = None, resume_dir: Path | None = None) -> Path:
    """Launch a run (or resume one) as a detached subprocess; raise JobBusy if one is live.

    The busy check, the run folder and the launch happen under one file lock, so two Starts
    (two browser tabs, two API calls) never launch two jobs or share one folder."""
    import fcntl

    cfg.validate()
    with open(runs_dir() / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = current_job()
        if busy:
            raise JobBusy(f"Training job '{busy}' is still running: stop it or wait for it to finish.")
        run_dir = resume_dir or runs_dir() / check_name(cfg.output_name or default_run_name(cfg), "run name")
        if resume_dir is None and run_dir.exists():
            raise ValueError(f"A run named '{run_dir.name}' already exists: pick another output_name.")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        (run_dir / "status.json").unlink(missing_ok=True)
        (run_dir / STOP_MARKER).unlink(missing_ok=True)
        cmd = command_for(run_dir, resume=resume_dir is not None)
        with open(run_dir / "stderr.log", "ab") as err:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(threads), stdout=err, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        record_job(run_dir, proc.pid, cmd)
    return run_dir


def record_job(run_dir: Path, pid: int, command: list[str]) -> None:
    """job.json: which process runs this folder (a pid plus its start time, against pid reuse)."""
    write_json(run_dir / "job.json", {"pid": pid, "start_ticks": _proc_stat(pid)[1],
                                      "command": command, "started": time.time()})


def is_live(run_dir: Path) -> bool:
    return _live_pid(run_dir) is not None


def resume(name: str, threads: int | None = None) -> Path:
    """Continue a stopped or crashed run from its last checkpoint."""
    run_dir = run_path(name)
    if read_status(run_dir).state == "completed":
        raise ValueError(f"Run '{name}' already completed.")
    return start(load_config(run_dir / "config.yaml"), threads, resume_dir=run_dir)


def stop(name: str) -> bool:
    """Ask a running job to save a checkpoint and stop (SIGTERM). False if it was not running."""
    run_dir = run_path(name)
    pid = _live_pid(run_dir)
    if pid is None:
        return False
    # A SIGTERM in the first instant of start-up ends the process before its handler exists;
    # the marker says that this end was asked for.
    (run_dir / STOP_MARKER).touch()
    os.kill(pid, signal.SIGTERM)
    return True


def wait(name: str, timeout: float = 600) -> "RunStatus":
    """Block until the job ends (for tests and the CLI); return its final status."""
    deadline = time.time() + timeout
    while _live_pid(run_path(name)) and time.time() < deadline:
        time.sleep(0.5)
    return read_status(run_path(name))


def run_path(name: str) -> Path:
    path = runs_dir() / check_name(name, "run name")
    if not path.is_dir():
        raise ValueError(f"No run named '{name}'.")
    return path


def _live_pid(run_dir: Path) -> int | None:
    """The job's pid while it runs; None once it ended (or the pid now names another process)."""
    try:
        job = json.loads((run_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None
    pid = job.get("pid")
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own finished child
        if waited == pid:
            return None
    except (ChildProcessError, TypeError):
        pass  # not our child (started by an earlier UI process)
    try:
        os.kill(pid, 0)
    except (OSError, TypeError):
        return None
    state, started = _proc_stat(pid)
    if state == "Z" or (started is not None and job.get("start_ticks") not in (None, started)):
        return None
    return pid


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state letter, start time in clock ticks) from /proc/PID/stat; (None, None) without /proc.

    The start time tells our job from a later process that reused its pid. (Reading
    /proc/PID/cmdline for this was unreliable: it can read empty while a busy process lives.)
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    return fields[0], int(fields[19])


def current_job() -> str | None:
    """The name of the running job, if any."""
    for run_dir in runs_dir().iterdir():
        if (run_dir / "job.json").is_file() and _live_pid(run_dir):
            return run_dir.name
    return None


@dataclass
class RunStatus:
    """Everything the UI shows about a run, read from its folder."""

    name: str
    state: str  # running | completed | stopped | failed | interrupted
    step: int = 0
    max_steps: int = 0
    eta_s: float | None = None
    tokens_per_s: float | None = None
    log: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    error: str = ""


def read_log(run_dir: Path) -> list[dict]:
    """The run's log entries. A process killed mid-write leaves half a line, and the resumed
    run's next entry may land on it: each line is split where an entry starts, and only the
    pieces that parse are kept."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        for piece in line.replace('{"step"', '\n{"step"').split("\n"):
            try:
                entry = json.loads(piece)
            except ValueError:
                continue
            if isinstance(entry, dict) and "step" in entry:
                entries.append(entry)
    return entries


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


def read_status(run_dir: Path) -> RunStatus:
    """Attach to a run: works the same from a fresh UI process or after a page reload."""
    log = read_log(run_dir)
    last = next((e for e in reversed(log) if e.get("loss") is not None), log[-1] if log else {})
    status = _read_json(run_dir / "status.json")
    if _live_pid(run_dir):
        state = "running"
    elif status:
        state = status["state"]
    elif (run_dir / STOP_MARKER).is_file():  # stopped before its SIGTERM handler existed
        state = "stopped"
    else:  # killed (SIGKILL, out of memory, power) before it could say how it ended
        state = "interrupted"
    error = status.get("error", "")
    if state == "interrupted":
        error = (f"Interrupted: resume with `python cli.py train --run-dir {run_dir} --resume` "
                 "(or the Resume button).\n" + _tail(run_dir / "stderr.log", 5))
    elif state == "failed" and not error:
        error = _tail(run_dir / "stderr.log")
    return RunStatus(run_dir.name, state, last.get("step", 0), last.get("max_steps", 0),
                     last.get("eta_s"), last.get("tokens_per_s"), log,
                     _read_json(run_dir / "manifest.json"), error)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def list_runs() -> list[RunStatus]:
    """Every run folder, newest first."""
    folders = sorted(runs_dir().iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    return [read_status(p) for p in folders if p.is_dir() and (p / "config.yaml").is_file()]


def delete(name: str) -> None:
    """Delete a run folder; refuses while the run is live."""
    run_dir = run_path(name)
    if _live_pid(run_dir):
        raise JobBusy(f"Run '{name}' is running: stop it first.")
    shutil.rmtree(run_dir)
