"""Blind A/B votes in the served app, driven by gradio_client: the stored line names the right
model for each side whatever the coin said, and visitors' votes wait in their own store."""
from __future__ import annotations

import pytest

from core.feedback import votes
from tests.conftest import owner_client
from tests.test_app_chat import chat_args, text_of

pytestmark = pytest.mark.slow
QUESTIONS = ["Who are you?", "What is the capital of France?", "Name a colour.", "Who made you?"]


def ask_blind(client, question, adapter):
    """(left pane, right pane, status, box); blind mode relabels the panes, so they come back as
    updates that carry the value and the label."""
    left, right, status, box = client.predict(**chat_args(question, mode="Compare", adapter=adapter), blind=True)
    assert left["label"] == "Answer A" and right["label"] == "Answer B"
    return left["value"], right["value"], status, box


def test_blind_votes_name_the_right_models(app_server, tiny_run):
    """Four blind questions: each vote's 'base' side holds exactly the base model's own answer
    (asked in Single mode), and A is the left pane, whichever model the coin put there."""
    votes.store().unlink(missing_ok=True)
    client = owner_client(app_server)
    for number, question in enumerate(QUESTIONS, 1):
        left, right, status, _ = ask_blind(client, question, tiny_run.name)
        assert "Which answer is better" in status and tiny_run.name not in status
        choice = "A" if number % 2 else "B"
        revealed, left_pane, right_pane = client.predict(api_name=f"/vote_{choice}")
        assert revealed.startswith("✅ Vote saved:") and "tuned (tiny-fixture)" in revealed
        again = client.predict(api_name=f"/vote_{choice}")[0]
        assert "already voted" in again and len(votes.read()) == number
        vote = votes.read()[-1]
        assert vote["choice"] == choice and vote["prompt"] == [{"role": "user", "content": question}]
        assert vote["answers"]["A"] == text_of(left[-1]) and vote["answers"]["B"] == text_of(right[-1])
        base_side = next(s for s in "AB" if vote["sides"][s]["adapter"] is None)
        tuned_side = "B" if base_side == "A" else "A"
        assert vote["sides"][tuned_side] == {"model": "smollm2-135m-instruct", "adapter": tiny_run.name}
        base_alone, *_ = client.predict(**chat_args(question))
        assert vote["answers"][base_side] == text_of(base_alone[-1]), "the 'base' side is the base's answer"
        assert f"A was **{'base' if base_side == 'A' else 'tuned'}" in revealed
        assert left_pane["label"].startswith(f"A: {'base' if base_side == 'A' else 'tuned'}")
    assert len(votes.read()) == len(QUESTIONS)


def test_the_blind_coin_gives_both_orders():
    """The pane order is a fair coin per question: 64 throws land on each side 12 to 52 times (a
    constant or stuck coin fails; a fair one falls outside once in about ten million runs)."""
    from tabs.chat_votes import coin

    throws = [coin() for _ in range(64)]
    assert 12 <= sum(throws) <= 52, sum(throws)

def test_visitor_votes_go_to_the_review_store(app_server, tiny_run):
    from gradio_client import Client

    votes.store(visitor=True).unlink(missing_ok=True)
    owner_before = len(votes.read())
    visitor = Client(app_server, verbose=False)
    nothing = visitor.predict(api_name="/vote_tie")[0]
    assert "Nothing to vote on" in nothing
    ask_blind(visitor, "Who are you?", tiny_run.name)
    assert "held for the owner's review" in visitor.predict(api_name="/vote_tie")[0]
    assert len(votes.read(visitor=True)) == 1 and len(votes.read()) == owner_before
