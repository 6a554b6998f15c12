"""Compare mode: stream the base answer and the tuned answer at the same time.

    python cli.py chat --adapter <run name> --compare "What is LoRA?"      # the CLI twin

A LoRA adapter shares the base's weights, so both panes come from ONE batched `generate`
with mixed-adapter batches (peft's arithmetic, applied by core.inference.lora_rows.adapter_rows): row 0
runs without the adapter, row 1 with it. Decoding a token reads every weight once whatever the batch size, so two
rows cost little more than one. A full fine-tune is a second model, and so is a QLoRA adapter on
its 4-bit base (core.inference.qlora): its pane runs in a thread of its own next to the base's.
A run's report and held-out answers are asked the same way, several conversations a batch
(`answer_pairs`).

Each pane's greedy tokens are those of its solo run (`core.inference.chat.stream_reply`), tested in
tests/test_compare.py: the matmul kernels treat each row on its own, and a solo tuned reply
takes the same mixed-adapter path, so the adapter's sum rounds alike. Where the two
histories differ in length, the shorter row is left-padded, and its padded attention can round
differently. With FINETUNE_LAB_DECODE=compiled, a ready Compare step (core.inference.compiled_decode)
decodes the two rows instead, and the status line says so; its panes are not held to their solo
runs token for token (their agreement with this path is in BENCHMARKS.md).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Iterator

import torch

from core.inference import compiled_decode
from core.inference.adapters import Tuned
from core.inference.chat import (GenerationSettings, Reply, adapter_context, build_inputs, check_messages,
                                 generate_kwargs, launch_generate, stream_reply)
from core.inference.fast_decode import BASE
from core.inference.models import LoadedModel, ModelError
from core.inference.reply_text import ReplyText
from core.inference.token_rules import end_ids


class _RowStreamer:
    """A `generate` streamer for a batch: queues each step's new token of every row."""

    def __init__(self):
        self.steps: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call passes the prompt itself
            self.prompt_seen = True
            return
        self.steps.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.steps.put(None)


def stream_compare(base: LoadedModel, tuned: Tuned, base_messages: list[dict], tuned_messages: list[dict],
                   settings: GenerationSettings) -> Iterator[tuple[Reply, Reply]]:
    """Yield (base reply, tuned reply) as both grow. Each pane keeps its own history."""
    if tuned.adapter_name is None:
        yield from _side_by_side(stream_reply(base, base_messages, settings),
                                 stream_reply(tuned.loaded, tuned_messages, in_format(settings, tuned.chat_template),
                                              beside_decode_thread=True))
    else:
        yield from stream_batch(base, [base_messages, tuned_messages], [BASE, tuned.adapter_name], settings,
                                [None, tuned.chat_template])


def in_format(settings: GenerationSettings, template: str | None) -> GenerationSettings:
    return settings if template is None else replace(settings, chat_template=template)


def left_padded(loaded: LoadedModel, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(row.shape[1] for row in rows)
    pad = loaded.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - row.shape[1]:] = row[0]
        mask[i, width - row.shape[1]:] = 1
    return ids, mask


def stream_batch(loaded: LoadedModel, conversations: list[list[dict]], adapter_names: list[str],
                 settings: GenerationSettings, templates: list | None = None,
                 row_settings: list[GenerationSettings] | None = None) -> Iterator[tuple[Reply, ...]]:
    """Yield every row's reply as the batch grows: row i runs adapter_names[i] (BASE: none),
    prompted in templates[i] (None: the model's own chat template). With `row_settings`, row i
    has its own input and answer lengths; the rest of `settings` is the batch's."""
    for messages in conversations:
        check_messages(messages)
    templates = templates or [None] * len(conversations)
    row_settings = row_settings or [settings] * len(conversations)
    encoded = [build_inputs(loaded, messages, in_format(own, template))
               for messages, template, own in zip(conversations, templates, row_settings)]
    input_ids, mask = left_padded(loaded, [ids for ids, _ in encoded])
    streamer, stop = _RowStreamer(), threading.Event()
    longest = replace(settings, max_new_tokens=max(own.max_new_tokens for own in row_settings))
    kwargs = generate_kwargs(loaded, input_ids, longest, streamer, stop, [own.sampling_seed() for own in row_settings])
    kwargs["attention_mask"] = mask
    route = compiled_decode.choose(loaded, len(adapter_names), input_ids.shape[1] + longest.max_new_tokens, adapter_names)
    kwargs.update(route.options)
    context = route.context if route.model is not None else adapter_context(loaded, adapter_names, kwargs)
    start = time.perf_counter()
    done, result = launch_generate(loaded, kwargs, streamer, context, model=route.model)
    replies = tuple(Reply(notice=notice, prompt_tokens=ids.shape[1]) for ids, notice in encoded)
    texts = [ReplyText(loaded.tokenizer) for _ in replies]
    ends = end_ids(loaded.model)
    try:
        for step in iter(streamer.steps.get, None):
            for reply, text, token, own in zip(replies, texts, step, row_settings):
                add_token(reply, text, token, token in ends, start, own.max_new_tokens, route.words)
            yield replies
    finally:
        stop.set()  # also reached when the consumer is closed (Stop, disconnect)
    done()
    if "error" in result:
        raise ModelError(f"Generation failed: {result['error']}")
    for reply in replies:
        _finish(reply, reply.seconds or time.perf_counter() - start, route.words)
    yield replies


