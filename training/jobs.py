"""Start, stop, resume and attach to the training subprocess (process control only).

    python -c "from training.jobs import list_runs; print(list_runs())"

A job is `python -m training.run --run-dir RUN` in its own session (so a UI crash or reload
never kills it, and the UI never dies with it), or `python -m training.answer_eval --run RUN`
to score a finished run's held-out answers again: one job at a time, either kind. All state lives in the run folder
(core.runs.RunFolder), which process runs it in training.processes; `read_status` turns it into
what the UI shows, from any process.
Importing this module stays light (no torch), since the app imports it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core import threads
from core.data.file_types import EXTENSIONS
from core.errors import LabError
from core.paths import check_name, runs_dir
from core.runs import Manifest, RunFolder, all_runs
from training import objectives
from training.config import TrainConfig, load_config
from training.effect import check_effect
from training.processes import is_live, live_pid, record_job
from training.progress import read_log, read_phase


REPO_ROOT = Path(__file__).resolve().parent.parent

# What the training process inherits: no tokens, admin key or --auth string ever reaches it.
_CHILD_ENV_PREFIXES = ("PATH", "HOME", "USER", "LANG", "LC_", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHON",
                       "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_", "FINETUNE_LAB_HOME", "FINETUNE_LAB_MODELS",
                       "FINETUNE_LAB_DTYPE", "FINETUNE_LAB_DECODE", "FINETUNE_LAB_CPU_KERNELS",
                       "FINETUNE_LAB_GGUF_RUNTIME", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                       "HF_HUB_DISABLE", "HF_ENDPOINT", "TRACKIO_DIR", "HF_DATASETS_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM",
                       "TORCH", "PYTORCH_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NCCL_", "ACCELERATE_", "SPACE_ID",
                       "ATEN_", "ONEDNN_", "DNNL_")  # the CPU features torch may use: the app's and the job's alike
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "AUTH")


class JobBusy(LabError):
    """Another training job is running; one runs at a time."""


def default_run_name(cfg: TrainConfig) -> str:
    """objective-adapter-data-time, where data is the file's stem or the Hub id's name, subset
    and split ('owner/name:sub@test' -> 'name-sub-test')."""
    path = Path(cfg.dataset)
    data = path.stem if path.suffix.lower() in EXTENSIONS else path.name
    data = re.sub(r"[^A-Za-z0-9_-]+", "-", data).strip("-") or "data"
    return check_name(f"{cfg.objective}-{cfg.adapter}-{data}-{time.strftime('%Y%m%d-%H%M%S')}", "run name")


def command_for(run: RunFolder, resume: bool = False) -> list[str]:
    """The exact command the job runs; the UI shows it as the CLI equivalent. With processes > 1
    it is the same module under accelerate launch (--multi_gpu also means several CPU
    processes over gloo; --cpu would start only one)."""
    processes = load_config(run.config).processes
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = (launcher if processes > 1 else [sys.executable]) + ["-m", "training.run", "--run-dir", str(run.path)]
    return cmd + (["--resume"] if resume else ["--config", str(run.config)])


def child_env(thread_count: int) -> dict:
    """The training process's environment: an allow-list, minus anything that names a secret."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(_CHILD_ENV_PREFIXES) and not any(word in k for word in _SECRET_WORDS)}
    return {**env, "PYTHONUNBUFFERED": "1", **threads.job_env(thread_count)}


