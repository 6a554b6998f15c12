"""objective=kto: rated answers (thumbs, and both answers of an A/B vote) become unpaired rows,
trl's KTOTrainer learns from them on the real SmolLM2, and the run shows like any other."""
from __future__ import annotations

import json

import pytest

from core.errors import LabError


def test_thumbs_and_pairs_become_rated_answers(data_home, tmp_path):
    from core.feedback import votes

    votes.store().unlink(missing_ok=True)
    side = {"model": "smollm2-135m-instruct", "adapter": None}
    ask = [{"role": "user", "content": "Who are you?"}]
    votes.record(votes.Vote(prompt=ask, answers={"A": "I am Lumen."}, sides={"A": side}, choice="up"))
    with pytest.raises(LabError, match="some answers up and some down"):
        votes.export_rated(tmp_path / "rated.jsonl")
    votes.record(votes.Vote(prompt=ask, answers={"A": "A cat.", "B": "I am Lumen, an assistant."},
                            sides={"A": side, "B": {**side, "adapter": "x"}}, choice="B"))
    votes.record(votes.Vote(prompt=ask, answers={"A": "x", "B": "y"}, sides={"A": side, "B": side}, choice="tie"))
    assert votes.export_rated(tmp_path / "rated.jsonl") == 3
    rows = [json.loads(line) for line in (tmp_path / "rated.jsonl").read_text().splitlines()]
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("I am Lumen.", True), ("A cat.", False), ("I am Lumen, an assistant.", True)]
    assert all(r["prompt"] == ask for r in rows)
    votes.store().unlink()


def test_rows_are_checked_previewed_and_split_by_prompt(data_home, tmp_path):
    from core.data.rows import detect_format, load_rows
    from training.config import load_config
    from training.model_setup import load_tokenizer
    from training.prepare import build_examples, preview, split_examples

    assert detect_format(load_rows("identity-ratings").column_names) == "unpaired"
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    cfg = load_config("kto_lora")
    train, held = split_examples(build_examples(cfg, tokenizer), cfg)
    assert {json.dumps(p) for p in train["prompt"]}.isdisjoint(json.dumps(p) for p in held["prompt"])
    assert set(train["label"]) == {True, False}
    shown = [preview(cfg, row) for row in (0, 1)]
    assert [label for _, label in shown[0].segments] == [None, "good: made more likely"]
    assert [label for _, label in shown[1].segments] == [None, "bad: made less likely"]
    assert "Lumen" in shown[0].segments[1][0] and "<|im_start|>user" in shown[0].segments[0][0]

    with pytest.raises(LabError, match="rated answers.*objective=kto"):
        build_examples(load_config("tiny", dataset="identity-ratings"), tokenizer)
    with pytest.raises(LabError, match="objective=kto needs rows with prompt, completion and label"):
        build_examples(load_config("kto_lora", dataset="identity"), tokenizer)
    with pytest.raises(LabError, match="batch_size of at least 2"):
        load_config("kto_lora", batch_size=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "label": "maybe"}) + "\n")
    with pytest.raises(LabError, match="row 1: label 'maybe' is not true/false"):
        build_examples(load_config("kto_lora", dataset=str(bad)), tokenizer)
    one_sided = tmp_path / "good.jsonl"
    one_sided.write_text("".join(json.dumps({"prompt": f"Q{n}", "completion": "A", "label": True}) + "\n"
                                 for n in range(8)))
    cfg = load_config("kto_lora", dataset=str(one_sided))
    with pytest.raises(LabError, match="needs good and bad answers"):
        split_examples(build_examples(cfg, tokenizer), cfg)


@pytest.mark.slow
def test_kto_learns_to_tell_good_from_bad_answers(data_home):
    """A few real KTO steps on SmolLM2: the held-out margin between good and bad answers opens,
    and the run's manifest, card, live log and comparison show it without KTO-specific code."""
    from core.hub.publish import model_card
    from training import jobs
    from training.config import load_config
    from training.progress import read_log
    from training.runs_compare import figures_table

    cfg = load_config("kto_lora", output_name="kto-fixture", max_steps=4, max_rows=24, learning_rate=1e-3,
                      report_prompts=["Who are you?"])
    run = jobs.start(cfg)
    status = jobs.wait(run.name, timeout=900)
    assert status.state == "completed", status.error
    manifest = run.manifest()
    assert manifest.objective == "kto" and manifest.method == "KTO + LORA" and manifest.judged_blind
    margin, loss = manifest.held_out
    assert margin.label.startswith("held-out reward margin") and margin.better == "higher"
    assert abs(margin.before) < 1e-3 < margin.after, manifest  # the reference is the base itself
    assert loss.after < loss.before, manifest
    assert any(e.get("rewards_margins") is not None for e in read_log(run)), "live reward margin"
    assert margin.card_row() in model_card(run, "tester/lumen-kto")
    table = figures_table([run, run])
    assert [row for row in table if row[0] == f"{margin.label} (before)"][0][1] == f"{margin.after} ({margin.before})"


def test_before_training_the_held_out_figures_are_known_not_evaluated(tiny_objective):
    """Where the policy starts as its own reference (a fresh adapter), KTO's figures before
    training are stated, not evaluated: they equal what trl's evaluation measures; after a step
    the policy is no longer its reference."""
    from training.objective import policy_is_its_reference

    objective, cfg, run, tokenizer, train_set, eval_set = tiny_objective(
        "kto_lora", max_rows=24, batch_size=4, output_name="kto-known")
    trainer = objective.trainer(cfg, run, tokenizer, train_set, eval_set, [])
    assert policy_is_its_reference(trainer)
    stated = objective.held_out_before(trainer, cfg, tokenizer)
    assert stated == objective.held_out(trainer, cfg, tokenizer) == {"reward_margin": 0.0, "kto_loss": 0.5}
    trainer.train()
    assert not policy_is_its_reference(trainer)
