"""The training form, generated from TrainConfig's fields: adding a field needs no tab code.

    from tabs.train_form import build_fields, values_to_config, config_to_values

Fields named in MAIN are placed by tabs/train.py; every other field lands in "Advanced".
Widgets and values are matched by field name, never by position: the tab passes the form's
widgets to Gradio as a set, and `named_values` turns Gradio's {widget: value} into {name: value}.
"""
from __future__ import annotations

from dataclasses import fields

import gradio as gr

from training.config import TrainConfig, config_from_dict, field_types

MAIN = ("model", "dataset", "columns", "objective", "adapter")
FIELDS = [f for f in fields(TrainConfig)]
NAMES = [f.name for f in FIELDS]


def widget_for(f, value):
    """A widget for one config field, labelled with its name and its help line."""
    help_text, choices, kind = f.metadata["help"], f.metadata.get("choices"), field_types()[f.name]
    common = dict(label=f.name, info=help_text, elem_id=f"cfg-{f.name}")
    if choices:
        return gr.Radio(list(choices), value=value, **common)
    if kind is bool:
        return gr.Checkbox(value=value, **common)
    if kind in (int, float):
        return gr.Number(value=value, precision=0 if kind is int else None, **common)
    if kind is list:
        return gr.Textbox("\n".join(value), lines=3, **common)
    return gr.Textbox(value, **common)


def build_fields(names, cfg: TrainConfig | None = None) -> dict:
    """Widgets for `names`, in the current layout context, keyed by field name."""
    cfg = cfg or TrainConfig()
    by_name = {f.name: f for f in FIELDS}
    return {name: widget_for(by_name[name], getattr(cfg, name)) for name in names}


def named_values(form: dict, data: dict) -> dict:
    """{field name: value} from Gradio's {widget: value}, for the widgets in `form` (name -> widget)."""
    return {name: data[widget] for name, widget in form.items()}


def values_to_config(values: dict) -> TrainConfig:
    """Form values by field name to a validated TrainConfig (ValueError if impossible)."""
    return config_from_dict(values)


def config_to_values(cfg: TrainConfig) -> dict:
    """{field name: widget value}: lists become one line per item."""
    return {n: "\n".join(v) if isinstance(v, list) else v for n, v in ((n, getattr(cfg, n)) for n in NAMES)}


def help_of(name: str) -> str:
    return next(f.metadata["help"] for f in FIELDS if f.name == name)


def explain(name: str, choice: str) -> str:
    """The help line of a choice field, with the chosen option's part first."""
    help_text = help_of(name)
    parts = [p.strip() for p in help_text.split(";")]
    chosen = [p for p in parts if p.startswith(f"{choice}:")]
    return chosen[0] if chosen else help_text
