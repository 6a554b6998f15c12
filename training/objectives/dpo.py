"""objective=dpo: learn from preference pairs with trl's DPOTrainer.

    python cli.py train --config dpo_lora                       # the bundled identity pairs
    python cli.py train --config dpo_lora --start_from SFT_RUN  # SFT, then DPO on top

The reference model costs no second copy of the weights: for a fresh LoRA/QLoRA adapter, trl
computes it with the adapter disabled (the base); when DPO starts from an SFT run's adapter,
trl keeps a frozen copy of that adapter ("ref") on the same base, which is the SFT model, the
reference DPO's loss is defined against. A full fine-tune needs its own frozen copy (trl makes
it). Rows: prompt/chosen/rejected, as message lists or plain text. Held out: pairs whose
prompts never trained, scored by reward accuracy and margin (before training they are known
where the policy starts as its reference: `held_out_before`); the report's answers to them are
judged blind against the model the run started from (core.feedback.judge).
"""
from __future__ import annotations

import math

from core.data.rows import DataError, detect_format
from core.data.formats import Preview, answer_columns, answer_text, prompt_messages, sft_preview
from core.runs import Measure
from training.model_setup import common_args, load_policy
from training.objective import (BLIND_JUDGING_NOTE, Objective, held_out_prompts, policy_is_its_reference,
                                split_by_prompt)


class DPO(Objective):
    name = "dpo"
    help = "dpo: prefer the chosen over the rejected answer of preference pairs"
    continues_adapter = True
    judged_blind = True

    def check_columns(self, column_names) -> None:
        if detect_format(column_names) != "preference":
            raise DataError("objective=dpo needs preference rows with prompt, chosen and rejected "
                            f"columns; this data has {', '.join(column_names)}.")

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        """prompt/chosen/rejected rows, conversational when the tokenizer has a chat template
        (plain "Question:/Answer:" text otherwise, as SFT does), checked row by row."""
        from datasets import Dataset

        self.check_columns(rows.column_names)
        chat = bool(tokenizer.chat_template)
        return Dataset.from_list([answer_columns(prompt_messages(row, n), {side: answer_text(row, side, n) for side in
                                                                          ("chosen", "rejected")}, chat)
                                  for n, row in enumerate(rows, first_row)])

    def preview(self, rows, row: int, tokenizer, cfg) -> Preview:
        """The prompt once, then the chosen answer (pushed up) and the rejected one (pushed down),
        each tokenized after the prompt the way trl scores it."""
        example = self.examples(rows.select([row]), tokenizer, cfg, row + 1)[0]
        shown = {side: sft_preview({"prompt": example["prompt"], "completion": example[side]}, tokenizer)
                 for side in ("chosen", "rejected")}
        (prompt_text, _), (chosen_text, _) = shown["chosen"].segments
        rejected_text = shown["rejected"].segments[1][0]
        segments = [(prompt_text, None), (chosen_text, "chosen: made more likely"),
                    ("\n\n…the same prompt, answered instead with…\n\n", None),
                    (rejected_text, "rejected: made less likely")]
        return Preview(segments, sum(p.total_tokens for p in shown.values()),
                       sum(p.trained_tokens for p in shown.values()),
                       "DPO scores both answers after the same prompt, relative to the reference model.")

    def split(self, examples, n_eval: int, seed: int):
        return split_by_prompt(examples, n_eval, seed)

    def trainer(self, cfg, run, tokenizer, train_set, eval_set, callbacks):
        """A fresh adapter, or the SFT run's adapter to continue."""
        from trl import DPOConfig, DPOTrainer

        model, peft_config = load_policy(cfg, self.sequence_length(cfg))
        args = DPOConfig(**common_args(cfg, run), beta=cfg.beta, max_length=cfg.max_length)
        return DPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        """How often, and by how much, the model prefers the chosen answer over the rejected one
        relative to the reference."""
        metrics = trainer.evaluate()
        return {"reward_accuracy": round(metrics.get("eval_rewards/accuracies", 0.0), 3),
                "reward_margin": round(metrics.get("eval_rewards/margins", 0.0), 4),
                "dpo_loss": round(metrics["eval_loss"], 4)}

    def held_out_before(self, trainer, cfg, tokenizer) -> dict:
        """Where the policy starts as its own reference (`policy_is_its_reference`), every reward
        (beta times the log-ratio of policy and reference) is zero: accuracy 0 (chosen strictly
        over rejected), margin 0, loss -log sigmoid(0) = ln 2. trl's evaluation computes exactly
        these (8.5 s for the bundled recipe's 7 held-out pairs on 2 cores), so they are only
        measured where the reference is not the start (another loss, or weights that differ)."""
        if list(trainer.args.loss_type) != ["sigmoid"] or not policy_is_its_reference(trainer):
            return self.held_out(trainer, cfg, tokenizer)
        return {"reward_accuracy": 0.0, "reward_margin": 0.0, "dpo_loss": round(math.log(2), 4)}

    def measures(self, before: dict, after: dict) -> list[Measure]:
        return [Measure("held-out reward accuracy (chosen over rejected)", before.get("reward_accuracy"),
                        after.get("reward_accuracy"), "higher"),
                Measure("held-out reward margin", before.get("reward_margin"), after.get("reward_margin"), "higher")]

    def report_conversations(self, cfg, eval_set) -> list[list[dict]]:
        return held_out_prompts(cfg, eval_set)

    def report_note(self) -> str:
        return BLIND_JUDGING_NOTE


OBJECTIVE = DPO()
