"""Train one run: `train(cfg, run_dir)`. This is also the process the UI and the CLI launch.

    python -m training.run --config training/recipes/tiny.yaml [--max_steps 5 ...]
    python -m training.run --run-dir ~/.finetune-lab/runs/NAME --resume
    accelerate launch --multi_gpu --num_processes 2 -m training.run --config ...   # DDP

Everything goes into the run folder (core.runs.RunFolder names its files): the config, the
log, checkpoints, the adapter (renamed into place when complete), the scores, the report and
the manifest. SIGTERM saves a checkpoint and stops.
"""
from __future__ import annotations

import signal

STOP_REQUESTED = {"flag": False}


def request_stop(*_) -> None:
    STOP_REQUESTED["flag"] = True


if __name__ == "__main__":  # first thing: a Stop during the heavy imports below must not kill the run
    signal.signal(signal.SIGTERM, request_stop)

import argparse
import os
import sys
from pathlib import Path

from core import threads
from core.errors import LabError
from core.models import resolve_precision, torch_dtype
from core.paths import write_json
from core.runs import RunFolder
from training.config import TrainConfig, config_from_dict, field_help, load_config
from training.device import attention_for, compile_layers, keep_4bit_layers_differentiable, precision_flags
from training.finish import finish
from training.progress import say_phase, trim_log

