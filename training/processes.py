"""Which process runs a run folder: recorded as a pid and its start time (a pid the system gave
to another process since does not count), and whether that process still lives.

    python -c "from core.runs import RunFolder; from training.processes import is_live; print(is_live(RunFolder.named('tiny')))"

training.jobs records the jobs it launches; training.run records itself when started by hand.
"""
from __future__ import annotations

import os
import time

from core.paths import write_json
from core.runs import RunFolder, read_json


def record_job(run: RunFolder, pid: int, command: list[str]) -> None:
    """Record which process runs this folder: a pid plus its start time (against pid reuse)."""
    write_json(run.job_file, {"pid": pid, "created": _created(pid), "command": command, "started": time.time()})


def live_pid(run: RunFolder) -> int | None:
    """The job's pid while it runs; None once it ended (or the pid now names another process)."""
    import psutil

    job = read_json(run.job_file)
    pid = job.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own finished child
        if waited == pid:
            return None
    except ChildProcessError:
        pass  # not our child (started by an earlier UI process)
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        same = job.get("created") in (None, process.create_time())
    except psutil.Error:
        return None
    return pid if alive and same else None


def _created(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_live(run: RunFolder) -> bool:
    return live_pid(run) is not None
