"""The one interface every training objective implements; training/objectives/ holds them.

    python -c "from training.objectives import get; print(get('sft').help)"

An objective decides what rows it trains on and how they are checked and previewed, which
trainer learns from them (trl's, or sentence-transformers' for an embedder), how the held-out
rows are split and measured (and how that reads in the manifest), and what the before/after
report shows. Everything else in a run (the
model setup, the run folder, checkpoints, stop/resume, the live view, export and publishing)
is shared and knows nothing of the objective: to add one, add a file to training/objectives/
and its name to that package's table.
"""
from __future__ import annotations

import json

from core.data.formats import Preview
from core.runs import GENERATOR, Measure
from training.model_setup import load_tokenizer

GENERIC_PROMPTS = ["What is the capital of France?", "Give me one tip for learning to code."]
DEFAULT_PROMPTS = {
    "identity": ["Who are you?", "What is your name?", "Who made you?"],
    "shakespeare": ["To be, or not to be,", "Now is the winter of our discontent", "O Romeo, Romeo,"],
}
REPORT_PAIRS = 6  # held-out prompts in a preference objective's report: each is a pair to judge
BLIND_JUDGING_NOTE = ("Held-out prompts. Judge these pairs blind in Train → Preference votes → \"Judge a run\"; "
                      "the win rate goes into the model card.")


class Objective:
    """Defaults shared by the objectives; each module overrides what differs."""

    name = ""
    help = ""  # one line for the form and --help
    raw_text = False  # trains on plain text (no chat format)
    continues_adapter = False  # may continue a finished adapter (`start_from`)
    scores_answers = False  # held-out rows have reference answers to generate and score
    maps_effect = False  # held-out rows have reference text to compare losses on (training.effect)
    judged_blind = False  # the report's answers are pairs to judge blind against the start
    kind = GENERATOR  # what the run makes (core.runs): a model to chat with, or an embedder
    example_per_row = True  # each row one example, so Start can count them (DAPT: windows of text)

    def tokenizer(self, cfg):
        """The tokenizer rows are built with (None: the trainer's model brings its own)."""
        return load_tokenizer(cfg.model, cfg.chat_template)

    def check(self, cfg) -> None:
        """Raise LabError for a setting this objective cannot train with."""

    def check_columns(self, column_names) -> None:
        """Raise DataError when rows with these columns cannot train this objective: Start asks
        with the first row's columns (core.data.columns.first_rows), `examples` with every row's."""

    def sequence_length(self, cfg) -> int:
        """The longest row in tokens, which picks the attention kernel."""
        return cfg.max_length

    def preview_rows(self, row: int) -> int:
        """Rows to load to preview example `row`."""
        return row + 1

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        """The Dataset the trainer takes, checked row by row (numbered from `first_row`)."""
        raise NotImplementedError

    def preview(self, rows, row: int, tokenizer, cfg) -> Preview:
        """Exactly what the model sees for row `row` of `rows`, the trained-on part marked."""
        raise NotImplementedError

    def split(self, examples, n_eval: int, seed: int):
        """(train, held-out) with about `n_eval` held-out examples."""
        split = examples.train_test_split(test_size=n_eval, seed=seed)
        return split["train"], split["test"]

    def trainer(self, cfg, run, tokenizer, train_set, eval_set, callbacks):
        """The trl trainer for this config, on the base model it loads."""
        raise NotImplementedError

    def general_windows(self, cfg, tokenizer):
        """Windows of general text whose loss shows forgetting (None: this objective has none)."""
        return None

    def ready_to_save(self, trainer) -> None:
        """Ready the trained model for the run's final save (an embedder merges its LoRA)."""

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        """The held-out figures at this point of training, by name (saved in the run folder)."""
        raise NotImplementedError

    def held_out_before(self, trainer, cfg, tokenizer) -> dict:
        """The held-out figures before training: measured, unless the objective knows them."""
        return self.held_out(trainer, cfg, tokenizer)

    def measures(self, before: dict, after: dict) -> list[Measure]:
        """The held-out figures as the manifest shows them, headline first."""
        raise NotImplementedError

    def report_conversations(self, cfg, eval_set) -> list[list[dict]]:
        """The questions the before/after report asks."""
        return config_prompts(cfg)

    def report_note(self) -> str:
        return ""

    def report(self, cfg, run, eval_set) -> bool | None:
        """Write a report of this objective's own and say whether one was written; None: the
        shared report of answers before and after training (training.evaluate) suits it."""
        return None


def config_prompts(cfg) -> list[list[dict]]:
    """The config's report prompts, else a few that suit the dataset."""
    prompts = cfg.report_prompts or DEFAULT_PROMPTS.get(cfg.dataset, GENERIC_PROMPTS)
    return [[{"role": "user", "content": prompt}] for prompt in prompts]


def held_out_prompts(cfg, eval_set) -> list[list[dict]]:
    """The report's questions for a preference objective: the held-out rows' own prompts
    (capped), so the tuned model is judged on questions it never trained on."""
    if cfg.report_prompts or eval_set is None:
        return config_prompts(cfg)
    unique = {json.dumps(prompt, sort_keys=True): prompt for prompt in eval_set["prompt"]}
    return [as_messages(prompt) for prompt in list(unique.values())[:REPORT_PAIRS]]


def as_messages(prompt) -> list[dict]:
    """A row's prompt as messages: already a list, or plain "Question: …\\nAnswer:" text."""
    if isinstance(prompt, list):
        return prompt
    return [{"role": "user", "content": prompt.removeprefix("Question: ").removesuffix("\nAnswer:")}]


def split_by_prompt(examples, n_eval: int, seed: int):
    """(train, eval) with about n_eval held-out rows whose prompts never occur in training:
    preference sets often pair one question with several answers, and a row held out while its
    question trains measures memory, not preference."""
    import random

    from core.data.rows import DataError

    keys = [json.dumps(prompt, sort_keys=True) for prompt in examples["prompt"]]
    prompts = sorted(set(keys))
    random.Random(seed).shuffle(prompts)
    held, count = set(), 0
    for prompt in prompts[:-1]:  # at least one prompt stays for training
        if count >= n_eval:
            break
        held.add(prompt)
        count += keys.count(prompt)
    if not held:
        raise DataError("Every row has the same prompt: nothing can be held out. Set eval_fraction to 0.")
    return (examples.select([i for i, key in enumerate(keys) if key not in held]),
            examples.select([i for i, key in enumerate(keys) if key in held]))


def policy_is_its_reference(trainer) -> bool:
    """Whether trl's reference computes what the policy computes now: a full fine-tune's frozen
    copy with the same weights, a continued adapter's frozen copy ("ref") equal to it, or a fresh
    adapter whose B is all zeros (trl scores the reference with it off)."""
    import torch

    model = trainer.model
    with torch.no_grad():
        if trainer.ref_model is not None:
            return all(torch.equal(mine, theirs) for mine, theirs in
                       zip(model.parameters(), trainer.ref_model.parameters(), strict=True))
        named = dict(model.named_parameters())
        if "ref" in getattr(model, "peft_config", {}):
            return all(torch.equal(weight, named[name.replace(".default.", ".ref.")])
                       for name, weight in named.items() if ".default." in name)
        return all(not weight.any() for name, weight in named.items() if "lora_B" in name)
