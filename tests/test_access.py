"""Access rules as plain functions: unlock, sessions' own uploads, quotas, the child's environment.
The served public app is attacked in tests/test_public.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import access

pytestmark = pytest.mark.slow


def test_private_app_needs_no_login(monkeypatch):
    monkeypatch.delenv("FINETUNE_LAB_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert access.require_user(None) is None


class Request:
    def __init__(self, session, host="10.0.0.1"):
        self.session_hash, self.username = session, None
        self.client, self.headers = type("Client", (), {"host": host})(), {}


def test_admin_key_trust_is_bound_to_its_address_and_expires(monkeypatch):
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    monkeypatch.setenv("FINETUNE_LAB_ADMIN_KEY", "k-4821")
    monkeypatch.setattr(access, "THROTTLE", access.KeyThrottle())
    assert "Unlocked" in access.unlock("k-4821", Request("s-owner", "10.0.0.1"))
    assert access.is_trusted(Request("s-owner", "10.0.0.1"))
    assert not access.is_trusted(Request("s-owner", "10.0.0.9")), "a seen session id from elsewhere is no login"
    monkeypatch.setattr(access.time, "time", lambda: access._UNLOCKED["s-owner"][1] + 1)
    assert not access.is_trusted(Request("s-owner", "10.0.0.1")), "trust expires"


def test_wrong_keys_are_throttled_per_address_and_globally(monkeypatch):
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    monkeypatch.setenv("FINETUNE_LAB_ADMIN_KEY", "k-4821")
    throttle = access.KeyThrottle()
    monkeypatch.setattr(access, "THROTTLE", throttle)
    answers = [access.unlock(f"guess-{n}", Request(f"s{n}", "10.0.0.2")) for n in range(5)]
    assert answers[:3] == ["Wrong admin key."] * 3 and answers[3].startswith("Too many wrong keys: try again in")
    assert access.unlock("k-4821", Request("s-right", "10.0.0.2")).startswith("Too many"), "the key waits too"
    assert "Unlocked" in access.unlock("k-4821", Request("s-other", "10.0.0.3")), "another address is not held"
    for n in range(throttle.GLOBAL_PER_HOUR):  # many addresses guessing at once
        throttle.failed(f"10.1.{n // 250}.{n % 250}")
    assert access.unlock("k-4821", Request("s-new", "10.0.0.4")).startswith("Too many"), "the global brake"


def test_download_urls_name_no_session(monkeypatch):
    from tabs import session

    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    path = session.download_path(Request("sessionhash123"), "train-config.yaml")
    assert "sessionhash123" not in str(path) and path.parent.parent.name == "visitors"
    assert session.download_path(Request("sessionhash123"), "train-config.yaml").parent != path.parent


def test_every_page_loads_default_yaml_is_one_file(monkeypatch):
    """The Train form's YAML preview answers each page load: its file is named by its text, so
    two visitors' default configs are one file, not a folder each, and a new text adds one."""
    from tabs import session, train, train_form
    from training.config import TrainConfig

    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    defaults = train_form.config_to_values(TrainConfig())
    files = {train.cli_preview(defaults, Request(visitor))[2] for visitor in ("visitor-a", "visitor-b")}
    [shown] = files
    assert Path(shown).parent.parent.name == "visitors" and Path(shown).read_text() == TrainConfig().to_yaml()
    folders = len(list(Path(shown).parent.parent.iterdir()))
    other = train.cli_preview({**defaults, "max_steps": 7 + os.getpid()}, Request("visitor-a"))[2]  # a new text
    assert other != shown and len(list(Path(shown).parent.parent.iterdir())) == folders + 1


def test_public_app_reads_no_server_paths(monkeypatch, tmp_path, data_home):
    from tabs import session, topics, train_data

    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    secret = tmp_path / "secret.csv"
    secret.write_text("question,answer\nthe password,hunter2\n")
    summary, table, _ = train_data.inspect_data(str(secret))
    assert "server paths are not readable" in summary and table is None
    assert "72 rows" in train_data.inspect_data("identity")[0]
    mine, theirs = Request("visitor-a"), Request("visitor-b")
    uploaded = session.save_upload(str(secret), mine)
    assert "visitors" in uploaded and "**1 rows**" in train_data.inspect_data(uploaded, "", mine, [uploaded])[0]
    assert "not readable" in train_data.inspect_data(uploaded, "", theirs, [])[0], "uploads belong to their session"
    info = topics.embed_corpus(str(secret), None, "question", "", 100, "all-MiniLM-L6-v2", None, progress=None)
    assert "server paths are not readable" in info


def test_visitor_upload_quota(monkeypatch, tmp_path, data_home):
    from tabs import session

    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    monkeypatch.setattr(session, "VISITOR_MAX_FILES", 2)
    small = tmp_path / "a.txt"
    small.write_text("hello\n")
    visitor = Request("visitor-quota")
    session.save_upload(str(small), visitor)
    session.save_upload(str(small), visitor)
    with pytest.raises(access.AccessDenied, match="quota"):
        session.save_upload(str(small), visitor)
    stale = session.upload_folder(Request("visitor-long-gone"))
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    session.save_upload(str(small), Request("visitor-new"))
    assert not stale.exists(), "visitor uploads older than a day are removed"


