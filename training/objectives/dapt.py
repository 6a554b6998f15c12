"""objective=dapt: domain-adaptive pretraining, next-token prediction on raw text (trl's SFTTrainer).

    python cli.py train --config dapt_lora         # the bundled Shakespeare

The text is tokenized, concatenated and cut into windows of `block_size` tokens every `stride`
tokens (core.data.formats.dapt_windows). Held out: perplexity on held-out windows, and on windows of
general English (ChatterBot's questions and answers), so forgetting shows beside the gain.
"""
from __future__ import annotations

from core.errors import LabError
from core.data.formats import check_text_column, dapt_preview, dapt_windows
from core.runs import Measure
from training.model_setup import context_length
from training.objectives.sft import SFT, perplexity

PREVIEW_ROWS = 64  # rows a preview reads: enough text for the two windows it shows


class DAPT(SFT):
    name = "dapt"
    help = "dapt: next-token prediction on raw domain text"
    raw_text = True
    scores_answers = False
    example_per_row = False

    def check(self, cfg) -> None:
        if not 0 < cfg.stride <= cfg.block_size:
            raise LabError(f"stride={cfg.stride} must be between 1 and block_size={cfg.block_size}.")

    def check_columns(self, column_names) -> None:
        check_text_column(column_names)

    def sequence_length(self, cfg) -> int:
        return cfg.block_size

    def preview_rows(self, row: int) -> int:
        return PREVIEW_ROWS

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        return dapt_windows(rows, tokenizer, cfg.block_size, cfg.stride, context_length(cfg.model))

    def preview(self, rows, row: int, tokenizer, cfg):
        """The first two windows; only they are built, not the whole corpus's."""
        windows = dapt_windows(rows, tokenizer, cfg.block_size, cfg.stride, context_length(cfg.model), 2)
        total_chars = sum(len(text or "") for text in rows["text"])
        return dapt_preview(windows, tokenizer, cfg.block_size, cfg.stride, total_chars)

    def batching(self, cfg) -> dict:
        return {"packing": False}  # windows already have one fixed length

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        return {"perplexity": perplexity(trainer), "general_perplexity": general_perplexity(trainer, cfg, tokenizer)}

    def general_windows(self, cfg, tokenizer):
        return general_windows(cfg, tokenizer)

    def measures(self, before: dict, after: dict) -> list[Measure]:
        return [Measure("held-out perplexity", before.get("perplexity"), after.get("perplexity")),
                Measure("perplexity on general text (forgetting)", before.get("general_perplexity"),
                        after.get("general_perplexity"))]


def general_perplexity(trainer, cfg, tokenizer) -> float:
    """Perplexity on general English in the run's windows: ChatterBot's questions and answers."""
    return perplexity(trainer, general_windows(cfg, tokenizer), "general")


def general_windows(cfg, tokenizer):
    """The forgetting check's first `general_windows` windows (training.effect maps them too)."""
    from datasets import Dataset

    from core.data.rows import load_rows

    rows = load_rows("chatterbot").shuffle(seed=cfg.seed)
    text = Dataset.from_dict({"text": [f"{row['question']}\n{row['answer']}" for row in rows]})
    return dapt_windows(text, tokenizer, cfg.block_size, cfg.stride, context_length(cfg.model), cfg.general_windows)


OBJECTIVE = DAPT()
