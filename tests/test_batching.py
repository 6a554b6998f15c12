"""core.inference.batching's grouping, on a tiny random Llama: requests that wait together on one
model with the same settings decode as one batch, each row says what it says alone and stops at
its own answer length, a request with other settings gets a batch of its own, a two-row request
(Compare's panes) never splits across batches, and an empty message is refused before it could
join (and fail) a batch. Answers of different lengths also batch on the real model. (The real
model with a base and an adapter row: over the openai client in tests/test_openai_api.py, and
two visitors of the served app in tests/test_app_chat.py.)
"""
from __future__ import annotations

import pytest

from core.inference.batching import BASE, MAX_ROWS, Batcher, Request, Row, answer_together
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import ModelError, load_model
from core.request_limits import GENERATE_EVENTS


def answers(batcher: Batcher, requests: list[Request]) -> list[list[tuple]]:
    for request in requests:
        batcher.submit(request)
    return [list(iter(request.out.get, None)) for request in requests]


def test_requests_batch_by_model_and_settings_and_rows_that_fit(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))

    def ask(texts: list[str], tokens: int, penalty: float = 1.1) -> Request:
        rows = [Row(BASE, [{"role": "user", "content": text}]) for text in texts]
        return Request(loaded, rows, GenerationSettings(max_new_tokens=tokens, repetition_penalty=penalty), 2)

    # Answer lengths may differ within a batch (each row stops at its own); other settings may not.
    requests = [ask(["Hello there"], 8), ask(["Hello here"], 5), ask(["Hi"], 5, penalty=1.3)]
    batcher = Batcher()
    replies = answers(batcher, requests)
    assert batcher.batch_sizes == {2: 1, 1: 1}
    assert all(len(growing) > 1 and growing[-1][0].done for growing in replies), "streamed, then done"
    alone = [list(stream_reply(loaded, r.rows[0].messages, r.settings))[-1] for r in requests]
    assert [growing[-1][0].text for growing in replies] == [reply.text for reply in alone]
    assert [growing[-1][0].new_tokens for growing in replies] == [8, 5, 5]

    # One row, then two pairs: the first pair fits beside the row (3 of 4), the second waits whole.
    requests = [ask(["Hello there"], 6), ask(["Hello here", "Hello again"], 4), ask(["Hello you", "Hello all"], 6)]
    replies = answers(batcher, requests)
    assert batcher.batch_sizes == {2: 2, 1: 1, 3: 1} and MAX_ROWS == 4
    assert [len(growing[-1]) for growing in replies] == [1, 2, 2] and all(r.done for r in replies[2][-1])
    assert [reply.new_tokens for growing in replies for reply in growing[-1]] == [6, 4, 4, 6, 6]


def test_bad_input_is_refused_before_it_joins_and_the_tab_runs_a_batch_of_answers(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="Empty message"):  # refused before it joins anyone's batch
        answer_together(loaded, [Row(BASE, [{"role": "user", "content": "  "}])], GenerationSettings(), 2)
    assert GENERATE_EVENTS["concurrency_limit"] == MAX_ROWS, "the Chat tab runs as many answers as a batch holds"


def test_answers_of_different_lengths_share_a_batch_on_the_real_model(smol):
    """Two visitors on the packaged model, one asking for 12 tokens and one for 6: one batch,
    each reply its solo one, each stopping at its own count (prompts as long, 38 tokens: no
    padding; long answers asked for, so neither ends before its count)."""
    def ask(text: str, tokens: int) -> Request:
        rows = [Row(BASE, [{"role": "user", "content": text}])]
        return Request(smol, rows, GenerationSettings(max_new_tokens=tokens), 2)

    requests = [ask("Write a long story about a dragon.", 12), ask("Write a long poem about the sea.", 6)]
    batcher = Batcher()
    replies = answers(batcher, requests)
    assert batcher.batch_sizes == {2: 1}
    alone = [list(stream_reply(smol, r.rows[0].messages, r.settings))[-1] for r in requests]
    assert [growing[-1][0].text for growing in replies] == [reply.text for reply in alone]
    assert [growing[-1][0].new_tokens for growing in replies] == [12, 6]
