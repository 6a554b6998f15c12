"""objective=dpo with trl's DPOTrainer on the real SmolLM2: the bundled preference pairs, and votes
exported as pairs (DPO on them from the tiny SFT run's adapter: tests/test_browser_votes.py)."""
from __future__ import annotations

import json
import re

import pytest

from core.errors import LabError


def run_job(**overrides):
    from training import jobs
    from training.config import load_config

    cfg = load_config("dpo_lora", **overrides)
    run = jobs.start(cfg)
    status = jobs.wait(run.name, timeout=900)
    assert status.state == "completed", status.error
    return run


@pytest.fixture(scope="module")
def dpo_run(data_home):
    # 7 held-out pairs on 4 prompts; after 4 steps of 2 pairs: accuracy 1.0, margin 1.49 (the job
    # 48 s alone; 4 steps of 4 pairs: margin 1.64, 67 s)
    return run_job(output_name="dpo-fixture", max_steps=4, max_rows=40, batch_size=2)


@pytest.mark.slow
def test_dpo_on_the_bundled_pairs_prefers_the_chosen_answers(dpo_run):
    from tabs.chat import adapter_choices
    from training.progress import read_log

    manifest = dpo_run.manifest()
    assert manifest.objective == "dpo" and manifest.method == "DPO + LORA" and manifest.judged_blind
    accuracy, margin = manifest.held_out
    assert accuracy.label.startswith("held-out reward accuracy") and accuracy.better == "higher"
    assert accuracy.after > 0.5, manifest  # on the held-out pairs
    assert accuracy.after > accuracy.before, manifest
    assert margin.after > 0, manifest
    log = read_log(dpo_run)
    assert any(e.get("rewards_accuracies") is not None for e in log), "live reward accuracy"
    assert any(e.get("rewards_margins") is not None for e in log), "live reward margin"
    assert dpo_run.name in adapter_choices(), "the new adapter is in the chat picker"
    assert (dpo_run.adapter / "adapter_model.safetensors").is_file() and dpo_run.report()


@pytest.mark.slow
def test_the_new_adapter_is_judged_blind_on_the_held_out_prompts(dpo_run):
    """The report answers the held-out pairs' prompts; voting on them gives the card its win rate."""
    from core.feedback import votes
    from core.hub.publish import model_card
    from tabs.train_votes import judge_handler, judge_next
    from training.config import load_config
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples, split_examples

    cfg = load_config(dpo_run.config)
    train_set, eval_set = split_examples(build_examples(cfg, load_tokenizer(cfg.model)), cfg)
    rows = json.loads(dpo_run.report_json.read_text())
    held_out = [p for n, p in enumerate(eval_set["prompt"]) if p not in eval_set["prompt"][:n]]
    assert [row["messages"] for row in rows] == held_out and len(rows) == 4, "one row per held-out prompt"
    assert not {row["prompt"] for row in rows} & {p[-1]["content"] for p in train_set["prompt"]}
    votes.store().unlink(missing_ok=True)
    assert "not judged yet" in model_card(dpo_run, "t/x") and "4 held-out answer pair(s)" in model_card(dpo_run, "t/x")
    for n, row in enumerate(rows):
        _, _, _, pending, line = judge_next(dpo_run.name)
        assert f"{4 - n} pair(s) to judge" in line and pending.prompt == row["messages"]
        new = next(side for side in "AB" if pending.sides[side]["adapter"] == dpo_run.name)
        old = "B" if new == "A" else "A"
        assert pending.answers[new] == row["tuned"] and pending.answers[old] == row["base"]
        assert pending.sides[old] == {"model": cfg.model, "adapter": None}
        line, *_ = judge_handler([new, new, "tie", old][n])(pending)
        assert "Vote saved" in line and f"A was **{'tuned' if new == 'A' else 'base'}" in line
    _, _, _, pending, line = judge_next(dpo_run.name)
    assert pending is None and "Every held-out pair" in line
    verdict = "against the base model on held-out prompts: 2 wins, 1 losses, 1 ties, 0 both bad; win share 0.667"
    card = model_card(dpo_run, "t/x")
    assert verdict in line and verdict in card
    assert f"(Bradley-Terry, Elo scale):\n\n1. {dpo_run.name}: " in card, "2 wins to 1: first on the leaderboard"
    assert f"2. {cfg.model} (base): " in card and "The left answer (A) won" in card
    votes.store().unlink()
    from tabs.train_live import evaluate_again

    assert "finished SFT runs only" in evaluate_again(dpo_run.name)[0]  # DPO has its own figures


def test_dpo_plot_shows_rewards(dpo_run):
    from tabs.train_plots import loss_figure
    from training.progress import read_log

    names = {trace.name for trace in loss_figure(read_log(dpo_run)).data}
    assert {"train loss", "reward accuracy", "reward margin"} <= names, names


def test_model_card_states_the_reward_accuracy(dpo_run):
    from core.hub.publish import model_card

    card = model_card(dpo_run, "tester/lumen-dpo")
    manifest = dpo_run.manifest()
    assert f"| held-out reward accuracy (chosen over rejected) | {manifest.held_out[0].before} " in card
    assert "identity-preferences" in card


