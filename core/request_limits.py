"""Bounds on what one HTTP request, one client address or one session may cost the server.

    app.launch(app_kwargs={"middleware": [Middleware(BodyLimit, limit=MAX_BODY_BYTES)]})

`BodyLimit` refuses a request body over its limit before anything parses it: Gradio turns a
queued event's JSON into Python objects before any handler of ours runs, so a 12 MB chat
history would cost half a gigabyte of memory before the handler could cut it. Gradio's own
upload route is left to its `max_file_size`, which streams to disk.

`client_address` is who a request comes from: the socket's peer, or behind a proxy we trust
(a Hugging Face Space, or $FINETUNE_LAB_BEHIND_PROXY=1) the address that proxy appended last
to X-Forwarded-For; the entries before it are whatever the client wrote, so they are ignored.

`UploadCacheLimit` refuses a new upload while Gradio's upload folder holds more than its limit:
Gradio stores any client's uploads there before a handler sees them (no session needed), and
only its hourly clean-up (gr.Blocks' delete_cache) removes them.

`HEAVY_EVENTS` and `GENERATE_EVENTS` are the listener settings that put every event that
embeds, fits or reads a dataset (two slots), and every event that generates a chat answer (eight
slots: one batch), into a pool each across all sessions (SHARED_POOLS). Gradio's queue serves a
pool first in, first out, so the app also lets one client address hold at most two events in
each of them:
and `fair_order` re-sorts a pool's waiting events on each push: each address's n-th event waits
behind every other address's n-th, counting the events it has running, so a script that
rejoins the moment its answer ends still waits behind everyone who has nothing running.

`RateWindow` counts events per key over a sliding window (votes per session per minute).
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict, deque

from core.settings import settings

MAX_BODY_BYTES = 1024 * 1024  # a queued event's inputs; files travel through /upload instead
UPLOAD_PATH = "/gradio_api/upload"
HEAVY_EVENTS = {"concurrency_id": "heavy", "concurrency_limit": 2}  # one per core
# As many answers as one batch holds (core.inference.batching.MAX_ROWS): they decode together.
GENERATE_EVENTS = {"concurrency_id": "generate", "concurrency_limit": 8}
SHARED_POOLS = ("heavy", "generate")


def behind_trusted_proxy() -> bool:
    return settings().behind_proxy


def client_address(request) -> str:
    """The client's address for a gr.Request or a Starlette request ('' when unknown)."""
    if request is None:
        return ""
    headers = getattr(request, "headers", None) or {}
    if behind_trusted_proxy():
        forwarded = [part.strip() for part in (headers.get("x-forwarded-for") or "").split(",") if part.strip()]
        if forwarded:
            return forwarded[-1]
    client = getattr(request, "client", None)
    return str(getattr(client, "host", "") or "")


def fair_order(waiting: list, running: list, key) -> list:
    """`waiting` reordered round robin over `key` (the client address): an event's rank is how
    many events of its key run or wait before it; rank first, then arrival."""
    seen, ranked = Counter(key(event) for event in running), []
    for arrival, event in enumerate(waiting):
        ranked.append((seen[key(event)], arrival, event))
        seen[key(event)] += 1
    return [event for *_, event in sorted(ranked, key=lambda r: r[:2])]


class BodyLimit:
    """ASGI middleware: answer 413 to a request whose body is over `limit` bytes, counted as it
    arrives (a missing or false Content-Length does not get past it)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").endswith(UPLOAD_PATH):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        await plain_response(send, 413, f"Request too large: at most {self.limit // 1024} KB.")


class _TooLarge(Exception):
    pass


async def plain_response(send, status: int, message: str) -> None:
    """Answer an ASGI request with `status` and a one-line plain-text body."""
    body = message.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


UPLOAD_CACHE_BYTES = 2 * 2**30


class UploadCacheLimit:
    """ASGI middleware: answer 507 to an upload while `folder` holds over `limit` bytes."""

    def __init__(self, app, folder: str, limit: int = UPLOAD_CACHE_BYTES):
        self.app, self.folder, self.limit = app, folder, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").endswith(UPLOAD_PATH) and self._used() > self.limit:
            return await plain_response(send, 507, "Uploads are full for now: try again within the hour.")
        return await self.app(scope, receive, send)

    def _used(self) -> int:
        total = 0
        for root, _, names in os.walk(self.folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:  # removed by the clean-up meanwhile
                    pass
        return total


class RateWindow:
    """At most `limit` events per key in any `seconds`; thread-safe, keys expire with their events."""

    def __init__(self, limit: int, seconds: float):
        self.limit, self.seconds = limit, seconds
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for `key` and say whether it is within the limit."""
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, q in self._events.items() if not q or q[-1] < now - self.seconds]:
                del self._events[stale]
            events = self._events[key]
            while events and events[0] < now - self.seconds:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True