def answer_pairs(base: LoadedModel, tuned: Tuned, conversations: list[list[dict]], settings: GenerationSettings,
                 start: Tuned | None = None, per_batch: int = 8) -> Iterator[list[tuple[str, str]]]:
    """Yield, for each `per_batch` conversations, their whole greedy answers [(before, after)]:
    before from the base (or `start`), after from `tuned`, every row of both sides in one batch
    on one copy of the base weights, as Compare asks its panes (a side that is a model of its
    own: a batch on each model). A run's report and held-out answers are asked this way: on 2 CPU
    cores, plain generate, a batch of each side with the adapter switched between them, took
    1.15x as long (bench/bench_eval.py), and eight conversations a batch took 0.72x the time of
    four."""
    for first in range(0, len(conversations), per_batch):
        chunk = conversations[first:first + per_batch]
        n = len(chunk)
        (before, before_adapter), (after, after_adapter) = _side(start, base), _side(tuned, base)
        before_templates = [start.chat_template if start else None] * n
        after_templates = [tuned.chat_template] * n
        if before is after:
            *_, replies = stream_batch(before, chunk * 2, [before_adapter] * n + [after_adapter] * n, settings,
                                       before_templates + after_templates)
        else:
            *_, base_replies = stream_batch(before, chunk, [before_adapter] * n, settings, before_templates)
            *_, tuned_replies = stream_batch(after, chunk, [after_adapter] * n, settings, after_templates)
            replies = (*base_replies, *tuned_replies)
        texts = [reply.text.strip() for reply in replies]
        yield list(zip(texts[:n], texts[n:]))


def _side(side: Tuned | None, base: LoadedModel) -> tuple[LoadedModel, str]:
    """The model a side of a pair runs on and its adapter there (BASE: none). A full fine-tune,
    or a QLoRA adapter on its 4-bit base, is a model of its own, run bare; None is the base."""
    return (side.loaded, side.adapter_name or BASE) if side else (base, BASE)


def add_token(reply: Reply, text: ReplyText, token: int, is_end: bool, start: float, budget: int,
              path: str = "") -> None:
    """Add one generated token to a row's reply and its `text`, unless the row has already ended
    (at its end of sequence or its own token `budget`)."""
    if reply.seconds:
        return  # after its end of sequence, a row only receives padding
    text.add(token)
    reply.text, reply.new_tokens = text.text, len(text.tokens)
    if is_end or len(text.tokens) >= budget:  # answered now, while the batch runs on for the others
        reply.text = text.finish()  # the whole answer decoded once, as the solo reply ends
        _finish(reply, time.perf_counter() - start, path)


def _finish(reply: Reply, seconds: float, path: str = "") -> None:
    reply.seconds, reply.done = seconds, True
    reply.stats = f"{reply.new_tokens} tokens, {reply.new_tokens / max(seconds, 1e-9):.1f} tok/s" + (f", {path}" if path else "")


def _side_by_side(*streams: Iterator[Reply]) -> Iterator[tuple[Reply, ...]]:
    """Run each stream in its own thread; yield the latest reply of every stream on each change."""
    latest, changes, closed = [Reply() for _ in streams], queue.Queue(), threading.Event()

    def drain(index, stream):
        try:
            for reply in stream:
                changes.put((index, reply))
                if closed.is_set():
                    break
        except Exception as exc:
            changes.put((index, exc))
        finally:
            stream.close()  # runs the stream's own cleanup, which stops its generate
        changes.put((index, None))

    for index, stream in enumerate(streams):
        threading.Thread(target=drain, args=(index, stream), daemon=True).start()
    running = len(streams)
    try:
        while running:
            index, item = changes.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, Exception):
                raise item
            latest[index] = item
            yield tuple(latest)
    finally:
        closed.set()
