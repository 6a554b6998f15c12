"""A real two-node Slurm cluster on this machine, for the launch test: Debian's slurmctld and two
slurmd daemons (nodes `n0` and `n1`, both at 127.0.0.1), signed by a munged of its own.
`bash setup.sh --test` installs them (packages slurmd, slurmctld, slurm-client, munge).

    with slurm_cluster(tmp_path) as env:   # SLURM_CONF set: sbatch, srun and scontrol reach it
        state = run_batch(env, [script])    # "COMPLETED 0:0" once the job has ended

Everything it starts runs as this user in its own folder and is stopped when the block ends.
(A node may not be called `localhost`: Slurm refuses that config.)
"""
from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.conftest import free_port, wait_for

NODES = ("n0", "n1")


def installed() -> bool:
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))


def config(folder: Path, socket: Path) -> str:
    ports = ",".join(str(free_port()) for _ in NODES)  # one line: Slurm refuses a host name on two
    nodes = (f"NodeName={','.join(NODES)} NodeAddr=127.0.0.1 Port={ports} "
             f"CPUs={os.cpu_count()} State=UNKNOWN")
    user = getpass.getuser()  # the daemons run as this user, and so do the jobs
    return f"""ClusterName=finetune-lab-test
SlurmctldHost={os.uname().nodename}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthInfo=socket={socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster(folder: Path):
    """Start munged, slurmctld and one slurmd per node in `folder`; yield the environment that
    reaches them; stop them all after."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True)
    key, socket = folder / "munge.key", folder / "munge.socket"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(config(folder, socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    log = (folder / "daemons.log").open("a")
    daemons = [subprocess.Popen(["munged", "--foreground", "--force", f"--socket={socket}", f"--key-file={key}",
                                 f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                                 f"--seed-file={folder}/munged.seed"], stdout=log, stderr=log)]
    try:
        wait_for(socket.exists, 30, "munged's socket")
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env, stdout=log, stderr=log))
        daemons += [subprocess.Popen(["slurmd", "-D", "-N", name, "-f", str(conf)], env=env, stdout=log, stderr=log)
                    for name in NODES]
        wait_for(lambda: idle_nodes(env) == len(NODES) or any(d.poll() is not None for d in daemons), 60,
                 "two idle Slurm nodes")
        assert all(d.poll() is None for d in daemons), (folder / "daemons.log").read_text()[-3000:]
        yield env
    finally:
        # A test that failed mid-job leaves its job running: end its tasks while the controller
        # can still reach them.
        subprocess.run(["scancel", "--full", "--signal=KILL", f"--user={getpass.getuser()}"], env=env,
                       capture_output=True, timeout=30)
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for step in stray_steps(folder):  # a step daemon whose slurmd went first waits on for it
            step.kill()
        log.close()


def run_batch(env: dict, args: list[str], cwd=None, timeout: float = 600) -> str:
    """Submit a batch job and wait for its end: its state and exit code ("COMPLETED 0:0").
    Not `sbatch --wait`, which polls after 2, 8 and then 32 s: a 27 s job returned after 43."""
    submitted = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    ended = {}

    def job_ended() -> bool:
        shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], env=env, capture_output=True, text=True)
        fields = dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)
        ended.update(fields)
        return fields.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
    wait_for(job_ended, timeout, f"Slurm job {job}")
    return f"{ended['JobState']} {ended.get('ExitCode')}"


def idle_nodes(env: dict) -> int:
    shown = subprocess.run(["sinfo", "--noheader", "--states=idle", "--format=%D"], env=env, capture_output=True,
                           text=True)
    return int(shown.stdout.strip() or 0) if shown.returncode == 0 else 0


def stray_steps(folder: Path) -> list:
    """This cluster's slurmstepd processes still alive (they hold its log files open)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "slurmstepd":
            with contextlib.suppress(psutil.Error):
                if any(f.path.startswith(str(folder)) for f in process.open_files()):
                    found.append(process)
    return found
