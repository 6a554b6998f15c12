"""An OpenAI-compatible endpoint: `/v1/models` and `/v1/chat/completions` (streamed or not),
answered by the same chat code as the Chat tab, so any OpenAI client can talk to the base
models and to every finished run's adapter.

    python app.py                      # the endpoint rides on the UI's server: http://127.0.0.1:7860/v1
    python cli.py serve --port 8000    # the endpoint alone
    OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused").chat.completions.create(
        model="smollm2-135m-instruct:RUN", messages=[{"role": "user", "content": "Who are you?"}])

Model names: each known base (`smollm2-135m-instruct`) and `BASE:RUN` for each finished run; an
adapter is attached to the one copy of its base's weights, as in Compare. Access: with
FINETUNE_LAB_API_KEY set, every call needs `Authorization: Bearer KEY`. A public app serves
callers as it serves visitors (listed models and finished runs, the same caps), unless they
bear the key; an app behind --auth serves the endpoint only with a key. Requests that come
together on one base are decoded as one batch, with the Chat tab's (core.inference.batching).
Each client address may run MAX_PER_ADDRESS requests at once and the endpoint MAX_RUNNING (more
wait, up to MAX_WAITING); errors have OpenAI's shape: {"error": {"message", "type", "code"}}.
"""
from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass

from core import access, threads
from core.errors import LabError
from core.inference.batching import BASE, MAX_ROWS, Row, answer_together
from core.inference.adapters import attach_tuned
from core.inference.chat import GenerationSettings
from core.inference.models import KNOWN_MODELS, load_model
from core.request_limits import client_address
from core.runs import GENERATOR, finished_runs
from core.settings import settings
from training.jobs import current_job

MAX_RUNNING, MAX_WAITING, MAX_PER_ADDRESS = MAX_ROWS, 6, 2
MAX_MESSAGES = 64


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


def parse_request(body: dict, who: Caller) -> tuple[str, str | None, list[dict], GenerationSettings]:
    """(base, run or None, messages, settings) from a chat completion body, every size checked
    and capped before any model work."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise ApiError(400, "'model' is required: one of GET /v1/models.", code="model_required")
    messages = body.get("messages")
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
    chars = who.cap("history_chars", 10**9)
    if sum(len(m["content"]) for m in clean) > chars:
        raise ApiError(400, f"The messages hold more than {chars} characters, the most this app takes.")
    base, _, run = body["model"].partition(":")
    if body["model"] not in model_names():
        raise ApiError(404, f"The model '{body['model'][:80]}' does not exist here: see GET /v1/models.",
                       code="model_not_found")
    system = [m["content"] for m in clean if m["role"] == "system"]
    return base, run or None, [m for m in clean if m["role"] != "system"], GenerationSettings(
        system_prompt="\n".join(system), temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.01, 1.0),
        max_new_tokens=who.cap("max_new_tokens", int(_number(body, _limit_field(body), 256, 1, 4096))))


def _limit_field(body: dict) -> str:
    """Newer clients send max_completion_tokens; older ones max_tokens."""
    return "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    value = default if value is None else value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}.")
    return float(value)


def replies(base: str, run: str | None, messages: list[dict], generation: GenerationSettings):
    """The growing reply from the base, or from the run's adapter on it (the Chat tab's code),
    batched with the other requests waiting on that base, the Chat tab's included
    (core.inference.batching)."""
    loaded, row = load_model(base), Row(BASE, messages)
    if run is not None:
        tuned = attach_tuned(loaded, run)  # a full fine-tune is a model of its own
        loaded, row = tuned.loaded, Row(tuned.adapter_name or BASE, messages, tuned.chat_template)
    thread_count = threads.for_chat(job_running=bool(current_job()))
    return (reply for reply, in answer_together(loaded, [row], generation, thread_count))


class Slots:
    """At most MAX_RUNNING requests in generation at once (one batch's rows), MAX_WAITING more in
    line, MAX_PER_ADDRESS per client address: a script cannot fill the server's threads or starve
    the Chat tab's visitors."""

    def __init__(self):
        self.lock, self.running = threading.Lock(), threading.BoundedSemaphore(MAX_RUNNING)
        self.held: dict[str, int] = {}

    def take(self, address: str) -> None:
        with self.lock:
            if self.held.get(address, 0) >= MAX_PER_ADDRESS:
                raise ApiError(429, f"At most {MAX_PER_ADDRESS} requests at once from one address: wait for them.",
                               "rate_limit_error")
            if sum(self.held.values()) >= MAX_RUNNING + MAX_WAITING:
                raise ApiError(429, "The server is busy: try again shortly.", "rate_limit_error")
            self.held[address] = self.held.get(address, 0) + 1
        self.running.acquire()

    def give(self, address: str) -> None:
        self.running.release()
        with self.lock:
            self.held[address] -= 1
            if not self.held[address]:
                del self.held[address]


SLOTS = Slots()


def completion(stream, limit: int) -> tuple[str, str]:
    """Run the reply to its end: (text, finish_reason)."""
    reply = None
    for reply in stream:
        pass
    return (reply.text, _finish_reason(reply, limit)) if reply else ("", "stop")


def _finish_reason(reply, limit: int) -> str:
    return "length" if reply.new_tokens >= limit else "stop"


def chunks(name: str, stream, limit: int):
    """Server-sent events, OpenAI's chat.completion.chunk shape, ending with data: [DONE]."""
    ident, created, sent = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), 0

    def event(delta: dict, finish: str | None) -> str:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    reply = None
    try:
        for reply in stream:
            if len(reply.text) > sent:
                yield event({"content": reply.text[sent:]}, None)
                sent = len(reply.text)
    except LabError as exc:
        yield f"data: {json.dumps(ApiError(500, str(exc), 'server_error').body())}\n\n"
        return
    yield event({}, _finish_reason(reply, limit) if reply else "stop")
    yield "data: [DONE]\n\n"


def completion_body(name: str, text: str, finish: str) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": finish}]}


def vllm_command(run_name: str) -> str:
    """`vllm serve BASE --enable-lora --lora-modules RUN=ADAPTER` for a finished LoRA run."""
    import shlex

    from core.inference.models import find_spec
    from core.runs import RunFolder

    run = RunFolder.existing(run_name)
    manifest = run.manifest()
    if manifest is None or not run.is_lora:
        raise LabError(f"'{run_name}' is not a finished LoRA run: vLLM serves LoRA adapters on their base.")
    spec = find_spec(manifest.model)
    rank = json.loads((run.adapter / "adapter_config.json").read_text())["r"]
    base = spec.hub_id if spec else manifest.model
    return (f"vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank {1 << max(3, (rank - 1).bit_length())} "
            f"--lora-modules {shlex.quote(f'{manifest.model}:{run.name}={run.adapter}')}")
