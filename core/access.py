"""Who may train, delete runs and publish when the app is public.

    FINETUNE_LAB_ADMIN_KEY=secret python app.py --share   # unlock box required for those actions

Chat stays open to everyone. The app counts as public when launched with --share, when it
runs on a Hugging Face Space (SPACE_ID is set), or when FINETUNE_LAB_PUBLIC=1. Then the guarded
handlers need one of: a Gradio --auth login (which gates the whole app), the admin key
($FINETUNE_LAB_ADMIN_KEY) typed into the "Unlock" box (chat stays open to everyone), or on a
Space the Hugging Face login of the Space owner. The check runs in the server handler, so an
API client without an unlocked session is refused too, not only hidden from in the UI.
"""
from __future__ import annotations

import hmac
import os

_UNLOCKED_SESSIONS: set[str] = set()


class AccessDenied(PermissionError):
    """A guarded action was called without an allowed login."""


def is_public() -> bool:
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("FINETUNE_LAB_PUBLIC") == "1"


def space_owner() -> str | None:
    """The owner part of SPACE_ID ('owner/space'), or SPACE_AUTHOR_NAME."""
    space = os.environ.get("SPACE_ID", "")
    return os.environ.get("SPACE_AUTHOR_NAME") or (space.split("/")[0] if "/" in space else None)


def unlock(key: str, request=None) -> str:
    """Unlock the guarded actions for this browser session with $FINETUNE_LAB_ADMIN_KEY."""
    expected = os.environ.get("FINETUNE_LAB_ADMIN_KEY", "")
    session = getattr(request, "session_hash", None)
    if not expected:
        return "No admin key is configured (set FINETUNE_LAB_ADMIN_KEY, or launch with --auth)."
    if session and hmac.compare_digest((key or "").encode(), expected.encode()):
        _UNLOCKED_SESSIONS.add(session)
        return "Unlocked: training and publishing are enabled for this session."
    return "Wrong admin key."


def unlock_from_oauth(request=None, profile=None) -> None:
    """On a Space, a Hugging Face login by the Space owner unlocks this session."""
    owner, name = space_owner(), getattr(profile, "username", None)
    if owner and name and name.lower() == owner.lower() and getattr(request, "session_hash", None):
        _UNLOCKED_SESSIONS.add(request.session_hash)


def check_data_source(source: str, bundled: tuple) -> str:
    """In public mode, data may come only from bundled sets, the data dir or Gradio uploads.

    Otherwise anyone could type a server path into the dataset box and read the file back
    through the preview table.
    """
    import tempfile
    from pathlib import Path

    from core.paths import data_dir

    if not is_public() or source in bundled or source.partition(":")[0] in bundled:
        return source
    path = Path(source).expanduser().resolve()
    uploads = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    if not any(path.is_relative_to(root) for root in (data_dir().resolve(), uploads)):
        raise AccessDenied("On a public app, use a bundled dataset or upload a file; server paths are not readable.")
    return source


def require_user(request=None, action: str = "this action") -> str | None:
    """Return who may act, or raise AccessDenied. No check while the app is private.

    Allowed: a Gradio --auth login, or a session unlocked by the admin key or by the Space
    owner's Hugging Face login.
    """
    if not is_public():
        return None
    username = getattr(request, "username", None)
    if username:
        return username
    if getattr(request, "session_hash", None) in _UNLOCKED_SESSIONS:
        return "admin"
    raise AccessDenied(f"Log in to do {action}: this app is public, and only chat is open to everyone.")
