"""Publish tab: push a finished run's adapter with a model card, create or update a Space, and
export the adapter merged into its base (training.export).

The token box is a password field whose value lives only in the browser session; it is passed
to core.hub and never stored or echoed. Every action here needs a login when the app is public.
"""
from __future__ import annotations

import gradio as gr

from core.access import require_user
from core.errors import LabError
from core.hub import push_adapter, push_space
from core.runs import finished_runs
from tabs.feedback import warn
from training.export import DTYPES, merge_run


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


def export_merged(run, dtype, request: gr.Request = None, progress=gr.Progress()) -> str:
    try:
        require_user(request, action="exporting")
        done = merge_run(run or "", dtype or "bf16", progress=progress)
    except LabError as exc:
        return warn(exc)
    return (f"✅ Merged model: `{done.folder}` ({done.size_mb:.0f} MB, {done.seconds:.1f} s). "
            "It loads with `AutoModelForCausalLM.from_pretrained` alone.")


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
    with gr.Accordion("Export: merge the adapter into its base model", open=False):
        gr.Markdown("Writes a plain safetensors model folder (weights, tokenizer, chat template) into the "
                    "run folder. A QLoRA adapter merges into its de-quantized NF4 base, the weights it "
                    "was trained against. GGUF and Ollama export are not built yet.")
        with gr.Row():
            dtype = gr.Radio(list(DTYPES), value="bf16", label="Weights")
            merge = gr.Button("Merge")
        exported = gr.Markdown(elem_id="export-result")
    push.click(publish_adapter, [run, repo, private, token], result, api_name="publish_adapter")
    make_space.click(publish_space, [run, space, repo, private, token], result, api_name="publish_space")
    merge.click(export_merged, [run, dtype], exported, api_name="export_merged")
    refresh.click(refresh_runs, None, run, api_name=False)
    demo.load(refresh_runs, None, run, api_name=False)
