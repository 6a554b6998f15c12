"""Train tab, live part: start/stop/resume jobs, poll the run folder, list and delete runs.

Plain functions over widget values, wired by tabs/train.py; the API endpoints train_recipe and
train_status live here too. All state is read from the run folder (training.jobs), which is what
lets a reloaded page re-attach to a running job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core.access import check_data_source, is_trusted, require_user
from core.data.rows import bundled_sources
from core.errors import LabError
from core.runs import EMBEDDER, RunFolder, read_json
from tabs import train_form
from tabs.chat import adapter_choices
from tabs.feedback import shows_errors, warn
from tabs.train_plots import embedding_maps, loss_figure, progress_html, schedule_figure
from training import jobs
from training.config import load_config


@shows_errors(lambda message: (message, None))
def start_training(values: dict, request=None, uploads=()):
    """Start a job from the form's {field: value}; returns (message, run name or None)."""
    require_user(request, action="training")
    cfg = train_form.values_to_config(values)
    check_data_source(cfg.dataset, bundled_sources(), request, uploads)
    run = jobs.start(cfg)
    return f"Started **{run.name}**: `{' '.join(jobs.command_for(run)[1:])}`", run.name


_PATH = re.compile(r"(?<![\w.])(?:~|/)[^\s`'\"),]*[^\s`'\"),.:]")


@shows_errors()
def stop_training(run: str, request: gr.Request = None) -> str:
    require_user(request, action="stopping a run")
    run = run or jobs.current_job() or ""  # a tab that did not start it, or the API: one job runs at a time
    return f"Stopping **{run}**: saving a checkpoint…" if run and jobs.stop(run) else "No running job."


@shows_errors(lambda message: (message, gr.update()))
def resume_training(run: str, request: gr.Request = None):
    require_user(request, action="training")
    jobs.resume(run)
    return f"Resumed **{run}** from its last checkpoint.", run


@shows_errors(toast=True)
def api_start(recipe: str, overrides: str = "", request: gr.Request = None) -> str:
    """API: start a bundled recipe with YAML overrides (e.g. 'max_steps: 2'); returns the run name."""
    import yaml

    require_user(request, action="training")
    try:
        extra = yaml.safe_load(overrides or "") or {}
    except yaml.YAMLError as exc:
        raise LabError(f"overrides are not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(extra, dict):
        raise LabError("overrides must be a YAML mapping, e.g. 'max_steps: 2'.")
    return jobs.start(load_config(recipe, **extra)).name


@shows_errors(toast=True)
def api_status(run: str, request: gr.Request = None) -> dict:
    """API: a run's state, step, max_steps, ETA, loss log and manifest."""
    status = jobs.read_status(RunFolder.existing(run))
    return hide_paths({"name": status.name, "state": status.state, "step": status.step,
                       "max_steps": status.max_steps, "eta_s": status.eta_s, "phase": status.phase, "log": status.log,
                       "manifest": status.manifest.to_dict() if status.manifest else {}, "error": status.error},
                      request)


def hide_paths(value, request=None):
    """For a public app's visitors, server paths become basenames (the data dir and the repo)."""
    if is_trusted(request):
        return value
    if isinstance(value, dict):
        return {k: hide_paths(v, request) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_paths(v, request) for v in value]
    if isinstance(value, str):
        return _PATH.sub(lambda m: Path(m.group(0)).name, value)
    return value


def attach_latest() -> str | None:
    """The run to show after a (re)load: the live job, else the newest run."""
    runs = jobs.list_runs()
    return jobs.current_job() or (runs[0].name if runs else None)


@dataclass
class PollView:
    """What the Run and Result steps show; the tab maps each field to its widget by name."""

    progress: str = ""
    plot: object = None
    schedule: object = None
    stats: str = "No run yet."
    tail: str = ""
    result: str = ""
    maps: object = None  # a gr.update: a tuned embedder's before/after maps, else hidden
    state: str | None = None
    adapters: object = None  # a gr.update for the Chat tab's picker, when the state changed


def poll(run: str | None, last_state: str | None, request: gr.Request = None, x_axis: str = "step") -> PollView:
    """Everything the Run and Result steps show, read from the run folder."""
    if not run:
        return PollView(state=last_state, adapters=gr.update(), maps=gr.update())
    try:
        status = jobs.read_status(RunFolder.existing(run))
    except LabError as exc:
        return PollView(stats=warn(exc), state=last_state, adapters=gr.update(), maps=gr.update())
    stats = f"**{status.name}** · {status.state}" + (
        f" · {status.tokens_per_s:.0f} tokens/s" if status.tokens_per_s else "")
    plan = read_json(RunFolder.existing(run).plan_file)
    if plan:
        stats += f"\n\n{plan['text']}"
    if status.error:
        stats += f"\n\n```\n{hide_paths(status.error[-1500:], request)}\n```"
    tail = "\n".join(_log_line(e) for e in status.log[-12:])
    refresh = gr.update(choices=adapter_choices()) if status.state != last_state else gr.update()
    return PollView(progress_html(status), loss_figure(status.log, x_axis), schedule_figure(status.log, x_axis),
                    stats, tail, hide_paths(result_markdown(status), request), maps_update(status), status.state,
                    refresh)


def maps_update(status):
    """A finished tuned embedder's before/after maps, shown; for any other run, hidden."""
    if status.state != "completed" or status.manifest is None or status.manifest.kind != EMBEDDER:
        return gr.update(visible=False)
    report = read_json(RunFolder.named(status.name).report_json)
    return gr.update(value=embedding_maps(report), visible=True) if report.get("tuned") else gr.update(visible=False)


def _log_line(entry: dict) -> str:
    parts = [f"step {entry.get('step')}"] + [f"{k}={entry[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate")
                                              if entry.get(k) is not None]
    return " · ".join(parts)


