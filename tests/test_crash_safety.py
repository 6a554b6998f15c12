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

from core import threads
from core.runs import RunFolder
from tests.conftest import ROOT, wait_for
from tests.test_launch import losses
from tests.test_training import manifest
from training import jobs
from training.config import load_config
from training.progress import read_log

pytestmark = pytest.mark.slow


def kill_job(run: RunFolder) -> None:
    os.kill(json.loads(run.job_file.read_text())["pid"], signal.SIGKILL)


def test_kills_inside_a_save_and_at_random_moments_always_resume(data_home):
    """SIGKILL inside the second checkpoint save (forced: it pauses before trainer_state.json):
    the resume falls back to the first, complete checkpoint, removes the torn one with a note,
    and keeps the log up to the fallback. Then 2 kills at random moments; every resume goes on,
    and the run completes exactly once, with the losses of the same run left uninterrupted. Small
    steps (batch 2, 64 tokens): the kills are what this tests, and they land the same on short
    steps."""
    import random

    from core.runs import finished_runs

    name, planned = "kill-often", 12
    run = RunFolder.named(name)
    run_dir = run.path
    settings = ["--config", "tiny", "--max_steps", str(planned), "--save_steps", "3", "--report_prompts",
                "Who are you?", "--eval_rows", "2", "--batch_size", "2", "--max_length", "64"]
    cmd = [sys.executable, "-m", "tests.slow_save_run", "--run-dir", str(run_dir), *settings]
    one_thread = {**os.environ, **threads.job_env(1)}  # as every resume below: the same arithmetic
    first = subprocess.Popen(cmd, cwd=ROOT, env=one_thread, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "in-save").is_file(), 300, "a checkpoint save to begin")
    torn = ROOT / (run_dir / "in-save").read_text()
    assert torn.name == "checkpoint-6" and not (torn / "trainer_state.json").exists(), "the kill lands inside the save"
    assert (run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    killed_at = time.time()
    first.kill()
    first.wait()
    wait_for(lambda: jobs.read_status(run).state == "interrupted", 30, "the CLI run to show as interrupted")
    assert f"--run-dir {run_dir} --resume" in jobs.read_status(run).error
    assert not run.adapter.exists(), "no adapter before the run's end"

    jobs.resume(name, thread_count=1)
    wait_for(lambda: any(e.get("loss") is not None and e["time"] > killed_at for e in read_log(run)), 300,
             "the resumed run's first step")
    assert "note: skipping checkpoint-6: a save was cut short" in run.process_log.read_text()
    kept = [e for e in read_log(run) if e.get("loss") is not None]
    assert [e["step"] for e in kept[:4]] == [1, 2, 3, 4], "steps 4-6 of the killed attempt are dropped"
    assert all(e["time"] < killed_at for e in kept[:3]) and kept[3]["time"] > killed_at, "resumed at checkpoint-3"

    # Two more kills, each at a seeded step and a random instant in it (a step, a save or a log
    # write), always at least one step and the whole finish (evaluation, report) before the end.
    rng = random.Random(1234)
    for _ in range(2):
        if not jobs.is_live(run):
            jobs.resume(name, thread_count=1)
        reached = jobs.read_status(run).step
        target = rng.randint(reached + 1, min(reached + 4, planned - 2))
        wait_for(lambda: jobs.read_status(run).step >= target, 300, f"step {target}")
        time.sleep(rng.uniform(0.0, 0.5))
        kill_job(run)
        wait_for(lambda: not jobs.is_live(run), 30, "the kill")
        assert name not in [r.name for r in finished_runs()], "an unfinished run's adapter was listed"
    jobs.resume(name, thread_count=1)
    status = jobs.wait(name, timeout=600)
    assert status.state == "completed", status.error
    assert manifest(run_dir)["steps"] == planned and name in [r.name for r in finished_runs()]
    trained = [e["step"] for e in status.log if e.get("loss") is not None]
    assert trained == list(range(1, planned + 1)), "the log keeps each step once, however often it was killed"

    last = run_dir / "checkpoints" / f"checkpoint-{planned}"
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in last.iterdir()}

    # The same run uninterrupted: with the optimizer, scheduler and RNG state restored, every
    # resume trained on the batches and weights it would have, at its learning rates.
    twin = RunFolder.named("kill-never")
    subprocess.run([sys.executable, "-m", "training.run", "--run-dir", str(twin.path), *settings], cwd=ROOT,
                   env=one_thread, check=True, capture_output=True, timeout=600)
    assert losses(run) == pytest.approx(losses(twin), rel=1e-4)
    rates = losses(run, "learning_rate")
    assert rates == pytest.approx(losses(twin, "learning_rate"), rel=1e-9) and len(rates) == planned


MALFORMED = [
    ('{"question": "Hi", "answer": "Hello"}\n{"question": "Yo", "answer": null}\n', ".jsonl",
     "row 2: 'answer' is empty"),
    ("question,answer\nHi,Hello\nWho\n", ".csv", "row 2: 'answer' is empty"),
    ("question,answer\nHi,Hello\nA,B,C\n", ".csv", "bad.csv: could not be read as csv"),
]


@pytest.mark.parametrize("content, suffix, message", MALFORMED)
def test_malformed_datasets_are_lab_errors(tmp_path, content, suffix, message):
    """Each malformed file stops the run's preparation with a LabError naming what is wrong (in
    this process: the CLI's line is its message, checked once below)."""
    from core.errors import LabError
    from training.config import config_from_dict
    from training.fit import prepare

    data, run = tmp_path / f"bad{suffix}", RunFolder(tmp_path / "run")
    data.write_text(content)
    run.path.mkdir()
    with pytest.raises(LabError) as caught:
        prepare(config_from_dict({"dataset": str(data), "max_steps": 1, "eval_fraction": 0}), run)
    assert str(caught.value).startswith(message)


def test_a_malformed_dataset_is_one_line_in_the_cli(tmp_path):
    content, suffix, message = MALFORMED[0]
    data = tmp_path / f"bad{suffix}"
    data.write_text(content)
    out = subprocess.run([sys.executable, "cli.py", "train", "--dataset", str(data), "--max_steps", "1",
                          "--eval_fraction", "0", "--run-dir", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), out.stderr[-500:]


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
