"""Finetune Lab's plain-Python core: assets, models, chat, data, embeddings, topics, hub.

The tabs, the CLI and the tests all call these modules; none of them knows about the UI.
"""
import logging

# peft imports bitsandbytes, which on an AVX512-BF16 CPU warns at import that it could not fetch
# an optional kernel from the Hub ("pip install kernels") and falls back to its own. Installing
# `kernels` would only move the failure to run time offline; the fallback is what trains here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
