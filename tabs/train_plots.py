"""Figures for the Train tab from the JSONL log: the live loss curve, the learning rate and grad
norm, and the progress bar."""
from __future__ import annotations

import html

from training.progress import duration_text


def loss_figure(log: list[dict], x: str = "step"):
    """Train loss (line + markers, so one or two steps still show) and eval loss points, over
    optimizer steps or epochs (`x`)."""
    import plotly.graph_objects as go

    train = [(e[x], e["loss"]) for e in log if e.get("loss") is not None]
    evals = [(e[x], e["eval_loss"]) for e in log if e.get("eval_loss") is not None]
    fig = go.Figure()
    if train:
        fig.add_scatter(x=[s for s, _ in train], y=[v for _, v in train], mode="lines+markers", name="train loss")
    if evals:
        fig.add_scatter(x=[s for s, _ in evals], y=[v for _, v in evals], mode="markers", name="eval loss",
                        marker=dict(size=11, symbol="diamond"))
    fig.update_layout(height=300, margin=dict(l=40, r=10, t=30, b=40), yaxis_title="loss", title="Loss",
                      legend=dict(orientation="h"), xaxis=x_axis(x, [s for s, _ in train + evals]))
    if add_rewards(fig, log, x):
        fig.update_layout(title="Loss and rewards", yaxis2=dict(title="reward", overlaying="y", side="right"))
    return fig


def x_axis(x: str, values: list) -> dict:
    if x == "epoch":
        return dict(title="epoch")
    values = values or [0, 1]
    return dict(title="step", range=[min(values) - 0.5, max(values) + 0.5], tickformat="d")


def schedule_figure(log: list[dict], x: str = "step"):
    """The learning rate the scheduler set (left axis) and the gradient norm before clipping
    (right axis): warmup, decay and spikes show here before they show in the loss."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, key, axis in (("learning rate", "learning_rate", "y"), ("grad norm", "grad_norm", "y2")):
        points = [(e[x], e[key]) for e in log if e.get(key) is not None]
        if points:
            fig.add_scatter(x=[s for s, _ in points], y=[v for _, v in points], name=name, yaxis=axis,
                            mode="lines+markers")
    fig.update_layout(height=240, margin=dict(l=40, r=40, t=30, b=40), title="Learning rate and grad norm",
                      legend=dict(orientation="h"), yaxis=dict(title="learning rate", exponentformat="e"),
                      yaxis2=dict(title="grad norm", overlaying="y", side="right"),
                      xaxis=x_axis(x, [e[x] for e in log if e.get("learning_rate") is not None]))
    return fig


def add_rewards(fig, log: list[dict], x: str = "step") -> bool:
    """The preference objectives' reward accuracy (DPO) and margin, on a second axis; False when the
    log has none."""
    series = {"reward accuracy": "rewards_accuracies", "reward margin": "rewards_margins",
              "eval reward accuracy": "eval_rewards_accuracies", "eval reward margin": "eval_rewards_margins"}
    shown = False
    for name, key in series.items():
        points = [(e[x], e[key]) for e in log if e.get(key) is not None]
        if points:
            fig.add_scatter(x=[s for s, _ in points], y=[v for _, v in points], name=name, yaxis="y2",
                            mode="lines+markers" if not key.startswith("eval") else "markers",
                            line=dict(dash="dot"))
            shown = True
    return shown


def embedding_maps(report: dict):
    """A tuned embedder's report: the held-out rows on 2-D maps, by the base embedder and by the
    tuned one side by side, coloured by label (hover: the text)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("base embedder", "tuned embedder"))
    for column, side in enumerate(("base", "tuned"), 1):
        points = report[side]
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", row=1, col=column,
                        text=report["texts"], hoverinfo="text", showlegend=False,
                        marker=dict(color=report["labels"], colorscale="Turbo", size=7))
    fig.update_layout(height=380, margin=dict(l=30, r=10, t=40, b=30),
                      title="Held-out rows, coloured by label (2-D PCA of each embedder)")
    return fig


def progress_html(status) -> str:
    """A progress bar with step/total and ETA."""
    total = status.max_steps or 0
    done = min(status.step, total) if total else 0
    eta = f" · ETA {duration_text(status.eta_s)}" if status.eta_s and status.state == "running" else ""
    label = f"step {done}/{total or '?'}{eta} · {html.escape(status.state)}"
    if status.phase:
        label += f" · {html.escape(status.phase)}"
    return (f'<div id="train-progress"><progress value="{done}" max="{total or 1}" style="width:100%"></progress>'
            f"<div>{label}</div></div>")
