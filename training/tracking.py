"""Runs tracked where people already look: `report_to: tensorboard` writes TensorBoard event
files into the run folder; `report_to: trackio` logs to a local trackio project
(`finetune-lab`, one run per run folder; nothing syncs to the Hub). The loss curve and the
config go through the libraries' own trainer callbacks; the held-out figures follow at the end.

    python cli.py train --config tiny --report_to tensorboard && tensorboard --logdir ~/.finetune-lab/runs
    python cli.py train --config tiny --report_to trackio && trackio show --project finetune-lab
"""
from __future__ import annotations

import os
import re

from core.runs import RunFolder

PROJECT = "finetune-lab"
CHOICES = ("none", "tensorboard", "trackio")


def tracking_args(cfg, run: RunFolder) -> dict:
    """TrainingArguments for the run's name and trackio's project; no Space, no snapshot Space."""
    return dict(run_name=run.name, project=PROJECT, trackio_space_id=None, trackio_static_space_id=False,
                report_to="trackio" if cfg.report_to == "trackio" else "none")


def callbacks(cfg, run: RunFolder) -> list:
    """TensorBoard's trainer callback writing into the run folder (rank 0 only: one event file)."""
    if cfg.report_to != "tensorboard" or os.environ.get("RANK", "0") != "0":
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard_dir)))]


def figures(measures) -> dict[str, float]:
    """{"held-out_perplexity/before": 55.1, ...} from a manifest's held-out measures."""
    found = {}
    for measure in measures:
        name = re.sub(r"[^\w-]+", "_", measure.label).strip("_")
        found.update({f"{name}/{when}": value for when, value in (("before", measure.before), ("after", measure.after))
                      if value is not None})
    return found


def log_results(cfg, run: RunFolder, figures: dict[str, float], step: int) -> None:
    """The held-out figures (name -> value) at the last step, beside the loss curve."""
    if cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run.tensorboard_dir)) as writer:
            for name, value in figures.items():
                writer.add_scalar(name, value, step)
    elif cfg.report_to == "trackio":
        import trackio

        trackio.init(project=PROJECT, name=run.name, resume="allow")
        trackio.log(figures)
        trackio.finish()
