"""Publish tab: push a finished run's adapter with a model card, and create or update a Space.

The token box is a password field whose value lives only in the browser session; it is passed
to core.hub and never stored or echoed. Both actions need a login when the app is public.
"""
from __future__ import annotations

import gradio as gr

from core.access import require_user
from core.errors import LabError
from core.hub import push_adapter, push_space
from core.runs import finished_runs
from tabs.feedback import warn


def run_choices() -> list[str]:
    return [run.name for run in finished_runs()]


def refresh_runs():
    return gr.update(choices=run_choices())


def publish_adapter(run, repo_id, private, token, request: gr.Request = None, progress=gr.Progress()) -> str:
    try:
        require_user(request, action="publishing")
        url = push_adapter(run or "", repo_id, token, bool(private), progress=progress)
    except LabError as exc:
        return warn(exc)
    return f"✅ Adapter pushed: [{url}]({url})"


def publish_space(run, space_id, repo_id, private, token, request: gr.Request = None, progress=gr.Progress()) -> str:
    try:
        require_user(request, action="publishing")
        url = push_space(run or "", space_id, repo_id, token, bool(private), progress=progress)
    except LabError as exc:
        return warn(exc)
    return f"✅ Space created or updated: [{url}]({url}) — it loads the adapter from `{repo_id}`."


def build(demo: gr.Blocks) -> None:
    """Lay out the Publish tab; its run picker refreshes on page load."""
    gr.Markdown("Push a finished run to the Hugging Face Hub. The token is used for this session only: "
                "it is never stored, logged or written into any file. `HF_TOKEN` works too.")
    with gr.Row():
        run = gr.Dropdown(run_choices(), label="Finished run", allow_custom_value=False)
        refresh = gr.Button("↻", scale=0)
    token = gr.Textbox(label="Hugging Face write token (optional if HF_TOKEN is set)", type="password")
    with gr.Row():
        repo = gr.Textbox(label="Model repo", placeholder="your-name/smollm2-lumen-lora")
        private = gr.Checkbox(label="Private")
    push = gr.Button("Push adapter", variant="primary")
    with gr.Row():
        space = gr.Textbox(label="Space", placeholder="your-name/lumen-compare")
    make_space = gr.Button("Create or update Space")
    result = gr.Markdown(elem_id="publish-result")
    push.click(publish_adapter, [run, repo, private, token], result, api_name="publish_adapter")
    make_space.click(publish_space, [run, space, repo, private, token], result, api_name="publish_space")
    refresh.click(refresh_runs, None, run, api_name=False)
    demo.load(refresh_runs, None, run, api_name=False)
