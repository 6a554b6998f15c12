"""core.inference.batching's grouping, on a tiny random Llama: requests on one model with the
same settings decode as one batch, and a request that arrives while it runs joins it at the next
token; each row says what it says alone, whenever it joined, and stops at its own answer length;
a request with other settings waits for a batch of its own, a two-row request (Compare's panes)
joins whole, and an empty message is refused before it could join (and fail) a batch. On the
real model, a shorter request joins a running answer and both say what they say alone. (The real
model with a base and an adapter row: over the openai client in tests/test_openai_api.py, and
two visitors of the served app in tests/test_app_chat.py.) A seed repeats a sampled answer in
any batch, through `generate` or the running batch.
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

    # A row and two pairs start together (5 of 8 rows); four rows more do not fit, and wait whole
    # until the first pair has ended, then join the running batch: one batch, at most 7 rows.
    requests = [ask(["Hello there"], 6), ask(["Hello here", "Hello again"], 4), ask(["Hello you", "Hello all"], 6),
                ask(["Hi", "Hey", "Yo", "Ho"], 3)]
    replies = answers(batcher, requests)
    assert batcher.batch_sizes == {2: 1, 1: 1, 7: 1} and MAX_ROWS == 8
    assert [len(growing[-1]) for growing in replies] == [1, 2, 2, 4] and all(r.done for r in replies[3][-1])
    assert [reply.new_tokens for growing in replies for reply in growing[-1]] == [6, 4, 4, 6, 6, 3, 3, 3, 3]

    # A request that arrives while a long answer runs joins it at the next token, and says what it
    # says alone although its prompt is shorter (it sits left-padded in the batch's cache).
    long, short = ask(["Tell me everything about the sea"], 200), ask(["Hi"], 5)
    batcher = Batcher()
    batcher.submit(long)
    first = long.out.get()
    batcher.submit(short)
    joined = list(iter(short.out.get, None))
    rest = [first] + list(iter(long.out.get, None))
    assert batcher.batch_sizes == {2: 1}, "the short request waited for the long answer to end"
    assert not rest[len(joined)][0].done, "the short answer ended while the long one ran"
    for request, growing in ((long, rest), (short, joined)):
        assert growing[-1][0].text == list(stream_reply(loaded, request.rows[0].messages, request.settings))[-1].text


def test_while_rows_decode_one_request_joins_at_a_time_after_its_prompts_time(tiny_model_dir):
    """The joining policy: an empty batch takes every waiting request that fits; a decoding one
    takes one, and none until it has decoded for as long as the last prompt passes took; a
    request with other settings holds up those behind it until the batch ends."""
    loaded = load_model(str(tiny_model_dir))
    greedy, warm = GenerationSettings(), GenerationSettings(temperature=0.7)
    ask = [Request(loaded, [Row(BASE, [{"role": "user", "content": f"Hi {i}"}])], greedy, 2) for i in range(3)]
    batcher = Batcher()
    batcher.waiting = list(ask)
    assert batcher._joiners(0, ask[0], owed=0.0) == ask
    batcher.waiting = list(ask)
    assert batcher._joiners(2, ask[0], owed=0.4) == [] and batcher.waiting == ask
    assert batcher._joiners(2, ask[0], owed=0.0) == ask[:1] and batcher.waiting == ask[1:]
    assert batcher._joiners(MAX_ROWS, ask[0], owed=0.0) == [], "no room"
    other = Request(loaded, ask[0].rows, warm, 2)
    batcher.waiting = [other, *ask]
    assert batcher._joiners(2, ask[0], owed=0.0) == [] and batcher._joiners(0, other, owed=0.0) == [other, *ask][:1]


def test_bad_input_is_refused_before_it_joins_and_the_tab_runs_a_batch_of_answers(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="Empty message"):  # refused before it joins anyone's batch
        answer_together(loaded, [Row(BASE, [{"role": "user", "content": "  "}])], GenerationSettings(), 2)
    assert GENERATE_EVENTS["concurrency_limit"] == MAX_ROWS, "the Chat tab runs as many answers as a batch holds"


def test_answers_of_different_lengths_share_a_batch_on_the_real_model(smol):
    """Two visitors on the packaged model, one asking for 16 tokens and, once that answer runs,
    one for 6 with a shorter prompt: it joins the running answer, each reply is its solo one, and
    each stops at its own count (long answers asked for, so neither ends before its count)."""
    def ask(text: str, tokens: int) -> Request:
        rows = [Row(BASE, [{"role": "user", "content": text}])]
        return Request(smol, rows, GenerationSettings(max_new_tokens=tokens), 2)

    story, poem = ask("Write a long story about a dragon who learns to fly.", 16), ask("Write a poem.", 6)
    batcher = Batcher()
    batcher.submit(story)
    replies = [[story.out.get()]]
    batcher.submit(poem)
    replies = [replies[0] + list(iter(story.out.get, None)), list(iter(poem.out.get, None))]
    assert batcher.batch_sizes == {2: 1}, "the second visitor waited for the first answer to end"
    alone = [list(stream_reply(smol, r.rows[0].messages, r.settings))[-1] for r in (story, poem)]
    assert [growing[-1][0].text for growing in replies] == [reply.text for reply in alone]
    assert [growing[-1][0].new_tokens for growing in replies] == [16, 6]


def test_a_seed_repeats_a_sampled_answer_whoever_shares_its_batch(tiny_model_dir, monkeypatch):
    """A running batch samples each seeded row from its own generator: the answer is the same
    alone or beside others (seeded otherwise or not at all), and the same as a solo reply
    through `generate`, whose seeded draws leave the process's generator as it was. On the
    model's own weights, as a GPU and FINETUNE_LAB_DECODE=eager decode (there every batched
    answer once failed)."""
    from collections import OrderedDict

    import torch

    from core.inference import models

    monkeypatch.setenv("FINETUNE_LAB_DECODE", "eager")
    monkeypatch.setattr(models, "_CACHE", OrderedDict())
    loaded = load_model(str(tiny_model_dir))
    assert loaded.decode == "eager"
    hello = [Row(BASE, [{"role": "user", "content": "Hello there"}])]

    def sampled(seed):
        return Request(loaded, hello, GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=seed), 2)

    alone = answers(Batcher(), [sampled(7)])[0][-1][0].text
    batcher = Batcher()
    together = answers(batcher, [sampled(8), sampled(None), sampled(7)])
    assert batcher.batch_sizes == {3: 1}, "the three decoded together"
    assert together[2][-1][0].text == alone and together[0][-1][0].text != alone

    assert sampled(7).batches_with(sampled(8)) and sampled(7).batches_with(sampled(None))
    before = torch.get_rng_state()
    solo = [list(stream_reply(loaded, hello[0].messages, sampled(seed).settings))[-1].text for seed in (7, 7, 8)]
    assert solo[0] == solo[1] == alone != solo[2] and torch.equal(torch.get_rng_state(), before)


def test_seeded_rows_batch_through_generate_and_answer_as_alone(smol):
    """Where `generate` decodes a batch (a GPU, the compiled step, a sliding-window model), each
    row draws from its own generator too: seeded rows beside an unseeded one say what they say
    alone, and the running batch (a CPU's) draws the same. On the real model."""
    from core.inference.compare import stream_batch

    hello = [{"role": "user", "content": "Name a colour and say why."}]

    def sampled(seed):
        return GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=seed)

    alone = {seed: list(stream_reply(smol, hello, sampled(seed)))[-1].text for seed in (7, 8)}
    rows = list(stream_batch(smol, [hello] * 3, [BASE] * 3, sampled(7), row_settings=[sampled(7), sampled(None), sampled(8)]))[-1]
    assert [rows[0].text, rows[2].text] == [alone[7], alone[8]] and alone[7] != alone[8]
    running = answers(Batcher(), [Request(smol, [Row(BASE, hello)], sampled(seed), 2) for seed in (8, 7)])
    assert [growing[-1][0].text for growing in running] == [alone[8], alone[7]]
