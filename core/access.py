"""Who may train, delete runs and publish when the app is public.

    FINETUNE_LAB_AUTH=user:pass python app.py --share     # login required for those actions

Chat stays open to everyone. The app counts as public when launched with --share, when it
runs on a Hugging Face Space (SPACE_ID is set), or when FINETUNE_LAB_PUBLIC=1. Then the guarded
handlers need a logged-in user: a Gradio --auth login, or on a Space the Hugging Face OAuth
login of the Space owner. The check runs in the server handler, so an API client without a
session is refused too, not only hidden from in the UI.
"""
from __future__ import annotations

import os


class AccessDenied(PermissionError):
    """A guarded action was called without an allowed login."""


def is_public() -> bool:
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("FINETUNE_LAB_PUBLIC") == "1"


def space_owner() -> str | None:
    """The owner part of SPACE_ID ('owner/space'), or SPACE_AUTHOR_NAME."""
    space = os.environ.get("SPACE_ID", "")
    return os.environ.get("SPACE_AUTHOR_NAME") or (space.split("/")[0] if "/" in space else None)


def require_user(request=None, oauth_profile=None, action: str = "this action") -> str | None:
    """Return the user allowed to act, or raise AccessDenied. No check when the app is private."""
    if not is_public():
        return None
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return username
    owner = space_owner()
    oauth_name = getattr(oauth_profile, "username", None) if oauth_profile is not None else None
    if oauth_name and owner and oauth_name.lower() == owner.lower():
        return oauth_name
    if oauth_name:
        raise AccessDenied(f"Only the Space owner ({owner}) may do {action}.")
    raise AccessDenied(f"Log in to do {action}: this app is public, and only chat is open to everyone.")
