"""Train tab, step 1: pick data (bundled, a file, an upload or a Hub dataset id), see its rows,
map its columns, and see exactly what the model sees for one example.

    python -c "from tabs.train_data import inspect_data; print(inspect_data('identity')[0])"

The handlers are plain functions over widget values; tests and the API call them directly.
"""
from __future__ import annotations

import gradio as gr

from core.access import check_data_source, check_model, clamp, is_trusted
from core.data import file_types
from core.data.rows import bundled_sources, detect_format, load_rows
from core.errors import LabError
from core.request_limits import HEAVY_EVENTS
from core.hub.source import parse_hub_source
from tabs import hub_panel, train_form
from tabs.feedback import shows_errors, warn
from tabs.session import remember_upload, save_upload
from training import objectives
from training.config import TrainConfig

MAX_PREVIEW_ROWS = 10


def dataset_choices() -> list[str]:
    return bundled_sources()


@shows_errors(lambda message: (message, None, []))
def inspect_data(dataset: str, columns: str = "", request=None, uploads=()):
    """(summary markdown, first rows as a table, column names) for a dataset source.

    When detection fails the column names still come back: that is when the user needs them
    for the mapping dropdowns."""
    dataset = (dataset or "").strip()
    hub = parse_hub_source(dataset)
    check_data_source(dataset, bundled_sources(), request, uploads)
    rows = load_rows(dataset, columns, limit=MAX_PREVIEW_ROWS if hub else 0, cache=is_trusted(request))
    head = rows.select(range(min(MAX_PREVIEW_ROWS, len(rows)))).to_pandas()
    head = head.map(lambda v: (str(v)[:300] + "…") if len(str(v)) > 300 else str(v))
    try:
        fmt = f"detected format: **{detect_format(rows.column_names)}**"
    except LabError as exc:
        fmt = warn(exc)
    count = f"the first {len(rows)} rows, streamed from {hub}" if hub else f"{len(rows)} rows"
    summary = f"**{count}** · {fmt} · columns: {', '.join(rows.column_names)}"
    return summary, head, list(rows.column_names)


def mapping_string(prompt_col: str, answer_col: str, text_col: str) -> str:
    """Column-mapping dropdowns to the config's 'role=column' string."""
    pairs = [("question", prompt_col), ("answer", answer_col), ("text", text_col)]
    return ",".join(f"{role}={col}" for role, col in pairs if col)


@shows_errors(lambda message: ([(message, None)], ""))
def preview_example(row, values: dict, request=None, uploads=()):
    """(highlighted segments, info line): the exact text the model sees for one example.

    A public app's visitors get capped sizes: the preview never tokenizes more than it shows."""
    from training.prepare import preview

    values = {**values, **{name: clamp(name, int(values[name] or 0), request)
                           for name in ("block_size", "stride", "max_rows")}}
    if not is_trusted(request) and not values["max_rows"]:
        values["max_rows"] = clamp("max_rows", 10**9, request)
    cfg = train_form.values_to_config(values)
    check_data_source(cfg.dataset, bundled_sources(), request, uploads)
    check_model(cfg.model, request)  # as in Chat: no server path or Hub id is probed for a visitor
    shown = preview(cfg, clamp("preview_row", int(row or 0), request), cache=is_trusted(request))
    info = f"{shown.total_tokens} tokens, {shown.trained_tokens} trained on (highlighted). {shown.note}"
    return shown.segments, info.strip()


def inspect_for_form(dataset: str, columns: str, uploads: list, request: gr.Request):
    text, head, names = inspect_data(dataset, columns, request, uploads)
    choices = [""] + names
    return (text, head, *[gr.update(choices=choices, value="") for _ in range(3)])

def api_inspect(dataset: str, columns: str = "", request: gr.Request = None) -> tuple[str, list, list]:
    """API: (summary, the first rows as records, column names) of a dataset source."""
    summary, head, names = inspect_data(dataset, columns, request)
    return summary, ([] if head is None else head.to_dict("records")), names


def api_preview(dataset: str, objective: str = objectives.DEFAULT, row: int = 0, model: str = "smollm2-135m-instruct",
                columns: str = "", max_rows: int = 0, request: gr.Request = None) -> tuple[list, str]:
    """API: (segments, info) of what the model sees for one example, with default settings."""
    values = {**train_form.config_to_values(TrainConfig()), "dataset": dataset or "", "objective": objective,
              "model": model, "columns": columns, "max_rows": max_rows}
    segments, info = preview_example(row, values, request)
    return [list(segment) for segment in segments], info


def build_step(cfg: TrainConfig) -> dict:
    with gr.Accordion("1 · Data", open=True):
        with gr.Row():
            dataset = gr.Dropdown(dataset_choices(), value=cfg.dataset, allow_custom_value=True, label="dataset",
                                  info=train_form.help_of("dataset"), elem_id="cfg-dataset")
            upload = gr.File(label=f"…or upload {file_types.listed()}", type="filepath", file_types=list(file_types.EXTENSIONS))
        picked = hub_panel.build(dataset, "dataset", "train-data")
        summary = gr.Markdown(elem_id="data-summary")
        table = gr.Dataframe(label="First rows", interactive=False, max_height=260)
        with gr.Row():
            maps = [gr.Dropdown([], label=f"{role} column", allow_custom_value=True)
                    for role in ("prompt/question", "answer", "text (DAPT)")]
        columns = train_form.build_fields(["columns"], cfg)["columns"]
        with gr.Row():
            row = gr.Number(0, precision=0, label="Preview row", scale=0)
            preview_btn = gr.Button("Show what the model sees", scale=0)
        seen = gr.HighlightedText(label="What the model sees (highlighted: trained on)", elem_id="model-sees",
                                  color_map={"trained": "green", "trained, overlaps next window": "orange"})
        seen_info = gr.Markdown()
    return dict(dataset=dataset, upload=upload, columns=columns, maps=maps, row=row, preview=preview_btn,
                seen=seen, seen_info=seen_info, outputs=[summary, table, *maps], picked=picked)


def wire(data: dict, form: dict, uploads: gr.State) -> list:
    """Wire the data step; returns the events that set form fields (dataset, columns)."""
    inspect_inputs = [data["dataset"], data["columns"], uploads]

    def on_upload(upload, own, request: gr.Request):
        try:
            path = save_upload(upload, request)
        except LabError as exc:
            return gr.update(), own, warn(exc)
        return path, remember_upload(path, own), gr.update()

    def on_preview(inputs: dict, request: gr.Request):
        return preview_example(inputs[data["row"]], train_form.named_values(form, inputs), request, inputs[uploads])

    uploaded = data["upload"].upload(on_upload, [data["upload"], uploads],
                                     [data["dataset"], uploads, data["outputs"][0]], api_name=False)
    data["dataset"].change(inspect_for_form, inspect_inputs, data["outputs"], api_name=False, **HEAVY_EVENTS)
    data["columns"].submit(inspect_for_form, inspect_inputs, data["outputs"], api_name=False, **HEAVY_EVENTS)
    mapped = [dropdown.input(mapping_string, data["maps"], data["columns"], api_name=False)
              for dropdown in data["maps"]]
    data["preview"].click(on_preview, {data["row"], uploads, *form.values()}, [data["seen"], data["seen_info"]],
                          api_name=False, **HEAVY_EVENTS)
    gr.api(api_inspect, api_name="data_inspect", **HEAVY_EVENTS)
    gr.api(api_preview, api_name="data_preview", **HEAVY_EVENTS)
    return [data["picked"], uploaded, *mapped]
