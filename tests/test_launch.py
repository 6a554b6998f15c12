"""Training on several machines with the files `--emit-launch` writes (training/launch.py):
two "machines" on localhost (CPU processes over gloo) train the tiny recipe as one run, started
by the two machines' accelerate scripts, cut off, and resumed by the Slurm script on a real
two-node Slurm cluster, step for step as one machine with two processes does (trained by
SkyPilot's own `run` block for one node); the Slurm and SkyPilot files parse and name the same
command.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, wait_for

PLANNED = 8
# What is tested is the launch: no held-out evaluation or report (the two-process UI run has them).
SMALL = ["--max_steps", str(PLANNED), "--batch_size", "2", "--max_length", "64", "--save_steps", "2",
         "--eval_fraction", "0", "--report_prompts", ""]


def emit(kind: str, name: str, folder, *extra: str, machines: int = 2) -> list[str]:
    """The files `cli.py train ... --emit-launch KIND` writes (its code, run in this process)."""
    import io

    from training.run import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--config", "tiny", "--output_name", name, "--machines", str(machines), "--emit-launch", kind,
                     "--launch-dir", str(folder), *extra, *SMALL])
    assert code == 0, printed.getvalue()
    return printed.getvalue().split()


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def losses(run, key: str = "loss") -> list[float]:
    """Each training step's loss (or another figure the step logged, by `key`), in order."""
    from training.progress import read_log

    return [entry[key] for entry in read_log(run) if entry.get("loss") is not None]


def start_machines(files: list[str], logs: list) -> list[subprocess.Popen]:
    """Both machines' scripts at once, as srun starts them (static rendezvous: machine 0 hosts it)."""
    return [subprocess.Popen(["bash", path], cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT,
                             start_new_session=True) for path, log in zip(files, logs)]