def load_base(cfg: TrainConfig):
    """The base model, 4-bit NF4 for QLoRA; the same loader for every adapter kind. A full
    fine-tune keeps fp32 master weights (a bf16 AdamW update of 2e-5 rounds away); frozen
    LoRA/QLoRA bases are stored in the compute dtype, which halves their memory."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from core.models import resolve_model

    kwargs = dict(use_safetensors=True, trust_remote_code=False, attn_implementation=attention_for(cfg))
    compute = torch_dtype(resolve_precision(cfg.precision))
    if cfg.adapter == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=compute)
        if torch.cuda.is_available():  # bitsandbytes quantizes where the weights load, and the
            # Trainer never moves a 4-bit model: without this it would train on the CPU.
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    else:
        kwargs["dtype"] = torch.float32 if cfg.adapter == "full" else compute
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), **kwargs)
    if cfg.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        keep_4bit_layers_differentiable(model)
    return model


def lora_config(cfg: TrainConfig):
    """peft settings for lora/qlora; None for a full fine-tune."""
    if cfg.adapter == "full":
        return None
    from peft import LoraConfig

    target = cfg.lora_target if cfg.lora_target == "all-linear" else [
        t.strip() for t in cfg.lora_target.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")


def common_args(cfg: TrainConfig, run: RunFolder) -> dict:
    """The TrainingArguments every objective shares (SFTConfig and DPOConfig extend them)."""
    import torch

    return dict(
        output_dir=str(run.checkpoints), max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, logging_steps=cfg.logging_steps, **schedule_flags(cfg),
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if cfg.eval_steps and cfg.eval_fraction else "no",
        eval_steps=cfg.eval_steps or None, seed=cfg.seed, report_to="none",
        activation_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=True, save_only_model=False,
        **precision_flags(cfg.precision),
    )


def schedule_flags(cfg: TrainConfig) -> dict:
    """Scheduler, warmup, weight decay, optimizer, clipping and NEFTune as TrainingArguments."""
    scheduler = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    warmup = cfg.warmup if cfg.warmup < 1 else int(cfg.warmup)
    return dict(lr_scheduler_type=scheduler, warmup_steps=warmup, weight_decay=cfg.weight_decay,
                optim=cfg.optimizer, max_grad_norm=cfg.max_grad_norm,
                neftune_noise_alpha=cfg.neftune_alpha or None)


def sft_config(cfg: TrainConfig, run: RunFolder):
    from trl import SFTConfig

    dapt = cfg.objective == "dapt"
    return SFTConfig(**common_args(cfg, run), max_length=cfg.block_size if dapt else cfg.max_length,
                     **batching_flags(cfg))


def batching_flags(cfg: TrainConfig) -> dict:
    """How SFT rows are batched. Measured on 2 CPU cores (bench/bench_train.py): packing's long
    block-diagonal rows cost dense attention over the whole pack, while length-grouped dynamic
    padding wastes little; on a GPU, packed padding-free batches use varlen attention kernels."""
    import torch

    mode = cfg.batching
    if mode == "auto":
        mode = "packed" if torch.cuda.is_available() else "grouped"
    if cfg.objective == "dapt":  # windows already have one fixed length
        mode = "padded"
    flags = {"packing": mode == "packed"}
    if mode == "grouped":
        flags["train_sampling_strategy"] = "group_by_length"
    return flags


def build_trainer(cfg: TrainConfig, run: RunFolder, tokenizer, train_set, eval_set, callbacks=()):
    """trl's SFTTrainer (SFT, DAPT) or DPOTrainer for `cfg`, on the base model it loads."""
    if cfg.objective == "dpo":
        from training.dpo import dpo_trainer

        return dpo_trainer(cfg, run, tokenizer, train_set, eval_set, list(callbacks))
    from training.trainer import LabSFTTrainer

    return LabSFTTrainer(model=load_base(cfg), args=sft_config(cfg, run), train_dataset=train_set,
                         eval_dataset=eval_set, processing_class=tokenizer, peft_config=lora_config(cfg),
                         callbacks=list(callbacks))


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> Path:
    """Run training to completion (or until SIGTERM) and write the run folder."""
    from transformers import PrinterCallback

    from training import evaluate
    from training.callbacks import JsonlLogger, StopOnRequest
    from training.prepare import build_examples, load_tokenizer, pin_dataset_revision, split_examples
    from training.progress import batch_plan

    threads.apply(threads.for_training(cfg.threads))
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    say_phase(run, "loading the model and preparing the data")
    cfg = pin_dataset_revision(cfg)
    run.config.write_text(cfg.to_yaml())
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    train_set, eval_set = split_examples(build_examples(cfg, tokenizer), cfg)
    callbacks = [JsonlLogger(run.log, resume), StopOnRequest(STOP_REQUESTED, run.stop_marker)]
    trainer = build_trainer(cfg, run, tokenizer, train_set, eval_set, callbacks)
    trainer.remove_callback(PrinterCallback)  # raw log dicts; JsonlLogger prints a readable line
    main = trainer.is_world_process_zero()
    if main:
        plan = batch_plan(cfg, trainer)
        write_json(run.plan_file, plan)
        print(plan["text"], flush=True)
    scores = evaluate.load_scores(run)
    if eval_set is not None and "before" not in scores:
        say_phase(run, "evaluating the base on held-out rows before training")
        scores["before"] = evaluate.held_out(trainer, cfg)
        scores.update(evaluate.general_scores(trainer, cfg, tokenizer, "before"))
    say_phase(run, "")
    if cfg.torch_compile:
        compile_layers(trainer.model)
    checkpoint = run.latest_complete_checkpoint() if resume else None
    if resume and main:
        trim_log(run, int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if STOP_REQUESTED["flag"]:
        if main:
            write_json(run.status_file, {"state": "stopped", "step": trainer.state.global_step})
        return run_dir
    if eval_set is not None:
        say_phase(run, "evaluating the tuned model on held-out rows")
        scores["after"] = evaluate.held_out(trainer, cfg)
        scores.update(evaluate.general_scores(trainer, cfg, tokenizer, "after"))
    if main:
        finish(cfg, run, trainer, tokenizer, eval_set, result, scores)
    return run_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train one Finetune Lab run.")
    parser.add_argument("--config", help="recipe YAML path or bundled recipe name")
    parser.add_argument("--run-dir", help="run folder (default: <data dir>/runs/<output_name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    for name, help_text in field_help().items():
        parser.add_argument(f"--{name}", help=help_text, default=None)
    return parser.parse_args(argv)


def config_from_args(args) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k in field_help() and v is not None}
    if args.config:
        return load_config(args.config, **overrides)
    if args.resume and args.run_dir:
        return load_config(RunFolder(Path(args.run_dir)).config, **overrides)
    return config_from_dict(overrides)


def main(argv=None) -> int:
    from training.jobs import default_run_name, is_live, record_job

    signal.signal(signal.SIGTERM, request_stop)
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = RunFolder(Path(args.run_dir)) if args.run_dir else RunFolder.named(cfg.output_name or default_run_name(cfg))
    run_dir = run.path
    run.path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0" and not is_live(run):
        # Started from the CLI, not the job launcher: record the process ourselves, so a kill
        # shows as "interrupted" with the resume command, and Stop in the UI reaches us.
        record_job(run, os.getpid(), [sys.executable, "-m", "training.run", *(argv or sys.argv[1:])])
        run.status_file.unlink(missing_ok=True)  # how an earlier attempt ended no longer holds
    try:
        train(cfg, run_dir, resume=args.resume)
    except LabError as exc:  # bad data or settings: a clear line, not a traceback
        write_json(run.status_file, {"state": "failed", "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        write_json(run.status_file, {"state": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    if os.environ.get("RANK", "0") == "0":  # one line from a multi-process job too
        print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
