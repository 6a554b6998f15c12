"""How the tabs show a LabError: one line with a warning sign, in the handler's status output.

    except LabError as exc:
        return warn(exc)

Only LabError is caught: any other exception is a bug, and Gradio shows it as an error.
"""
from __future__ import annotations

from core.errors import LabError


def warn(exc: LabError) -> str:
    """The one-line message for a LabError."""
    return f"⚠️ {exc}"
