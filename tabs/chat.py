"""Chat tab: talk to a model, or compare a base model with its tuned adapter side by side.

The handlers here only translate widget values into calls to core.chat and back; they are
plain functions, so tests call them without a browser. Run the app with `python app.py`.
"""
from __future__ import annotations

import gradio as gr

from core import threads
from core.access import check_adapter, check_model, clamp
from core.chat import GenerationSettings, attach_tuned, stream_reply
from core.compare import stream_compare
from core.errors import LabError
from core.models import DEFAULT_MODEL, KNOWN_MODELS, load_model
from core.runs import finished_runs
from tabs import hub_panel
from tabs.feedback import warn
from training.jobs import current_job


MODES = ("Single", "Compare")


def adapter_choices() -> list[str]:
    """Finished runs with an adapter, newest first, by run name (no server paths on the page)."""
    return [run.name for run in finished_runs()]


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


def respond(message, base_history, tuned_history, model_name, adapter, mode, system_prompt="",
            temperature=0.0, top_p=0.9, max_new_tokens=256, repetition_penalty=1.1, request: gr.Request = None):
    """Stream the answer(s) to `message`. Yields (base history, tuned history, status, box).

    On a public app, visitors get the listed models and finished runs only, and capped sizes:
    the history is cut to its newest turns by characters, before anything is tokenized."""
    chars = clamp("history_chars", 10**9, request)
    base_history = within_chars(plain_history(base_history), chars)
    tuned_history = within_chars(plain_history(tuned_history), chars)
    compare = mode == "Compare"
    try:
        settings = GenerationSettings(str(system_prompt or "")[:chars], float(temperature), float(top_p),
                                      clamp("max_new_tokens", int(max_new_tokens), request),
                                      float(repetition_penalty))
        if not str(message or "").strip():
            raise LabError("Empty message: type something first.")
        if len(str(message)) > chars:
            raise LabError(f"Message too long: {len(str(message))} characters, at most {chars} here.")
        model_name = check_model(model_name or DEFAULT_MODEL, request)
        if compare:
            check_adapter(adapter, request)
        job = current_job()
        threads.apply(threads.for_chat(job_running=bool(job)))
        loaded = load_model(model_name)
        tuned = attach_tuned(loaded, adapter) if compare else None
    except LabError as exc:
        yield base_history, tuned_history, warn(exc), message
        return
    status = loaded.describe()
    panes = [base_history, tuned_history] if compare else [base_history]
    for history in panes:
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    try:
        if compare:
            replies = stream_compare(loaded, tuned, base_history[:-1], tuned_history[:-1], settings)
        else:
            replies = ((reply,) for reply in stream_reply(loaded, base_history[:-1], settings))
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


def wire_votes(mode, blind, vote_row, vote_buttons, pending, base_chat, tuned_chat, status, given):
    """Blind A/B: the toggle shows in Compare, the vote buttons in blind mode; thumbs elsewhere."""
    from tabs import chat_votes

    def show(mode_value, blind_value, left, right, pair):
        """Show the toggle in Compare and the vote buttons in blind mode; put the panes back in
        base | tuned order if the last blind question had swapped them."""
        compare = mode_value == "Compare"
        hidden = compare and blind_value
        if pair and pair.get("swapped"):
            left, right = right, left
        return (gr.update(value=right, visible=compare, label="Answer B" if hidden else "Tuned model"),
                gr.update(visible=compare), gr.update(visible=hidden),
                gr.update(value=left, label="Answer A" if hidden else "Base model"), None)

    for trigger in (mode.change, blind.change):
        trigger(show, [mode, blind, base_chat, tuned_chat, pending], [tuned_chat, blind, vote_row, base_chat, pending],
                api_name=False)
    for button, choice in zip(vote_buttons, chat_votes.VOTE_BUTTONS.values()):
        button.click(chat_votes.vote_handler(choice), pending, [status, pending, base_chat, tuned_chat],
                     api_name=f"vote_{choice}")
    for chat, pane in ((base_chat, "base"), (tuned_chat, "tuned")):
        chat.like(chat_votes.thumb_handler(pane), [given, blind], status, api_name=False)


