"""Who may do what when the app is public: anonymous visitors chat; owners do everything.

    FINETUNE_LAB_ADMIN_KEY=secret python app.py --share   # the key unlocks a browser session

The app counts as public when launched with --share, on a non-loopback --host without --auth,
on a Hugging Face Space (SPACE_ID is set), or with FINETUNE_LAB_PUBLIC=1. Then a session is
trusted after one of: a Gradio --auth login (which gates the whole app), the admin key typed
into the "Admin key" box, or on a Space the Hugging Face login of the Space owner.

An anonymous session may chat with the known models and the finished runs' adapters, preview
bundled data or its own uploads, and explore topics, with every size clamped (LIMITS). The owner
decides whether visitors may use the Hub at all: with FINETUNE_LAB_VISITOR_HUB=1 they may also
search it, preview Hub datasets (streamed, clamped rows), compare Hub adapters, and chat with
Hub models of at most LIMITS["hub_model_params"] parameters (their safetensors count). All
checks run in the server handlers: every event listener is reachable by fn_index, so hiding a
button protects nothing.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from core.errors import LabError


_UNLOCKED_SESSIONS: set[str] = set()

# Caps for anonymous sessions; the owner's values are used as given.
LIMITS = {
    "block_size": 512, "stride": 512, "max_rows": 2000, "preview_row": 1999, "max_docs": 2000,
    "projection_docs": 1000,  # t-SNE/UMAP cost grows fast; PCA has no cap
    "history_chars": 8000, "max_new_tokens": 512,
    "hub_model_params": 500_000_000,  # a visitor's Hub model must fit a CPU Space's memory
}


class AccessDenied(LabError):
    """A guarded action was called without an allowed login."""


def is_public() -> bool:
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("FINETUNE_LAB_PUBLIC") == "1"


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


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


def is_trusted(request=None) -> bool:
    """True for a private app, a Gradio --auth login, or an unlocked session."""
    if not is_public():
        return True
    return bool(getattr(request, "username", None)) or getattr(request, "session_hash", None) in _UNLOCKED_SESSIONS


def require_user(request=None, action: str = "this action") -> str | None:
    """Return who may act, or raise AccessDenied. No check while the app is private."""
    if not is_trusted(request):
        raise AccessDenied(f"Log in to do {action}: this app is public, and only chat is open to everyone.")
    return getattr(request, "username", None) or ("admin" if is_public() else None)


def clamp(name: str, value, request=None):
    """`value` capped at LIMITS[name] for an anonymous session of a public app."""
    return value if is_trusted(request) else min(value, LIMITS[name])


def allowed_models() -> list[str]:
    """Hub ids or folders the owner opened to visitors ($FINETUNE_LAB_ALLOWED_MODELS, comma list)."""
    return [m.strip() for m in os.environ.get("FINETUNE_LAB_ALLOWED_MODELS", "").split(",") if m.strip()]


def visitor_hub() -> bool:
    """Whether the owner opened the Hub to visitors ($FINETUNE_LAB_VISITOR_HUB=1)."""
    return os.environ.get("FINETUNE_LAB_VISITOR_HUB") == "1"


def check_hub(request=None, action: str = "Hub search") -> None:
    """Hub searches and Hub ids are for trusted sessions, or for everyone where the owner allows."""
    if not (is_trusted(request) or visitor_hub()):
        raise AccessDenied(f"{action} is closed to visitors on this public app (the owner can open it "
                           "with FINETUNE_LAB_VISITOR_HUB=1).")


def check_model(name: str, request=None) -> str:
    """A visitor may load only the known models, those the owner allowed, and where the owner
    opened the Hub, a Hub model no larger than LIMITS["hub_model_params"]."""
    from core.hub_source import HUB_REPO
    from core.models import find_spec

    name = (name or "").strip()
    if is_trusted(request) or find_spec(name) or name in allowed_models():
        return name
    if visitor_hub() and HUB_REPO.fullmatch(name):
        from core.hub_search import model_parameters

        params = model_parameters(name)
        if params and params <= LIMITS["hub_model_params"]:
            return name
        raise AccessDenied(f"On a public app, a Hub model may have at most {LIMITS['hub_model_params']:,} "
                           f"parameters in safetensors; '{name}' has {params or 'no safetensors count'}.")
    raise AccessDenied("On a public app, pick one of the listed models; other models need a login.")


def check_adapter(value: str, request=None) -> str:
    """A visitor may attach a finished run's adapter, named by its run, and where the owner
    opened the Hub, an adapter by its Hub repo id. Never a server folder."""
    from core.hub_source import HUB_REPO
    from core.runs import finished_runs

    value = (value or "").strip()
    if is_trusted(request) or value in {run.name for run in finished_runs()}:
        return value
    if visitor_hub() and HUB_REPO.fullmatch(value) and not Path(value).expanduser().exists():
        return value
    raise AccessDenied("On a public app, pick one of the finished runs as the adapter; folders need a login.")


def check_data_source(source: str, bundled: tuple, request=None, own_uploads=()) -> str:
    """A visitor may read bundled sets and the files they uploaded in this session only.

    Otherwise anyone could type a server path (or another visitor's upload) into the dataset
    box and read the file back through the preview table.
    """
    from core.hub_source import parse_hub_source

    source = (source or "").strip()
    if is_trusted(request) or source in bundled or source.partition(":")[0] in bundled:
        return source
    if visitor_hub() and parse_hub_source(source):
        return source
    path = Path(source or "").expanduser().resolve()
    if any(path == Path(own).resolve() for own in own_uploads or ()):
        return source
    raise AccessDenied("On a public app, use a bundled dataset or upload a file; server paths are not readable.")
