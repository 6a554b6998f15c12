"""The public app (a Space, a share link) attacked as a script would: every listener by fn_index.

An anonymous session is refused every guarded action and every server path, gets capped sizes,
and writes no files; the same actions succeed once the session is unlocked with the admin key,
and under --auth. Real server, real model; see SECURITY.md for the list of attacks.
"""
from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.conftest import ADMIN_KEY, ARTIFACTS, ROOT, start_app
from tests.raw_client import RawApp

pytestmark = pytest.mark.slow
# The exact one-line refusals of core.access, each a whole sentence.
REFUSALS = [re.compile(p) for p in (
    r"Log in to do [\w ',]+: this app is public, and only chat is open to everyone\.",
    r"On a public app, pick one of the listed models; other models need a login\.",
    r"On a public app, pick one of the finished runs as the adapter; folders need a login\.",
    r"On a public app, use a bundled dataset or upload a file; server paths are not readable\.",
    r"[\w ]+ is closed to visitors on this public app \(the owner can open it with FINETUNE_LAB_VISITOR_HUB=1\)\.",
)]
CHAT = ["Hi", [], [], "smollm2-135m-instruct", None, "Single", "", 0.0, 0.9, 4, 1.1, False, None, None]


def text_of(result) -> str:
    return json.dumps(result["data"], ensure_ascii=False) + str(result["error"])


def refused(result) -> bool:
    return any(pattern.search(text_of(result)) for pattern in REFUSALS)


def snapshot(folder) -> dict:
    """Every file and folder under `folder`, with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def secret(data_home):
    path = data_home.parent / f"secret-{uuid.uuid4().hex[:6]}.csv"
    path.write_text("question,answer\nthe password,hunter2\n")
    yield path
    path.unlink()


def guarded_calls(raw: RawApp, tiny_run, secret, tiny_model_dir) -> dict:
    """Each guarded action as (fn_index, inputs), built from the served page's own config."""
    start, chat = raw.fn_index(elem_id="train-start"), raw.fn_index(api_name="chat")
    inspect = raw.fn_index(elem_id="cfg-dataset", event="change")
    chat_args = CHAT
    return {
        "train start from the form": (start, raw.defaults(start, output_name="attack-form", max_steps=1)),
        "train recipe": (raw.fn_index(api_name="train_recipe"), ["tiny", "output_name: attack-recipe"]),
        "stop": (raw.fn_index(api_name="train_stop"), [tiny_run.name]),
        "resume": (raw.fn_index(api_name="train_resume"), [tiny_run.name]),
        "delete": (raw.fn_index(api_name="train_delete"), [tiny_run.name, True]),
        "publish adapter": (raw.fn_index(api_name="publish_adapter"), [tiny_run.name, "me/x", False, "hf_x",
                                                                        "adapter"]),
        "publish gguf": (raw.fn_index(api_name="publish_adapter"), [tiny_run.name, "me/x", False, "hf_x", "gguf-q4_0"]),
        "export gguf": (raw.fn_index(api_name="export_model"), [tiny_run.name, "gguf", "bf16", "q8_0"]),
        "publish space": (raw.fn_index(api_name="publish_space"), [tiny_run.name, "me/s", "me/x", False, "hf_x", ""]),
        "judge a run": (raw.fn_index(api_name="judge_next"), [tiny_run.name]),
        "evaluate a run": (raw.fn_index(api_name="evaluate_run"), [tiny_run.name]),
        "judge vote": (raw.fn_index(api_name="judge_A"), [None]),
        "arbitrary model folder": (chat, [*chat_args[:3], str(tiny_model_dir), *chat_args[4:]]),
        "arbitrary Hub id": (chat, [*chat_args[:3], "someone/some-model", *chat_args[4:]]),
        "arbitrary adapter folder": (chat, [*chat_args[:4], str(tiny_run / "adapter"), "Compare", *chat_args[6:]]),
        "server path as dataset": (inspect, [str(secret), "", []]),
        "Hub dataset id": (inspect, ["someone/secret-set:subset@train", "", []]),
        "Hub dataset preview": (raw.fn_index(api_name="data_preview"), ["someone/secret-set", "sft", 0,
                                                                             "smollm2-135m-instruct", "", 0]),
        "Hub model search": (raw.fn_index(api_name="hub_models"), ["chat / text generation", "", "transformers",
                                                                           1000, "downloads"]),
        "Hub dataset search": (raw.fn_index(api_name="hub_datasets"), ["any task", "", "downloads"]),
        "Hub adapter": (chat, [*chat_args[:4], "someone/some-adapter", "Compare", *chat_args[6:]]),
        "chatterbot: glob": (inspect, ["chatterbot:../../../../../../../**/*", "", []]),
        "identity: suffix as a relative file": (inspect, ["identity:anything", "", []]),
        "shakespeare: relative path": (inspect, ["shakespeare:../x", "", []]),
        "preview with a server path as the model": (raw.fn_index(api_name="data_preview"),
                                                    ["identity", "sft", 0, "/etc/passwd", "", 0]),
        "preview with a Hub id as the model": (raw.fn_index(api_name="data_preview"),
                                               ["identity", "sft", 0, "someone/secret-model", "", 0]),
        "votes table": (raw.fn_index(api_name="votes_table"), []),
        "pull votes from the Hub": (raw.fn_index(api_name="votes_pull"), ["tester/lumen-votes", "hf_x"]),
        "accept votes": (raw.fn_index(api_name="votes_accept"), []),
        "votes to a DPO dataset": (raw.fn_index(api_name="votes_to_dataset"), []),
        "thumbs to a KTO dataset": (raw.fn_index(api_name="thumbs_to_dataset"), []),
    }


