"""Chat tab's layout: the model and adapter pickers, one or two panes, the vote buttons, and the
wiring of Gradio's own chat events (submit, retry, undo, edit, like) to the plain handlers in
tabs/chat.py and tabs/chat_votes.py.

    python app.py     # then open the Chat tab
"""
from __future__ import annotations

import gradio as gr

from core.inference.chat import GenerationSettings
from core.inference.models import DEFAULT_MODEL, KNOWN_MODELS
from core.request_limits import GENERATE_EVENTS
from tabs import chat, chat_votes, hub_panel

MODES = ("Single", "Compare")


def wire_votes(mode, blind, vote_row, vote_buttons, pending, base_chat, tuned_chat, status, given):
    """Blind A/B: the toggle shows in Compare, the vote buttons in blind mode; thumbs elsewhere."""
    def show(mode_value, blind_value, left, right, pair):
        """Show the toggle in Compare and the vote buttons in blind mode; put the panes back in
        base | tuned order if the last blind question had swapped them."""
        compare = mode_value == "Compare"
        hidden = compare and blind_value
        if pair and pair.swapped:
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
    for pane_chat, pane in ((base_chat, "base"), (tuned_chat, "tuned")):
        pane_chat.like(chat_votes.thumb_handler(pane), [given, blind], status, api_name=False)


def build(demo: gr.Blocks) -> gr.Dropdown:
    """Lay out the Chat tab inside the current gr.Blocks; return the adapter picker."""
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
    settings = _generation_settings()
    inputs = [box, base_chat, tuned_chat, model, adapter, mode, *settings, blind, pending, given]
    outputs = [base_chat, tuned_chat, status, box, pending, given]
    _wire_answers(box, send, stop, [base_chat, tuned_chat], inputs, outputs)
    clear.click(lambda: ([], [], "", None, None), None, [base_chat, tuned_chat, status, pending, given])
    wire_votes(mode, blind, vote_row, vote_buttons, pending, base_chat, tuned_chat, status, given)
    refresh.click(chat.refresh_adapters, None, adapter, api_name=False)
    demo.load(chat.refresh_adapters, None, adapter, api_name=False)
    gr.api(chat.adapter_choices, api_name="adapters")
    return adapter


def _generation_settings() -> list:
    """The sampling knobs, in an accordion, starting at GenerationSettings' defaults."""
    with gr.Accordion("Generation settings", open=False):
        defaults = GenerationSettings()
        return [
            gr.Textbox(defaults.system_prompt, label="System prompt (empty = the model's default)"),
            gr.Slider(0, 2, defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
            gr.Slider(0.05, 1, defaults.top_p, step=0.05, label="Top p"),
            gr.Slider(1, 1024, defaults.max_new_tokens, step=1, label="Max new tokens"),
            gr.Slider(1, 2, defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
        ]


def _wire_answers(box, send, stop, panes: list, inputs: list, outputs: list) -> None:
    """Enter, Send, and each pane's own retry and edit answer in the answer pool; Stop cancels them."""
    events = [trigger(chat_votes.chat_turn, inputs, outputs, api_name=name, **GENERATE_EVENTS)
              for trigger, name in ((box.submit, "chat"), (send.click, None))]
    for pane_chat in panes:  # Gradio's own retry, undo and edit buttons on each pane
        for event, handler in ((pane_chat.retry, chat.on_retry), (pane_chat.edit, chat.on_edit)):
            events.append(event(handler, panes, [*panes, box], api_name=False)
                          .then(chat_votes.chat_turn, inputs, outputs, api_name=False, **GENERATE_EVENTS))
        pane_chat.undo(chat.on_undo, panes, [*panes, box], api_name=False)
    stop.click(None, cancels=events)
