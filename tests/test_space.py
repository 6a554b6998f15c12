"""The app launched as a Hugging Face Space launches it: SPACE_ID, SPACE_AUTHOR_NAME,
GRADIO_SERVER_NAME=0.0.0.0, and with `hf_oauth: true` the SYSTEM and OAUTH_* variables.

A real login needs the Hub, so the owner's and another user's logins are the signed session
cookies Gradio's OAuth middleware would set after one (signed with the secret the Space gives,
as Starlette signs them). Behind the Space's proxy the client address is the last
X-Forwarded-For entry, so the tests play several visitors from one machine.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, start_app
from tests.raw_client import RawApp

pytestmark = pytest.mark.slow
OAUTH_SECRET = "space-oauth-secret-for-tests"
SPACE = {"SPACE_ID": "alice/finetune-lab", "SPACE_AUTHOR_NAME": "alice", "GRADIO_SERVER_NAME": "0.0.0.0",
         "FINETUNE_LAB_ADMIN_KEY": ADMIN_KEY}
OAUTH = {"SYSTEM": "spaces", "OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": OAUTH_SECRET,
         "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}


def login_cookie(username: str) -> str:
    """The session cookie Gradio's OAuth callback sets for `username` on this Space."""
    from itsdangerous import TimestampSigner

    info = {"oauth_info": {"access_token": "t", "expires_at": int(time.time()) + 3600,
                           "userinfo": {"preferred_username": username, "name": username,
                                        "profile": f"https://huggingface.co/{username}", "picture": ""}}}
    secret = hashlib.sha256((OAUTH_SECRET + "-v4").encode()).hexdigest()
    return TimestampSigner(secret).sign(base64.b64encode(json.dumps(info).encode())).decode()


@pytest.fixture(scope="module")
def oauth_space(tiny_run):
    proc, url = start_app(env={**SPACE, **OAUTH})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def has_login_button(url: str) -> bool:
    """gr.LoginButton is served as a button labelled 'Sign in with Hugging Face'."""
    return any("Sign in with Hugging Face" in str(c.get("props", {}).get("value"))
               for c in httpx.get(url + "config").json()["components"])


def delete_missing_run(raw: RawApp, headers: dict) -> str:
    result = raw.call(raw.fn_index(api_name="train_delete"), ["no-such-run", True], headers=headers)
    return json.dumps(result["data"]) + str(result["error"])


def test_space_with_oauth_serves_public_with_a_login_button(oauth_space):
    assert httpx.get(oauth_space).status_code == 200
    assert has_login_button(oauth_space)
    raw = RawApp(oauth_space)
    assert raw.rest([], api_name="adapters") == 404, "no REST route beside the queue on a Space either"
    assert "Log in to do deleting runs" in delete_missing_run(raw, {"x-forwarded-for": "10.9.0.1"})


def test_only_the_space_owners_login_unlocks(oauth_space):
    raw = RawApp(oauth_space)
    bob = {"cookie": f"session={login_cookie('bob')}", "x-forwarded-for": "10.9.0.2"}
    alice = {"cookie": f"session={login_cookie('alice')}", "x-forwarded-for": "10.9.0.3"}
    assert "Log in to do deleting runs" in delete_missing_run(raw, bob)
    assert "No run named" in delete_missing_run(raw, alice), "the owner acts"
    forged = {"cookie": f"session={login_cookie('alice')[:-4]}abcd", "x-forwarded-for": "10.9.0.4"}
    assert "Log in to do deleting runs" in delete_missing_run(raw, forged), "a bad signature is no login"


def test_admin_key_is_throttled_per_address_and_bound_to_it(oauth_space):
    raw, unlock = RawApp(oauth_space), None
    unlock = raw.fn_index(api_name="unlock")
    guesser = {"x-forwarded-for": "10.9.1.1"}
    answers = [json.dumps(raw.call(unlock, [f"guess-{n}"], headers=guesser)["data"]) for n in range(5)]
    assert all("Wrong admin key" in a for a in answers[:3]) and "Too many wrong keys" in answers[3], answers
    owner = {"x-forwarded-for": "10.9.1.2"}
    assert "Unlocked" in json.dumps(raw.call(unlock, [ADMIN_KEY], "owner-session", headers=owner)["data"])
    delete = raw.fn_index(api_name="train_delete")
    mine = raw.call(delete, ["no-such-run", True], "owner-session", headers=owner)
    assert "No run named" in json.dumps(mine["data"])
    stolen = raw.call(delete, ["no-such-run", True], "owner-session", headers={"x-forwarded-for": "10.9.1.3"})
    assert "Log in to do deleting runs" in json.dumps(stolen["data"]), "a session id seen elsewhere is no login"


