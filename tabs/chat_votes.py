"""Votes in the Chat tab: blind A/B Compare with four vote buttons, and thumbs on single answers.

Blind mode: for every question a coin decides which pane shows the base and which the tuned
model; the panes are labelled A and B, and the names appear only after the vote. Which model
is which lives in server-side session state (`gr.State`), never on the page. The answers of
each model stay in that model's own history, so a multi-turn chat stays coherent.

Thumbs: every answer the server streams is also kept in server-side session state (`given`:
pane -> message index -> prompt, answer, model), and a thumb names only the pane and index, so
a vote is always on an answer this session was really given, never on a history the client
wrote. Each answer and each blind pair has an id, which becomes the vote's id: one vote each.

Votes go to core.feedback.votes: the owner's store, or on a public app the visitors' capped store,
which the owner reviews. The handlers are plain functions that tests call directly.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import replace

import gradio as gr

from core.feedback import votes
from core.access import is_trusted
from core.errors import LabError
from core.inference.models import DEFAULT_MODEL
from tabs.chat import ChatRequest, plain_history, respond
from tabs.feedback import shows_errors, warn

VOTE_BUTTONS = {"A is better": "A", "B is better": "B", "Tie": "tie", "Both bad": "both_bad"}
HIDDEN = ("Answer A", "Answer B")
MAX_GIVEN = 20  # answers kept per pane for thumbs: the newest ones


def coin() -> bool:
    """Whether this blind question puts the tuned answer on the left (A): a fair coin each time."""
    return random.random() < 0.5


def pane_sides(model_name: str, adapter) -> dict:
    """Which model answers in each pane, as a vote names it: {"base": side, "tuned": side}."""
    return {"base": {"model": model_name, "adapter": None}, "tuned": {"model": model_name, "adapter": adapter}}


def remember_answers(given, panes: dict, sides: dict) -> dict:
    """`given` with the last answer of each pane in `panes` ({pane: history}) added, keyed by its
    message index; `sides` gives each pane's {"model", "adapter"}."""
    given = {pane: dict(records) for pane, records in (given or {}).items()}
    for pane, history in panes.items():
        if not history or history[-1]["role"] != "assistant" or not history[-1]["content"]:
            continue
        records = given.setdefault(pane, {})
        records[len(history) - 1] = {"id": uuid.uuid4().hex, "prompt": history[:-1],
                                     "answer": history[-1]["content"], "side": sides[pane]}
        while len(records) > MAX_GIVEN:
            records.pop(min(records))
    return given


def blind_respond(ask: ChatRequest, pending: votes.BlindPair | None, request: gr.Request = None):
    """Compare with hidden names. Yields (left, right, status, box, pending, left label, right label)."""
    swapped_before = bool(pending and pending.swapped)
    if swapped_before:  # the panes show the last question's coin order: put base | tuned back
        ask = replace(ask, base_history=ask.tuned_history, tuned_history=ask.base_history)
    ask, swap = replace(ask, mode="Compare"), coin()
    settings = dict(system_prompt=ask.system_prompt, temperature=ask.temperature, top_p=ask.top_p,
                    max_new_tokens=ask.max_new_tokens, repetition_penalty=ask.repetition_penalty)
    labels = ({"label": HIDDEN[0]}, {"label": HIDDEN[1]})

    def panes(base_history, tuned_history):  # (left, right) in this question's coin order
        return (tuned_history, base_history) if swap else (base_history, tuned_history)

    base_out, tuned_out, status = plain_history(ask.base_history), plain_history(ask.tuned_history), ""
    for base_out, tuned_out, status, box in respond(ask, request=request):
        yield *panes(base_out, tuned_out), "Generating both answers…", box, pending, *labels
    if not base_out or base_out[-1]["role"] != "assistant" or status.startswith("⚠"):
        yield *panes(base_out, tuned_out), status, "", pending, *labels
        return
    sides = pane_sides(ask.model, ask.adapter)
    order = ("tuned", "base") if swap else ("base", "tuned")
    contexts = {"base": base_out[:-1], "tuned": tuned_out[:-1]}
    answers = {"base": base_out[-1]["content"], "tuned": tuned_out[-1]["content"]}
    pending = votes.BlindPair(prompt=contexts[order[0]], prompt_b=contexts[order[1]], swapped=swap,
                              answers={"A": answers[order[0]], "B": answers[order[1]]},
                              sides={"A": sides[order[0]], "B": sides[order[1]]}, settings=settings)
    yield *panes(base_out, tuned_out), "Which answer is better? Vote below.", "", pending, *labels