def test_anonymous_session_is_refused_every_guarded_action(raw, tiny_run, secret, tiny_model_dir, data_home):
    """Each through the queue by fn_index, and through the REST route that skips the queue."""
    before = snapshot(data_home)
    for action, (index, data) in guarded_calls(raw, tiny_run, secret, tiny_model_dir).items():
        result = raw.call(index, data)
        assert refused(result), f"{action} was not refused: {text_of(result)[:300]}"
        assert "hunter2" not in text_of(result) and str(data_home) not in text_of(result), action
        assert raw.rest(data, fn_index=index) == 404, f"{action} answered on the REST route"
    assert snapshot(data_home) == before, "no file in the data dir may appear, change or vanish"


def test_owner_unlocked_by_key_can_do_them(raw, tiny_run, secret, tiny_model_dir):
    session = uuid.uuid4().hex[:11]
    assert "Wrong" in text_of(raw.call(raw.fn_index(api_name="unlock"), ["nope"], session))
    assert "Unlocked" in text_of(raw.call(raw.fn_index(api_name="unlock"), [ADMIN_KEY], session))
    calls = guarded_calls(raw, tiny_run, secret, tiny_model_dir)
    for action in ("arbitrary model folder", "server path as dataset", "publish adapter"):
        result = raw.call(*calls[action], session)
        assert not refused(result), f"{action} refused for the owner: {text_of(result)[:300]}"
    assert "hunter2" in text_of(raw.call(*calls["server path as dataset"], session))
    index, data = calls["train start from the form"]
    assert "Started **attack-form**" in text_of(raw.call(index, data, session))
    assert "Stopping" in text_of(raw.call(raw.fn_index(api_name="train_stop"), ["attack-form"], session))
    from training import jobs

    assert jobs.wait("attack-form", 120).state in ("stopped", "completed")
    assert "Deleted" in text_of(raw.call(raw.fn_index(api_name="train_delete"), ["attack-form", True], session))


def test_oversized_inputs_are_clamped_for_visitors(raw, tiny_run):
    chat = raw.fn_index(api_name="chat")
    def message(role, text):  # the Chatbot's wire format: content as a list of parts
        return {"role": role, "content": [{"type": "text", "text": text}]}

    long_history = [message("user", "x" * 5000), message("assistant", "ok")] * 3
    result = raw.call(chat, ["Hi", long_history, *CHAT[2:]])
    base = result["data"][0]
    kept = sum(len(part["text"]) for m in base for part in m["content"])
    assert 5000 < kept <= 8000 + 200, f"history is cut to its newest turns within the cap ({kept} characters)"
    result = raw.call(chat, ["y" * 9000, *CHAT[1:]])
    assert "Message too long" in text_of(result)
    result = raw.call(chat, ["Who are you?", [], [], "smollm2-135m-instruct", tiny_run.name, "Compare", *CHAT[6:]])
    assert "tuned:" in result["data"][2], "a finished run's adapter is open to visitors, by name"
    preview = preview_index(raw)
    result = raw.call(preview, raw.defaults(preview, dataset="shakespeare", objective="dapt", block_size=100000,
                                            stride=100000, max_rows=0))
    assert "windows of 512 tokens, a new one every 512 tokens" in text_of(result), text_of(result)[:300]
    embed = raw.fn_index(api_name="embed")
    result = raw.call(embed, ["guardian-headlines", None, "", "", 100000, "all-MiniLM-L6-v2"])
    assert "**2000 documents**" in text_of(result)
    cluster = raw.fn_index(api_name="cluster")
    result = raw.call(cluster, ["guardian-headlines", None, "", "", 1500, "all-MiniLM-L6-v2", "kmeans", 8, 15,
                                "tsne", "cluster"])
    assert "tsne maps at most 1000" in text_of(result)
    result = raw.call(embed, ["guardian-headlines", None, "", "", 50, "/root/some-model"])
    assert "embedder is all-MiniLM-L6-v2" in text_of(result)


