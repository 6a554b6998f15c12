"""Training on several machines with the files `--emit-launch` writes (training/launch.py):
two "machines" on localhost (two accelerate launches, CPU processes over gloo) train the tiny
recipe as one run, step for step as one machine with two processes does; the Slurm and
SkyPilot files parse and name the same command.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, free_port, wait_for

SMALL = ["--max_steps", "4", "--batch_size", "2", "--max_length", "64", "--save_steps", "2", "--eval_rows", "2"]


def emit(kind: str, name: str, folder, *extra: str) -> list[str]:
    done = subprocess.run([sys.executable, "cli.py", "train", "--config", "tiny", "--output_name", name,
                           "--machines", "2", "--emit-launch", kind, "--launch-dir", str(folder), *extra, *SMALL],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def losses(run) -> list[float]:
    from training.progress import read_log

    return [entry["loss"] for entry in read_log(run) if entry.get("loss") is not None]


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(tmp_path, data_home):
    from core.runs import RunFolder, finished_runs
    from training import jobs
    from training.config import load_config
    from training.export import merge_run

    port = free_port()
    files = emit("accelerate", "two-machines", tmp_path, "--main-ip", "127.0.0.1", "--port", str(port))
    assert [f.rsplit("/", 1)[1] for f in files] == ["train.yaml", "machine-0.sh", "machine-1.sh"]
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    machines = []
    try:
        for path, log in zip(files[1:], logs):
            machines.append(subprocess.Popen(["bash", path], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT))
            # On one host machine 1 could take machine 0's port first (on a cluster their
            # addresses differ), and accelerate on machine 0 refuses a port in use: start in order.
            wait_for(lambda: port_open(port) or machines[0].poll() is not None, 120, "machine 0's port")
        codes = [machine.wait(timeout=600) for machine in machines]
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    run = RunFolder.named("two-machines")
    manifest = run.manifest()
    assert manifest.world_size == 2 and manifest.steps == 4, manifest

    one = jobs.start(load_config(files[0], output_name="one-machine-two-processes", processes=2))
    assert jobs.wait(one.name, timeout=600).state == "completed"
    assert len(losses(run)) == 4 and losses(run) == pytest.approx(losses(one), rel=2e-3)

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
    assert emit_here("slurm", tmp_path / "x", machines="0") == 2
    assert "use 1-1024 machines" in capsys.readouterr().err


def test_the_train_tabs_box_writes_the_forms_launch_files(monkeypatch):
    from tabs.train import load_recipe
    from tabs.train_launch import launch_files

    values = {**load_recipe("tiny"), "output_name": "from-the-form", "processes": 2}
    files, text = launch_files(values, "accelerate", 3, "10.0.0.5")
    assert [f.rsplit("/", 1)[1] for f in files] == ["train.yaml", "machine-0.sh", "machine-1.sh", "machine-2.sh"]
    assert "--num_machines 3 --machine_rank 2 --main_process_ip 10.0.0.5" in text and "--num_processes 6" in text
    assert yaml.safe_load(open(files[0]))["output_name"] == "from-the-form"
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")  # a visitor of a public app
    assert launch_files(values, "slurm", 2, "") == (None, "⚠️ Log in to do writing launch files: this app is public, "
                                                          "and only chat is open to everyone.")
