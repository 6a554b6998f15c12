"""Who calls the OpenAI-compatible endpoint and what they ask: the bearer key, the model names,
and a chat completion body checked and capped before any model work (serve.openai_api answers it).

    python -c "from serve.openai_request import model_names; print(model_names())"

With FINETUNE_LAB_API_KEY set, every call needs `Authorization: Bearer KEY`. A public app serves
callers as it serves visitors (listed models and finished runs, the same caps), unless they
bear the key; an app behind --auth serves the endpoint only with a key.

A field this endpoint cannot honour is refused with a 400 that says so, not ignored: `n` above 1,
`tools`, a `response_format` other than text, `logprobs`, a presence or frequency penalty, a
logit bias. A `seed` makes a sampled answer repeat (core.inference.chat.GenerationSettings).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from core import access
from core.inference.chat import GenerationSettings, checked_seed
from core.inference.models import KNOWN_MODELS, ModelError
from core.request_limits import client_address
from core.runs import GENERATOR, finished_runs
from core.settings import settings

MAX_MESSAGES = 64
MAX_STOPS, MAX_STOP_CHARS = 4, 64  # OpenAI's count; a bound on the text held back while streaming


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


@dataclass
class Caller:
    """Who calls: trusted (the owner: a private app, or the API key) or a visitor, and from where."""

    trusted: bool
    address: str

    def cap(self, name: str, value: int) -> int:
        return value if self.trusted else min(value, access.LIMITS[name])


@dataclass
class ChatRequest:
    """A checked chat completion request: `model` as asked, its base and run (None: the base)."""

    model: str
    base: str
    run: str | None
    messages: list[dict]
    generation: GenerationSettings
    stops: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def caller(request, login_required: bool) -> Caller:
    """Check the bearer key; decide whether the caller is the owner or a visitor."""
    key = settings().api_key
    sent = (request.headers.get("authorization") or "").removeprefix("Bearer ").strip()
    if key and not hmac.compare_digest(sent.encode(), key.encode()):
        raise ApiError(401, "Invalid API key: send Authorization: Bearer $FINETUNE_LAB_API_KEY.",
                       "invalid_request_error", "invalid_api_key")
    if login_required and not key:
        raise ApiError(403, "This app is behind a login: set FINETUNE_LAB_API_KEY to open its API.",
                       "permission_error")
    return Caller(trusted=bool(key) or not access.is_public(), address=client_address(request))


def model_names() -> list[str]:
    """The known bases, then BASE:RUN for each finished run, newest first."""
    adapters = [f"{run.manifest().model}:{run.name}" for run in finished_runs(GENERATOR)]
    return [spec.name for spec in KNOWN_MODELS] + adapters


def models_body() -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "finetune-lab"}
                                       for name in model_names()]}


def parse_request(body: dict, who: Caller) -> ChatRequest:
    """The request in a chat completion body, every size checked and capped before any model work."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "'model' is required: one of GET /v1/models.", code="model_required")
    refuse_what_is_not_served(body)
    messages = checked_messages(body.get("messages"))
    chars = who.cap("history_chars", 10**9)
    if sum(len(m["content"]) for m in messages) > chars:
        raise ApiError(400, f"The messages hold more than {chars} characters, the most this app takes.")
    if body["model"] not in model_names():
        raise ApiError(404, f"The model '{body['model'][:80]}' does not exist here: see GET /v1/models.",
                       code="model_not_found")
    base, _, run = body["model"].partition(":")
    system = [m["content"] for m in messages if m["role"] == "system"]
    generation = GenerationSettings(
        system_prompt="\n".join(system), temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.01, 1.0),
        max_new_tokens=who.cap("max_new_tokens", int(_number(body, _limit_field(body), 256, 1, 4096))),
        seed=_seed(body.get("seed")))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.")
    return ChatRequest(body["model"], base, run or None, [m for m in messages if m["role"] != "system"], generation,
                       stop_strings(body.get("stop")), _flag(body, "stream"), _flag(options, "include_usage"))


def checked_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise ApiError(400, f"'messages' must be a list of 1 to {MAX_MESSAGES} messages.")
    clean = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, "Each message needs a role: system, user or assistant.")
        content = message.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "Each message's content must be a string (no images or parts).")
        clean.append({"role": message["role"], "content": content})
    if clean[-1]["role"] != "user":
        raise ApiError(400, "The last message must be the user's: there is nothing to answer.")
    return clean


def refuse_what_is_not_served(body: dict) -> None:
    """Fields whose answer this endpoint would get wrong if it ignored them."""
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: this endpoint returns one choice per request.")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "Tools are not supported here: these models answer in text.")
    if (body.get("response_format") or {"type": "text"}) != {"type": "text"}:
        raise ApiError(400, "Only 'response_format': {'type': 'text'} is supported here.")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "'logprobs' is not supported here.")
    for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
        if body.get(name):  # 0, null and {} are what clients send by default
            raise ApiError(400, f"'{name}' is not supported here: leave it out (or 0).")


def stop_strings(stop) -> tuple[str, ...]:
    """`stop`: a string or a list of up to 4, each 1 to 64 characters."""
    stops = [stop] if isinstance(stop, str) else stop or []
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOPS}, each 1 to "
                       f"{MAX_STOP_CHARS} characters.")
    return tuple(stops)


def _limit_field(body: dict) -> str:
    """Newer clients send max_completion_tokens; older ones max_tokens."""
    return "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"


def _seed(seed) -> int | None:
    try:
        return checked_seed(seed)
    except ModelError as error:
        raise ApiError(400, str(error)) from None


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false.")
    return bool(value)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    value = default if value is None else value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}.")
    return float(value)
