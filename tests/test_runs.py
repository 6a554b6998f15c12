"""The run folder's typed manifest: round trip, manifests from before `held_out`, and what a
run says of itself before it finishes."""
from __future__ import annotations

import json

from core.runs import Manifest, Measure, RunFolder

LEGACY = {"name": "old", "model": "smollm2-135m-instruct", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
          "objective": "dapt", "adapter": "lora", "method": "DAPT + LORA", "dataset": "shakespeare", "steps": 4,
          "perplexity_before": 41.2, "perplexity_after": 30.5, "general_perplexity_before": 12.0,
          "general_perplexity_after": 12.9, "answer_scores": None, "some_field_from_the_future": 1}


def test_a_manifest_round_trips_and_renders_its_figures(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    assert run.manifest() is None, "not finished"
    manifest = Manifest(name="run", model="m", base_model="org/m", objective="kto", adapter="lora",
                        method="KTO + LORA", dataset="thumbs.jsonl", steps=6,
                        held_out=[Measure("held-out reward margin", 0.0, 7.47, "higher"), Measure("loss", 0.5, 0.03)])
    run.write_manifest(manifest)
    assert run.manifest() == manifest
    assert manifest.held_out_line() == "held-out reward margin 0.0 → 7.47 · loss 0.5 → 0.03"
    assert manifest.held_out[0].card_row() == "| held-out reward margin | 0.0 | 7.47 |"
    run.manifest_file.write_text("{torn")
    assert run.manifest() is None


def test_a_manifest_from_before_held_out_still_reads(tmp_path):
    run = RunFolder(tmp_path / "old")
    run.path.mkdir()
    run.manifest_file.write_text(json.dumps(LEGACY))
    manifest = run.manifest()
    assert [(m.label, m.before, m.after) for m in manifest.held_out] == [
        ("held-out perplexity", 41.2, 30.5), ("perplexity on general text (forgetting)", 12.0, 12.9)]
    assert manifest.headline().line() == "held-out perplexity 41.2 → 30.5" and manifest.steps == 4


def test_a_run_names_its_objective_from_the_start(tmp_path):
    from training.config import load_config

    run = RunFolder(tmp_path / "new")
    run.path.mkdir()
    assert run.objective == ""
    run.config.write_text(load_config("kto_lora").to_yaml())
    assert run.objective == "kto"
