"""Complete a run after its last step: save the adapter, score its answers, write the manifest.

    from training.finish import finish, save_final
    save_final(trainer, tokenizer, cfg, run); finish(cfg, run, trainer, eval_set, result, scores)

training.fit calls both in the main process once the steps are done: `save_final` in the thread
that trained, `finish` after it ended. The adapter is written to a temp folder and renamed into
place, so a kill inside the save never leaves a half adapter that looks complete; the status
file says "completed" only after the manifest is written.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter

from core.inference.chat import QA_FORMAT
from core.explore.embedders import hub_id as embedder_hub_id
from core.inference.models import find_spec, weights_origin
from core.paths import write_json
from core.runs import Manifest, RunFolder, write_prompt_format
from training import evaluate, objectives, tracking
from training.answer_eval import answer_scores
from training.config import TrainConfig
from training.device import training_precision
from training.prepare import load_training_rows
from training.progress import say_phase


def finish(cfg: TrainConfig, run: RunFolder, trainer, eval_set, result, scores: dict) -> None:
    """Write the before/after report, score the saved adapter's answers, and write the manifest:
    the run is complete."""
    say_phase(run, "writing the before/after report")
    report = objectives.get(cfg.objective).report(cfg, run, eval_set)
    if report is None:
        report = evaluate.before_after_report(cfg, run, eval_set)
    scores["answers"] = answer_scores(cfg, run, eval_set, progress=lambda text: say_phase(run, text))
    evaluate.save_scores(run, scores)
    write_manifest(cfg, run, trainer, result, scores, report)
    tracking.log_results(cfg, run, tracking.figures(run.manifest().held_out), trainer.state.global_step)
    write_json(run.status_file, {"state": "completed", "step": trainer.state.global_step})
    say_phase(run, "")


def save_final(trainer, tokenizer, cfg: TrainConfig, run: RunFolder) -> None:
    """Write adapter/ (or the full model) to a temp folder and rename it into place."""
    tmp, final = run.adapter_partial, run.adapter
    shutil.rmtree(tmp, ignore_errors=True)
    objectives.get(cfg.objective).ready_to_save(trainer)
    trainer.save_model(str(tmp))
    if tokenizer is not None:  # an embedder saves its own with the model
        tokenizer.save_pretrained(str(tmp))
    plain = not objectives.get(cfg.objective).raw_text and not tokenizer.chat_template
    write_prompt_format(tmp, QA_FORMAT if plain else None)  # rows became "Question:/Answer:" text
    config_path = tmp / "adapter_config.json"
    if config_path.is_file():  # record the base by its portable name, not a local cache path
        spec = find_spec(cfg.model)
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = spec.hub_id if spec else cfg.model
        config_path.write_text(json.dumps(adapter_config, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def write_manifest(cfg, run: RunFolder, trainer, result, scores, report) -> None:
    objective, spec = objectives.get(cfg.objective), find_spec(cfg.model)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    answers = {k: v for k, v in (scores.get("answers") or {}).items() if k != "examples"} or None
    held_out = objective.measures(scores["before"], scores["after"]) if "after" in scores else []
    run.write_manifest(Manifest(
        name=run.name, model=cfg.model, base_model=spec.hub_id if spec else embedder_hub_id(cfg.model),
        base_weights=weights_origin(cfg.model), objective=cfg.objective, adapter=cfg.adapter,
        method=evaluate.method(cfg), dataset=cfg.dataset, steps=trainer.state.global_step,
        start_from=cfg.start_from or None, dataset_revision=cfg.dataset_revision or None,
        world_size=trainer.args.world_size, precision=training_precision(cfg.precision),
        train_runtime_s=round(result.metrics["train_runtime"], 1),
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        held_out=held_out, answer_scores=answers, judged_blind=objective.judged_blind, kind=objective.kind,
        report=run.report_md.name if report else None, vote_sources=vote_sources(cfg),
        created=time.strftime("%Y-%m-%d %H:%M:%S")))


def vote_sources(cfg: TrainConfig) -> dict | None:
    """Where the rows came from, when they say: votes exported for training carry a `source`
    ("this lab", or "hub:OWNER/DATASET@COMMIT" for votes pulled from a Space's dataset)."""
    rows = load_training_rows(cfg)
    return dict(Counter(rows["source"])) if "source" in rows.column_names else None
