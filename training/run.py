"""The training process the UI and the CLI launch: flags, the checks before any work, then
training.fit's `train(cfg, run_dir)`, and the status the run ends with.

    python -m training.run --config training/recipes/tiny.yaml [--max_steps 5 ...]
    python -m training.run --run-dir ~/.finetune-lab/runs/NAME --resume
    accelerate launch --multi_gpu --num_processes 2 -m training.run --config ...   # DDP
    python -m training.run --config ... --machines 2 --emit-launch slurm|skypilot|accelerate   # a cluster's files

Everything goes into the run folder (core.runs.RunFolder names its files): the config, the
log, checkpoints, the adapter (renamed into place when complete), the scores, the report and
the manifest. SIGTERM saves a checkpoint and stops. What differs between objectives (rows,
trainer, held-out figures) is the objective's (training/objectives/); the model setup they share
is training.model_setup. A wrong flag, setting or data path is one line in a fraction of a
second: training.fit, which imports transformers, peft and trl (seconds), is imported after.
"""
from __future__ import annotations

import signal

STOP_REQUESTED = {"flag": False}


def request_stop(*_) -> None:
    STOP_REQUESTED["flag"] = True


if __name__ == "__main__":  # first thing: a Stop while the process starts must not kill the run
    signal.signal(signal.SIGTERM, request_stop)

import argparse
import os
import sys
from pathlib import Path

from core.errors import LabError
from core.paths import write_json
from core.runs import RunFolder

from training.config import TrainConfig, config_from_dict, field_help, load_config
from training.jobs import default_run_name, resume_refusal, start_refusal
from training.launch import KINDS, PORT, Cluster, emit, with_run_name
from training.processes import is_live, record_job


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train one Finetune Lab run.",
                                     epilog="Each setting may also be spelled with dashes: --max-steps 20.")
    parser.add_argument("--config", help="recipe YAML path or bundled recipe name")
    parser.add_argument("--run-dir", help="run folder (default: <data dir>/runs/<output_name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--emit-launch", choices=KINDS, help="write the files that train this config on "
                        "--machines machines (accelerate per machine, slurm, skypilot) instead of training here")
    parser.add_argument("--machines", type=int, default=1, help="with --emit-launch: how many machines")
    parser.add_argument("--main-ip", default="MAIN_MACHINE_IP", help="with --emit-launch accelerate: machine 0's address")
    parser.add_argument("--port", type=int, default=PORT, help="with --emit-launch: machine 0's rendezvous port")
    parser.add_argument("--launch-dir", help="with --emit-launch: where to write (default launch-<run name>)")
    for name, help_text in field_help().items():
        parser.add_argument(f"--{name}", help=help_text.replace("%", "%%"), default=None)
    return parser.parse_args(underscored(sys.argv[1:] if argv is None else argv))


def underscored(argv: list[str]) -> list[str]:
    """The settings' flags are the recipe's keys (--max_steps); the dashed spelling the other
    commands use (--max-steps) means the same."""
    settings = field_help()
    spelled = []
    for arg in argv:
        name, equals, value = arg[2:].partition("=")
        if arg.startswith("--") and name.replace("-", "_") in settings:
            arg = f"--{name.replace('-', '_')}{equals}{value}"
        spelled.append(arg)
    return spelled


def config_from_args(args) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k in field_help() and v is not None}
    if args.config:
        return load_config(args.config, **overrides)
    if args.resume and args.run_dir:
        run = RunFolder(Path(args.run_dir))
        if refusal := resume_refusal(run):  # before its config is read
            raise LabError(refusal)
        return load_config(run.config, **overrides)
    return config_from_dict(overrides)


def emit_launch(cfg: TrainConfig, args) -> int:
    """Write the launch files for a cluster (training.launch); every machine gets one run name."""
    cfg = with_run_name(cfg)
    try:
        cluster = Cluster(args.machines, cfg.processes, args.main_ip, args.port)
        written = emit(cfg, args.emit_launch, cluster, Path(args.launch_dir or f"launch-{cfg.output_name}"))
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in written))
    return 0


def checked_start(args) -> tuple[TrainConfig, RunFolder]:
    """The run's config and folder once every check has passed, before the folder is made: a
    typo raises a LabError and leaves no failed run behind."""
    cfg = config_from_args(args).checked_for_start()
    run = RunFolder(Path(args.run_dir)) if args.run_dir else RunFolder.named(cfg.output_name or default_run_name(cfg))
    if args.resume:  # a --run-dir's was checked before its config was read (config_from_args)
        refusal = "" if args.run_dir else resume_refusal(run)
    elif args.run_dir or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        refusal = ""  # the launcher's folder, made for the job; a multi-process run's ranks make it in any order
    else:
        refusal = start_refusal(run)  # a named run must be new
    if refusal:
        raise LabError(refusal)
    return cfg, run


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.emit_launch:  # a cluster's data paths are the cluster's, checked where it trains
            return emit_launch(config_from_args(args), args)
        cfg, run = checked_start(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, request_stop)
    from training.fit import train  # the heavy imports, once the checks have passed

    run_dir = run.path
    run.path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0" and not is_live(run):
        # Started from the CLI, not the job launcher: record the process ourselves, so a kill
        # shows as "interrupted" with the resume command, and Stop in the UI reaches us.
        record_job(run, os.getpid(), [sys.executable, "-m", "training.run", *(argv or sys.argv[1:])])
        run.status_file.unlink(missing_ok=True)  # how an earlier attempt ended no longer holds
    try:
        train(cfg, run_dir, resume=args.resume, stop=STOP_REQUESTED)
    except LabError as exc:  # bad data or settings: a clear line, not a traceback
        write_json(run.status_file, {"state": "failed", "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        write_json(run.status_file, ending(exc))
        raise
    finally:
        leave_process_group()
    if os.environ.get("RANK", "0") == "0":  # one line from a multi-process job too
        print(f"run folder: {run_dir}")
    return 0


def ending(exc: BaseException) -> dict:
    """The status a run that raised leaves. In a multi-process run, a collective that lost its
    peer (a machine or process killed) is an interruption, whose reason training.jobs shows
    under the resume line; anything else is a failure."""
    import torch.distributed as dist

    said = f"{type(exc).__name__}: {exc}"
    lost_peer = isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "gloo/transport" in str(exc))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and lost_peer:
        return {"state": "interrupted", "error": (
            f"Another process of this run was lost ({said.splitlines()[0][:200]}). On several "
            "machines, run every machine's script again with --resume (Slurm: sbatch slurm.sbatch --resume).")}
    return {"state": "failed", "error": said}


def leave_process_group() -> None:
    """End a multi-process run's process group before exit. Left to the interpreter's exit, a
    gloo worker once died in teardown ("terminate called without an active exception") after
    the run had finished, and the other machine's launcher waited 300 s on it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