def test_owner_lists_the_models_visitors_may_use(monkeypatch):
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    visitor = Request("visitor-models")
    assert access.check_model("smollm2-135m-instruct", visitor)
    with pytest.raises(access.AccessDenied):
        access.check_model("someone/model", visitor)
    monkeypatch.setenv("FINETUNE_LAB_ALLOWED_MODELS", "someone/model, other/one")
    assert access.check_model("someone/model", visitor) == "someone/model"


def test_training_process_gets_no_secrets(monkeypatch):
    from training.jobs import child_env

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("FINETUNE_LAB_ADMIN_KEY", "k")
    monkeypatch.setenv("FINETUNE_LAB_AUTH", "u:p")
    monkeypatch.setenv("HF_HOME", "/somewhere")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the CPU features torch may use: as in the app
    env = child_env(1)
    assert not {"HF_TOKEN", "FINETUNE_LAB_ADMIN_KEY", "FINETUNE_LAB_AUTH"} & set(env)
    assert env["HF_HOME"] == "/somewhere" and env["OMP_NUM_THREADS"] == "1" and "PATH" in env
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_non_loopback_host_without_auth_is_public(monkeypatch):
    import app

    assert access.is_loopback("127.0.0.1") and not access.is_loopback("0.0.0.0")
    from core import settings

    monkeypatch.setitem(settings._DECLARED, "public", False)  # restored after the test; main declares it
    monkeypatch.setitem(settings._DECLARED, "serving", False)
    class Unlaunched:  # main's calls, without a server
        app = type("Routes", (), {"include_router": lambda self, router: None})()

        def launch(self, **kw):
            pass

        def block_thread(self):
            pass

    monkeypatch.setattr(app, "build_app", Unlaunched)
    app.main(["--host", "127.0.0.1"])
    assert not access.is_public(), "loopback stays private"
    app.main(["--host", "0.0.0.0", "--auth", "u:p"])
    assert not access.is_public(), "a login in front keeps it private"
    app.main(["--host", "0.0.0.0"])
    assert access.is_public()


def test_request_guards_refuse_before_the_app_reads(tmp_path):
    """BodyLimit answers 413 to an oversized body, declared or not; UploadCacheLimit 507 to an
    upload while the upload folder is over its limit (the app behind them is never reached)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from core.request_limits import BodyLimit, UploadCacheLimit

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    routes = [Route("/gradio_api/queue/join", echo, methods=["POST"]), Route("/gradio_api/upload", echo, methods=["POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(BodyLimit, limit=1000),
                                               Middleware(UploadCacheLimit, folder=str(tmp_path), limit=100)])
    client = TestClient(app)
    assert client.post("/gradio_api/queue/join", content=b"x" * 999).text == "999"
    assert client.post("/gradio_api/queue/join", content=b"x" * 1001).status_code == 413
    assert client.post("/gradio_api/queue/join", content=iter([b"x" * 600, b"x" * 600])).status_code in (400, 413)
    assert client.post("/gradio_api/upload", content=b"y" * 5000).text == "5000", "uploads are Gradio's to cap"
    (tmp_path / "old-upload").write_bytes(b"z" * 101)
    assert client.post("/gradio_api/upload", content=b"y").status_code == 507


def test_fair_order_serves_addresses_round_robin():
    """A script's events wait behind everyone else's first: ranks count what each address has
    running or waiting before them, ties keep their arrival order."""
    from core.request_limits import fair_order

    waiting = ["bot-1", "bot-2", "ann", "bob", "bot-3", "ann-2", "cy"]
    order = fair_order(waiting, running=["bot-0"], key=lambda e: e.split("-")[0])
    assert order == ["ann", "bob", "cy", "bot-1", "ann-2", "bot-2", "bot-3"]
    assert fair_order(["a", "b", "c"], [], key=lambda e: e) == ["a", "b", "c"], "one each: arrival order"


def test_the_log_budget_passes_a_minutes_worth_then_counts_what_it_leaves_out():
    """core.log_budget: 30 characters a minute here, on a clock the test moves."""
    import io

    from core.log_budget import LogBudget

    now = [0.0]
    out = io.StringIO()
    log = LogBudget(out, per_minute=30, clock=lambda: now[0])
    for line in ("0123456789\n", "abcdefghij\n", "KLMNOPQRST\n", "UVWXYZ0123\n"):
        assert log.write(line) == len(line)  # a caller never sees a short write
    assert out.getvalue() == "0123456789\nabcdefghij\n", "the last two lines would go over the 30"
    now[0] += 600  # ten minutes: the budget refills to 30, never more
    log.write("ok\n")
    assert out.getvalue().endswith("\n[log] 22 characters left out: over this public app's log budget of 30 a "
                                   "minute\nok\n") and log.dropped == 0
    now[0] += 60  # the note overdrew the budget: a minute later it is still below the 3 characters asked
    log.write("no\n")
    assert out.getvalue().endswith("ok\n") and log.dropped == 3
    assert log.encoding == out.encoding and log.getvalue() == out.getvalue(), "the rest is the stream's"
