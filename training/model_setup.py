"""Model setup every objective shares: the base model as training loads it (NF4 for QLoRA), the
LoRA settings, and the TrainingArguments (each objective's trl config extends them).

    python -c "from training.model_setup import lora_config; from training.config import TrainConfig; print(lora_config(TrainConfig()))"

The objectives (training/objectives/), training.export and the benches import these. It takes
a TrainConfig but imports neither it nor any training step: the config module knows the
objectives, and they build on this.
"""
from __future__ import annotations

from core.errors import LabError
from core.inference.models import torch_dtype
from core.runs import RunFolder
from training.device import attention_for, keep_4bit_layers_differentiable, precision_flags, training_precision
from training.tracking import tracking_args


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def load_tokenizer(model: str, chat_template: str = "own"):
    """The model's tokenizer, with the chat template the config chose: the model's own, ChatML,
    or none (rows then become plain "Question:/Answer:" text)."""
    from transformers import AutoTokenizer

    from core.inference.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template == "chatml":
        tokenizer.chat_template = CHATML
    elif chat_template == "plain":
        tokenizer.chat_template = None
    return tokenizer


def load_base(cfg, sequence_length: int = 0):
    """The base model, 4-bit NF4 for QLoRA; the same loader for every adapter kind. A full
    fine-tune keeps fp32 master weights (a bf16 AdamW update of 2e-5 rounds away); frozen
    LoRA/QLoRA bases are stored in the compute dtype, which halves their memory. The longest
    row (`sequence_length`, default max_length) picks the attention kernel."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.inference.models import resolve_model
    from core.inference.qlora import four_bit_load_args

    kwargs = dict(use_safetensors=True, trust_remote_code=False,
                  attn_implementation=attention_for(sequence_length or cfg.max_length))
    compute = torch_dtype(training_precision(cfg.precision))
    if cfg.adapter == "qlora":
        kwargs.update(four_bit_load_args(cfg.quant_type, cfg.double_quant, compute))
    else:
        kwargs["dtype"] = torch.float32 if cfg.adapter == "full" else compute
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), **kwargs)
    if cfg.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        keep_4bit_layers_differentiable(model)
    return model


def load_policy(cfg, sequence_length: int = 0):
    """(model, peft config) for an objective that may continue an adapter (`start_from`): the
    plain base and a fresh LoRA config, so trl scores the reference with the adapter off; or the
    base with the finished run's adapter, trainable (trl then keeps a frozen copy as reference)."""
    from peft import PeftModel

    model, start = load_base(cfg, sequence_length), starting_adapter(cfg)
    if start is None:
        return model, lora_config(cfg)
    return PeftModel.from_pretrained(model, str(start.adapter), is_trainable=True), None


def starting_adapter(cfg) -> RunFolder | None:
    """The finished LoRA/QLoRA run to continue (`start_from`), checked against the config."""
    if not cfg.start_from:
        return None
    start = RunFolder.existing(cfg.start_from)
    manifest = start.manifest()
    if manifest is None or not start.is_finished or not start.is_lora:
        raise LabError(f"start_from={cfg.start_from!r}: pick a finished LoRA or QLoRA run.")
    if (manifest.model, manifest.adapter) != (cfg.model, cfg.adapter):
        raise LabError(f"start_from={cfg.start_from!r} is a {manifest.adapter} adapter on {manifest.model}; "
                       f"this run trains {cfg.adapter} on {cfg.model}. Use the same model and adapter.")
    return start


def lora_config(cfg, task_type: str = "CAUSAL_LM"):
    """peft settings for lora/qlora; None for a full fine-tune."""
    if cfg.adapter == "full":
        return None
    from peft import LoraConfig

    target = cfg.lora_target if cfg.lora_target == "all-linear" else [
        t.strip() for t in cfg.lora_target.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type=task_type)


def common_args(cfg, run: RunFolder) -> dict:
    """The TrainingArguments every objective shares (SFTConfig and DPOConfig extend them)."""
    import torch

    return dict(
        # transformers trains for epochs at max_steps -1 only: 0 ran one step at learning rate 0
        output_dir=str(run.checkpoints), max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, logging_steps=cfg.logging_steps, **schedule_flags(cfg),
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if cfg.eval_steps and cfg.eval_fraction else "no",
        eval_steps=cfg.eval_steps or None, seed=cfg.seed, **tracking_args(cfg, run),
        activation_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=True, save_only_model=False,
        # Every adapter weight takes part in each step, so DDP need not walk the graph for unused
        # ones (transformers turns that walk on for a model it does not know, as a PeftModel).
        ddp_find_unused_parameters=False if cfg.adapter != "full" else None,
        **precision_flags(cfg.precision),
    )


def schedule_flags(cfg) -> dict:
    """Scheduler, warmup, weight decay, optimizer, clipping and NEFTune as TrainingArguments."""
    scheduler = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    warmup = cfg.warmup if cfg.warmup < 1 else int(cfg.warmup)
    return dict(lr_scheduler_type=scheduler, warmup_steps=warmup, weight_decay=cfg.weight_decay,
                optim=cfg.optimizer, max_grad_norm=cfg.max_grad_norm,
                neftune_noise_alpha=cfg.neftune_alpha or None)


def context_length(model: str) -> int:
    """The model's maximum sequence length, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from core.inference.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=False)
    return int(getattr(config, "max_position_embeddings", 2048))
