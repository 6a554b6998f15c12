"""Votes from wherever the model is shared. The generated Space, published to the local test Hub
and run as a real app (conftest's `space_votes`, tests/space_votes.py), collects blind votes and
a thumb from a visitor, through the queue and in Chromium, and refuses forged, repeated and
oversized ones; its CommitScheduler pushes them to the votes dataset when the Space stops. Here:
what reached the Hub, and a pull that reports bad lines and adds each vote once.
(test_browser_votes.py pulls them in the lab's UI and trains DPO on them; test_dpo.py checks
what a DPO run on pulled votes records.)"""
from __future__ import annotations

import time

import pytest

from tests.space_votes import MODEL_REPO, SPACE, TOKEN, VOTES, pushed_votes

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_the_space_pushes_each_vote_to_its_private_dataset(space_votes, local_hub):
    _, hub = local_hub
    assert hub.state.repos[("space", SPACE)]["secrets"] == {"HF_TOKEN": TOKEN}, "Publish gave the Space its token"
    assert hub.state.repos[("dataset", VOTES)]["private"]
    pushed = pushed_votes(hub)
    assert sorted(v["choice"] for v in pushed) == sorted(space_votes)
    blind = [v for v in pushed if v["choice"] != "up"]
    assert all({s["adapter"] for s in v["sides"].values()} == {None, MODEL_REPO} for v in blind)
    assert len({v["id"] for v in pushed}) == len(pushed)
    assert all(v["session"] and v["session"] != "visitor-one" and v["time"] < time.time() for v in pushed)
    assert all(v["space"] == SPACE for v in pushed)


def test_a_pull_reports_bad_lines_and_adds_each_vote_once(space_votes, local_hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from core.feedback import votes
    from core.feedback.leaderboard import leaderboard
    from core.hub.votes_pull import pull_votes

    endpoint, _ = local_hub
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("FINETUNE_LAB_HOME", str(tmp_path / "lab"))  # its own store: the browser test pulls too
    first = pull_votes(VOTES, TOKEN)
    assert (first.added, first.known, first.bad) == (len(space_votes), 0, 2), first.line()
    assert "broken.jsonl:1: not JSON" in first.line() and "broken.jsonl:2: not a vote" in first.bad_lines[1]
    commit = HfApi(endpoint=endpoint, token=TOKEN).dataset_info(VOTES).sha
    assert first.commit == commit and {v["source"] for v in votes.waiting()} == {f"hub:{VOTES}@{commit}"}
    second = pull_votes(VOTES, TOKEN)
    assert (second.added, second.known) == (0, len(space_votes)), "a second pull adds nothing"
    assert votes.accept_waiting() == len(space_votes) and votes.waiting() == []
    assert {row["entrant"] for row in leaderboard(votes.read())} >= {MODEL_REPO}
    decided = sum(choice in ("A", "B") for choice in space_votes)
    assert len(votes.preference_rows(votes.read())) == decided, "ties and thumbs make no DPO pair"
