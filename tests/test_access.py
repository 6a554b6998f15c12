"""A public app: chat stays open, training/deleting/publishing are refused server-side until unlocked."""
from __future__ import annotations

import pytest

from core import access
from tests.conftest import start_app

pytestmark = pytest.mark.slow
KEY = "admin-key-for-tests-4821"


def test_private_app_needs_no_login(monkeypatch):
    monkeypatch.delenv("FINETUNE_LAB_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert access.require_user(None) is None


def test_space_owner_oauth_unlocks_only_the_owner(monkeypatch):
    class Request:
        def __init__(self, session):
            self.session_hash, self.username = session, None

    class Profile:
        def __init__(self, name):
            self.username = name

    monkeypatch.setenv("SPACE_ID", "alice/finetune-lab")
    access.unlock_from_oauth(Request("s-bob"), Profile("bob"))
    with pytest.raises(access.AccessDenied):
        access.require_user(Request("s-bob"))
    access.unlock_from_oauth(Request("s-alice"), Profile("alice"))
    assert access.require_user(Request("s-alice")) == "admin"


def test_public_app_reads_no_server_paths(monkeypatch, tmp_path, data_home):
    from tabs import topics, train

    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    secret = tmp_path / "secret.csv"
    secret.write_text("question,answer\nthe password,hunter2\n")
    summary, table, _ = train.inspect_data(str(secret))
    assert "server paths are not readable" in summary and table is None
    assert "72 rows" in train.inspect_data("identity")[0]
    uploaded = train.save_upload(str(secret))
    assert "**1 rows**" in train.inspect_data(uploaded)[0], "uploads land in the data dir and stay readable"
    info = topics.embed_corpus(str(secret), None, "question", "", 100, "all-MiniLM-L6-v2", progress=None)
    assert "server paths are not readable" in info


def test_public_app_refuses_unauthenticated_clients(tiny_run):
    from gradio_client import Client

    proc, url = start_app(env={"FINETUNE_LAB_PUBLIC": "1", "FINETUNE_LAB_ADMIN_KEY": KEY})
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="Log in to do training"):
            client.predict("tiny", "max_steps: 1", api_name="/train_recipe")
        assert "Log in" in client.predict("some-run", True, api_name="/train_delete")
        assert "Log in" in client.predict(tiny_run.name, "tester/x", False, "hf_x", api_name="/publish_adapter")
        base, *_ = client.predict("Hi", [], [], "smollm2-135m-instruct", None, "Single", "", 0.0, 0.9, 8, 1.1,
                                  api_name="/chat")
        assert base[-1]["role"] == "assistant", "chat stays open to everyone"
        assert "Wrong" in client.predict("not-the-key", api_name="/unlock")
        assert "Unlocked" in client.predict(KEY, api_name="/unlock")
        assert "No run named" in client.predict("some-run", True, api_name="/train_delete")
        other = Client(url, verbose=False)
        assert "Log in" in other.predict("some-run", True, api_name="/train_delete"), "unlock is per session"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