def test_space_without_oauth_has_no_login_and_stays_public(tiny_run, tmp_path):
    """Outside a real Space Gradio would mock the login with this machine's Hub account. With no
    persistent storage (no /data) and no FINETUNE_LAB_HOME, files go to ~/.finetune-lab."""
    home = tmp_path / "home"
    proc, url = start_app(env={**SPACE, "FINETUNE_LAB_HOME": "", "HOME": str(home)})
    try:
        assert httpx.get(url).status_code == 200 and not has_login_button(url)
        raw = RawApp(url)
        alice = {"cookie": f"session={login_cookie('alice')}"}
        assert "Log in to do deleting runs" in delete_missing_run(raw, alice)
        thumb_as_a_visitor(url)  # visitors chat and vote
        if not Path("/data").exists():
            assert (home / ".finetune-lab" / "votes" / "visitors.jsonl").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_address_cannot_line_up_answers_ahead_of_another(oauth_space):
    """Behind the Space's proxy: one address's fresh sessions get two long answers queued; a
    visitor from another address is still let in and answered."""
    raw = RawApp(oauth_space)
    chat, attacker = raw.fn_index(api_name="chat"), {"x-forwarded-for": "10.9.3.1"}
    long = ["Count to two hundred.", [], [], "smollm2-135m-instruct", None, "Single", "", 0.0, 0.9, 256, 1.1,
            False, None, None]
    sessions = [uuid.uuid4().hex[:11] for _ in range(6)]
    statuses = [raw.http.post(raw.url + "gradio_api/queue/join", headers=attacker, json={
        "data": long, "fn_index": chat, "session_hash": session, "event_data": None}).status_code
        for session in sessions]
    assert statuses.count(200) == 2, statuses
    honest = raw.call(chat, ["Hi", *long[1:9], 4, *long[10:]], headers={"x-forwarded-for": "10.9.3.2"})
    assert honest["ok"] and honest["data"][0][-1]["content"], "another address is answered"
    for session, status in zip(sessions, statuses):
        if status == 200:
            raw.wait_session(session, 1)


def thumb_as_a_visitor(url: str) -> None:
    """A visitor's chat and a thumb on its answer: the one write a visitor makes (the vote box)."""
    raw, session = RawApp(url), uuid.uuid4().hex[:11]
    chat = ["Hi", [], [], "smollm2-135m-instruct", None, "Single", "", 0.0, 0.9, 4, 1.1, False, None, None]
    assert raw.call(raw.fn_index(api_name="chat"), chat, session)["ok"]
    like = raw.call(raw.fn_index(elem_id="base-chat", event="like"), [None, False], session,
                    {"index": 1, "value": "", "liked": True})
    assert "saved for the base answer" in json.dumps(like["data"], ensure_ascii=False), like


def test_space_keeps_files_in_its_persistent_storage(tiny_run, tmp_path):
    """A Space with persistent storage has it mounted at /data: its files go to /data/finetune-lab
    (FINETUNE_LAB_HOME, which the other tests set, is unset here)."""
    data = Path("/data")
    if (data / "finetune-lab").exists():
        pytest.skip("/data/finetune-lab exists here already: it is not ours to write into")
    made_data = not data.exists()
    data.mkdir(exist_ok=True)
    proc, url = start_app(env={**SPACE, "FINETUNE_LAB_HOME": "", "HOME": str(tmp_path / "home")})
    try:
        thumb_as_a_visitor(url)
        stored = data / "finetune-lab" / "votes" / "visitors.jsonl"
        assert stored.is_file(), sorted(map(str, (data / "finetune-lab").rglob("*")))[:10]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data / "finetune-lab", ignore_errors=True)
        if made_data:
            data.rmdir()
