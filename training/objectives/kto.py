"""objective=kto: learn from answers marked good or bad, one at a time, with trl's KTOTrainer.

    python cli.py votes thumbs --out thumbs.jsonl && python cli.py train --config kto_lora --dataset thumbs.jsonl

KTO (Ethayarajh et al., 2024) needs no pairs: each row is a prompt, one answer and a label
(true: good, false: bad), which is what Chat's thumbs up/down collect. Like DPO, the reference
is the base with the adapter switched off (or, with `start_from`, a frozen copy of the adapter
the run continues), so it costs no second copy of the weights. Rows: prompt/completion/label
(label true/false, 1/0 or up/down), as message lists or plain text; the training rows need at
least one good and one bad answer. Held out: rows whose prompts never trained, scored by the
reward margin between good and bad answers and by the KTO loss (known before training where the
policy starts as its reference: `held_out_before`).
"""
from __future__ import annotations

from core.data.rows import DataError, detect_format
from core.errors import LabError
from core.data.formats import Preview, answer_columns, answer_text, prompt_messages, sft_preview
from core.runs import Measure
from training.model_setup import common_args, load_policy
from training.objective import (BLIND_JUDGING_NOTE, Objective, held_out_prompts, policy_is_its_reference,
                                split_by_prompt)

LABELS = {"true": True, "1": True, "up": True, "good": True, "false": False, "0": False, "down": False, "bad": False}


class KTO(Objective):
    name = "kto"
    help = "kto: make answers marked good more likely and those marked bad less likely (unpaired thumbs)"
    continues_adapter = True
    judged_blind = True

    def check(self, cfg) -> None:
        if cfg.batch_size < 2:  # trl estimates KTO's KL term from the other rows of a batch
            raise LabError(f"objective=kto needs batch_size of at least 2 (it is {cfg.batch_size}).")

    def check_columns(self, column_names) -> None:
        if detect_format(column_names) != "unpaired":
            raise DataError("objective=kto needs rows with prompt, completion and label columns; "
                            f"this data has {', '.join(column_names)}.")

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        from datasets import Dataset

        self.check_columns(rows.column_names)
        chat = bool(tokenizer.chat_template)
        return Dataset.from_list([_labelled_row(row, number, chat) for number, row in enumerate(rows, first_row)])

    def preview(self, rows, row: int, tokenizer, cfg) -> Preview:
        example = self.examples(rows.select([row]), tokenizer, cfg, row + 1)[0]
        shown = sft_preview({"prompt": example["prompt"], "completion": example["completion"]}, tokenizer)
        verdict = "good: made more likely" if example["label"] else "bad: made less likely"
        (prompt_text, _), (answer_text, _) = shown.segments
        return Preview([(prompt_text, None), (answer_text, verdict)], shown.total_tokens, shown.trained_tokens,
                       "KTO scores the answer after its prompt, relative to the reference model.")

    def split(self, examples, n_eval: int, seed: int):
        train, held = split_by_prompt(examples, n_eval, seed)
        if len(set(train["label"])) < 2:
            raise DataError("objective=kto needs good and bad answers among the training rows: "
                            "give some answers a thumbs down (or up) too.")
        return train, held

    def trainer(self, cfg, run, tokenizer, train_set, eval_set, callbacks):
        from trl import KTOConfig, KTOTrainer

        model, peft_config = load_policy(cfg, self.sequence_length(cfg))
        args = KTOConfig(**common_args(cfg, run), beta=cfg.beta, max_length=cfg.max_length)
        return KTOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        metrics = trainer.evaluate()
        return {"reward_margin": round(metrics.get("eval_rewards/margins", 0.0), 4),
                "kto_loss": round(metrics["eval_loss"], 4)}

    def held_out_before(self, trainer, cfg, tokenizer) -> dict:
        """Where the policy starts as its own reference, every reward and the KL estimate are
        zero: margin 0, and each row's loss 1 - sigmoid(0) = 0.5 at trl's default weights of 1
        (what its evaluation computes); measured otherwise."""
        args = trainer.args
        defaults = (args.loss_type, args.desirable_weight, args.undesirable_weight) == ("kto", 1.0, 1.0)
        if not (defaults and policy_is_its_reference(trainer)):
            return self.held_out(trainer, cfg, tokenizer)
        return {"reward_margin": 0.0, "kto_loss": 0.5}

    def measures(self, before: dict, after: dict) -> list[Measure]:
        return [Measure("held-out reward margin (good over bad answers)", before.get("reward_margin"),
                        after.get("reward_margin"), "higher"),
                Measure("held-out KTO loss", before.get("kto_loss"), after.get("kto_loss"))]

    def report_conversations(self, cfg, eval_set) -> list[list[dict]]:
        return held_out_prompts(cfg, eval_set)

    def report_note(self) -> str:
        return BLIND_JUDGING_NOTE


def _labelled_row(row: dict, number: int, chat: bool) -> dict:
    label = LABELS.get(str(row["label"]).strip().lower())
    if label is None:
        raise DataError(f"row {number}: label {str(row['label'])[:20]!r} is not true/false, 1/0 or up/down.")
    answer = answer_text(row, "completion", number)
    return {**answer_columns(prompt_messages(row, number), {"completion": answer}, chat), "label": label}


OBJECTIVE = KTO()