def kill_machine(machine: subprocess.Popen) -> None:
    """SIGKILL a machine's script, launcher and workers, as a lost host would. Not by process
    group: torch's elastic agent starts its workers in sessions of their own (a group kill left
    machine 1's worker training on)."""
    import psutil

    try:
        family = [psutil.Process(machine.pid), *psutil.Process(machine.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=30)  # gone, with their sockets closed
    machine.wait()


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(tmp_path, data_home):
    """The two machines' accelerate scripts start the run. Machine 1 is killed once the first
    checkpoint is written; machine 0's launcher outlives its worker, so it is killed too (as a
    cluster's scheduler would). The run shows as interrupted, and the Slurm script finishes it
    with --resume on a real two-node Slurm cluster on this machine (tests/slurm_cluster.py),
    run as written but for its GPU request; its 8 losses equal one machine with two processes."""
    from core.runs import RunFolder, finished_runs
    from tests.slurm_cluster import installed, run_batch, slurm_cluster
    from training import jobs
    from training.export import merge_run

    assert installed(), "Slurm is missing: `bash setup.sh --test` installs slurmd, slurmctld and munge"
    port = free_port()
    files = emit("accelerate", "two-machines", tmp_path, "--main-ip", "127.0.0.1", "--port", str(port))
    assert [f.rsplit("/", 1)[1] for f in files] == ["train.yaml", "machine-0.sh", "machine-1.sh"]
    sbatch = emit("slurm", "two-machines", tmp_path / "slurm", "--port", str(port))[-1]
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    run = RunFolder.named("two-machines")
    first = run.path / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    machines = start_machines(files[1:], logs)
    try:
        wait_for(lambda: first.is_file() or any(m.poll() is not None for m in machines), 300, "checkpoint-2")
        assert all(m.poll() is None for m in machines), "\n".join(log.read_text()[-3000:] for log in logs)
        killed_at = time.time()
        kill_machine(machines[1])
        # Machine 0's worker fails on the lost peer; its launcher waits on after it, until the
        # scheduler's kill (here: ours) ends it.
        wait_for(lambda: run.status_file.is_file() and not jobs.is_live(run), 120, "machine 0's worker to fail")
    finally:
        for machine in machines:
            kill_machine(machine)
    assert len(losses(run)) < PLANNED, "the kill landed before the end"
    lost = jobs.read_status(run)
    assert lost.state == "interrupted" and "sbatch slurm.sbatch --resume" in lost.error, lost
    wait_for(lambda: not port_open(port), 60, "machine 0's port to close")
    with slurm_cluster(tmp_path / "cluster") as slurm:
        # A CPU partition: the same script, without the GPU request (a command-line option wins).
        ended = run_batch(slurm, ["--gpus-per-node=0", f"--output={tmp_path}/slurm.log", sbatch, "--resume"], cwd=ROOT)
    assert ended == "COMPLETED 0:0", (ended, (tmp_path / "slurm.log").read_text()[-3000:])
    from training.progress import read_log

    kept = [(e["step"], e["time"] < killed_at) for e in read_log(run) if e.get("loss") is not None]
    assert kept[:2] == [(1, True), (2, True)] and not any(before for _, before in kept[2:]), "resumed at checkpoint-2"
    manifest = run.manifest()
    assert manifest.world_size == 2 and manifest.steps == PLANNED, manifest

    # The baseline, one machine with two processes, trained by SkyPilot's own `run` block for one
    # node, with the variables SkyPilot sets.
    sky = emit("skypilot", "one-machine-two-processes", tmp_path / "sky", "--processes", "2",
               "--port", str(free_port()), machines=1)
    node = {"SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1\n", "SKYPILOT_NUM_NODES": "1"}
    run_block = yaml.safe_load(Path(sky[-1]).read_text())["run"]
    done = subprocess.run(["bash", "-c", run_block], cwd=ROOT, env={**os.environ, **node}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    one = RunFolder.named("one-machine-two-processes")
    assert one.manifest().world_size == 2
    assert len(losses(run)) == PLANNED and losses(run) == pytest.approx(losses(one), rel=2e-3)

    copied = RunFolder(run.path.parent / "copied-back")  # a cluster's run folder, copied back here
    shutil.copytree(run.path, copied.path)
    assert "copied-back" in [r.name for r in finished_runs()]
    assert (merge_run("copied-back", "bf16").folder / "config.json").is_file()


def test_slurm_and_skypilot_files_name_the_same_launch(tmp_path, capsys):
    from training.run import main

    def emit_here(kind: str, folder, machines: str = "2") -> int:  # the CLI's code, in this process
        return main(["--config", "tiny", "--output_name", "cluster-run", "--machines", machines,
                     "--emit-launch", kind, "--launch-dir", str(folder), *SMALL])

    slurm, sky = tmp_path / "slurm", tmp_path / "sky"
    assert emit_here("slurm", slurm) == 0 == emit_here("skypilot", sky)
    assert capsys.readouterr().out.split()[:2] == [str(slurm / "train.yaml"), str(slurm / "slurm.sbatch")]
    script = (slurm / "slurm.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(slurm / "slurm.sbatch")]).returncode == 0
    assert "#SBATCH --nodes=2" in script and '--machine_rank "$SLURM_NODEID"' in script
    assert yaml.safe_load((slurm / "train.yaml").read_text())["output_name"] == "cluster-run"

    task = yaml.safe_load((sky / "skypilot.yaml").read_text())
    assert task["num_nodes"] == 2 and task["setup"] == "bash setup.sh"
    assert '--machine_rank "$SKYPILOT_NODE_RANK"' in task["run"] and f"--config {sky}/train.yaml" in task["run"]
    assert subprocess.run(["bash", "-n", "-c", task["run"]]).returncode == 0
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert shlex.split(srun)[3].removesuffix(' "$@"').replace("$SLURM_NODEID", "$SKYPILOT_NODE_RANK") \
        .replace(str(slurm), str(sky)) \
        == task["run"].strip().splitlines()[-1], "each node runs the command the SkyPilot test trains with"
    assert skypilot_reads(sky / "skypilot.yaml", tmp_path) == {
        "name": "cluster-run", "num_nodes": 2, "setup": "bash setup.sh", "run": task["run"].strip(),
        "accelerators": [{"L4": 1}]}
    assert emit_here("slurm", tmp_path / "x", machines="0") == 2
    assert "use 1-1024 machines" in capsys.readouterr().err
    assert main(["--config", "tiny", "--machines", "2", "--emit-launch", "slurm", "--port", "99999",
                 "--launch-dir", str(tmp_path / "x")]) == 2
    assert "port=99999: use a port from 1 to 65535" in capsys.readouterr().err and not (tmp_path / "x").exists()


def skypilot_reads(task_file: Path, home: Path) -> dict:
    """The task as SkyPilot's own loader reads it (`sky.Task.from_yaml`, in .venv-skypilot, made
    by setup.sh --test: its pins clash with gradio's). No cloud account is needed to load it."""
    read = ("import json, sys, sky; t = sky.Task.from_yaml(sys.argv[1]); print(json.dumps({'name': t.name, "
            "'num_nodes': t.num_nodes, 'setup': t.setup, 'run': t.run.strip(), "
            "'accelerators': [r.accelerators for r in t.resources]}))")
    done = subprocess.run([str(ROOT / ".venv-skypilot/bin/python"), "-c", read, str(task_file)], capture_output=True,
                          text=True, timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_train_tabs_box_writes_the_forms_launch_files(monkeypatch):
    from tabs.train import load_recipe
    from tabs.train_launch import launch_files

    values = {**load_recipe("tiny"), "output_name": "from-the-form", "processes": 2}
    files, text = launch_files(values, "accelerate", 3, "10.0.0.5")
    assert [f.rsplit("/", 1)[1] for f in files] == ["train.yaml", "machine-0.sh", "machine-1.sh", "machine-2.sh"]
    assert "--num_machines 3 --machine_rank 2 --main_process_ip 10.0.0.5" in text and "--num_processes 6" in text
    assert text.count("--config launch-from-the-form/train.yaml") == 3, "the path the downloaded files will have"
    assert yaml.safe_load(open(files[0]))["output_name"] == "from-the-form"
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")  # a visitor of a public app
    assert launch_files(values, "slurm", 2, "") == (None, "⚠️ Log in to do writing launch files: this app is public, "
                                                          "and only chat is open to everyone.")
