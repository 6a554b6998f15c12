"""An OpenAI-compatible endpoint: `/v1/models` and `/v1/chat/completions` (streamed or not),
answered by the same chat code as the Chat tab, so any OpenAI client can talk to the base
models and to every finished run's adapter.

    python app.py                      # the endpoint rides on the UI's server: http://127.0.0.1:7860/v1
    python cli.py serve --port 8000    # the endpoint alone
    OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused").chat.completions.create(
        model="smollm2-135m-instruct:RUN", messages=[{"role": "user", "content": "Who are you?"}])

Model names: each known base (`smollm2-135m-instruct`) and `BASE:RUN` for each finished run; an
adapter is attached to the one copy of its base's weights, as in Compare. Who may call, and
what a request may hold, is serve.openai_request's. Here the answer is cut at its `stop`
strings and counted in `usage` (in a stream's last chunk with stream_options.include_usage).
Requests that come together on one base are decoded as one batch, with the Chat tab's
(core.inference.batching). Each client address may run MAX_PER_ADDRESS requests at once and the
endpoint MAX_RUNNING (more wait, up to MAX_WAITING); errors have OpenAI's shape:
{"error": {"message", "type", "code"}}.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

from core import threads
from core.errors import LabError
from core.inference.adapters import attach_tuned
from core.inference.batching import BASE, MAX_ROWS, Row, answer_together
from core.inference.chat import Reply
from core.inference.models import load_model
from serve.openai_request import ApiError, ChatRequest
from training.jobs import current_job

MAX_RUNNING, MAX_WAITING, MAX_PER_ADDRESS = MAX_ROWS, 6, 2


def replies(request: ChatRequest):
    """The growing reply from the base, or from the run's adapter on it (the Chat tab's code),
    batched with the other requests waiting on that base, the Chat tab's included
    (core.inference.batching)."""
    loaded, row = load_model(request.base), Row(BASE, request.messages)
    if request.run is not None:
        tuned = attach_tuned(loaded, request.run)  # a full fine-tune is a model of its own
        loaded, row = tuned.loaded, Row(tuned.adapter_name or BASE, request.messages, tuned.chat_template)
    thread_count = threads.for_chat(job_running=bool(current_job()))
    return (reply for reply, in answer_together(loaded, [row], request.generation, thread_count))


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


@dataclass
class Piece:
    """The answer's text so far as it may be shown; `finish` set on the last piece."""

    text: str
    reply: Reply | None
    finish: str | None = None


def pieces(stream, request: ChatRequest):
    """The growing answer, cut at the first of the request's stop strings (its generation then
    ends), holding back an end that may yet become one; the last piece says why it ended."""
    hold, reply = max(map(len, request.stops), default=1) - 1, None
    try:
        for reply in stream:
            cut = min((at for at in (reply.text.find(s) for s in request.stops) if at >= 0), default=None)
            if cut is not None:
                yield Piece(reply.text[:cut], reply, "stop")
                return
            yield Piece(reply.text[:max(0, len(reply.text) - hold)], reply)
    finally:
        stream.close()  # a stop string, or a client that left: the row leaves the batch
    limit = request.generation.max_new_tokens
    yield Piece(reply.text if reply else "", reply, "length" if reply and reply.new_tokens >= limit else "stop")


def usage(reply: Reply | None) -> dict:
    prompt, answer = (reply.prompt_tokens, reply.new_tokens) if reply else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def completion_body(stream, request: ChatRequest) -> dict:
    """Run the answer to its end: the chat.completion body."""
    *_, last = pieces(stream, request)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": request.model, "choices": [{"index": 0, "finish_reason": last.finish,
                                                 "message": {"role": "assistant", "content": last.text}}],
            "usage": usage(last.reply)}


def chunks(stream, request: ChatRequest):
    """Server-sent events, OpenAI's chat.completion.chunk shape, ending with data: [DONE]; with
    stream_options.include_usage, a last chunk with no choices and the usage."""
    ident, created, sent = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), 0

    def event(choices: list, **extra) -> str:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": request.model,
                 "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    try:
        for piece in pieces(stream, request):
            if len(piece.text) > sent or piece.finish:
                delta = {"content": piece.text[sent:]} if len(piece.text) > sent else {}
                yield event([{"index": 0, "delta": delta, "finish_reason": piece.finish}])
                sent = max(sent, len(piece.text))
    except LabError as exc:
        yield f"data: {json.dumps(ApiError(500, str(exc), 'server_error').body())}\n\n"
        return
    if request.include_usage:
        yield event([], usage=usage(piece.reply))
    yield "data: [DONE]\n\n"


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
