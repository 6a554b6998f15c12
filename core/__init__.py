"""Finetune Lab's plain-Python core: assets, models, chat, data, embeddings, topics, hub.

The tabs, the CLI and the tests all call these modules; none of them knows about the UI.
"""
