"""Compare two to four runs: loss curves on one plot, the config fields that differ, and their
evaluation figures side by side. The Train tab's Runs section calls `compare_runs`.

    python -c "from training.runs_compare import compare_runs; print(compare_runs(['run-a', 'run-b'])[1])"
"""
from __future__ import annotations

from dataclasses import asdict

from core.errors import LabError
from core.runs import RunFolder

FIGURES = (("steps", "steps"), ("train_runtime_s", "training time (s)"), ("first_loss", "first loss"),
           ("final_loss", "final loss"))
ANSWER_SCORES = (("exact_match", "exact match"), ("rouge_l", "ROUGE-L F1"), ("cosine", "embedding cosine"))


def pick_runs(names: list[str]) -> list[RunFolder]:
    names = list(dict.fromkeys(name for name in names or [] if name))
    if not 2 <= len(names) <= 4:
        raise LabError(f"Pick two to four runs to compare ({len(names)} picked).")
    return [RunFolder.existing(name) for name in names]


def config_diff(runs: list[RunFolder]) -> list[list]:
    """[field, value in run 1, value in run 2, ...] for the settings that differ."""
    from training.config import load_config

    configs = [asdict(load_config(run.config)) for run in runs]
    return [[name] + [str(config[name]) for config in configs]
            for name in configs[0] if len({str(config[name]) for config in configs}) > 1]


def figures_table(runs: list[RunFolder]) -> list[list]:
    """[figure, run 1, run 2, ...]: the manifest's results, each objective's held-out figures
    (after, before in brackets), and the held-out answer scores of the tuned model (base in
    brackets); a figure no run has is left out."""
    manifests = [run.manifest() for run in runs]
    rows = [[label] + [getattr(m, key, None) for m in manifests] for key, label in FIGURES]
    labels = dict.fromkeys(measure.label for m in manifests if m for measure in m.held_out)
    for label in labels:
        rows.append([f"{label} (before)"] + [_measure_cell(m, label) for m in manifests])
    for key, label in ANSWER_SCORES:
        rows.append([f"held-out answers, {label} (base)"] + [_answer_cell(m.answer_scores if m else None, key)
                                                             for m in manifests])
    return [row for row in rows if any(cell is not None for cell in row[1:])]


def _measure_cell(manifest, label: str) -> str | None:
    found = next((m for m in manifest.held_out if m.label == label), None) if manifest else None
    return f"{found.after} ({found.before})" if found else None


def _answer_cell(scores: dict | None, key: str) -> str | None:
    return f"{scores['tuned'][key]} ({scores['base'][key]})" if scores else None


def loss_overlay(runs: list[RunFolder], x: str = "step"):
    """Every run's training loss (lines) and eval loss (markers) on one plot."""
    import plotly.graph_objects as go

    from training.progress import read_log

    fig = go.Figure()
    for run in runs:
        log = read_log(run)
        train = [(e[x], e["loss"]) for e in log if e.get("loss") is not None]
        evals = [(e[x], e["eval_loss"]) for e in log if e.get("eval_loss") is not None]
        fig.add_scatter(x=[s for s, _ in train], y=[v for _, v in train], mode="lines+markers", name=run.name)
        if evals:
            fig.add_scatter(x=[s for s, _ in evals], y=[v for _, v in evals], mode="markers",
                            name=f"{run.name} (eval)", marker=dict(size=10, symbol="diamond"))
    fig.update_layout(height=320, margin=dict(l=40, r=10, t=30, b=40), title="Loss, run by run",
                      xaxis_title=x, yaxis_title="loss", legend=dict(orientation="h"))
    return fig


def compare_runs(names: list[str], x: str = "step"):
    """(loss overlay figure, config diff rows, figures rows, the runs' names) for 2-4 runs."""
    runs = pick_runs(names)
    return loss_overlay(runs, x), config_diff(runs), figures_table(runs), [run.name for run in runs]
