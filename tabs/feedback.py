"""How the tabs show a LabError: one line with a warning sign, in the handler's status output.

    @shows_errors(lambda message: (gr.update(), message))   # outputs: (table, status line)
    def handler(...):
        ...raise LabError("...")...

The decorator is the one error path: the handler raises, and the decorator returns the
outputs `shape` builds from the one-line message (for a streaming handler it yields them).
`shows_errors(toast=True)` shows the message as Gradio's toast instead, for handlers whose
outputs have no room for a line (a file list, the API). Only LabError is caught: any other
exception is a bug, and Gradio shows it as an error.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from core.errors import LabError


def warn(exc: LabError) -> str:
    """The one-line message for a LabError."""
    return f"⚠️ {exc}"


def shows_errors(shape: Callable[[str], Any] = lambda message: message, toast: bool = False):
    """Decorate a handler so that a LabError becomes `shape(message)`, or a toast."""
    def on_error(exc: LabError):
        if toast:
            import gradio as gr

            # Expected, so no traceback in the server's log: one per refused visitor's call filled it
            raise gr.Error(str(exc), print_exception=False) from None
        return shape(warn(exc))

    def decorate(handler):
        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def streaming(*args, **kwargs):
                try:
                    yield from handler(*args, **kwargs)
                except LabError as exc:
                    yield on_error(exc)
            return streaming

        @functools.wraps(handler)
        def plain(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except LabError as exc:
                return on_error(exc)
        return plain
    return decorate
