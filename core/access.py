"""Who may do what when the app is public: anonymous visitors chat; owners do everything.

    FINETUNE_LAB_ADMIN_KEY=secret python app.py --share   # the key unlocks a browser session

The app counts as public when launched with --share, on a non-loopback --host without --auth,
on a Hugging Face Space (SPACE_ID is set), or with FINETUNE_LAB_PUBLIC=1. Then a request is
trusted after one of: a Gradio --auth login (which gates the whole app); on a Space with its
real OAuth, the Hugging Face login of the Space owner, read from the signed session cookie on
every request; or the admin key typed into the "Admin key" box. The key unlocks its browser
session for TRUST_TTL_S, from the client address that typed it only, because the session id
is no secret (the browser sends it in every request). Wrong keys are throttled per address and
globally (KeyThrottle). Outside a real Space, Gradio would mock the OAuth login with the
machine's own Hub account, so the login button and the owner check exist only with real OAuth.

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
import threading
import time
from pathlib import Path

from core.errors import LabError
from core.request_limits import client_address
from core.settings import settings

TRUST_TTL_S = 12 * 3600
_UNLOCKED: dict[str, tuple[str, float]] = {}  # session hash -> (client address, expiry)

# Caps for anonymous sessions; the owner's values are used as given.
LIMITS = {
    "block_size": 512, "stride": 512, "max_rows": 2000, "preview_row": 1999, "max_docs": 2000,
    "projection_docs": 1000,  # t-SNE/UMAP cost grows fast; PCA has no cap
    "history_chars": 8000, "max_new_tokens": 512,
    "corpus_bytes": 5 * 2**20,  # an uploaded corpus, checked by its size before it is read
    "hub_model_params": 500_000_000,  # a visitor's Hub model must fit a CPU Space's memory
}


class AccessDenied(LabError):
    """A guarded action was called without an allowed login."""


def is_public() -> bool:
    return settings().public


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def space_owner() -> str | None:
    """The owner part of SPACE_ID ('owner/space'), or SPACE_AUTHOR_NAME."""
    space = settings().space_id
    return settings().space_author or (space.split("/")[0] if "/" in space else None)


class KeyThrottle:
    """Wrong admin keys cost time: after FREE_TRIES per address, each further try waits twice as
    long as the last (up to MAX_WAIT_S); over GLOBAL_PER_HOUR wrong keys from everyone, every
    address waits GLOBAL_WAIT_S after each one, so many addresses buy no more guesses."""

    FREE_TRIES, MAX_WAIT_S, GLOBAL_PER_HOUR, GLOBAL_WAIT_S = 3, 300, 60, 30

    def __init__(self):
        self.failures: dict[str, tuple[int, float]] = {}  # address -> (count, last failure)
        self.recent: list[float] = []
        self.lock = threading.Lock()

    def wait_s(self, address: str) -> float:
        """Seconds this address must wait before its next try (0: may try now)."""
        now = time.time()
        with self.lock:
            self.recent = [t for t in self.recent if t > now - 3600]
            count, last = self.failures.get(address, (0, 0.0))
            own = 0 if count < self.FREE_TRIES else min(2 ** (count - self.FREE_TRIES), self.MAX_WAIT_S)
            shared = self.GLOBAL_WAIT_S if len(self.recent) >= self.GLOBAL_PER_HOUR else 0
            return max(0.0, last + own - now, (self.recent[-1] + shared - now) if self.recent else 0.0)

    def failed(self, address: str) -> None:
        with self.lock:
            count, _ = self.failures.get(address, (0, 0.0))
            self.failures[address] = (count + 1, time.time())
            self.recent.append(time.time())

    def succeeded(self, address: str) -> None:
        with self.lock:
            self.failures.pop(address, None)


THROTTLE = KeyThrottle()


def unlock(key: str, request=None) -> str:
    """Unlock the guarded actions for this browser session with $FINETUNE_LAB_ADMIN_KEY."""
    expected = settings().admin_key
    session, address = getattr(request, "session_hash", None), client_address(request)
    if not expected:
        return "No admin key is configured (set FINETUNE_LAB_ADMIN_KEY, or launch with --auth)."
    wait = THROTTLE.wait_s(address)
    if wait > 0:
        return f"Too many wrong keys: try again in {wait:.0f} s."
    if session and hmac.compare_digest((key or "").encode(), expected.encode()):
        THROTTLE.succeeded(address)
        _UNLOCKED[session] = (address, time.time() + TRUST_TTL_S)
        return "Unlocked: training and publishing are enabled for this session (for 12 hours)."
    THROTTLE.failed(address)
    return "Wrong admin key."


def real_space_oauth() -> bool:
    """On a Hugging Face Space with `hf_oauth: true`: Gradio then logs visitors in for real."""
    return settings().oauth


def oauth_username(request=None) -> str | None:
    """The Hugging Face user of this request's signed session cookie, if logged in and not expired
    (the session Gradio's OAuth middleware decoded; no gradio import here)."""
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    session = scope.get("session") if isinstance(scope, dict) else None
    info = (session or {}).get("oauth_info") or {}
    if info.get("expires_at") is not None and info["expires_at"] < time.time():
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def is_trusted(request=None) -> bool:
    """True for a private app, a Gradio --auth login, the Space owner's OAuth login, or a session
    unlocked by the admin key from this address within TRUST_TTL_S."""
    if not is_public():
        return True
    if getattr(request, "username", None):
        return True
    owner = space_owner()
    if real_space_oauth() and owner and (oauth_username(request) or "").lower() == owner.lower():
        return True
    address, expires = _UNLOCKED.get(getattr(request, "session_hash", None) or "", ("", 0.0))
    return expires > time.time() and address == client_address(request)


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
    return list(settings().allowed_models)


def visitor_hub() -> bool:
    """Whether the owner opened the Hub to visitors ($FINETUNE_LAB_VISITOR_HUB=1)."""
    return settings().visitor_hub


def check_hub(request=None, action: str = "Hub search") -> None:
    """Hub searches and Hub ids are for trusted sessions, or for everyone where the owner allows."""
    if not (is_trusted(request) or visitor_hub()):
        raise AccessDenied(f"{action} is closed to visitors on this public app (the owner can open it "
                           "with FINETUNE_LAB_VISITOR_HUB=1).")


def check_model(name: str, request=None) -> str:
    """A visitor may load only the known models, those the owner allowed, and where the owner
    opened the Hub, a Hub model no larger than LIMITS["hub_model_params"]."""
    from core.hub.source import HUB_REPO
    from core.inference.models import find_spec

    name = (name or "").strip()
    if is_trusted(request) or find_spec(name) or name in allowed_models():
        return name
    if visitor_hub() and HUB_REPO.fullmatch(name):
        from core.hub.search import model_parameters

        params = model_parameters(name)
        if params and params <= LIMITS["hub_model_params"]:
            return name
        raise AccessDenied(f"On a public app, a Hub model may have at most {LIMITS['hub_model_params']:,} "
                           f"parameters in safetensors; '{name}' has {params or 'no safetensors count'}.")
    raise AccessDenied("On a public app, pick one of the listed models; other models need a login.")


def check_adapter(value: str, request=None) -> str:
    """A visitor may attach a finished run's adapter, named by its run, and where the owner
    opened the Hub, an adapter by its Hub repo id. Never a server folder."""
    from core.hub.source import HUB_REPO
    from core.runs import GENERATOR, finished_runs

    value = (value or "").strip()
    if is_trusted(request) or value in {run.name for run in finished_runs(GENERATOR)}:
        return value
    if visitor_hub() and HUB_REPO.fullmatch(value) and not Path(value).expanduser().exists():
        return value
    raise AccessDenied("On a public app, pick one of the finished runs as the adapter; folders need a login.")


def check_data_source(source: str, bundled, request=None, own_uploads=()) -> str:
    """A visitor may read the bundled sets, named exactly as the picker lists them (so
    `identity:x` or `shakespeare:../x` are no way to reach a file), and the files they uploaded
    in this session only.

    Otherwise anyone could type a server path (or another visitor's upload) into the dataset
    box and read the file back through the preview table.
    """
    from core.hub.source import parse_hub_source

    source = (source or "").strip()
    if is_trusted(request) or source in tuple(bundled):
        return source
    if visitor_hub() and parse_hub_source(source):
        return source
    path = Path(source or "").expanduser().resolve()
    if any(path == Path(own).resolve() for own in own_uploads or ()):
        return source
    raise AccessDenied("On a public app, use a bundled dataset or upload a file; server paths are not readable.")