def result_markdown(status) -> str:
    m = status.manifest
    if status.state != "completed" or m is None:
        return ""
    run = RunFolder.named(status.name)
    loss = f"Loss {m.first_loss:.3f} → {m.final_loss:.3f} · " if m.final_loss is not None else ""
    lines = [f"### {m.method} on {m.dataset}: {m.steps} steps in {m.train_runtime_s} s",
             f"{loss}{m.held_out_line()}",
             (f"Embedder: `{run.adapter}` (in the Embeddings tab's picker as **{status.name}**)" if m.kind == EMBEDDER
              else f"Adapter: `{run.adapter}` (in the Chat tab's picker as **{status.name}**)"), ""]
    if m.answer_scores:
        from training.answer_eval import table_markdown

        lines[-1:-1] = ["", table_markdown(m.answer_scores), ""]
    if m.judged_blind:
        from core.feedback.judge import win_rate_line

        lines[-1:-1] = [win_rate_line(run)]
    return "\n".join(lines) + run.report()


def runs_table(request: gr.Request = None):
    import pandas as pd

    rows = []
    for r in jobs.list_runs():
        headline = r.manifest.headline() if r.manifest else None
        method = r.manifest.method if r.manifest else RunFolder.named(r.name).objective.upper()
        rows.append({"name": r.name, "method": method,
                     "dataset": hide_paths(r.manifest.dataset, request) if r.manifest else "",
                     "status": r.state, "steps": f"{r.step}/{r.max_steps}",
                     "held-out before → after": headline.line() if headline else ""})
    return pd.DataFrame(rows, columns=["name", "method", "dataset", "status", "steps", "held-out before → after"])


@shows_errors()
def delete_run(run: str, confirmed: bool, request: gr.Request = None) -> str:
    require_user(request, action="deleting runs")
    if not confirmed:
        return "Tick the confirmation box to delete."
    jobs.delete(run)
    return f"Deleted {run}."


@shows_errors(lambda message: (message, gr.update()))
def evaluate_again(run: str, request: gr.Request = None) -> tuple[str, str | None]:
    """Score a finished run's held-out answers again, as a job (training.jobs.evaluate: its own
    process, which owns its copy of the model and gets no secrets). Returns (message, the run
    for the live panel to follow)."""
    require_user(request, action="evaluating runs")
    name = jobs.evaluate((run or "").strip()).name
    return f"Evaluating **{name}** again: its progress shows above, and the new table in its result.", name
