"""A reply's text as its tokens arrive (core.inference.reply_text), on the real SmolLM2 tokenizer:
the text in progress, the text at the end, and the streamer a single pane reads.

    .venv/bin/python -m pytest tests/test_reply_text.py
"""
from __future__ import annotations

import copy
from itertools import islice

import pytest
import torch

from core.inference.reply_text import ReplyText, TextStreamer

ANSWERS = ["The capital of France is Paris.\n\nIt has 2,1 million people — «très» bien!",
           "日本語のテキストと絵文字 👩‍👩‍👧 🎉 in one line\n  then indented\tafter a tab",
           "```python\ndef f(x):\n    return x ** 2  # squares\n```\n"]


@pytest.fixture(scope="module")
def tokenizer(data_home):
    from transformers import AutoTokenizer

    from core.inference.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def answer_ids(tokenizer, text: str) -> list[int]:
    """The answer's tokens with the end of turn after it, as a reply's ids come."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def texts_as_they_grow(reply: ReplyText, ids: list[int]) -> list[str]:
    return [reply.text for token in ids if reply.add(token)]


@pytest.mark.parametrize("clean_up", [False, True], ids=["incremental", "whole-answer"])
def test_the_text_grows_by_whole_characters_and_ends_as_decode(tokenizer, clean_up):
    """Each text in progress is the start of the answer, never half a character (an emoji is
    several byte tokens), and the text at the end is `tokenizer.decode`'s. A tokenizer that
    cleans up spaces after decoding takes the whole-answer path, to the same texts."""
    tokenizer = copy.copy(tokenizer)
    tokenizer.clean_up_tokenization_spaces = clean_up
    for answer in ANSWERS:
        ids = answer_ids(tokenizer, answer)
        reply = ReplyText(tokenizer)
        assert (reply._stream is None) == clean_up
        grown = texts_as_they_grow(reply, ids)
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        assert whole == answer and reply.text == whole and reply.finish() == whole
        assert all(whole.startswith(text) and "\ufffd" not in text for text in grown)
        assert len(grown) == len(set(grown)) and len(reply.tokens) == len(ids)
    emoji = answer_ids(tokenizer, "👩‍👩‍👧")
    reply = ReplyText(tokenizer)
    assert [reply.add(token) for token in emoji].count(False) >= len(emoji) // 2  # bytes of one character
    assert reply.text == "👩‍👩‍👧"


def test_the_text_at_the_end_is_decode_even_where_it_parts(tokenizer):
    """Tokens that never make a whole character: the text in progress leaves them out, the
    text at the end is what `tokenizer.decode` makes of them, replacement characters and all."""
    stray = tokenizer("é", add_special_tokens=False)["input_ids"]
    byte_tokens = list(islice((token for token in range(len(tokenizer)) if tokenizer.decode([token]) == "\ufffd"), 3))
    reply = ReplyText(tokenizer)
    ids = stray + byte_tokens
    texts_as_they_grow(reply, ids)
    assert "\ufffd" not in reply.text and reply.text.startswith("é")
    assert reply.finish() == tokenizer.decode(ids, skip_special_tokens=True)


def test_the_streamer_skips_the_prompt_and_hands_on_each_longer_text(tokenizer):
    """As `generate` calls it: the prompt first (skipped), then one token a call; iterating
    gives each longer text once, with the answer's tokens so far, until `end`."""
    streamer, ids = TextStreamer(tokenizer), answer_ids(tokenizer, ANSWERS[0])
    streamer.put(torch.tensor([tokenizer("a prompt")["input_ids"]]))
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    texts, counts = zip(*streamer)
    assert counts[-1] <= len(ids) and list(counts) == sorted(set(counts)) and counts[0] >= 1  # a token may add no text
    assert texts[-1] == ANSWERS[0] and all(ANSWERS[0].startswith(text) for text in texts)
    assert len(texts) == len(set(texts)) and streamer.finish() == ANSWERS[0]