def build(demo: gr.Blocks) -> gr.Dropdown:
    """Lay out the Chat tab inside the current gr.Blocks; return the adapter picker."""
    from tabs import chat_votes  # it builds on respond() above
    with gr.Row():
        model = gr.Dropdown([s.name for s in KNOWN_MODELS], value=DEFAULT_MODEL, label="Model", elem_id="chat-model",
                            allow_custom_value=True, info="A known name, any Hub id or a local folder")
        mode = gr.Radio(list(MODES), value="Single", label="Mode")
        blind = gr.Checkbox(False, label="Blind A/B", visible=False, elem_id="blind-toggle",
                            info="Hide which pane is which until you vote")
        adapter = gr.Dropdown([], value=None, label="Adapter (Compare)", allow_custom_value=True, elem_id="adapter-picker",
                              info="A finished run (LoRA/QLoRA adapter or full fine-tune), a folder, or a Hub repo id")
        refresh = gr.Button("↻ Adapters", size="sm", scale=0)
    hub_panel.build(model, "model", "chat-model")
    with gr.Row():
        base_chat = gr.Chatbot(label="Base model", height=420, elem_id="base-chat", editable="user")
        tuned_chat = gr.Chatbot(label="Tuned model", height=420, visible=False, elem_id="tuned-chat",
                                editable="user")
    with gr.Row(visible=False) as vote_row:
        vote_buttons = [gr.Button(label, size="sm", elem_id=f"vote-{choice}")
                        for label, choice in chat_votes.VOTE_BUTTONS.items()]
    pending = gr.State(None)
    given = gr.State(None)  # the answers this session was given, for thumbs (tabs.chat_votes)
    box = gr.Textbox(placeholder="Ask something and press Enter", show_label=False, max_lines=8)
    with gr.Row():
        send = gr.Button("Send", variant="primary")
        stop = gr.Button("Stop")
        clear = gr.Button("Clear")
    status = gr.Markdown("Models load on first use.", elem_id="chat-status")
    with gr.Accordion("Generation settings", open=False):
        defaults = GenerationSettings()
        settings = [
            gr.Textbox(defaults.system_prompt, label="System prompt (empty = the model's default)"),
            gr.Slider(0, 2, defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
            gr.Slider(0.05, 1, defaults.top_p, step=0.05, label="Top p"),
            gr.Slider(1, 1024, defaults.max_new_tokens, step=1, label="Max new tokens"),
            gr.Slider(1, 2, defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
        ]
    inputs = [box, base_chat, tuned_chat, model, adapter, mode, *settings, blind, pending, given]
    outputs = [base_chat, tuned_chat, status, box, pending, given]
    events = [trigger(chat_votes.chat_turn, inputs, outputs, api_name=name)
              for trigger, name in ((box.submit, "chat"), (send.click, None))]
    for chat in (base_chat, tuned_chat):  # Gradio's own retry, undo and edit buttons on each pane
        for event, handler in ((chat.retry, on_retry), (chat.edit, on_edit)):
            events.append(event(handler, [base_chat, tuned_chat], [base_chat, tuned_chat, box], api_name=False)
                          .then(chat_votes.chat_turn, inputs, outputs, api_name=False))
        chat.undo(on_undo, [base_chat, tuned_chat], [base_chat, tuned_chat, box], api_name=False)
    stop.click(None, cancels=events)
    clear.click(lambda: ([], [], "", None, None), None, [base_chat, tuned_chat, status, pending, given])
    wire_votes(mode, blind, vote_row, vote_buttons, pending, base_chat, tuned_chat, status, given)
    refresh.click(refresh_adapters, None, adapter, api_name=False)
    demo.load(refresh_adapters, None, adapter, api_name=False)
    gr.api(adapter_choices, api_name="adapters")
    return adapter
