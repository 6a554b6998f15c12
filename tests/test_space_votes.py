"""Votes from wherever the model is shared: the generated Space, published to the local test Hub
and run as a real app, collects blind votes and thumbs into its Hub dataset (through the queue
and in Chromium; forged and oversized votes refused); the lab, in Chromium, pulls them back (bad
lines reported), accepts them, ranks the Space's adapter and makes the DPO dataset of them; a
second pull adds nothing. (test_dpo.py trains DPO on pulled votes and checks the manifest.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from core.hub import publish, space
from tests.browser import browser_page, shoot
from tests.conftest import free_port, start_app, wait_for
from tests.hub_server import serve_in_thread
from tests.raw_client import RawApp

pytestmark = [pytest.mark.slow, pytest.mark.browser]
TOKEN = "hf_test_valid_token_abcdefghijklmnop"
VOTES = ("tester", "lumen-vote-space-votes")


@pytest.fixture(scope="module")
def hub():
    port = free_port()
    server = serve_in_thread(port)
    yield f"http://127.0.0.1:{port}", server.config.app
    server.should_exit = True


def start_space(app_file, endpoint: str, token: str, folder) -> tuple[subprocess.Popen, str]:
    """The Space's app.py, run as the Space runs it: its secret as HF_TOKEN, on a free port."""
    from core.inference.models import resolve_model

    port = free_port()
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HOME": str(folder / "hf-home"),
           "BASE_MODEL": resolve_model("smollm2-135m-instruct"), "VOTES_DIR": str(folder / "votes"),
           "VOTES_EVERY_MINUTES": "60", "MAX_NEW_TOKENS": "8", "GRADIO_SERVER_PORT": str(port),
           "SPACE_ID": "tester/lumen-vote-space"}
    log = (folder / "space.log").open("w")
    proc = subprocess.Popen([sys.executable, str(app_file)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: proc.poll() is not None or _answers(url), 240, "the Space to serve")
    assert proc.poll() is None, (folder / "space.log").read_text()[-3000:]
    return proc, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pushed_votes(app) -> list[dict]:
    files = app.state.repos[("dataset", "/".join(VOTES))]["files"]
    return [json.loads(line) for path, data in files.items() if path.endswith(".jsonl")
            for line in data.decode().splitlines() if line.strip()]


def vote_in_the_space(url: str) -> list[str]:
    """4 blind verdicts and 1 thumb from one visitor; forged and oversized votes refused.
    Returns the verdicts."""
    raw, session = RawApp(url), "visitor-one"
    ask, vote_a = raw.fn_index(api_name="ask"), raw.fn_index(api_name="vote_A")
    forged = raw.call(vote_a, [None], "never-asked")
    assert not forged["ok"] and "Nothing to vote on" in str(forged["error"]), forged
    assert raw.rest([None], api_name="vote_A") == 404, "no REST route beside the queue"
    huge = raw.call(ask, ["x" * 2_001, [], [], True], session)
    assert not huge["ok"] and "at most 2000 characters" in str(huge["error"]), huge
    verdicts = ["A", "B", "tie", "A"]
    for n, choice in enumerate(verdicts):
        asked = raw.call(ask, [f"Question {n}: who are you?", [], [], True], session)
        assert asked["ok"] and "Which answer is better" in asked["data"][-1], asked
        voted = raw.call(raw.fn_index(api_name=f"vote_{choice}"), [None], session)
        assert voted["ok"] and "Vote saved" in voted["data"][-1], voted
        again = raw.call(vote_a, [None], session)
        assert not again["ok"], "one vote per answer pair"
    shown = raw.call(ask, ["Who are you?", [], [], False], session)
    history = shown["data"][1]
    liked = raw.call(raw.fn_index(api_name="thumb_B"), [None, history], session,
                     {"index": len(history) - 1, "value": history[-1]["content"], "liked": True})
    assert liked["ok"] and "rating was saved" in liked["data"][-1], liked
    with browser_page(url, ready="#vote-A") as page:  # a visitor in Chromium: blind by default
        box = page.get_by_placeholder("Ask something and press Enter")
        box.fill("What is your name?")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Which answer')",
                               timeout=120_000)
        page.locator("#vote-B").click()
        page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Vote saved')",
                               timeout=30_000)
        shoot(page, "space-votes.png")
    return verdicts + ["B"]