def chat_turn(message, base_history, tuned_history, model_name, adapter, mode, system_prompt="",
              temperature=0.0, top_p=0.9, max_new_tokens=256, repetition_penalty=1.1, blind=False, pending=None,
              given=None, request: gr.Request = None):
    """The Chat tab's send, as Gradio calls it with the widgets' values (chat_tab's `inputs`):
    they become one ChatRequest, by name, for plain Single/Compare (tabs.chat.respond) or blind
    Compare. Yields (left pane, right pane, status, box, pending blind pair, answers given)."""
    ask = ChatRequest(message, base_history, tuned_history, model_name or DEFAULT_MODEL, adapter, mode,
                      system_prompt=system_prompt, temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    if blind and ask.compare:
        for left, right, status, box, pending, left_label, right_label in blind_respond(ask, pending, request):
            yield gr.update(value=left, **left_label), gr.update(value=right, **right_label), status, box, pending, given
        return
    final = None
    for left, right, status, box in respond(ask, request=request):
        final = (left, right, status)
        yield left, right, status, box, None, given
    if final and not final[2].startswith("⚠"):
        panes = {"base": final[0], **({"tuned": final[1]} if ask.compare else {})}
        yield *final, "", None, remember_answers(given, panes, pane_sides(ask.model, ask.adapter))


def cast_vote(choice: str, pending: votes.BlindPair | None, request: gr.Request = None):
    """Record the vote on the last blind pair and reveal the names. Returns (status, pending,
    left label, right label)."""
    keep = (gr.update(), gr.update())
    if pending is None:
        return warn(LabError("Nothing to vote on yet: ask a question in blind Compare first.")), pending, *keep
    if pending.voted:
        return "You already voted on this answer pair; ask another question.", pending, *keep
    visitor = not is_trusted(request)
    try:
        votes.record(pending.vote(choice, getattr(request, "session_hash", "") or ""), visitor=visitor)
    except LabError as exc:
        return warn(exc), pending, *keep
    pending = replace(pending, voted=True)
    names = [side_name(pending.sides[s]) for s in "AB"]
    where = " (held for the owner's review)" if visitor else ""
    return (f"✅ Vote saved{where}: A was **{names[0]}**, B was **{names[1]}**.", pending,
            gr.update(label=f"A: {names[0]}"), gr.update(label=f"B: {names[1]}"))


def vote_handler(choice: str):
    """A click handler for one vote button (Gradio reads the request from its annotations)."""
    def vote(pending, request: gr.Request = None):
        return cast_vote(choice, pending, request)
    return vote


def thumb_handler(pane: str):
    """A like handler for one pane's Chatbot."""
    def like(data: gr.LikeData, given, blind, request: gr.Request = None):
        return thumb(data, given, blind, pane, request)
    return like


def side_name(side: dict) -> str:
    return f"tuned ({side['adapter']})" if side.get("adapter") else f"base ({side['model']})"


@shows_errors()
def thumb(data: gr.LikeData, given, blind, pane: str, request: gr.Request = None) -> str:
    """Record a thumb up/down on one answer of the base or tuned pane (not in blind mode): the
    answer, its prompt and its model come from what the server gave, by message index."""
    if blind:
        return "In blind mode, vote with the buttons under the answers."
    index = data.index if isinstance(data.index, int) else data.index[0]
    answer = ((given or {}).get(pane) or {}).get(index)
    if answer is None:
        raise LabError("Only an answer given in this session can get a thumb.")
    vote = votes.Vote(prompt=answer["prompt"], answers={"A": answer["answer"]}, sides={"A": answer["side"]},
                      choice="up" if data.liked else "down", session=getattr(request, "session_hash", "") or "",
                      id=answer["id"])
    votes.record(vote, visitor=not is_trusted(request))
    return f"{'👍' if data.liked else '👎'} saved for the {pane} answer."
