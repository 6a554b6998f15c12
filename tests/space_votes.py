"""The published compare-chat Space, run as a real app against the local test Hub, and a
visitor voting in it (through the queue and in Chromium); conftest's `space_votes` fixture uses
it once per session, and both the Space test and the lab's preference-loop test read its votes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx

from tests.browser import browser_page, shoot
from tests.conftest import free_port, wait_for
from tests.raw_client import RawApp

TOKEN = "hf_test_valid_token_abcdefghijklmnop"
SPACE = "tester/lumen-vote-space"
MODEL_REPO = "tester/lumen-vote"
VOTES = SPACE + "-votes"
BROKEN = b'not json\n{"id": "0123456789", "choice": "A"}\n'  # two lines a pull must report, not crash on


def publish_vote_and_stop(run_name: str, endpoint: str, folder) -> list[str]:
    """Publish `run_name` with its Space, run the Space, vote in it, stop it the way a restart
    does (its last votes pushed on the way out), then add two broken lines to the dataset.
    Returns the verdicts cast (the thumb last, as "up")."""
    from huggingface_hub import HfApi, hf_hub_download

    from core.hub import publish, space

    publish.push_adapter(run_name, MODEL_REPO, TOKEN)
    space.push_space(run_name, SPACE, MODEL_REPO, TOKEN)
    app_file = hf_hub_download(SPACE, "app.py", repo_type="space", endpoint=endpoint, local_dir=folder)
    hf_hub_download(SPACE, "log_budget.py", repo_type="space", endpoint=endpoint, local_dir=folder)
    proc, url = start_space(app_file, endpoint, TOKEN, folder)
    try:
        verdicts = vote_in_the_space(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    HfApi(endpoint=endpoint, token=TOKEN).upload_file(path_or_fileobj=BROKEN, path_in_repo="votes/broken.jsonl",
                                                      repo_id=VOTES, repo_type="dataset")
    return verdicts + ["up"]


def start_space(app_file, endpoint: str, token: str, folder) -> tuple[subprocess.Popen, str]:
    """The Space's app.py, run as the Space runs it: its secret as HF_TOKEN, on a free port."""
    from core.inference.models import resolve_model

    port = free_port()
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HOME": str(folder / "hf-home"),
           "BASE_MODEL": resolve_model("smollm2-135m-instruct"), "VOTES_DIR": str(folder / "votes"),
           "VOTES_EVERY_MINUTES": "60", "MAX_NEW_TOKENS": "8", "GRADIO_SERVER_PORT": str(port),
           "SPACE_ID": SPACE}
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
    files = app.state.repos[("dataset", VOTES)]["files"]
    return [json.loads(line) for path, data in files.items() if path.endswith(".jsonl") and data != BROKEN
            for line in data.decode().splitlines() if line.strip()]


def vote_in_the_space(url: str) -> list[str]:
    """4 blind verdicts through gradio_client, a thumb and the attacks by fn_index through the
    queue (forged, repeated and oversized votes refused), and a blind vote in Chromium.
    Returns the verdicts."""
    from gradio_client import Client

    client, verdicts = Client(url, verbose=False), ["A", "B", "tie", "A"]
    for n, choice in enumerate(verdicts):
        *_, status = client.predict(f"Question {n}: who are you?", [], [], True, api_name="/ask")
        assert "Which answer is better" in status, status
        assert "Vote saved" in client.predict(api_name=f"/vote_{choice}")
    raw, session = RawApp(url), "visitor-one"
    ask, vote_a = raw.fn_index(api_name="ask"), raw.fn_index(api_name="vote_A")
    forged = raw.call(vote_a, [None], "never-asked")
    assert not forged["ok"] and "Nothing to vote on" in str(forged["error"]), forged
    assert raw.rest([None], api_name="vote_A") == 404, "no REST route beside the queue"
    huge = raw.call(ask, ["x" * 2_001, [], [], True], session)
    assert not huge["ok"] and "at most 2000 characters" in str(huge["error"]), huge
    assert raw.call(ask, ["Who made you?", [], [], True], session)["ok"]
    assert raw.call(vote_a, [None], session)["ok"] and not raw.call(vote_a, [None], session)["ok"], "once a pair"
    verdicts.append("A")
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


