"""Train one run in this process: `train(cfg, run_dir)` prepares the data, measures the base on
the held-out rows, trains, measures again, saves and finishes the run folder.

    python -c "from training.config import load_config; from training.fit import train; \
        train(load_config('tiny'), __import__('pathlib').Path('/tmp/tiny-run'))"

training.run is the process around it (flags, checks before any work, how the run ended);
it imports this module only once those checks pass, since transformers, peft and trl take
seconds to import. `stop` is the flag a SIGTERM or the run's stop marker sets: the steps then
end at the next one with a checkpoint, and the run reports "stopped".
"""
from __future__ import annotations

import os
from pathlib import Path

from core import threads
from core.data.rows import DataError
from core.errors import LabError
from core.paths import write_json
from core.runs import RunFolder
from peft import NoMatchingPeftModuleError
from transformers import PrinterCallback

from training import evaluate, objectives, tracking
from training.callbacks import JsonlLogger, StopOnRequest
from training.config import TrainConfig
from training.device import compile_layers
from training.finish import finish, save_final
from training.prepare import build_examples, pin_dataset_revision, split_examples
from training.progress import batch_plan, say_phase, trim_log


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, stop: dict | None = None) -> Path:
    """Run training to completion (or until SIGTERM) and write the run folder: load and prepare
    the data, measure the base on the held-out rows, train, measure again, save, finish."""
    threads.apply(threads.for_training(cfg.threads))
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    # The steps run in a thread that ends with them, and takes its OpenMP team along: with that
    # team alive beside the decode thread's, which generates the answers after them, their
    # threads outnumbered 2 cores and slept between kernels (core.threads): the tiny recipe's
    # held-out answers took 11-16 s instead of 6-7, its whole run 43-52 s instead of 28-29.
    trained = threads.in_own_thread(train_and_save, cfg, run, resume, stop if stop is not None else {"flag": False})
    if trained is not None:
        finish(*trained)
    return run_dir


def train_and_save(cfg: TrainConfig, run: RunFolder, resume: bool, stop: dict):
    """Train, measure and save the adapter; return what `finish` takes, or None when there is
    nothing to finish here (a stopped run, or not the main process)."""
    cfg, tokenizer, train_set, eval_set = prepare(cfg, run)
    objective = objectives.get(cfg.objective)
    trainer = start_trainer(objective, cfg, run, tokenizer, train_set, eval_set, resume, stop)
    main = trainer.is_world_process_zero()
    scores = evaluate.load_scores(run)
    if eval_set is not None and "before" not in scores:
        say_phase(run, "evaluating the base on held-out rows before training")
        scores["before"] = objective.held_out_before(trainer, cfg, tokenizer)
    say_phase(run, "")
    result = run_steps(trainer, run, cfg, resume, main)
    if stop["flag"]:
        if main:
            write_json(run.status_file, {"state": "stopped", "step": trainer.state.global_step})
        return None
    if eval_set is not None:
        say_phase(run, "evaluating the tuned model on held-out rows")
        scores["after"] = objective.held_out(trainer, cfg, tokenizer)
    if not main:
        return None
    evaluate.save_scores(run, scores)
    say_phase(run, "saving the adapter")
    save_final(trainer, tokenizer, cfg, run)
    return cfg, run, trainer, eval_set, result, scores


def prepare(cfg: TrainConfig, run: RunFolder):
    """(cfg with its data pinned, tokenizer, train rows, held-out rows or None); the config and
    the held-out rows are kept in the run folder."""
    say_phase(run, "loading the model and preparing the data")
    cfg = pin_dataset_revision(cfg)
    run.config.write_text(cfg.to_yaml())
    tokenizer = objectives.get(cfg.objective).tokenizer(cfg)
    train_set, eval_set = split_examples(build_examples(cfg, tokenizer), cfg)
    if eval_set is not None and os.environ.get("RANK", "0") == "0":
        run.save_held_out(eval_set.to_list())
    return cfg, tokenizer, train_set, eval_set


def start_trainer(objective, cfg: TrainConfig, run: RunFolder, tokenizer, train_set, eval_set, resume: bool,
                  stop: dict):
    """The objective's trainer, logging to the run folder and stoppable; its batch plan said."""
    callbacks = [JsonlLogger(run.log, resume), StopOnRequest(stop, run.stop_marker),
                 *tracking.callbacks(cfg, run)]
    try:
        trainer = objective.trainer(cfg, run, tokenizer, train_set, eval_set, callbacks)
    except NoMatchingPeftModuleError as error:
        raise LabError(f"lora_target={cfg.lora_target!r} names no layer of {cfg.model}: use all-linear, or "
                       "names of its Linear layers (q_proj,v_proj in Llama-style models; query,value in "
                       "BERT-style embedders).") from error
    check_rows_left(trainer, cfg, train_set, eval_set)
    trainer.remove_callback(PrinterCallback)  # raw log dicts; JsonlLogger prints a readable line
    if trainer.is_world_process_zero():
        plan = batch_plan(cfg, trainer)
        write_json(run.plan_file, plan)
        print(plan["text"], flush=True)
    return trainer


def check_rows_left(trainer, cfg: TrainConfig, train_set, eval_set) -> None:
    """trl drops each row whose prompt fills max_length, since no answer token is left to learn
    from: say how many it dropped, and stop with one line where none is left."""
    if getattr(trainer.args, "packing", False):  # packing joins rows: its count is not theirs
        return
    for rows, given, kept in (("training", train_set, trainer.train_dataset),
                              ("held-out", eval_set, trainer.eval_dataset)):
        if given is None or kept is None or len(kept) == len(given):
            continue
        if not len(kept):
            raise DataError(f"max_length={cfg.max_length} leaves no answer to learn in any of the {len(given)} "
                            f"{rows} rows: their prompts fill it. Raise max_length.")
        if trainer.is_world_process_zero():  # one note in the log, however many processes train
            print(f"note: {len(given) - len(kept)} of {len(given)} {rows} rows dropped: their prompt fills "
                  f"max_length={cfg.max_length}, leaving no answer to learn.", flush=True)


def let_training_wrap(trainer) -> None:
    """Undo what an evaluation before training (the held-out figures) leaves: Trainer.evaluate
    prepares the bare model for evaluation, accelerate then takes it as prepared, and train()
    skipped its DDP wrapping: each process trained its own copy on its shard (the ranks' weights
    parted after step 1, and only rank 0's was saved)."""
    model = trainer.model
    if trainer.accelerator.num_processes > 1 and trainer.model_wrapped is model:
        model._is_accelerate_prepared = False
        if model in trainer.accelerator._models:
            trainer.accelerator._models.remove(model)


def run_steps(trainer, run: RunFolder, cfg: TrainConfig, resume: bool, main: bool):
    """trainer.train, from the newest complete checkpoint when resuming (the log trimmed to it)."""
    if cfg.torch_compile:
        compile_layers(trainer.model)
    checkpoint = run.latest_complete_checkpoint() if resume else None
    if resume and main:
        trim_log(run, int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    let_training_wrap(trainer)
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
