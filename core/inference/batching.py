"""Chat requests on one base model are answered as ONE batch: the Chat tab's visitors, Compare's
two panes and the OpenAI endpoint's clients share one copy of the weights and one pass over them
per token.

    from core.inference.batching import BASE, Row, answer_together
    for base, tuned in answer_together(loaded, [Row(BASE, messages), Row("run", messages)], settings, 2):
        print(base.text, tuned.text)

Chat decodes on one thread (core.threads), so without this a second visitor waited for the
first answer to end. Requests that arrive within GATHER_SECONDS of each other start a batch
together, up to MAX_ROWS rows; a request's rows (Compare's base and adapter) stay in one batch.
Requests batch when they share the model and every generation setting but the prompt format (an
adapter may have its own), the input and answer lengths (each row stops at its own), top_p when
greedy, and the seed: each row samples from its own generator (core.inference.token_rules), so a
seeded answer is the same beside any others (Request.batches_with). A row that ends is answered
at once, and the batch stops when every caller has left.

On a model that can (core.inference.running_batch.joins: the CPU's packed attention, a plain
cache), the batch is a RunningBatch: a request that arrives while it decodes joins it at the next
token while its rows fit, and every row's greedy tokens are its solo reply's. Elsewhere (a GPU, a
sliding-window cache, the compiled step) a batch is one `generate` that takes no new rows, a
request waits for it to end, and a lone one-row request takes the single-reply path
(stream_reply, compiled step included); there a row's greedy tokens are its solo reply's when
the prompts are as long (a shorter prompt is left-padded, and its padded attention can round
differently, as in Compare). Tested in tests/test_batching.py.
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
from core.inference.compare import in_format, stream_batch
from core.inference.fast_decode import BASE
from core.inference.models import LoadedModel
from core.inference.running_batch import LiveRow, RunningBatch, joins

MAX_ROWS = 8  # core.request_limits.GENERATE_EVENTS lets as many Chat tab answers run
GATHER_SECONDS = 0.03  # requests sent together arrive a few ms apart


@dataclass(frozen=True)
class Row:
    """One answer to decode: with an adapter (BASE: none), in its prompt format (None: the model's)."""

    adapter: str
    messages: list[dict]
    chat_template: str | None = None


@dataclass(eq=False)  # a request is itself: two alike requests are still two
class Request:
    """One caller's rows, waiting for or in a batch; its replies go to `out` (None ends them)."""

    loaded: LoadedModel
    rows: list[Row]
    settings: GenerationSettings  # its chat_template is unused: each row names its own
    thread_count: int  # torch threads for its batch: the caller knows whether a job is running
    out: queue.Queue = field(default_factory=queue.Queue)
    gone: threading.Event = field(default_factory=threading.Event)

    def batches_with(self, other: "Request") -> bool:
        """Whether the two decode in one batch: each row draws its samples from its own generator,
        so their seeds may differ."""
        def unformatted(settings: GenerationSettings) -> tuple:  # each row keeps its own format and limits
            greedy = settings.temperature <= 0  # then top_p changes nothing
            return astuple(replace(settings, chat_template=None, max_new_tokens=0, max_input_tokens=0, seed=None,
                                   top_p=0.0 if greedy else settings.top_p))

        return self.loaded is other.loaded and unformatted(self.settings) == unformatted(other.settings)


class Batcher:
    """Queues requests; one dispatcher thread runs them a batch at a time."""

    def __init__(self):
        self.waiting: list[Request] = []
        self.arrived = threading.Condition()
        self.dispatcher: threading.Thread | None = None
        self.batch_sizes: Counter = Counter()  # how many batches ran with at most 1, 2, ... rows at once

    def submit(self, request: Request) -> None:
        with self.arrived:
            self.waiting.append(request)
            self.arrived.notify()
            if self.dispatcher is None:
                self.dispatcher = threading.Thread(target=self._serve, name="chat-batches", daemon=True)
                self.dispatcher.start()

    def _next_batch(self) -> tuple[list[Request], bool]:
        """The oldest live request, and the later ones that batch with it while rows fit; and
        whether they run as a running batch that others may join."""
        with self.arrived:
            self.arrived.wait_for(lambda: self.waiting)
        time.sleep(GATHER_SECONDS)
        with self.arrived:
            live = [request for request in self.waiting if not request.gone.is_set()]
            batch, rows, joining = [], 0, bool(live) and joins(live[0].loaded)
            for request in live:
                fits = rows + len(request.rows) <= MAX_ROWS and request.batches_with(live[0])
                if not batch or fits:  # the oldest runs even alone, whatever its size
                    batch.append(request)
                    rows += len(request.rows)
            self.waiting = [request for request in live if request not in batch]
        return batch, joining

    def _serve(self) -> None:
        while True:
            batch, joining = self._next_batch()
            if batch and joining:
                self._run_joining(batch)
            elif batch:
                self.batch_sizes[sum(len(request.rows) for request in batch)] += 1
                threads.apply(batch[0].thread_count)
                _run(batch)

    def _run_joining(self, first: list[Request]) -> None:
        """Decode `first` as a running batch that later requests join while rows fit."""
        running = RunningBatch(first[0].loaded, first[0].settings)
        members: dict[Request, list[LiveRow]] = {}
        joining, peak, owed = first, 0, 0.0  # owed: prompt-pass seconds not yet matched by decoding
        while joining or running.rows:
            stalled = bool(running.rows)  # prompt passes now hold up answers that are decoding
            seconds = _admit(running, members, joining)
            owed += seconds if stalled else 0.0
            if len(running.rows) > peak:  # counted before any answer is handed out
                self.batch_sizes = self.batch_sizes - Counter({peak: 1}) + Counter({len(running.rows): 1})
                peak = len(running.rows)
            began = time.perf_counter()
            try:
                if running.rows:
                    running.step()
            except Exception as exc:  # raised again in each caller's thread
                for request in members:
                    request.out.put(exc)
                    request.out.put(None)
                members.clear()
                running.keep([])
            owed = max(0.0, owed - (time.perf_counter() - began))
            _publish(running, members)
            joining = self._joiners(len(running.rows), first[0], owed)

    def _joiners(self, rows: int, first: Request, owed: float) -> list[Request]:
        """The waiting requests that join a batch of `rows` rows now, oldest first, while their
        rows fit and they batch with the running ones (one that does not waits for the batch to
        end, and so do those behind it, so that nobody is overtaken for ever). While rows decode,
        one joins at a time, once the batch has decoded for as long as the last prompt passes
        took (`owed` is what is left): prompts may take at most half of the decoding's time, so
        a visitor sending long prompts one after the other cannot stall the others' answers."""
        if rows and owed > 0:
            return []
        joining = []
        with self.arrived:
            self.waiting = [request for request in self.waiting if not request.gone.is_set()]
            for request in self.waiting[:1] if rows else self.waiting:
                if rows + len(request.rows) > MAX_ROWS or not request.batches_with(first):
                    break
                joining.append(request)
                rows += len(request.rows)
            self.waiting = self.waiting[len(joining):]
        return joining


def _run(batch: list[Request]) -> None:
    """Decode the batch, handing each request its rows' growing replies; a failure reaches all."""
    slots = sorted(((request, i) for request in batch for i in range(len(request.rows))),
                   key=lambda slot: (slot[0].rows[slot[1]].adapter != BASE, slot[0].rows[slot[1]].adapter))
    latest = {request: [Reply() for _ in request.rows] for request in batch}
    answered: set[Request] = set()
    stream = _replies(batch[0], slots)
    try:
        for replies in stream:
            for (request, i), reply in zip(slots, replies):
                latest[request][i] = Reply(**vars(reply))
            for request in batch:
                if request not in answered:
                    request.out.put(tuple(latest[request]))
                    if all(reply.done for reply in latest[request]):  # its rows ended: answer it now
                        answered.add(request)
                        request.out.put(None)
            if all(request.gone.is_set() or request in answered for request in batch):
                break  # every caller left or got its answer: stop decoding
    except Exception as exc:  # raised again in each caller's thread
        for request in batch:
            request.out.put(exc)
    finally:
        stream.close()
        for request in batch:
            if request not in answered:
                request.out.put(None)


def _admit(running: RunningBatch, members: dict, joining: list[Request]) -> float:
    """Read the joining requests' prompts into the running batch; a failure reaches its caller
    only. Returns the seconds it took."""
    began = time.perf_counter()
    for request in joining:
        threads.apply(min([request.thread_count] + [member.thread_count for member in members]))
        try:
            members[request] = [running.admit(request, row.messages, row.adapter, request.settings, row.chat_template)
                                for row in request.rows]
        except Exception as exc:
            request.out.put(exc)
            request.out.put(None)
            running.keep([row for row in running.rows if row.owner is not request])
    return time.perf_counter() - began


def _publish(running: RunningBatch, members: dict) -> None:
    """Hand each request its rows' replies; answer those whose rows ended, and drop the rows of
    requests answered or gone from the batch."""
    for request, rows in list(members.items()):
        if request.gone.is_set():
            del members[request]
            continue
        request.out.put(tuple(Reply(**vars(row.reply)) for row in rows))
        if all(row.reply.done for row in rows):
            request.out.put(None)
            del members[request]
    running.keep([row for row in running.rows if row.owner in members and not row.reply.done])


def _replies(first: Request, slots: list[tuple[Request, int]]) -> Iterator[tuple[Reply, ...]]:
    rows, row_settings = [request.rows[i] for request, i in slots], [request.settings for request, _ in slots]
    if len(rows) == 1:
        return _solo(first.loaded, rows[0], first.settings)
    return stream_batch(first.loaded, [row.messages for row in rows], [row.adapter for row in rows],
                        first.settings, [row.chat_template for row in rows], row_settings)


def _solo(loaded: LoadedModel, row: Row, settings: GenerationSettings) -> Iterator[tuple[Reply]]:
    stream = stream_reply(loaded, row.messages, in_format(settings, row.chat_template),
                          None if row.adapter == BASE else row.adapter)
    try:
        for reply in stream:
            yield (reply,)
    finally:
        stream.close()  # stops its generate when the batch is dropped


BATCHER = Batcher()


def answer_together(loaded: LoadedModel, rows: list[Row], settings: GenerationSettings,
                    thread_count: int) -> Iterator[tuple[Reply, ...]]:
    """The growing replies to one request's rows, decoded in a batch with whatever else is
    waiting. The messages are checked here, so one caller's bad input fails only that caller.
    Closing the generator (a caller that left) drops the request."""
    for row in rows:
        check_messages(row.messages)
    return _answer(Request(loaded, rows, settings, thread_count))


def _answer(request: Request) -> Iterator[tuple[Reply, ...]]:
    BATCHER.submit(request)
    try:
        for item in iter(request.out.get, None):
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        request.gone.set()
