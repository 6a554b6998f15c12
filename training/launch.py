"""Files that train one run on several machines with the launchers clusters already run:
`accelerate launch` per machine, a Slurm batch script, or a SkyPilot task. Each starts
`python -m training.run --config launch-RUN/train.yaml` on every machine, so the cluster trains
exactly the config the form or the CLI made; global rank 0 writes the run folder.

    python cli.py train --config training/recipes/tiny.yaml --machines 2 --emit-launch slurm
    # writes launch-<run>/train.yaml and launch-<run>/slurm.sbatch; then: sbatch launch-<run>/slurm.sbatch

Run them from the repository's folder on each machine (Slurm: the folder sbatch is called in;
SkyPilot: its synced workdir), with the run folder's parent (FINETUNE_LAB_HOME) on a shared
filesystem if runs should resume after a failure: each rank keeps its own state in the
checkpoints; after a failure, run every machine's script again with `--resume` (Slurm: `sbatch
slurm.sbatch --resume`; the scripts pass their arguments to training.run). Copied back,
the run folder shows, compares, evaluates and exports like a local one.
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from core.errors import LabError

KINDS = ("accelerate", "slurm", "skypilot")
PORT = 29500
ACTIVATE = "source .venv/bin/activate  # the environment `bash setup.sh` installs"


@dataclass(frozen=True)
class Cluster:
    """How many machines, processes on each (GPUs, or CPU processes over gloo), where rank 0 listens."""

    machines: int
    processes: int = 1
    main_ip: str = "MAIN_MACHINE_IP"
    port: int = PORT

    def __post_init__(self):
        if not (1 <= self.machines <= 1024 and 1 <= self.processes <= 64):
            raise LabError(f"machines={self.machines}, processes={self.processes}: use 1-1024 machines, "
                           "1-64 processes on each.")
        if not 1 <= self.port <= 65535:
            raise LabError(f"port={self.port}: use a port from 1 to 65535.")


def launch_args(cluster: Cluster, config: str, rank: str, main_ip: str, total: str | None = None) -> list[str]:
    """accelerate launch for one machine; rank, main_ip and total may be shell expressions.
    Static rendezvous (accelerate's default): machine 0 hosts it, by rank. With c10d each
    machine whose address matches the main one hosts it, so machines sharing a host (a test,
    Slurm nodes on one box) race for the port and accelerate on machine 0 refuses it."""
    return ["accelerate", "launch", "--multi_gpu", "--num_machines", str(cluster.machines), "--machine_rank", rank,
            "--main_process_ip", main_ip, "--main_process_port", str(cluster.port),
            "--num_processes", total or str(cluster.machines * cluster.processes), "--rdzv_backend", "static",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.run", "--config", config]


def shell(args: list[str]) -> str:
    """A command line; arguments that start with $ stay shell expressions (quoted as one word)."""
    return " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in args)


def accelerate_commands(cluster: Cluster, config: str) -> list[str]:
    """One command per machine, machine 0 first: its IP is the main process's."""
    return [shell(launch_args(cluster, config, str(rank), cluster.main_ip)) for rank in range(cluster.machines)]


def slurm_script(cluster: Cluster, config: str, name: str) -> str:
    """An sbatch script: one task per node, each an accelerate launch with its node's rank. The
    main machine's address is the one it reports itself (PyTorch's recipe for torchrun on Slurm);
    the script's arguments reach training.run (`sbatch slurm.sbatch --resume`)."""
    command = shell(launch_args(cluster, config, "$SLURM_NODEID", "$MAIN_IP")) + ' "$@"'
    return "\n".join([
        "#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={cluster.machines}",
        "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={cluster.processes}",
        f"#SBATCH --output={name}-%j.log", "set -euo pipefail", 'cd "$SLURM_SUBMIT_DIR"', ACTIVATE,
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'export MAIN_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk \'{print $1}\')',
        f"srun bash -c {shlex.quote(command)} bash \"$@\"", ""])


def skypilot_task(cluster: Cluster, config: str, name: str) -> str:
    """A SkyPilot task YAML: num_nodes machines; each runs accelerate launch with the rank
    variables SkyPilot sets (SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS)."""
    command = shell(launch_args(cluster, config, "$SKYPILOT_NODE_RANK", "$MAIN_IP"))
    return "\n".join([
        f"name: {name}", f"num_nodes: {cluster.machines}", "workdir: .",
        "resources:", f"  accelerators: L4:{cluster.processes}  # or any GPU SkyPilot knows",
        "setup: bash setup.sh", "run: |", f"  {ACTIVATE}",
        '  export MAIN_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)', f"  {command}", ""])


def with_run_name(cfg):
    """`cfg` with its output_name set: every machine must write the same run, and the default
    name holds the time, which differs between machines."""
    from training.jobs import default_run_name

    return dataclasses.replace(cfg, output_name=cfg.output_name or default_run_name(cfg))


def emit(cfg, kind: str, cluster: Cluster, folder: Path, config_at: str | None = None) -> list[Path]:
    """Write the config and the launch files for `kind` into `folder`; return the files written.
    `config_at`: the config's path as the machines see it from the repository's folder (default:
    where it is written here)."""
    if kind not in KINDS:
        raise LabError(f"--emit-launch {kind!r}: choose one of {', '.join(KINDS)}.")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.yaml"
    config.write_text(cfg.to_yaml())
    where = config_at or config.as_posix()
    if kind == "accelerate":
        files = {f"machine-{rank}.sh": f"#!/bin/bash\nset -euo pipefail\n{ACTIVATE}\n{command} ${{1+\"$@\"}}\n"
                 for rank, command in enumerate(accelerate_commands(cluster, where))}
    elif kind == "slurm":
        files = {"slurm.sbatch": slurm_script(cluster, where, cfg.output_name)}
    else:
        files = {"skypilot.yaml": skypilot_task(cluster, where, cfg.output_name)}
    for name, text in files.items():
        (folder / name).write_text(text)
    return [config, *(folder / name for name in files)]
