"""LoRA on a sentence embedder: objective=embed with adapter=lora (see embed.py).

    python cli.py train --config embed_chatterbot --adapter lora --learning_rate 5e-4

peft wraps the embedder's transformer; checkpoints hold the LoRA weights alone, and the trainer
below resumes from them. (transformers' own adapter API, which sentence-transformers would
use, needs a newer peft than the pinned one.)
"""
from __future__ import annotations

from peft import get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformerTrainer

from core.errors import LabError
from training.model_setup import lora_config


def with_lora(encoder, cfg):
    """The transformer wrapped by peft; 'all-linear' means the attention's query and value here,
    the projections LoRA's paper adapts (the feed-forward layers are most of the weights)."""
    lora = lora_config(cfg, task_type="FEATURE_EXTRACTION")
    if cfg.lora_target == "all-linear":
        lora.target_modules = {"query", "value"}
    return get_peft_model(encoder, lora)


class LoraEmbedderTrainer(SentenceTransformerTrainer):
    """Resumes from a checkpoint's LoRA weights. sentence-transformers' own resume rebuilds the
    model from the folder through transformers' adapter API, which names the weights
    differently from the peft-wrapped model being trained."""

    def _load_from_checkpoint(self, checkpoint_path, model=None):
        weights = load_file(f"{checkpoint_path}/adapter_model.safetensors")
        result = set_peft_model_state_dict(self.model[0].model, weights)
        if result.unexpected_keys or any("lora_" in key for key in result.missing_keys):
            raise LabError(f"The checkpoint {checkpoint_path} does not hold this run's LoRA weights.")
