"""Figures for the Train tab: the live loss curve and the progress bar, from the JSONL log."""
from __future__ import annotations

import html

from training.progress import duration_text


def loss_figure(log: list[dict]):
    """Train loss (line + markers, so one or two steps still show) and eval loss points."""
    import plotly.graph_objects as go

    train = [(e["step"], e["loss"]) for e in log if e.get("loss") is not None]
    evals = [(e["step"], e["eval_loss"]) for e in log if e.get("eval_loss") is not None]
    fig = go.Figure()
    if train:
        fig.add_scatter(x=[s for s, _ in train], y=[v for _, v in train], mode="lines+markers", name="train loss")
    if evals:
        fig.add_scatter(x=[s for s, _ in evals], y=[v for _, v in evals], mode="markers", name="eval loss",
                        marker=dict(size=11, symbol="diamond"))
    steps = [s for s, _ in train + evals] or [0, 1]
    fig.update_layout(height=300, margin=dict(l=40, r=10, t=30, b=40), xaxis_title="step",
                      yaxis_title="loss", title="Loss", legend=dict(orientation="h"),
                      xaxis=dict(range=[min(steps) - 0.5, max(steps) + 0.5], tickformat="d"))
    if add_rewards(fig, log):
        fig.update_layout(title="Loss and rewards (DPO)", yaxis2=dict(title="reward", overlaying="y", side="right"))
    return fig


def add_rewards(fig, log: list[dict]) -> bool:
    """DPO's reward accuracy and margin, on a second axis; False when the log has none."""
    series = {"reward accuracy": "rewards_accuracies", "reward margin": "rewards_margins",
              "eval reward accuracy": "eval_rewards_accuracies", "eval reward margin": "eval_rewards_margins"}
    shown = False
    for name, key in series.items():
        points = [(e["step"], e[key]) for e in log if e.get(key) is not None]
        if points:
            fig.add_scatter(x=[s for s, _ in points], y=[v for _, v in points], name=name, yaxis="y2",
                            mode="lines+markers" if not key.startswith("eval") else "markers",
                            line=dict(dash="dot"))
            shown = True
    return shown


def progress_html(status) -> str:
    """A progress bar with step/total and ETA."""
    total = status.max_steps or 0
    done = min(status.step, total) if total else 0
    eta = f" · ETA {duration_text(status.eta_s)}" if status.eta_s and status.state == "running" else ""
    label = f"step {done}/{total or '?'}{eta} · {html.escape(status.state)}"
    return (f'<div id="train-progress"><progress value="{done}" max="{total or 1}" style="width:100%"></progress>'
            f"<div>{label}</div></div>")
