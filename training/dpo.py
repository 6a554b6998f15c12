"""objective=dpo: learn from preference pairs with trl's DPOTrainer.

    python cli.py train --config dpo_lora                       # the bundled identity pairs
    python cli.py train --config dpo_lora --start_from SFT_RUN  # SFT, then DPO on top

The reference model costs no second copy of the weights: for a fresh LoRA/QLoRA adapter, trl
computes it with the adapter disabled (the base); when DPO starts from an SFT run's adapter,
trl keeps a frozen copy of that adapter ("ref") on the same base, which is the SFT model, the
reference DPO's loss is defined against. A full fine-tune needs its own frozen copy (trl makes
it). Rows: prompt/chosen/rejected, as message lists or plain text.
"""
from __future__ import annotations

from core.data import DataError, detect_format
from core.formats import cell_text, qa_prompt
from core.runs import RunFolder


def preference_dataset(rows, tokenizer, first_row: int = 1):
    """A Dataset of prompt/chosen/rejected rows, conversational when the tokenizer has a chat
    template (plain "Question:/Answer:" text otherwise, as SFT does), checked row by row."""
    from datasets import Dataset

    if detect_format(rows.column_names) != "preference":
        raise DataError("objective=dpo needs preference rows with prompt, chosen and rejected "
                        f"columns; this data has {', '.join(rows.column_names)}.")
    chat = bool(tokenizer.chat_template)
    return Dataset.from_list([_preference_row(row, number, chat) for number, row in enumerate(rows, first_row)])


def _preference_row(row: dict, number: int, chat: bool) -> dict:
    prompt = row["prompt"] if isinstance(row["prompt"], list) else [
        {"role": "user", "content": cell_text(row, "prompt", number)}]
    answers = {}
    for side in ("chosen", "rejected"):
        value = row[side]
        answers[side] = value[-1]["content"] if isinstance(value, list) and value else cell_text(row, side, number)
        if not isinstance(answers[side], str) or not answers[side].strip():
            raise DataError(f"row {number}: '{side}' is empty.")
    if chat:
        return {"prompt": prompt, **{side: [{"role": "assistant", "content": text}] for side, text in answers.items()}}
    return {"prompt": qa_prompt(prompt), **{side: f" {text}" for side, text in answers.items()}}


def dpo_preview(example: dict, tokenizer):
    """The prompt once, then the chosen answer (pushed up) and the rejected one (pushed down),
    each tokenized after the prompt the way trl scores it."""
    from core.formats import Preview, sft_preview

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


def starting_adapter(cfg) -> RunFolder | None:
    """The finished LoRA/QLoRA run DPO continues from (`start_from`), checked against the config."""
    if not cfg.start_from:
        return None
    from core.errors import LabError

    start = RunFolder.existing(cfg.start_from)
    if not start.is_finished or not start.is_lora:
        raise LabError(f"start_from={cfg.start_from!r}: pick a finished LoRA or QLoRA run.")
    from training.config import load_config

    trained = load_config(start.config)
    if (trained.model, trained.adapter) != (cfg.model, cfg.adapter):
        raise LabError(f"start_from={cfg.start_from!r} is a {trained.adapter} adapter on {trained.model}; "
                       f"this run trains {cfg.adapter} on {cfg.model}. Use the same model and adapter.")
    return start


def dpo_trainer(cfg, run: RunFolder, tokenizer, train_set, eval_set, callbacks):
    """trl's DPOTrainer for this config: a fresh adapter, or the SFT run's adapter to continue."""
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from training.model_setup import common_args, lora_config, load_base

    model, peft_config = load_base(cfg), lora_config(cfg)
    start = starting_adapter(cfg)
    if start is not None:
        model, peft_config = PeftModel.from_pretrained(model, str(start.adapter), is_trainable=True), None
    args = DPOConfig(**common_args(cfg, run), beta=cfg.beta, max_length=cfg.max_length)
    return DPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)


def reward_scores(trainer) -> dict:
    """Held-out reward accuracy and margin: how often, and by how much, the model prefers the
    chosen answer over the rejected one relative to the reference."""
    metrics = trainer.evaluate()
    return {"reward_accuracy": round(metrics.get("eval_rewards/accuracies", 0.0), 3),
            "reward_margin": round(metrics.get("eval_rewards/margins", 0.0), 4),
            "dpo_loss": round(metrics["eval_loss"], 4)}
