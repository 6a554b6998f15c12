"""Train tab: pick data, see what the model sees, configure from TrainConfig, run live.

Every handler is a plain function over widget values that calls core/ and training/; tests
call them directly. The job runs out of process (training.jobs), and all progress is read
back from the run folder, so a page reload re-attaches to the running job with its full curve.
"""
from __future__ import annotations

import hashlib

import gradio as gr

from core.errors import LabError
from tabs import hub_panel, train_compare, train_data, train_effect, train_form, train_launch, train_votes
from tabs.feedback import shows_errors
from tabs.session import download_path
from tabs.trackio_link import open_trackio
from tabs.train_live import (
    api_start,
    api_status,
    attach_latest,
    delete_run,
    evaluate_again,
    poll,
    resume_training,
    runs_table,
    start_training,
    stop_training,
)
from training.config import TrainConfig, list_recipes, load_config


def load_recipe(name: str) -> dict:
    """{field name: widget value} of a bundled recipe."""
    return train_form.config_to_values(load_config(name))


def cli_preview(values: dict, request=None):
    """(equivalent CLI command, YAML text, YAML file to download)."""
    try:
        cfg = train_form.values_to_config(values)
        text = cfg.to_yaml()
        name = f"train-config-{hashlib.sha1(text.encode()).hexdigest()[:10]}.yaml"
        path = download_path(request, name, named_by_content=True)
    except LabError as exc:
        return f"# {exc}", "", None
    path.write_text(text)
    return f"python cli.py train --config {name}", text, str(path)


def build(demo: gr.Blocks, adapter_picker: gr.Dropdown) -> None:
    """Lay out the Train tab and wire it, page loads included; `adapter_picker` is the Chat
    tab's, refreshed when a run ends."""
    cfg = TrainConfig()
    run, last_state, uploads = gr.State(None), gr.State(None), gr.State([])
    data = train_data.build_step(cfg)
    fields, method = _method_step(cfg)
    fields.update(dataset=data["dataset"], columns=data["columns"])
    form = {name: fields[name] for name in train_form.NAMES}
    train_launch.build(form)
    live = _run_step()
    train_effect.build(run)
    runs = _runs_section()
    setters = train_votes.build(data["dataset"], fields["objective"]) + train_data.wire(data, form, uploads)
    _wire_method(demo, method, form, fields, setters + [method["picked"]])
    _wire_live(live, form, run, last_state, uploads, adapter_picker)
    _wire_runs(runs, run)
    gr.on([live["start"].click, live["stop"].click, live["resume"].click], runs_table, None, runs["table"],
          api_name=False)
    demo.load(attach_latest, None, run, api_name=False)  # a reloaded page re-attaches to the live job
    demo.load(train_data.inspect_for_form, [data["dataset"], data["columns"], uploads], data["outputs"], api_name=False)
    demo.load(runs_table, None, runs["table"], api_name=False)


def _method_step(cfg: TrainConfig) -> tuple[dict, dict]:
    from core.inference.models import KNOWN_MODELS

    with gr.Accordion("2 · Method", open=True):
        with gr.Row():
            recipe = gr.Dropdown(list_recipes(), label="Recipe (loads its settings)", value=None)
            model = gr.Dropdown([s.name for s in KNOWN_MODELS], value=cfg.model, allow_custom_value=True,
                                label="model", info=train_form.help_of("model"), elem_id="cfg-model")
        picked = hub_panel.build(model, "model", "train-model")
        with gr.Row():
            fields = train_form.build_fields(["objective", "adapter"], cfg)
        explanation = gr.Markdown(_explain(cfg.objective, cfg.adapter))
        with gr.Accordion("Advanced", open=False), gr.Row():
            fields.update(train_form.build_fields([n for n in train_form.NAMES if n not in train_form.MAIN], cfg))
        with gr.Accordion("Equivalent CLI command and YAML", open=False):
            cli = [gr.Textbox(label="CLI", interactive=False),
                   gr.Code(language="yaml", label="YAML config", interactive=False),
                   gr.File(label="Download YAML", interactive=False)]
    fields["model"] = model
    return fields, dict(recipe=recipe, explanation=explanation, cli=cli, picked=picked)


def _run_step() -> dict:
    with gr.Accordion("3 · Run", open=True):
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="train-start")
            stop = gr.Button("Stop", elem_id="train-stop")
            resume = gr.Button("Resume", elem_id="train-resume")
        parts = dict(start=start, stop=stop, resume=resume, message=gr.Markdown(elem_id="train-message"),
                     progress=gr.HTML(), x_axis=gr.Radio(["step", "epoch"], value="step", label="x axis",
                                                         elem_id="plot-x-axis"),
                     plot=gr.Plot(label="Loss", elem_id="loss-plot"),
                     schedule=gr.Plot(label="Learning rate and grad norm", elem_id="schedule-plot"),
                     stats=gr.Markdown(elem_id="train-stats"), tail=gr.Textbox(label="Log", lines=6, interactive=False))
    with gr.Accordion("4 · Result", open=True):
        parts["result"] = gr.Markdown(elem_id="train-result")
        parts["maps"] = gr.Plot(label="Before/after maps", elem_id="embedding-maps", visible=False)
    return parts