def preview_index(raw: RawApp) -> int:
    """The 'Show what the model sees' listener: the one whose outputs include #model-sees."""
    seen = next(c["id"] for c in raw.config["components"] if c.get("props", {}).get("elem_id") == "model-sees")
    return next(d["id"] for d in raw.dependencies if seen in d["outputs"])


def test_yaml_preview_is_one_event_for_all_fields(raw):
    """A recipe changes every field at once: that must queue one preview, not one per field."""
    bursts = [d for d in raw.dependencies if len(d["targets"]) >= 30]
    assert len(bursts) == 1 and bursts[0]["trigger_mode"] == "always_last"


def test_one_address_holds_at_most_two_answers_in_the_queue(raw):
    """Gradio serves a pool first in, first out: a script's chats from fresh session ids would
    all be answered before anyone else's. One address gets two in the generation pool."""
    chat, sessions = raw.fn_index(api_name="chat"), [uuid.uuid4().hex[:11] for _ in range(12)]
    data = ["Count to ten.", *CHAT[1:9], 24, *CHAT[10:]]
    statuses = [raw.join_only(chat, data, session) for session in sessions]
    assert statuses.count(200) == 2 and statuses.count(503) == 10, statuses
    refused = raw.http.post(raw.url + "gradio_api/queue/join", json={
        "data": data, "fn_index": chat, "session_hash": uuid.uuid4().hex[:11], "event_data": None})
    assert "Wait for your answer before asking again (at most 2 at once from your address)." in refused.text
    for session, status in zip(sessions, statuses):
        if status == 200:
            raw.wait_session(session, 1)


def our_tracebacks(log_text: str) -> list[str]:
    """Tracebacks that pass through the project's own code, a message meant for the user
    (gr.Error) included: a refusal prints none, or a visitor's calls would fill the log."""
    blocks = log_text.split("Traceback (most recent call last):")[1:]
    return [b[-600:] for b in blocks if re.search(rf'File "{ROOT}/(?!\.venv)', b)]


def test_every_listener_by_fn_index_writes_nothing_for_a_visitor(raw, app_server, data_home):
    """Call every listener with the page's defaults from one anonymous session: no handler of
    ours may crash, and nothing may be written into the data dir."""
    log = ARTIFACTS / f"app-{app_server.rstrip('/').rsplit(':', 1)[1]}.log"
    log_start, before = log.stat().st_size, {p for p in data_home.rglob("*")}
    session = uuid.uuid4().hex[:11]
    for dep in raw.dependencies:
        if dep.get("backend_fn") is False:
            continue  # a front-end only listener (the chat Stop button's cancel)
        result = raw.call(dep["id"], raw.defaults(dep["id"]), session)
        assert result["status"] == 200, f"listener {dep['id']} was rejected before its handler: {text_of(result)}"
    created = {p for p in data_home.rglob("*")} - before
    assert not created, f"anonymous calls wrote files: {sorted(map(str, created))[:5]}"
    crashes = our_tracebacks(log.read_text(errors="replace")[log_start:])
    assert not crashes, crashes[0]


def test_auth_login_can_do_guarded_actions(tiny_run, tiny_model_dir):
    proc, url = start_app(["--auth", "owner:pw-4821"], env={"FINETUNE_LAB_PUBLIC": "1"})
    try:
        import httpx

        assert httpx.get(url + "config").status_code in (401, 403), "no config without the login"
        raw = RawApp(url, auth=("owner", "pw-4821"))
        delete = raw.call(raw.fn_index(api_name="train_delete"), ["no-such-run", True])
        assert "No run named" in text_of(delete)
        chat = raw.call(raw.fn_index(api_name="chat"), ["Hi", [], [], str(tiny_model_dir), *CHAT[4:]])
        assert chat["ok"] and "public app" not in text_of(chat)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
