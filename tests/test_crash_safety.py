"""Crash safety on the real model: SIGKILL at the worst moments, racing Starts, torn logs,
and malformed data that must end in one clear line, never a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.runs import RunFolder
from tests.conftest import ROOT
from tests.test_training import manifest, wait_for
from training import jobs
from training.config import load_config
from training.progress import read_log

pytestmark = pytest.mark.slow


def kill_job(run: RunFolder) -> None:
    os.kill(json.loads(run.job_file.read_text())["pid"], signal.SIGKILL)


def test_kills_inside_a_save_and_at_random_moments_always_resume(data_home):
    """SIGKILL inside a checkpoint save (forced: the save pauses before trainer_state.json),
    then 3 kills at random moments; every resume goes on, and the run completes exactly once."""
    import random

    from core.runs import finished_runs

    name, planned = "kill-often", 16
    run = RunFolder.named(name)
    run_dir = run.path
    cmd = [sys.executable, "-m", "tests.slow_save_run", "--config", "tiny", "--run-dir", str(run_dir),
           "--max_steps", str(planned), "--save_steps", "3", "--report_prompts", "Who are you?", "--eval_rows", "0"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "in-save").is_file(), 300, "a checkpoint save to begin")
    torn = ROOT / (run_dir / "in-save").read_text()
    assert torn.is_dir() and not (torn / "trainer_state.json").exists(), "the kill lands inside the save"
    first.kill()
    first.wait()
    wait_for(lambda: jobs.read_status(run).state == "interrupted", 30, "the CLI run to show as interrupted")
    assert f"--run-dir {run_dir} --resume" in jobs.read_status(run).error

    rng, kills, step = random.Random(1234), 1, 0
    while kills < 4:
        jobs.resume(name, thread_count=1)
        wait_for(lambda: jobs.read_status(run).step > step or not jobs.is_live(run), 300, "progress")
        time.sleep(rng.uniform(0.0, 2.5))  # anywhere in a step, a save, or a log write
        if not jobs.is_live(run):
            break
        kill_job(run)
        kills += 1
        wait_for(lambda: not jobs.is_live(run), 30, "the kill")
        step = jobs.read_status(run).step
        assert name not in [r.name for r in finished_runs()], "an unfinished run's adapter was listed"
    assert kills == 4, "every kill must land before the run ends"
    jobs.resume(name, thread_count=1)
    status = jobs.wait(name, timeout=600)
    assert status.state == "completed", status.error
    assert manifest(run_dir)["steps"] == planned and name in [r.name for r in finished_runs()]
    trained = [e["step"] for e in status.log if e.get("loss") is not None]
    assert trained == list(range(1, planned + 1)), "the log keeps each step once, however often it was killed"


@pytest.mark.parametrize("content, suffix, message", [
    ('{"question": "Hi", "answer": "Hello"}\n{"question": "Yo", "answer": null}\n', ".jsonl",
     "error: row 2: 'answer' is empty"),
    ("question,answer\nHi,Hello\nWho\n", ".csv", "error: row 2: 'answer' is empty"),
    ("question,answer\nHi,Hello\nA,B,C\n", ".csv", "error: bad.csv: could not be read as csv"),
])
def test_malformed_datasets_are_one_line_errors_in_the_cli(tmp_path, content, suffix, message):
    data = tmp_path / f"bad{suffix}"
    data.write_text(content)
    out = subprocess.run([sys.executable, "cli.py", "train", "--dataset", str(data), "--max_steps", "1",
                          "--eval_fraction", "0", "--run-dir", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(message), out.stderr[-500:]


def test_two_starts_at_once_launch_one_job(data_home):
    import threading

    outcomes = []

    def start(name):
        try:
            outcomes.append(jobs.start(load_config("tiny", output_name=name, max_steps=200)).name)
        except jobs.JobBusy:
            outcomes.append("busy")

    racers = [threading.Thread(target=start, args=(f"race-{i}",)) for i in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    started = [o for o in outcomes if o != "busy"]
    try:
        assert len(started) == 1 and outcomes.count("busy") == 1, outcomes
        assert [d.name for d in (data_home / "runs").iterdir() if d.name.startswith("race-")] == started
    finally:
        for name in started:
            jobs.stop(name)
            jobs.wait(name, 120)


def test_log_survives_torn_and_merged_lines(tmp_path):
    run = RunFolder(tmp_path)
    good = json.dumps({"step": 1, "loss": 2.0})
    run.log.write_text(good + "\n" + '{"step": 2, "lo' + json.dumps({"step": 2, "loss": 1.5}) + "\n" + '{"st')
    assert [(e["step"], e["loss"]) for e in read_log(run)] == [(1, 2.0), (2, 1.5)]