def _runs_section() -> dict:
    with gr.Accordion("Runs", open=False):
        table = gr.Dataframe(runs_table(), interactive=False, label="Past runs")
        with gr.Row():
            picked = gr.Textbox(label="Run name", scale=2)
            open_btn, resume_btn = gr.Button("Open"), gr.Button("Resume run")
            evaluate_btn = gr.Button("Evaluate again", elem_id="runs-evaluate")
            sure = gr.Checkbox(label="Yes, delete it")
            delete_btn = gr.Button("Delete", variant="stop")
            trackio_btn = gr.Button("Runs in trackio", elem_id="runs-trackio")
        message = gr.Markdown()
        train_compare.build()
    return dict(table=table, picked=picked, open=open_btn, resume=resume_btn, sure=sure, delete=delete_btn,
                message=message, evaluate=evaluate_btn, trackio=trackio_btn)


def _wire_method(demo: gr.Blocks, method: dict, form: dict, fields: dict, setters: list) -> None:
    """Wire the recipe, the explanation and the CLI/YAML preview. `setters` are the other
    events that write form fields (Hub picks, uploads, column maps, votes)."""
    @shows_errors(toast=True)
    def on_recipe(name):
        values = load_recipe(name)
        return {form[field]: value for field, value in values.items()}

    def on_change(inputs: dict, request: gr.Request):
        return cli_preview(train_form.named_values(form, inputs), request)

    setters = [method["recipe"].input(on_recipe, method["recipe"], list(form.values()), api_name=False), *setters]
    # Not `.change`: a recipe sets ~40 fields, and each field's change event would submit its own
    # snapshot of a half-updated form, answered in any order. `.input` fires on the user's own
    # edits, and `.then` reads the form after a setter's outputs are applied. One pool of one runs
    # them in the order they were sent, so an older snapshot's answer never lands last.
    # The preview's first answer comes with the page, not when its section opens: a snapshot
    # sent on opening could be taken before a recipe's fields were applied, and on a busy
    # machine that answer showed last although the server ran it first (the section's widgets
    # mount as it opens).
    serial = dict(concurrency_id="train-form", concurrency_limit=1, show_progress="hidden")
    explain = dict(fn=_explain, inputs=[fields["objective"], fields["adapter"]], outputs=method["explanation"],
                   **serial)
    preview = dict(fn=on_change, inputs=set(form.values()), outputs=method["cli"], **serial)
    for event, triggers in ((explain, [fields["objective"].input, fields["adapter"].input]),
                            (preview, [widget.input for widget in form.values()] + [demo.load])):
        gr.on(triggers, trigger_mode="always_last", api_name=False, **event)
        for setter in setters:
            setter.then(api_name=False, **event)


def _wire_live(live: dict, form: dict, run, last_state, uploads, adapter_picker) -> None:
    def on_start(inputs: dict, request: gr.Request):
        message, name = start_training(train_form.named_values(form, inputs), request, inputs[uploads])
        return {live["message"]: message, run: name if name else gr.update()}

    shown = dict(progress=live["progress"], plot=live["plot"], schedule=live["schedule"], stats=live["stats"],
                 tail=live["tail"], result=live["result"], maps=live["maps"], state=last_state,
                 adapters=adapter_picker)

    def on_poll(name, state, x_axis, request: gr.Request):
        return {shown[field]: value for field, value in vars(poll(name, state, request, x_axis)).items()}

    live["start"].click(on_start, {uploads, *form.values()}, [live["message"], run], api_name="train_start")
    live["stop"].click(stop_training, run, live["message"], api_name="train_stop")
    live["resume"].click(resume_training, run, [live["message"], run], api_name="train_resume")
    gr.api(api_start, api_name="train_recipe")
    gr.api(api_status, api_name="train_status")
    gr.Timer(2.0).tick(on_poll, [run, last_state, live["x_axis"]], list(shown.values()), show_progress="hidden",
                       api_name=False)
    live["x_axis"].change(on_poll, [run, last_state, live["x_axis"]], list(shown.values()), show_progress="hidden",
                          api_name=False)


def _wire_runs(runs: dict, run: gr.State) -> None:
    runs["open"].click(lambda name: name, runs["picked"], run, api_name=False)
    runs["resume"].click(resume_training, runs["picked"], [runs["message"], run], api_name=False).then(
        runs_table, None, runs["table"], api_name=False)
    runs["delete"].click(delete_run, [runs["picked"], runs["sure"]], runs["message"], api_name="train_delete").then(
        runs_table, None, runs["table"])
    runs["table"].select(_pick_run, None, runs["picked"], api_name=False)
    runs["evaluate"].click(evaluate_again, runs["picked"], [runs["message"], run], api_name="evaluate_run")
    runs["trackio"].click(open_trackio, None, runs["message"], api_name="open_trackio")


def _pick_run(evt: gr.SelectData) -> str:
    return evt.row_value[0] if evt.row_value else ""


def _explain(objective: str, adapter: str) -> str:
    return (f"**Objective** — {train_form.explain('objective', objective)}  \n"
            f"**Adapter** — {train_form.explain('adapter', adapter)}")
