"""The effect map (training.effect): per-row losses under base and tuned on the real model, the
rows grouped into topics, and the pairs and exports made from a topic's rows. (The DAPT case is
in test_training.py, the Result panel in test_browser_train.py.)"""
from __future__ import annotations

import json

import pytest

from core.errors import LabError

pytestmark = pytest.mark.slow


def test_row_losses_match_transformers_own_loss_on_three_rows(tiny_effect, tiny_run):
    """The loss of the answer tokens, recomputed with transformers' own masked loss (-100
    labels on the prompt and on the other rows), base with the adapter off and tuned with it on.
    The forward gets the very batch the effect map measured (its first BATCH rows, right-padded):
    in bf16 another batch shape rounds differently (1.3e-2 on an AMX host), which would hide a
    masking slip of the same size."""
    import torch
    from peft import PeftModel

    from core.runs import RunFolder
    from training.config import load_config
    from training.effect import BATCH, right_padded, sft_tokens
    from training.model_setup import load_base, load_tokenizer

    run = RunFolder(tiny_run)
    cfg = load_config(run.config)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    model = PeftModel.from_pretrained(load_base(cfg), str(run.adapter)).eval()
    held = run.read_held_out()
    group = [sft_tokens(tokenizer, row) for row in held[:BATCH]]
    ids, mask = right_padded([tokens for tokens, _ in group])
    for n, (row, shown) in enumerate(zip(held[:3], tiny_effect["rows"][:3])):
        tokens, start = group[n]
        labels = torch.full_like(ids, -100)
        labels[n, start:len(tokens)] = ids[n, start:len(tokens)]
        with torch.inference_mode():
            tuned = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
            with model.disable_adapter():
                base = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        assert shown["text"] == row["prompt"][-1]["content"]
        assert abs(shown["base_loss"] - base) < 2e-4 and abs(shown["tuned_loss"] - tuned) < 2e-4, (shown, base, tuned)
    assert all(r["change"] < 0 for r in tiny_effect["rows"]), "six steps on the identity rows lower every loss"
    assert all(r["base_answer"] and r["tuned_answer"] and "score_change" in r for r in tiny_effect["rows"])
    assert sum(t["rows"] for t in tiny_effect["topics"]) == len(tiny_effect["rows"]) == len(run.read_held_out())
    from core.hub.publish import model_card

    [topic] = tiny_effect["topics"]  # 7 rows: one group
    assert f"most improved: {topic['topic']} ({topic['mean_change']:+.3f}, 7 rows)" in model_card(run, "t/x")


def test_topics_cover_every_row_and_the_forgetting_windows_stay_apart():
    from core.data.rows import load_rows
    from training.effect import GENERAL, group

    questions = load_rows("chatterbot")
    picked = [row for row in questions if row["category"] in ("food", "sports", "computers")][:24]
    rows = [{"group": "held-out", "text": row["question"], "change": 0.1 * (n % 3) - 0.1} for n, row in enumerate(picked)]
    rows += [{"group": GENERAL, "text": f"general window {n}", "change": 0.05} for n in range(4)]
    topics, note = group(rows, "")
    assert all("topic" in row for row in rows) and note.startswith("Topics: BERTopic")
    assert sum(t["rows"] for t in topics) == len(rows) and len(topics) >= 3
    general = next(t for t in topics if t["general"])
    assert general["topic"] == GENERAL and general["rows"] == 4 and general["mean_change"] == 0.05
    for topic in topics:
        members = [row["change"] for row in rows if row["topic"] == topic["topic"]]
        assert topic["mean_change"] == round(sum(members) / len(members), 4)


def test_pairs_come_from_exactly_the_rows_whose_loss_rose(tiny_effect, tiny_run, data_home):
    """Every tiny-run row improved, so two rows are marked worse in a copy of the map first."""
    import shutil

    from core.feedback import votes
    from core.feedback.leaderboard import leaderboard
    from core.runs import RunFolder
    from training.effect import make_pairs, read_effect, topic_rows

    copy = RunFolder(data_home / "runs" / "tiny-effect-copy")
    shutil.copytree(tiny_run, copy.path)
    effect = read_effect(copy)
    worse = effect["rows"][1:3]
    for row in worse:
        row["change"] = 0.5
    copy.effect_file.write_text(json.dumps(effect))
    topic = worse[0]["topic"]
    assert topic_rows(effect, topic)[:2] == worse, "the most harmed rows first"
    before = len(votes.waiting())
    assert make_pairs(copy.name, topic) == 2 and make_pairs(copy.name, topic) == 0, "once per row"
    made = votes.waiting()[before:]
    assert [pair["prompt"] for pair in made] == [row["prompt"] for row in worse]
    assert all(p["answers"]["A"] == r["base_answer"] and p["choice"] == "A" and p["answers"]["B"] == r["tuned_answer"]
               for p, r in zip(made, worse))
    assert all(p["source"].startswith(votes.GENERATED) for p in made) and leaderboard(made) == []
    assert [r["chosen"][0]["content"] for r in votes.preference_rows(made)] == [r["base_answer"] for r in worse]
    votes.accept_waiting([pair["id"] for pair in made])
    votes.store().unlink()
    with pytest.raises(LabError, match="no pairs to make"):
        make_pairs(tiny_run.name, topic)
    with pytest.raises(LabError, match="No topic"):
        topic_rows(effect, "no such topic")


def test_an_unfinished_or_preference_run_is_refused_in_one_line(data_home):
    """A run that failed or is still running has no manifest: it said its held-out rows had no
    reference text, which is the refusal for a DPO or KTO run. The app's Start of the job says
    the same before a job starts (it failed as a job), and so does a run's name given as the
    embedder that is no embedder."""
    from core.runs import Manifest, RunFolder
    from training import jobs
    from training.effect import compute

    half_done = RunFolder.named("effect-half-done")
    half_done.path.mkdir()
    with pytest.raises(LabError, match=r"^'effect-half-done' has not finished: the effect map compares a finished run"):
        compute("effect-half-done")
    preference = RunFolder.named("preference-run")
    preference.path.mkdir()
    preference.write_manifest(Manifest("preference-run", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                       "dpo", "lora", "DPO + LORA", "pairs.jsonl"))
    with pytest.raises(LabError, match=r"^'preference-run' is not a finished SFT or DAPT run: .* reference text"):
        compute("preference-run")
    for run in ("effect-half-done", "preference-run"):
        with pytest.raises(LabError, match=f"^'{run}' (has not finished|is not a finished SFT)"):
            jobs.effect(run)
        assert not RunFolder.named(run).job_file.exists(), "no job started"
    tuned = RunFolder.named("sft-run")
    tuned.adapter.mkdir(parents=True)
    tuned.write_manifest(Manifest("sft-run", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                  "sft", "lora", "SFT + LORA", "identity"))
    with pytest.raises(LabError, match="^Run 'effect-half-done' has not finished: it has no embedder to use yet"):
        jobs.effect("sft-run", embedder="effect-half-done")
    with pytest.raises(LabError, match="^Run 'sft-run' tuned a chat model, not an embedder"):
        compute("sft-run", embedder="sft-run")
