"""Finetune Lab's plain-Python core: assets, models, chat, data, embeddings, topics, hub.

The tabs, the CLI and the tests all call these modules; none of them knows about the UI.
"""
import logging
import warnings

# Library notices a user cannot act on, quieted once here (every entry point imports core).
# peft asks transformers' deprecated `is_gradient_checkpointing` each time it wraps a model in an
# adapter (peft 0.21 on transformers 5.24): a notice for peft's authors, printed in every run's log.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# peft imports bitsandbytes, which on an AVX512-BF16 CPU warns at import that it could not fetch
# an optional kernel from the Hub ("pip install kernels") and falls back to its own. Installing
# `kernels` would only move the failure to run time offline; the fallback is what trains here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
