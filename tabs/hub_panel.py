"""The "Find on the Hub" panel: search models or datasets by task and fill a box with the pick.

One panel sits under each box it serves: the Chat model box, the Train model box and the Train
dataset box. The handlers are plain functions over widget values (tests call them directly);
core.hub.search does the searching. Picking a row writes its repo id into the box. Offline the
panel says "The Hugging Face Hub is unreachable", and the known local models still work.
"""
from __future__ import annotations

import gradio as gr

from core.access import check_hub
from core.hub.search import (
    COLUMNS,
    DATASET_TASKS,
    LIBRARIES,
    MODEL_TASKS,
    SORTS,
    endpoint_name,
    search_datasets,
    search_models,
)
from tabs.feedback import shows_errors

MAX_RESULTS = 30


@shows_errors(lambda message: ([], message))
def find_models(task: str, query: str = "", library: str = "transformers", max_params_m: float = 1000,
                sort: str = "downloads", request: gr.Request = None) -> tuple[list, str]:
    """(rows for the results table, status line) for a model search."""
    check_hub(request)
    found = search_models(MODEL_TASKS.get(task, task), query, library, float(max_params_m or 0) * 1e6, sort,
                          MAX_RESULTS)
    return [r.row() for r in found], _status(len(found), "model")


@shows_errors(lambda message: ([], message))
def find_datasets(task: str, query: str = "", sort: str = "downloads",
                  request: gr.Request = None) -> tuple[list, str]:
    """(rows for the results table, status line) for a dataset search."""
    check_hub(request)
    found = search_datasets(DATASET_TASKS.get(task, task), query, sort, MAX_RESULTS)
    return [r.row() for r in found], _status(len(found), "dataset")


def _status(count: int, kind: str) -> str:
    if not count:
        return f"No {kind}s match on {endpoint_name()}."
    hint = " Add `:subset` or `@split` after the id if the set has them." if kind == "dataset" else ""
    return f"{count} {kind}{'' if count == 1 else 's'} from {endpoint_name()}. Click a row to use it.{hint}"


def picked(evt: gr.SelectData):
    """The repo id of the clicked row (its first cell)."""
    row = getattr(evt, "row_value", None)
    return row[0] if row else gr.update()


def build(target: gr.Dropdown, kind: str, elem_prefix: str):
    """Lay out the panel in the current layout and wire it to fill `target`; returns the event
    that fills it, for a caller to chain on."""
    with gr.Accordion("Find on the Hub", open=False, elem_id=f"{elem_prefix}-hub"):
        with gr.Row():
            tasks = MODEL_TASKS if kind == "model" else DATASET_TASKS
            task = gr.Dropdown(list(tasks), value=next(iter(tasks)), label="Task", allow_custom_value=True)
            query = gr.Textbox(label="Name contains", placeholder="e.g. smol")
            sort = gr.Radio(list(SORTS), value="downloads", label="Sort by")
        if kind == "model":
            with gr.Row():
                library = gr.Dropdown(list(LIBRARIES), value="transformers", label="Library")
                size = gr.Slider(10, 8000, 1000, step=10, label="At most (million parameters)",
                                 info="From the safetensors count; a CPU Space manages about 1,000M")
        search = gr.Button("Search", elem_id=f"{elem_prefix}-hub-search")
        status = gr.Markdown(elem_id=f"{elem_prefix}-hub-status")
        results = gr.Dataframe(headers=COLUMNS, interactive=False, max_height=300, elem_id=f"{elem_prefix}-hub-results")
    if kind == "model":
        search.click(find_models, [task, query, library, size, sort], [results, status], api_name=False)
    else:
        search.click(find_datasets, [task, query, sort], [results, status], api_name=False)
    return results.select(picked, None, target, api_name=False)


def register_api() -> None:
    """The searches under stable API names, once per app."""
    gr.api(find_models, api_name="hub_models")
    gr.api(find_datasets, api_name="hub_datasets")
