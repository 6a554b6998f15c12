"""The server's log under a budget, so that a public app's visitors cannot fill it.

    python -c "import sys; from core.log_budget import LogBudget; sys.stderr = LogBudget(sys.stderr, 100); [print('x' * 60, file=sys.stderr) for _ in range(5)]"

Some calls a visitor can make print to stderr: a request the queue refuses prints a line, and a
value that one of Gradio's components refuses (a choice that is not in a Radio, a chat history
in the wrong shape) prints Gradio's traceback, about 1.5 KB, which no setting of Gradio 6 turns
off. A public app (app.py) therefore writes stderr through a budget of characters that refills
at `per_minute`. What is over it is left out and counted, and once the budget allows, one line
says how much was left out. An owner's local app keeps its whole log.
"""
from __future__ import annotations

import sys
import threading
import time

PUBLIC_PER_MINUTE = 30_000  # a dozen tracebacks a minute; the app prints far less when used as meant


class LogBudget:
    """A text stream that passes on at most `per_minute` characters a minute (a token bucket that
    starts full; the one line about what was left out may overdraw it) and counts what it leaves
    out; every other attribute is the wrapped stream's."""

    def __init__(self, stream, per_minute: int, clock=time.monotonic):
        self.stream, self.per_minute, self.clock = stream, per_minute, clock
        self.left, self.last, self.dropped = float(per_minute), clock(), 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            now = self.clock()
            self.left = min(self.per_minute, self.left + (now - self.last) * self.per_minute / 60)
            self.last = now
            note = (f"[log] {self.dropped:,} characters left out: over this public app's log budget of "
                    f"{self.per_minute:,} a minute\n") if self.dropped else ""
            if len(text) > self.left:
                self.dropped += len(text)
                return len(text)
            self.left -= len(note) + len(text)  # the note is charged too, if need be in advance
            self.dropped = 0
            self.stream.write(note + text)
            return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def install(per_minute: int = PUBLIC_PER_MINUTE) -> None:
    """Put sys.stderr under a budget (once): what prints a traceback or a refusal reads
    sys.stderr when it prints, so everything after this call passes through it."""
    if not isinstance(sys.stderr, LogBudget):
        sys.stderr = LogBudget(sys.stderr, per_minute)
