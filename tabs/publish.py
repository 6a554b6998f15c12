"""Publish tab: push a finished run's adapter (or its merged model, or a GGUF) with a model card,
create or update a Space (with its votes dataset), and export: the adapter merged into its base (training.export) or a
GGUF file with an Ollama Modelfile (training.gguf_export).

The token box is a password field whose value lives only in the browser session; it is passed
to core.hub.publish and never stored or echoed. Every action here needs a login when the app is public.
"""
from __future__ import annotations

import gradio as gr

from core.access import require_user
from core.errors import LabError
from core.hub.publish import push_adapter
from core.hub.space import push_space
from core.runs import finished_runs
from tabs.feedback import shows_errors
from training.export import DTYPES
from training.export_formats import ensure_export, export_run
from training.export_parity import check_parity, side_by_side
from training.gguf_export import QUANTS

PUSH_CHOICES = ["adapter", "merged"] + [f"gguf-{quant}" for quant in QUANTS]


def run_choices() -> list[str]:
    return [run.name for run in finished_runs()]


def refresh_runs():
    return gr.update(choices=run_choices())


@shows_errors()
def publish_adapter(run, repo_id, private, token, what="adapter", request: gr.Request = None,
                    progress=gr.Progress()) -> str:
    require_user(request, action="publishing")
    what = what or "adapter"
    if what not in PUSH_CHOICES:
        raise LabError(f"Cannot push {what!r}: choose one of {', '.join(PUSH_CHOICES)}.")
    ensure_export(run or "", what, progress)
    url = push_adapter(run or "", repo_id, token, bool(private), progress=progress, what=what)
    return f"✅ {what.capitalize()} pushed: [{url}]({url})"


@shows_errors()
def publish_space(run, space_id, repo_id, private, token, votes_repo="", request: gr.Request = None,
                  progress=gr.Progress()) -> str:
    require_user(request, action="publishing")
    votes_repo = (votes_repo or "").strip()
    url = push_space(run or "", space_id, repo_id, token, bool(private), progress=progress,
                     votes_repo="" if votes_repo.lower() == "none" else votes_repo or None)
    kept = "no votes" if votes_repo.lower() == "none" else f"votes in `{votes_repo or space_id.strip() + '-votes'}`"
    return f"✅ Space created or updated: [{url}]({url}) — it loads the adapter from `{repo_id}`; {kept}."


@shows_errors()
def export_model(run, fmt, dtype, quant, request: gr.Request = None, progress=gr.Progress()) -> str:
    require_user(request, action="exporting")
    done = export_run(run or "", fmt or "merged", dtype or "bf16", quant or "q8_0", progress=progress)
    where = f"`{done.folder}` ({done.size_mb:.0f} MB, {done.seconds:.1f} s)"
    if fmt == "gguf":
        progress(0.9, desc="Checking that the GGUF answers like the adapter")
        parity = check_parity(run, quant or "q8_0", lambda text: progress(0.95, desc=text))
        return (f"✅ GGUF and Modelfile: {where}. Run it with `llama-cli -m <file>.gguf`, or "
                f"`ollama create NAME -f Modelfile` from that folder.\n\nParity: {parity['verdict']} (parity.json)"
                f"\n\n{side_by_side(parity)}")
    return f"✅ Merged model: {where}. It loads with `AutoModelForCausalLM.from_pretrained` alone."


def build(demo: gr.Blocks) -> None:
    """Lay out the Publish tab; its run picker refreshes on page load."""
    gr.Markdown("Push a finished run to the Hugging Face Hub. The token is used for this session only: "
                "it is never stored, logged or written into any file. `HF_TOKEN` works too.")
    with gr.Row():
        # A run that finished after the page was built is still publishable by name (the API);
        # finished_run() checks the name.
        run = gr.Dropdown(run_choices(), label="Finished run", allow_custom_value=True)
        refresh = gr.Button("↻", scale=0)
    token = gr.Textbox(label="Hugging Face write token (optional if HF_TOKEN is set)", type="password")
    with gr.Row():
        repo = gr.Textbox(label="Model repo", placeholder="your-name/smollm2-lumen-lora")
        private = gr.Checkbox(label="Private")
    what = gr.Dropdown(PUSH_CHOICES, value="adapter", label="What to push",
                       info="merged and gguf-* are exported first if the run has no such export yet")
    push = gr.Button("Push", variant="primary")
    with gr.Row():
        space = gr.Textbox(label="Space", placeholder="your-name/lumen-compare")
        votes_repo = gr.Textbox(label="Votes dataset (private)", placeholder="default: <Space>-votes; 'none' for no votes",
                                info="The Space's blind votes and thumbs go here; pull them in Train → Preference votes")
    make_space = gr.Button("Create or update Space")
    result = gr.Markdown(elem_id="publish-result")
    with gr.Accordion("Export: a merged model, or GGUF for llama.cpp and Ollama", open=False):
        gr.Markdown("**merged** writes a plain safetensors model folder (weights, tokenizer, chat "
                    "template); a QLoRA adapter merges into its de-quantized NF4 base, the weights it was "
                    "trained against. **gguf** writes one file for llama.cpp, LM Studio and Ollama, with "
                    "the tokenizer and chat template inside and an Ollama `Modelfile` beside it. Both go "
                    "into the run folder.")
        with gr.Row():
            fmt = gr.Radio(["merged", "gguf"], value="merged", label="Format")
            dtype = gr.Radio(list(DTYPES), value="bf16", label="Merged weights")
            quant = gr.Radio(list(QUANTS), value="q8_0", label="GGUF tensor type")
            merge = gr.Button("Export")
        exported = gr.Markdown(elem_id="export-result")
    push.click(publish_adapter, [run, repo, private, token, what], result, api_name="publish_adapter")
    make_space.click(publish_space, [run, space, repo, private, token, votes_repo], result, api_name="publish_space")
    merge.click(export_model, [run, fmt, dtype, quant], exported, api_name="export_model")
    refresh.click(refresh_runs, None, run, api_name=False)
    demo.load(refresh_runs, None, run, api_name=False)