def start(cfg: TrainConfig, thread_count: int | None = None, resume_run: RunFolder | None = None) -> RunFolder:
    """Launch a run (or resume one) as a detached subprocess; raise JobBusy if a job is live.
    The job gets every core but the one chat keeps (core.threads), on start and resume alike."""
    cfg = cfg.checked_for_start()
    with _no_other_job():
        run = resume_run or RunFolder.named(cfg.output_name or default_run_name(cfg))
        if resume_run is None and (refusal := start_refusal(run)):
            raise LabError(refusal)
        run.path.mkdir(parents=True, exist_ok=True)
        run.config.write_text(cfg.to_yaml())
        run.status_file.unlink(missing_ok=True)  # a resumed run's last words
        _launch(run, command_for(run, resume=resume_run is not None),
                max(1, (thread_count or threads.for_job()) // cfg.processes))
    return run


def evaluate(name: str, rows: int = 0, thread_count: int | None = None) -> RunFolder:
    """Score a finished run's held-out answers again, as a job like training: the same lock,
    phase file and status, so the Train tab follows it and no second job starts meanwhile."""
    run = RunFolder.existing(name)
    objectives.require_scored_answers(run.name, run.manifest())
    with _no_other_job():
        cmd = [sys.executable, "-m", "training.answer_eval", "--run", run.name, "--rows", str(rows)]
        _launch(run, cmd, thread_count or threads.for_job())
    return run


def effect(name: str, embedder: str = "", thread_count: int | None = None) -> RunFolder:
    """Map where a finished run's tuning helped or hurt (training.effect), as a job."""
    run = RunFolder.existing(name)
    check_effect(run, embedder)
    with _no_other_job():
        cmd = [sys.executable, "-m", "training.effect", "--run", run.name, "--embedder", embedder or ""]
        _launch(run, cmd, thread_count or threads.for_job())
    return run


@contextmanager
def _no_other_job():
    """Hold the start lock, and refuse while a job runs: the busy check and the launch happen
    under one file lock, so two Starts (two browser tabs, two API calls) never launch two jobs."""
    import fcntl

    with open(runs_dir() / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = current_job()
        if busy:
            raise JobBusy(f"Job '{busy}' is still running: stop it or wait for it to finish.")
        yield


def _launch(run: RunFolder, cmd: list[str], thread_count: int) -> None:
    """Start `cmd` detached, in its own session, with the run folder's stderr log."""
    for stale in (run.stop_marker, run.phase_file):
        stale.unlink(missing_ok=True)
    with open(run.process_log, "ab") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(thread_count), stdout=err, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    record_job(run, proc.pid, cmd)


def resume(name: str, thread_count: int | None = None) -> RunFolder:
    """Continue a stopped or interrupted run from its newest complete checkpoint."""
    run = RunFolder.existing(name)
    if refusal := resume_refusal(run):
        raise LabError(refusal)
    return start(load_config(run.config), thread_count, resume_run=run)


def start_refusal(run: RunFolder) -> str:
    """Why a new run cannot start in this folder ('' when it can): the Train tab's Start and a
    named `training.run` alike. A second run there would mix its steps, checkpoints and log with
    the first's, live or done."""
    if not run.path.exists():
        return ""
    if is_live(run):
        return f"Run '{run.name}' is running: stop it first, or pick another output_name."
    return f"A run named '{run.name}' already exists: pick another output_name, or resume it."


def resume_refusal(run: RunFolder) -> str:
    """Why a resume cannot continue this run folder ('' when it can): the UI's Resume and
    `training.run --resume` alike."""
    if not run.config.is_file():  # else a typo'd name would train a new run from scratch
        return f"Nothing to resume: no run '{run.name}' (start it instead)."
    if read_status(run).state == "completed":
        return f"Run '{run.name}' already completed: nothing to resume."
    return ""


def stop(name: str) -> bool:
    """Ask a running job to save a checkpoint and stop. False if it was not running."""
    run = RunFolder.existing(name)
    pid = live_pid(run)
    if pid is None:
        return False
    # A SIGTERM in the first instant of start-up ends the process before its handler exists;
    # the marker says that this end was asked for. Every rank of a multi-process job reads the
    # marker at its step end and they agree on the step to stop at (training.callbacks); a
    # SIGTERM would reach the launcher, which kills its workers before they can save.
    run.stop_marker.touch()
    if load_config(run.config).processes == 1:
        os.kill(pid, signal.SIGTERM)
    return True


def wait(name: str, timeout: float = 600) -> "RunStatus":
    """Block until the job ends (for tests and the CLI); return its final status."""
    run, deadline = RunFolder.existing(name), time.time() + timeout
    while live_pid(run) and time.time() < deadline:
        time.sleep(0.5)
    return read_status(run)


def current_job() -> str | None:
    """The name of the running job, if any."""
    for path in runs_dir().iterdir():
        run = RunFolder(path)
        if run.job_file.is_file() and is_live(run):
            return run.name
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
    manifest: Manifest | None = None  # once the run has finished
    error: str = ""
    phase: str = ""  # what a running job does outside its steps: loading, evaluating, saving


def read_status(run: RunFolder) -> RunStatus:
    """Attach to a run: works the same from a fresh UI process or after a page reload."""
    log = read_log(run)
    last = next((e for e in reversed(log) if e.get("loss") is not None), log[-1] if log else {})
    status = run.status()
    if is_live(run):
        state = "running"
    elif status:
        state = status["state"]
    elif run.stop_marker.is_file():  # stopped before its SIGTERM handler existed
        state = "stopped"
    else:  # killed (SIGKILL, out of memory, power) before it could say how it ended
        state = "interrupted"
    error = status.get("error", "")
    if state == "interrupted":  # with the reason the run left, if it could leave one
        error = (f"Interrupted: resume with `{resume_command(run)}` "
                 "(or the Resume button).\n" + (error + "\n" if error else "") + _tail(run.process_log, 5))
    elif state == "failed" and not error:
        error = _tail(run.process_log)
    return RunStatus(run.name, state, last.get("step", 0), last.get("max_steps", 0), last.get("eta_s"),
                     last.get("tokens_per_s"), log, run.manifest(), error,
                     read_phase(run) if state == "running" else "")


def resume_command(run: RunFolder) -> str:
    """The command that resumes `run`, quoted to paste into a shell."""
    return f"python cli.py train --run-dir {shlex.quote(str(run.path))} --resume"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def list_runs() -> list[RunStatus]:
    """Every run folder, newest first."""
    return [read_status(run) for run in all_runs()]


def delete(name: str) -> None:
    """Delete a run folder; refuses while the run is live."""
    run = RunFolder.existing(name)
    if is_live(run):
        raise JobBusy(f"Run '{name}' is running: stop it first.")
    shutil.rmtree(run.path)