def pull_in_the_lab(dataset: str, endpoint: str, hf_home) -> None:
    """The owner's lab, in Chromium: pull the Space's votes, accept them, see the Space's adapter on
    the leaderboard, and turn the votes into the DPO dataset."""
    proc, url = start_app(env={"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN})
    try:
        with browser_page(url) as page:
            page.get_by_role("tab", name="Train").click()
            page.get_by_text("Preference votes (blind Compare)").click()
            page.locator("#votes-dataset input, #votes-dataset textarea").first.fill(dataset)
            page.locator("#votes-pull").click()
            page.wait_for_function("() => /added for review|⚠️/.test(document.querySelector('#votes-line')?.innerText)",
                                   timeout=60_000)
            line = page.locator("#votes-line").inner_text()
            assert "6 vote(s) from " + dataset in line and "2 bad line(s) skipped" in line, line
            page.locator("#votes-accept").click()
            page.wait_for_function("() => document.querySelector('#votes-leaderboard')?.innerText"
                                   ".includes('tester/lumen-vote')", timeout=30_000)
            assert "6 vote(s) accepted" in page.locator("#votes-line").inner_text()
            page.locator("#votes-leaderboard").scroll_into_view_if_needed()
            shoot(page, "votes-pulled.png")
            page.locator("#train-on-votes").click()
            page.wait_for_function("() => document.querySelector('#votes-line')?.innerText.includes('exported')",
                                   timeout=30_000)
            assert "4 preference pair(s) exported" in page.locator("#votes-line").inner_text()
            assert page.locator("#cfg-objective").get_by_role("radio", name="dpo", exact=True).is_checked()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_space_votes_reach_the_hub_and_come_back_for_training(hub, tiny_run, data_home, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, hf_hub_download

    from core.feedback import votes
    from core.feedback.leaderboard import leaderboard
    from core.hub.votes_pull import pull_votes

    endpoint, app = hub
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    publish.push_adapter(tiny_run.name, "tester/lumen-vote", TOKEN)
    space.push_space(tiny_run.name, "tester/lumen-vote-space", "tester/lumen-vote", TOKEN)
    secret = app.state.repos[("space", "tester/lumen-vote-space")]["secrets"]["HF_TOKEN"]
    assert secret == TOKEN and app.state.repos[("dataset", "/".join(VOTES))]["private"]
    app_file = hf_hub_download("tester/lumen-vote-space", "app.py", repo_type="space", endpoint=endpoint,
                               local_dir=tmp_path / "space")
    proc, url = start_space(app_file, endpoint, secret, tmp_path / "space")
    try:
        verdicts = vote_in_the_space(url)
    finally:
        proc.send_signal(signal.SIGTERM)  # a Space restart: the last votes are pushed on the way out
        proc.wait(timeout=60)
    pushed = pushed_votes(app)
    assert sorted(v["choice"] for v in pushed) == sorted(verdicts + ["up"]), (tmp_path / "space/space.log").read_text()
    blind = [v for v in pushed if v["choice"] != "up"]
    assert all({s["adapter"] for s in v["sides"].values()} == {None, "tester/lumen-vote"} for v in blind)
    assert all(v["session"] and v["session"] != "visitor-one" and v["time"] < time.time() for v in pushed)

    HfApi(endpoint=endpoint, token=TOKEN).upload_file(
        path_or_fileobj=b'not json\n{"id": "0123456789", "choice": "A"}\n', path_in_repo="votes/broken.jsonl",
        repo_id="/".join(VOTES), repo_type="dataset")
    votes.store().unlink(missing_ok=True)
    pull_in_the_lab("/".join(VOTES), endpoint, tmp_path / "lab-hf-home")
    commit = HfApi(endpoint=endpoint, token=TOKEN).dataset_info("/".join(VOTES)).sha
    assert {v["source"] for v in votes.read()} == {f"hub:{'/'.join(VOTES)}@{commit}"} and len(votes.read()) == 6
    again = pull_votes("/".join(VOTES), TOKEN)
    assert (again.added, again.known, again.bad) == (0, 6, 2), "a second pull adds nothing"
    assert "broken.jsonl:1: not JSON" in again.line() and "broken.jsonl:2: not a vote" in again.bad_lines[1]
    entrants = {row["entrant"] for row in leaderboard(votes.read())}
    assert "tester/lumen-vote" in entrants and len(entrants) == 2
    votes.store().unlink()
