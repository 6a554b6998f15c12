"""objective=sft: learn the answers to prompts, with the loss on the answers only (trl's SFTTrainer).

    python cli.py train --config sft_lora          # the bundled identity set

Rows of any conversational format (messages, sharegpt, prompt/completion, alpaca, question/
answer) become prompt/completion pairs (core.data.formats). Held out: perplexity of the reference
answers, and the base's and the tuned model's greedy answers scored against them
(training.answer_eval).
"""
from __future__ import annotations

import math

from core.data.formats import sft_format, sft_preview, sft_rows
from core.runs import Measure
from training.model_setup import common_args, load_base, lora_config
from training.objective import Objective


class SFT(Objective):
    name = "sft"
    maps_effect = True
    help = "sft: learn answers to prompts (loss on answers only)"
    scores_answers = True

    def check_columns(self, column_names) -> None:
        sft_format(column_names)

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        return sft_rows(rows, tokenizer, first_row)

    def preview(self, rows, row: int, tokenizer, cfg):
        return sft_preview(self.examples(rows.select([row]), tokenizer, cfg, row + 1)[0], tokenizer)

    def trainer(self, cfg, run, tokenizer, train_set, eval_set, callbacks):
        from training.trainer import LabSFTTrainer

        return LabSFTTrainer(model=load_base(cfg, self.sequence_length(cfg)), args=self.trl_config(cfg, run),
                             train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
                             peft_config=lora_config(cfg), callbacks=list(callbacks))

    def trl_config(self, cfg, run):
        from trl import SFTConfig

        return SFTConfig(**common_args(cfg, run), max_length=self.sequence_length(cfg), **self.batching(cfg))

    def batching(self, cfg) -> dict:
        """How rows are batched. Measured on 2 CPU cores (bench/bench_train.py): packing's long
        block-diagonal rows cost dense attention over the whole pack, while length-grouped dynamic
        padding wastes little; on a GPU, packed padding-free batches use varlen attention kernels."""
        import torch

        mode = cfg.batching
        if mode == "auto":
            mode = "packed" if torch.cuda.is_available() else "grouped"
        flags = {"packing": mode == "packed"}
        if mode == "grouped":
            flags["train_sampling_strategy"] = "group_by_length"
        return flags

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        return {"perplexity": perplexity(trainer)}

    def measures(self, before: dict, after: dict) -> list[Measure]:
        return [Measure("held-out perplexity", before.get("perplexity"), after.get("perplexity"))]


def perplexity(trainer, eval_dataset=None, prefix: str = "eval") -> float:
    """exp(mean loss) on the held-out split (or on `eval_dataset`)."""
    metrics = trainer.evaluate(eval_dataset=eval_dataset, metric_key_prefix=prefix)
    return round(math.exp(metrics[f"{prefix}_loss"]), 3)


OBJECTIVE = SFT()
