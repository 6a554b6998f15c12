"""serve.api_batch's grouping, on a tiny random Llama: requests that wait together on one model
with the same settings decode as one batch, each row says what it says alone, and a request
with other settings gets a batch of its own; an empty message is refused before it could
join (and fail) a batch. (The real model, a base and an adapter row, over
the openai client: tests/test_openai_api.py.)
"""
from __future__ import annotations

import pytest

from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import ModelError, load_model
from serve.api_batch import BASE, Batcher, Row, answer_together


def test_rows_batch_by_model_and_settings(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))

    def ask(text: str, tokens: int) -> Row:
        return Row(loaded, BASE, [{"role": "user", "content": text}], GenerationSettings(max_new_tokens=tokens))

    rows = [ask("Hello there", 8), ask("Hello here", 8), ask("Hi", 5)]
    batcher = Batcher()
    for row in rows:
        batcher.submit(row)
    answers = [list(iter(row.out.get, None)) for row in rows]
    assert batcher.batch_sizes == {2: 1, 1: 1}
    assert all(len(replies) > 1 and replies[-1].done for replies in answers), "streamed, then done"
    alone = [list(stream_reply(loaded, row.messages, row.settings))[-1] for row in rows]
    assert [replies[-1].text for replies in answers] == [reply.text for reply in alone]
    assert [replies[-1].new_tokens for replies in answers] == [8, 8, 5]
    with pytest.raises(ModelError, match="Empty message"):  # refused before it joins anyone's batch
        answer_together(loaded, None, [{"role": "user", "content": "  "}], GenerationSettings())
