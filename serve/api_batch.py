"""API requests that arrive together on one base model are answered as ONE batched `generate`,
as Compare answers its two panes: the base rows and every LoRA adapter's rows share one copy
of the weights and one pass over them per token (core.inference.compare.stream_batch).

    from serve.api_batch import answer_together
    for reply in answer_together(loaded, "adapter0", messages, settings): print(reply.text)

Chat decodes on one thread (core.threads), so without this a second client waited for the
first answer to end; now requests that wait while a batch runs, or that arrive within
GATHER_SECONDS of each other, go in the next batch, up to MAX_ROWS rows. Rows batch when they
share the model and every generation setting but the prompt format (an adapter may have its
own). A row that ends is answered at once; the batch runs on for the others. A lone request
takes the single-reply path (stream_reply, compiled step included). A row's greedy tokens are
its solo reply's when the prompts are as long (tests/test_openai_api.py); a shorter prompt is
left-padded, and its padded attention can round differently (as in Compare).
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import astuple, dataclass, field, replace
from typing import Iterator

from core import threads
from core.inference.chat import GenerationSettings, Reply, check_messages, stream_reply
from core.inference.compare import stream_batch
from core.inference.models import LoadedModel
from training.jobs import current_job

MAX_ROWS = 4
GATHER_SECONDS = 0.03  # requests sent together arrive a few ms apart
BASE = "__base__"


@dataclass(eq=False)  # a row is itself: two alike requests are still two rows
class Row:
    """One request waiting for, or in, a batch; its replies go to `out` (None ends them)."""

    loaded: LoadedModel
    adapter: str  # BASE: no adapter
    messages: list[dict]
    settings: GenerationSettings  # chat_template: the adapter's own format, if it has one
    out: queue.Queue = field(default_factory=queue.Queue)
    gone: threading.Event = field(default_factory=threading.Event)

    def batches_with(self, other: "Row") -> bool:
        mine, theirs = replace(self.settings, chat_template=None), replace(other.settings, chat_template=None)
        return self.loaded is other.loaded and astuple(mine) == astuple(theirs)


class Batcher:
    """Queues rows; one dispatcher thread runs them a batch at a time."""

    def __init__(self):
        self.waiting: list[Row] = []
        self.arrived = threading.Condition()
        self.dispatcher: threading.Thread | None = None
        self.batch_sizes: Counter = Counter()  # how many batches of each size ran (bounded: MAX_ROWS keys)

    def submit(self, row: Row) -> None:
        with self.arrived:
            self.waiting.append(row)
            self.arrived.notify()
            if self.dispatcher is None:
                self.dispatcher = threading.Thread(target=self._serve, name="api-batches", daemon=True)
                self.dispatcher.start()

    def _next_batch(self) -> list[Row]:
        with self.arrived:
            self.arrived.wait_for(lambda: self.waiting)
        time.sleep(GATHER_SECONDS)
        with self.arrived:
            live = [row for row in self.waiting if not row.gone.is_set()]
            batch = [row for row in live if row.batches_with(live[0])][:MAX_ROWS] if live else []
            self.waiting = [row for row in live if row not in batch]
        return sorted(batch, key=lambda row: (row.adapter != BASE, row.adapter))  # base rows, then each adapter's

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self.batch_sizes[len(batch)] += 1
                threads.apply(threads.for_chat(job_running=bool(current_job())))
                _run(batch)


def _run(batch: list[Row]) -> None:
    """Decode the batch, handing each row its growing reply; a failure reaches every row."""
    sent = [False] * len(batch)
    stream = _replies(batch)
    try:
        for replies in stream:
            for index, (row, reply) in enumerate(zip(batch, replies)):
                if not sent[index]:
                    row.out.put(Reply(**vars(reply)))
                    sent[index] = reply.done or bool(reply.seconds)  # this row ended: answer it now
                    if sent[index]:
                        row.out.put(None)
            if all(row.gone.is_set() or done for row, done in zip(batch, sent)):
                break  # every client left or got its answer: stop decoding
    except Exception as exc:  # raised again in each client's thread
        for row in batch:
            row.out.put(exc)
    finally:
        stream.close()
        for row, done in zip(batch, sent):
            if not done:
                row.out.put(None)


def _replies(batch: list[Row]) -> Iterator[tuple[Reply, ...]]:
    first = batch[0]
    if len(batch) == 1:
        return _solo(first)
    return stream_batch(first.loaded, [row.messages for row in batch], [row.adapter for row in batch],
                        first.settings, [row.settings.chat_template for row in batch])


def _solo(row: Row) -> Iterator[tuple[Reply]]:
    stream = stream_reply(row.loaded, row.messages, row.settings, None if row.adapter == BASE else row.adapter)
    try:
        for reply in stream:
            yield (reply,)
    finally:
        stream.close()  # stops its generate when the batch is dropped


BATCHER = Batcher()


def answer_together(loaded: LoadedModel, adapter: str | None, messages: list[dict],
                    settings: GenerationSettings) -> Iterator[Reply]:
    """The growing reply to one request, decoded in a batch with whatever else is waiting.
    Its messages are checked here, so one caller's bad input fails only that caller. Closing
    the generator (a client that left) drops its row."""
    check_messages(messages)
    return _answer(Row(loaded, adapter or BASE, messages, settings))


def _answer(row: Row) -> Iterator[Reply]:
    BATCHER.submit(row)
    try:
        for item in iter(row.out.get, None):
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        row.gone.set()
