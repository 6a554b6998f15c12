"""The tiny run: a real LoRA run of the `tiny` recipe that many tests chat with, export, publish
or vote on, trained once per suite. conftest.py imports these fixtures."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

TINY_RUN_PHASES: list[str] = []  # filled by tiny_run, polling the run as the Train tab does


@pytest.fixture(scope="session")
def tiny_run(data_home, tmp_path_factory):
    """A real LoRA run of the `tiny` recipe, started through training.jobs and awaited. Under
    `make test`'s two workers, the first to need it trains it and the other copies the finished
    folder into its own data dir (pytest-xdist's recipe for a session fixture built once)."""
    from core.paths import file_lock
    from core.runs import RunFolder

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _train_tiny_run()
    shared = tmp_path_factory.getbasetemp().parent / "tiny-fixture"  # this session's, both workers'
    phases = shared.with_suffix(".phases.json")
    with file_lock(shared.with_suffix(".lock")):
        if phases.is_file():
            TINY_RUN_PHASES.extend(json.loads(phases.read_text()))
            return Path(shutil.copytree(shared, RunFolder.named("tiny-fixture").path))
        path = _train_tiny_run()
        shutil.copytree(path, shared)
        phases.write_text(json.dumps(TINY_RUN_PHASES))
        return path


def _train_tiny_run() -> Path:
    from training import jobs
    from training.config import load_config

    run = jobs.start(load_config("tiny", output_name="tiny-fixture"))
    phases, deadline = TINY_RUN_PHASES, time.time() + 600  # what the Train tab shows between steps
    while jobs.live_pid(run) and time.time() < deadline:
        phase = jobs.read_status(run).phase
        if phase and phase not in phases:
            phases.append(phase)
        time.sleep(0.2)
    status = jobs.wait("tiny-fixture", timeout=10)
    assert status.state == "completed", status.error
    return run.path


@pytest.fixture(scope="session")
def tiny_run_phases(tiny_run) -> list[str]:
    """The phases the tiny run showed between its steps, as the Train tab's poll saw them."""
    return TINY_RUN_PHASES