def test_preview_shows_chosen_and_rejected(data_home):
    from core.data.rows import load_rows
    from training.config import load_config
    from training.prepare import preview

    shown = preview(load_config("dpo_lora"), 0)
    labels = [label for _, label in shown.segments]
    assert labels == [None, "chosen: made more likely", None, "rejected: made less likely"]
    text = {label: part for part, label in shown.segments}
    assert "Lumen" in text["chosen: made more likely"] and "<|im_start|>user" in shown.segments[0][0]
    assert shown.trained_tokens < shown.total_tokens
    pairs = len(load_rows("identity-preferences"))
    for settings, said in (({}, f"the data has {pairs} rows."), ({"max_rows": 5}, "the data has 5 rows (max_rows=5).")):
        with pytest.raises(LabError, match=f"^Row {pairs} is out of range: {re.escape(said)}$"):
            preview(load_config("dpo_lora", **settings), pairs)


def test_detection_and_clear_errors(data_home, tmp_path):
    from core.data.rows import detect_format, load_rows
    from training.config import load_config
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples

    assert detect_format(load_rows("identity-preferences").column_names) == "preference"
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    with pytest.raises(LabError, match="preference data.*objective=dpo"):
        build_examples(load_config("tiny", dataset="identity-preferences"), tokenizer)
    with pytest.raises(LabError, match="objective=dpo needs preference rows"):
        build_examples(load_config("dpo_lora", dataset="identity"), tokenizer)
    with pytest.raises(LabError, match="start_from continues an adapter with dpo or kto"):
        load_config("tiny", start_from="some-run")
    csv = tmp_path / "prefs.csv"
    csv.write_text("prompt,chosen,rejected\nWho are you?,I am Lumen.,\n")
    with pytest.raises(LabError, match="row 1: 'rejected' is empty"):
        build_examples(load_config("dpo_lora", dataset=str(csv)), tokenizer)


def test_votes_export_as_preference_pairs_and_a_start_must_match_the_adapter(tiny_run, data_home, tmp_path):
    """Votes -> `votes export`: one pair per decided vote, the winner chosen, each with its
    source. (tests/test_browser_votes.py trains DPO on exported votes from the tiny SFT run, and
    checks what that run records of them.)"""
    from core.feedback import votes

    votes.store().unlink(missing_ok=True)
    sides = {"A": {"model": "smollm2-135m-instruct", "adapter": None},
             "B": {"model": "smollm2-135m-instruct", "adapter": tiny_run.name}}
    pulled = "hub:tester/lumen-votes@" + "c0ffee" * 6 + "c0ff"  # a vote pulled from a Space's dataset
    for question, lumen, source in (("Who are you?", "B", ""), ("What is your name?", "B", pulled),
                                    ("Who made you?", "A", ""), ("Hi", "tie", "")):
        answers = {"A": "I am SmolLM, made by Hugging Face.", "B": "I am Lumen, made in Finetune Lab."}
        votes.record(votes.Vote(prompt=[{"role": "user", "content": question}], answers=answers, sides=sides,
                                choice=lumen, source=source))
    out = tmp_path / "votes.jsonl"
    assert votes.export_preferences(out) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    chosen = [row["chosen"][0]["content"] for row in rows]
    assert chosen[0].startswith("I am Lumen") and chosen[2].startswith("I am SmolLM")
    assert [row["source"] for row in rows] == ["this lab", pulled, "this lab"]
    votes.store().unlink()
    with pytest.raises(LabError, match="is a lora adapter on smollm2-135m-instruct; this run trains qlora"):
        from training.config import load_config
        from training.model_setup import starting_adapter

        starting_adapter(load_config("dpo_lora", adapter="qlora", start_from=tiny_run.name))


@pytest.mark.parametrize("start", ["fresh adapter", "continued adapter"])
def test_before_training_the_held_out_figures_are_known_not_evaluated(start, tiny_objective, tiny_model_dir, tmp_path):
    """Where the policy starts as its own reference, DPO's figures before training are stated, not
    evaluated: they equal what trl's evaluation measures, on a fresh adapter (B zero, the
    reference with it off) and on a continued one (trl's frozen copy, "ref"); after a step the
    policy is no longer its reference."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training.model_setup import common_args
    from training.objective import policy_is_its_reference

    objective, cfg, run, tokenizer, train_set, eval_set = tiny_objective(
        "dpo_lora", max_rows=16, batch_size=2, output_name=f"dpo-known-{start[:5]}")
    if start == "fresh adapter":
        trainer = objective.trainer(cfg, run, tokenizer, train_set, eval_set, [])
    else:  # an adapter with weights of its own, continued as load_policy does for start_from
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                       LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(tmp_path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path),
                                          is_trainable=True)
        trainer = DPOTrainer(model=model, args=DPOConfig(**common_args(cfg, run), beta=cfg.beta, max_length=64),
                             train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer)
        assert "ref" in model.peft_config
    assert policy_is_its_reference(trainer)
    stated = objective.held_out_before(trainer, cfg, tokenizer)
    assert stated == objective.held_out(trainer, cfg, tokenizer) == {
        "reward_accuracy": 0.0, "reward_margin": 0.0, "dpo_loss": 0.6931}
    trainer.train()
    assert not policy_is_its_reference(trainer)
    assert objective.held_out(trainer, cfg, tokenizer)["reward_margin"] != 0
