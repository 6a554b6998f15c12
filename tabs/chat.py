"""Chat tab's handlers: talk to a model, or compare a base model with its tuned adapter side by side.

The handlers here only translate widget values into calls to core.inference.chat and back; they are
plain functions, so tests call them without a browser. The tab's layout and wiring live in
tabs/chat_tab.py, the votes in tabs/chat_votes.py. Run the app with `python app.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from core import threads
from core.access import check_adapter, check_model, clamp
from core.inference.batching import BASE, Row, answer_together
from core.inference.adapters import Tuned, attach_tuned
from core.inference.chat import GenerationSettings, check_messages
from core.inference.compare import stream_compare
from core.errors import LabError
from core.inference.models import DEFAULT_MODEL, load_model
from core.runs import GENERATOR, finished_runs
from tabs.feedback import warn
from training.jobs import current_job



@dataclass
class ChatRequest:
    """One send in the Chat tab, as its widgets give it (by name, from chat_tab's wiring)."""

    message: str
    base_history: list
    tuned_history: list
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    mode: str = "Single"
    system_prompt: str = ""
    temperature: float = 0.0
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1

    @property
    def compare(self) -> bool:
        return self.mode == "Compare"

    def settings(self, request=None) -> GenerationSettings:
        """The sampling settings, capped for a public app's visitor."""
        chars = clamp("history_chars", 10**9, request)
        return GenerationSettings(str(self.system_prompt or "")[:chars], float(self.temperature), float(self.top_p),
                                  clamp("max_new_tokens", int(self.max_new_tokens), request),
                                  float(self.repetition_penalty))


def adapter_choices() -> list[str]:
    """Finished runs with an adapter, newest first, by run name (no server paths on the page)."""
    return [run.name for run in finished_runs(GENERATOR)]


def within_chars(history: list[dict], budget: int) -> list[dict]:
    """The newest whole turns of `history` whose text fits in `budget` characters."""
    kept, used = [], 0
    for message in reversed(history):
        used += len(message["content"])
        if used > budget:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0]["role"] != "user":  # never start mid-exchange
        kept.pop(0)
    return kept


def plain_history(history) -> list[dict]:
    """Chatbot messages as {role, content: str}; Gradio 6 may send content as a list of parts."""
    def text(content):
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)

    return [{"role": m["role"], "content": text(m["content"])} for m in history or []]


def respond(ask: ChatRequest, request: gr.Request = None):
    """Stream the answer(s) to `ask.message`. Yields (base history, tuned history, status, box).

    On a public app, visitors get the listed models and finished runs only, and capped sizes:
    the history is cut to its newest turns by characters, before anything is tokenized. Answers
    on one model are decoded in batches across visitors (core.inference.batching)."""
    chars = clamp("history_chars", 10**9, request)
    base_history = within_chars(plain_history(ask.base_history), chars)
    tuned_history = within_chars(plain_history(ask.tuned_history), chars)
    message = ask.message
    try:
        settings, loaded, tuned, job, thread_count = _prepared(ask, chars, request)
    except LabError as exc:
        yield base_history, tuned_history, warn(exc), message
        return
    status = loaded.describe()
    panes = [base_history, tuned_history] if ask.compare else [base_history]
    for history in panes:
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    try:
        replies = answer_streams(loaded, tuned, base_history[:-1], tuned_history[:-1], settings, thread_count)
        for latest in replies:
            for history, reply in zip(panes, latest):
                history[-1]["content"] = reply.text
            yield base_history, tuned_history, status, ""
    except LabError as exc:
        for history in panes:
            history[-1]["content"] = history[-1]["content"] or warn(exc)
        yield base_history, tuned_history, warn(exc), ""
        return
    for side, reply in zip(("base", "tuned"), latest):
        status += f" · {side}: {reply.stats}" + (f" · {reply.notice}" if reply.notice else "")
    note = f" · training job '{job}' is running (chat uses 1 thread)" if job else ""
    yield base_history, tuned_history, status + note, ""


def _prepared(ask: ChatRequest, chars: int, request):
    """(settings, loaded model, tuned side or None, running job, thread count) for `ask`, or a
    LabError that says what is wrong with it."""
    settings = ask.settings(request)
    check_messages([{"role": "user", "content": str(ask.message or "")}])
    if len(str(ask.message)) > chars:
        raise LabError(f"Message too long: {len(str(ask.message))} characters, at most {chars} here.")
    model_name = check_model(ask.model or DEFAULT_MODEL, request)
    if ask.compare:
        check_adapter(ask.adapter, request)
    job = current_job()
    thread_count = threads.apply(threads.for_chat(job_running=bool(job)))
    loaded = load_model(model_name)
    return settings, loaded, attach_tuned(loaded, ask.adapter) if ask.compare else None, job, thread_count


def answer_streams(loaded, tuned: Tuned | None, base_messages: list[dict], tuned_messages: list[dict],
                   settings: GenerationSettings, thread_count: int):
    """(base reply,) or (base reply, tuned reply) as they grow. A base or LoRA adapter row joins
    one batch with the other visitors' answers on this model; a full fine-tune is a second model,
    answered beside the base."""
    if tuned is not None and tuned.adapter_name is None:
        return stream_compare(loaded, tuned, base_messages, tuned_messages, settings)
    rows = [Row(BASE, base_messages)]
    if tuned is not None:
        rows.append(Row(tuned.adapter_name, tuned_messages, tuned.chat_template))
    return answer_together(loaded, rows, settings, thread_count)


def rewind(base_history, tuned_history, index) -> tuple[list, list, str]:
    """Both panes cut before message `index` (a user message), and that message's text. The
    panes hold the same exchanges, so one index cuts both; Chatbot's retry, undo and edit events
    give it."""
    index = index if isinstance(index, int) else index[0]
    base, tuned = plain_history(base_history), plain_history(tuned_history)
    if not 0 <= index < len(base) or base[index]["role"] != "user":
        return base, tuned, ""
    return base[:index], tuned[:index], base[index]["content"]


def on_retry(base_history, tuned_history, data: gr.RetryData):
    return rewind(base_history, tuned_history, data.index)


def on_undo(base_history, tuned_history, data: gr.UndoData):
    return rewind(base_history, tuned_history, data.index)


def on_edit(base_history, tuned_history, data: gr.EditData):
    """The edited question replaces the original, and everything after it is asked again."""
    base, tuned, _ = rewind(base_history, tuned_history, data.index)
    return base, tuned, plain_history([{"role": "user", "content": data.value}])[0]["content"]


def refresh_adapters():
    return gr.update(choices=adapter_choices())
