"""Train tab, Runs section, "Compare runs": pick two to four runs and see their loss curves on one
plot, the settings that differ and their evaluation figures side by side (training.runs_compare).
On a public app, server paths in settings are shown by their file name only, as in the runs table.
"""
from __future__ import annotations

import gradio as gr

from tabs.feedback import shows_errors
from tabs.train_live import hide_paths
from training import jobs
from training.runs_compare import compare_runs


def run_names() -> list[str]:
    return [run.name for run in jobs.list_runs()]


@shows_errors(lambda message: (gr.update(), gr.update(), gr.update(), message))
def compare_view(names: list[str], x_axis: str = "step", request: gr.Request = None):
    """(overlay figure, settings that differ, figures side by side, one line)."""
    figure, diff, figures, names = compare_runs(names, x_axis)
    diff = [[hide_paths(cell, request) for cell in row] for row in diff]
    line = (f"{len(diff)} setting(s) differ between {', '.join(names)}." if diff
            else "These runs share every setting.")
    return (figure, gr.update(value=diff, headers=["setting", *names]),
            gr.update(value=figures, headers=["figure", *names]), line)


def build() -> None:
    with gr.Accordion("Compare runs", open=False) as section:
        with gr.Row():
            picked = gr.Dropdown(run_names(), multiselect=True, max_choices=4, label="Runs (two to four)",
                                 elem_id="compare-runs", scale=3)
            x_axis = gr.Radio(["step", "epoch"], value="step", label="x axis", scale=1)
            go = gr.Button("Compare", elem_id="compare-go", scale=1)
        line = gr.Markdown(elem_id="compare-line")
        plot = gr.Plot(label="Loss", elem_id="compare-plot")
        with gr.Row():
            diff = gr.Dataframe(headers=["setting"], interactive=False, label="Settings that differ",
                                elem_id="compare-diff")
            figures = gr.Dataframe(headers=["figure"], interactive=False, label="Results", elem_id="compare-figures")
    section.expand(lambda: gr.update(choices=run_names()), None, picked, api_name=False)
    go.click(compare_view, [picked, x_axis], [plot, diff, figures, line], api_name="compare_runs")
