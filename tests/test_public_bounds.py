"""What a visitor's calls may cost the public app: the REST route beside the queue is closed,
memory is bounded before the work (a 12 MB history, a 42 MB upload, thousands of labels, with the
server's RSS read before and after), votes count only for answers given and only once, and a
preview leaves no datasets cache. Real server, real model; the refusals are in test_public.py.
"""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import ADMIN_KEY, server_rss_mb
from tests.raw_client import RawApp
from tests.test_public import CHAT, snapshot, text_of

pytestmark = pytest.mark.slow


def test_rest_route_is_closed_and_the_queue_still_answers(raw, app_server):
    """/gradio_api/run/<name> would run handlers beside the queue and its per-session limits."""
    chat = raw.fn_index(api_name="chat")
    assert raw.rest(CHAT, api_name="chat") == 404 and raw.rest(CHAT, fn_index=chat) == 404
    from gradio_client import Client

    assert Client(app_server, verbose=False).predict(api_name="/adapters") is not None


def test_a_huge_chat_history_is_refused_before_it_is_parsed(raw, app_server):
    """200,000 messages (12 MB of JSON) cost the server half a gigabyte once Gradio parsed them."""
    chat, rss = raw.fn_index(api_name="chat"), server_rss_mb(app_server)
    history = [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}] * 200_000
    result = raw.call(chat, ["Hi", history, *CHAT[2:]])
    assert result["status"] == 413 and "Request too large" in result["error"], text_of(result)[:200]
    assert server_rss_mb(app_server) - rss < 50, "the body was refused before it was read"


