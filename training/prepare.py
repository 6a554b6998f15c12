"""From a TrainConfig to train/eval datasets, and the preview of one example.

    python -c "from training.prepare import preview; from training.config import TrainConfig; print(preview(TrainConfig(), 0))"

The rows load the same way for every objective (column mapping, `max_rows` sample, a Hub set
streamed and pinned to a commit); the run's objective turns them into examples and previews.
"""
from __future__ import annotations

from core.data.rows import DataError, load_rows
from core.data.formats import Preview
from training import objectives

MAX_EVAL_EXAMPLES = 128  # perplexity on more than this costs minutes on a CPU and adds little


def format_note(cfg, tokenizer) -> str:
    """Which text format prompt rows take, said out loud (nothing silent)."""
    if objectives.get(cfg.objective).raw_text:
        return ""
    if cfg.chat_template == "chatml":
        return "Format: ChatML (chosen in chat_template)."
    if tokenizer.chat_template:
        return "Format: the model's own chat template."
    why = "chosen in chat_template" if cfg.chat_template == "plain" else "this model has no chat template"
    return f"Format: plain \"Question: …\\nAnswer: …\" text ({why}; chat_template: chatml is the other choice)."


def load_training_rows(cfg, needed: int = 0, cache: bool = True):
    """The dataset's rows after the column mapping and the `max_rows` sample. A Hub set streams
    only its first `max_rows` rows (or `needed`, for a preview), never the whole split;
    `cache=False` leaves no datasets cache behind (core.data.rows.load_rows)."""
    rows = load_rows(cfg.dataset, cfg.columns, limit=cfg.max_rows or needed, revision=cfg.dataset_revision,
                     cache=cache)
    if cfg.max_rows:
        rows = rows.shuffle(seed=cfg.seed, keep_in_memory=not cache).select(range(min(cfg.max_rows, len(rows))))
    return rows


def pin_dataset_revision(cfg):
    """`cfg` with a Hub dataset's newest commit filled in, so every process of the run and a
    later resume read the same data; other sources are returned as they are."""
    from dataclasses import replace

    from core.hub.source import dataset_revision, parse_hub_source

    source = parse_hub_source(cfg.dataset)
    if source is None or cfg.dataset_revision:
        return cfg
    return replace(cfg, dataset_revision=dataset_revision(source.repo))


def build_examples(cfg, tokenizer):
    """All examples for `cfg`, as its objective builds them from the rows."""
    return objectives.get(cfg.objective).examples(load_training_rows(cfg), tokenizer, cfg)


def split_examples(examples, cfg):
    """(train, eval or None), split with the config's seed."""
    if cfg.eval_fraction <= 0:
        return examples, None
    return objectives.get(cfg.objective).split(examples, held_out_count(len(examples), cfg.eval_fraction), cfg.seed)


def held_out_count(examples: int, eval_fraction: float) -> int:
    """How many of `examples` are held out (eval_fraction > 0); a DataError where none would be
    left to train on. Start asks it with the rows it counted (TrainConfig.checked_for_start)."""
    n_eval = min(MAX_EVAL_EXAMPLES, max(1, round(examples * eval_fraction)))
    if examples - n_eval < 1:
        raise DataError(f"Only {examples} example(s): too few for eval_fraction={eval_fraction}. "
                        "Add data or set eval_fraction to 0.")
    return n_eval


def preview(cfg, row: int = 0, tokenizer=None, cache: bool = True) -> Preview:
    """Exactly what the model sees for example `row`, with the trained-on part marked
    (`cache=False`: for a public app's visitor, no datasets cache is written)."""
    tokenizer = tokenizer or objectives.get(cfg.objective).tokenizer(cfg)
    shown = _preview(cfg, row, tokenizer, cache)
    shown.note = " ".join(part for part in (shown.note, format_note(cfg, tokenizer)) if part)
    return shown


def _preview(cfg, row: int, tokenizer, cache: bool) -> Preview:
    from core.hub.source import parse_hub_source

    objective = objectives.get(cfg.objective)
    needed = objective.preview_rows(row)
    rows = load_training_rows(cfg, needed=needed, cache=cache)
    if needed == row + 1 and not 0 <= row < len(rows):
        capped = f" (max_rows={cfg.max_rows})" if cfg.max_rows and len(rows) == cfg.max_rows else ""
        raise DataError(f"Row {row} is out of range: the data has {len(rows)} rows{capped}.")
    shown = objective.preview(rows, row, tokenizer, cfg)
    if needed != row + 1 and parse_hub_source(cfg.dataset) and not cfg.max_rows:
        shown.note = f"{shown.note[:-1]} in the first {len(rows)} rows streamed from the Hub."
    return shown