def upload(raw: RawApp, path) -> dict:
    """A file sent to Gradio's own upload route, as the page sends it; returns its FileData."""
    with open(path, "rb") as handle:
        sent = raw.http.post(raw.url + "gradio_api/upload", files={"files": (path.name, handle)})
    return {"path": sent.raise_for_status().json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_topics_upload_bomb_costs_the_documents_kept(raw, app_server, tmp_path):
    """A 42 MB file of 3.5 million one-line documents: a visitor's is refused by its size before
    it is read; the owner's, with a cap of 10, is read as a stream that keeps 10."""
    bomb = tmp_path / "bomb.txt"
    bomb.write_bytes(b"".join(b"doc %07d\n" % i for i in range(3_500_000)))
    embed, owner = raw.fn_index(api_name="embed"), uuid.uuid4().hex[:11]
    assert raw.call(embed, ["chatterbot", None, "", "", 10, "all-MiniLM-L6-v2"])["ok"]  # the embedder loaded first
    rss = server_rss_mb(app_server)
    visitor = raw.call(embed, ["guardian-headlines", upload(raw, bomb), "", "", 10, "all-MiniLM-L6-v2"])
    assert "an uploaded corpus may have at most 5 MB" in text_of(visitor), text_of(visitor)[:300]
    assert "Unlocked" in text_of(raw.call(raw.fn_index(api_name="unlock"), [ADMIN_KEY], owner))
    result = raw.call(embed, ["guardian-headlines", upload(raw, bomb), "", "", 10, "all-MiniLM-L6-v2"], owner)
    assert "**10 documents**" in text_of(result) and "of 3500000 documents" in text_of(result), text_of(result)[:300]
    assert server_rss_mb(app_server) - rss < 150, "a stream of lines, not the whole file in memory"


def test_thousands_of_labels_are_refused_before_a_confusion_matrix(raw):
    classify = raw.fn_index(api_name="classify")
    result = raw.call(classify, ["guardian-headlines", None, "", "Text", 2000, "all-MiniLM-L6-v2", "logreg"])
    assert "different labels, at most 50 here" in text_of(result), text_of(result)[:300]


def visitor_votes(data_home) -> list[dict]:
    path = data_home / "votes" / "visitors.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_thumb_counts_only_for_an_answer_given_and_only_once(raw, data_home):
    like = raw.fn_index(elem_id="base-chat", event="like")
    session, before = uuid.uuid4().hex[:11], len(visitor_votes(data_home))
    forged = {"index": 1, "value": "forged answer " * 1000, "liked": True}
    assert "Only an answer given in this session" in text_of(raw.call(like, [None, False], session, forged))
    answered = raw.call(raw.fn_index(api_name="chat"), ["Name a colour.", *CHAT[1:]], session)
    given = answered["data"][0][1]["content"][0]["text"]
    assert "saved for the base answer" in text_of(raw.call(like, [None, False], session, forged))
    assert "already voted" in text_of(raw.call(like, [None, False], session, {**forged, "liked": False}))
    saved = visitor_votes(data_home)[before:]
    assert len(saved) == 1 and saved[0]["answers"]["A"] == given, "the server's answer, not the client's"
    assert saved[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]


def test_concurrent_clicks_on_one_blind_pair_record_one_vote(raw, tiny_run, data_home):
    session, before = uuid.uuid4().hex[:11], len(visitor_votes(data_home))
    blind = ["Who are you?", [], [], "smollm2-135m-instruct", tiny_run.name, "Compare", *CHAT[6:11], True, None, None]
    assert "Which answer is better" in text_of(raw.call(raw.fn_index(api_name="chat"), blind, session))
    results = raw.call_many(raw.fn_index(api_name="vote_A"), [None], session, times=3)
    assert sum("Vote saved" in text_of(r) for r in results) == 1, [text_of(r)[:120] for r in results]
    assert len(visitor_votes(data_home)) == before + 1


def test_a_visitors_preview_of_their_upload_leaves_no_datasets_cache(raw, tmp_path):
    """datasets would build an Arrow cache of every file it reads; a visitor's preview reads
    into memory through a scratch folder removed at once."""
    import os
    from pathlib import Path

    cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(os.environ.get("HF_HOME") or
                                                             Path.home() / ".cache" / "huggingface") / "datasets")
    mine = tmp_path / f"mine-{uuid.uuid4().hex[:6]}.jsonl"  # new content: a cache would be new files
    mine.write_text("".join(json.dumps({"question": f"q{i} {uuid.uuid4().hex}", "answer": "a"}) + "\n"
                            for i in range(5)))
    dataset = next(c["id"] for c in raw.config["components"] if c.get("props", {}).get("elem_id") == "cfg-dataset")
    on_upload = next(d["id"] for d in raw.dependencies
                     if any(t[1] == "upload" for t in d["targets"]) and dataset in d["outputs"])
    session, before = uuid.uuid4().hex[:11], snapshot(cache) if cache.is_dir() else {}
    saved = raw.call(on_upload, [upload(raw, mine), None], session)["data"][0]
    summary = raw.call(raw.fn_index(elem_id="cfg-dataset", event="change"), [saved, "", None], session)
    assert "**5 rows**" in text_of(summary), text_of(summary)[:300]
    after = snapshot(cache) if cache.is_dir() else {}
    assert set(after) == set(before), f"new datasets cache files: {sorted(set(after) - set(before))[:3]}"


def test_values_gradio_refuses_add_at_most_the_log_budget(raw, app_server):
    """A choice that is not in a Radio, or a chat history not in Gradio's message shape, is
    refused by Gradio before any handler of ours, and Gradio prints its traceback for each
    (about 1.5 KB; no setting turns that off): 80 such calls printed 118 KB in 2.6 s. Through the
    public app's log budget (core.log_budget) they add at most a minute's worth. (For a minute
    after, the log may leave lines out: the tests that read it for a traceback run before this.)"""
    import time

    from core.log_budget import PUBLIC_PER_MINUTE
    from tests.conftest import ARTIFACTS

    log = ARTIFACTS / f"app-{app_server.rstrip('/').rsplit(':', 1)[1]}.log"
    chat, start, began = raw.fn_index(api_name="chat"), log.stat().st_size, time.monotonic()
    refused_by_gradio = 0
    while refused_by_gradio < 80:  # a queue refusal (this address's last event not yet gone) prints a line too
        for data in ([*CHAT[:5], "Weird", *CHAT[6:]], ["Hi", [{"role": "user", "content": "a"}], *CHAT[2:]]):
            result = raw.call(chat, data)
            assert not result["ok"], result
            refused_by_gradio += result["status"] == 200
    refill = PUBLIC_PER_MINUTE * (time.monotonic() - began) / 60
    grown = log.stat().st_size - start
    assert grown <= PUBLIC_PER_MINUTE + refill + 200, f"{grown:,} bytes in {time.monotonic() - began:.1f} s"
