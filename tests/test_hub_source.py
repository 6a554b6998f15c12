"""The Hub as a source, against the local Hub-protocol server with the real huggingface_hub and
datasets clients (HF_ENDPOINT), through the served app: search by task and size, Hub datasets
with subsets and splits, streaming that reads only what it needs, ShareGPT multi-turn data, and
an adapter trained on a Hub set, pushed by Publish and compared by its repo id; and how a Hub
dataset id is told from a path, and the run name it gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ADMIN_KEY, ROOT, free_port, owner_client, start_app
from tests.hub_seed import seed_hub
from tests.hub_server import VALID_TOKENS, serve_in_thread

TOKEN = next(iter(VALID_TOKENS))

@pytest.fixture(scope="module")
def hub():
    port = free_port()
    server = serve_in_thread(port)
    seed_hub(server.config.app)
    yield f"http://127.0.0.1:{port}", server.config.app
    server.should_exit = True


@pytest.fixture(scope="module")
def hub_app(hub, data_home):
    """The public app of a Space whose owner opened the Hub to visitors, on the local Hub."""
    env = {"HF_ENDPOINT": hub[0], "HF_HOME": str(data_home / "hf-home"), "FINETUNE_LAB_PUBLIC": "1",
           "FINETUNE_LAB_ADMIN_KEY": ADMIN_KEY, "FINETUNE_LAB_VISITOR_HUB": "1", "HF_TOKEN": ""}
    proc, url = start_app(env=env)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def visitor(hub_app):
    from gradio_client import Client

    return Client(hub_app, verbose=False)


def test_visitor_chats_only_with_hub_models_within_the_size_limit(visitor):
    """lab/huge-chat (70B by its safetensors count) is refused before any download; lab/tiny-chat
    (135M) passes the size check and fails only later, for having no weights on this test Hub."""
    huge = visitor.predict("Hi", [], [], "lab/huge-chat", None, "Single", "", 0.0, 0.9, 4, 1.1, False, None,
                           api_name="/chat")
    assert "at most 500,000,000 parameters" in huge[2] and "lab/huge-chat" in huge[2], huge[2]
    tiny = visitor.predict("Hi", [], [], "lab/tiny-chat", None, "Single", "", 0.0, 0.9, 4, 1.1, False, None,
                           api_name="/chat")
    assert "parameters" not in tiny[2] and tiny[2].startswith("⚠"), tiny[2]


def test_search_models_by_task_size_and_sort(visitor):
    rows, status = visitor.predict("chat / text generation", "", "transformers", 1000, "downloads", api_name="/hub_models")
    assert [row[0] for row in rows] == ["lab/tiny-chat", "lab/popular-chat"], status
    assert rows[0][1:] == [500, 5, "apache-2.0", "135M", "2026-01-01", "no"]
    rows, _ = visitor.predict("chat / text generation", "", "transformers", 2000, "likes", api_name="/hub_models")
    assert [row[0] for row in rows] == ["lab/popular-chat", "lab/mid-chat", "lab/tiny-chat"]
    assert rows[1][4:] == ["1.7B", "2026-01-01", "manual"], "size and gated status are shown"
    rows, _ = visitor.predict("sentence embeddings", "", "sentence-transformers", 1000, "downloads",
                              api_name="/hub_models")
    assert [row[0] for row in rows] == ["lab/embedder"]
    rows, _ = visitor.predict("chat / text generation", "popular", "transformers", 1000, "downloads",
                              api_name="/hub_models")
    assert [row[0] for row in rows] == ["lab/popular-chat"]


def test_search_datasets_by_task(visitor):
    rows, _ = visitor.predict("question answering", "", "downloads", api_name="/hub_datasets")
    assert [row[0] for row in rows] == ["lab/qa-mix", "lab/qa-parquet"]
    assert rows[0][3:5] == ["mit", "n<1K"]
    rows, _ = visitor.predict("text generation (SFT, DAPT)", "", "downloads", api_name="/hub_datasets")
    assert [row[0] for row in rows] == ["lab/chats"]


def test_cli_searches_the_hub(hub):
    env = {**os.environ, "HF_ENDPOINT": hub[0]}
    models = subprocess.run([sys.executable, "cli.py", "hub", "models", "--max-params", "500"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert models.returncode == 0, models.stderr[-2000:]
    assert [line.split("\t")[0] for line in models.stdout.splitlines()] == ["repo", "lab/tiny-chat", "lab/popular-chat"]
    datasets = subprocess.run([sys.executable, "cli.py", "hub", "datasets", "--task", "question-answering", "--sort",
                               "likes"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert [line.split("\t")[0] for line in datasets.stdout.splitlines()[1:]] == ["lab/qa-mix", "lab/qa-parquet"]


def test_hub_datasets_load_by_id_with_subset_and_split(visitor):
    for source, first in [("lab/qa-mix:hard@test", "hard test q0"), ("lab/qa-mix:easy", "easy train q0"),
                          ("lab/qa-parquet:b@validation", "b validation q0"), ("lab/qa-parquet:a", "a train q0")]:
        summary, rows, columns = visitor.predict(source, "", api_name="/data_inspect")
        assert rows and rows[0]["question"] == first, (source, summary)
        assert {row["question"].rsplit(" ", 1)[0] for row in rows} == {first.rsplit(" ", 1)[0]}, source
        assert "streamed from" in summary and "format: **qa**" in summary and columns == ["question", "answer"]
    summary, _, _ = visitor.predict("lab/qa-mix:medium", "", api_name="/data_inspect")
    assert summary.startswith("⚠️") and "medium" in summary and "easy" in summary, summary
    summary, _, _ = visitor.predict("lab/qa-mix:easy@validation", "", api_name="/data_inspect")
    assert summary.startswith("⚠️") and "validation" in summary, summary
    summary, _, _ = visitor.predict("lab/no-such-set", "", api_name="/data_inspect")
    assert summary.startswith("⚠️") and "lab/no-such-set" in summary, summary


def test_streaming_fetches_only_what_it_needs(visitor, hub, hub_app):
    """A preview of a 22 MB file: the server's byte count stays a small share of the file."""
    sent, files = hub[1].state.sent, hub[1].state.repos
    summary, rows, _ = visitor.predict("lab/big-jsonl", "", api_name="/data_inspect")
    assert len(rows) == 10 and rows[0]["text"].startswith("row 0 "), summary
    segments, info = owner_client(hub_app).predict("lab/big-parquet", "dapt", 0, "smollm2-135m-instruct", "", 0,
                                     api_name="/data_preview")
    assert segments[0][0].startswith("row 0 the lab keeps") and "streamed from the Hub" in info, info
    for repo, path in [("lab/big-jsonl", "data/train.jsonl"), ("lab/big-parquet", "data/train-00000.parquet")]:
        size, read = len(files[("dataset", repo)]["files"][path]), sent.get(f"{repo}/{path}", 0)
        assert 0 < read < 0.25 * size, f"{repo}: {read:,} of {size:,} bytes fetched for a preview"


def test_sharegpt_preview_trains_every_assistant_turn(visitor):
    segments, info = visitor.predict("lab/chats", "sft", 0, "smollm2-135m-instruct", "", 0, api_name="/data_preview")
    trained = [text for text, label in segments if label == "trained"]
    assert trained == ["Hello, I am Lumen 0.<|im_end|>\n", "I answer questions about the lab.<|im_end|>\n"], segments
    assert "All 2 assistant turns are trained on" in info


def test_hub_adapters_are_checked_before_they_attach(visitor):
    """Compare by repo id refuses an adapter for another base, a pickle-only one and a non-LoRA."""
    for repo, problem in [("lab/gemma-adapter", "trained on gemma-3-270m"),
                          ("lab/pickled-adapter", "no adapter_model.safetensors"),
                          ("lab/prefix-adapter", "PREFIX_TUNING adapter"), ("lab/missing", "could not be downloaded")]:
        result = visitor.predict("Hi", [], [], "smollm2-135m-instruct", repo, "Compare", "", 0.0, 0.9, 4, 1.1,
                                 False, None, api_name="/chat")
        assert problem in result[2], (repo, result[2])


def test_visitors_may_search_but_not_train(visitor):
    with pytest.raises(Exception, match="Log in"):
        visitor.predict("tiny", "dataset: lab/chats", api_name="/train_recipe")


OFFLINE = """
import json, sys, time
sys.path.insert(0, '.')
from core.inference.adapters import adapter_folder
from core.data.rows import load_rows
from core.errors import LabError
from core.inference.models import resolve_model
from tabs.hub_panel import find_datasets, find_models
start = time.perf_counter()
out = {"models": find_models("chat / text generation"), "datasets": find_datasets("any task")}
for name, call in (("dataset", lambda: load_rows("lab/chats")), ("adapter", lambda: adapter_folder("tester/x"))):
    try:
        call()
        out[name] = "loaded"
    except LabError as exc:
        out[name] = str(exc)
out["seconds"] = time.perf_counter() - start
out["local"] = [len(load_rows("identity")), resolve_model("smollm2-135m-instruct")]
print(json.dumps(out))
"""


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:{port}"}, {"HF_HUB_OFFLINE": "1"}])
def test_offline_every_hub_use_says_hub_not_reachable_at_once(env):
    """No Hub (nothing listens, or HF_HUB_OFFLINE=1): one clear line at once, not the client's
    23 s of retries, and the packaged model and bundled data still work."""
    env = {key: value.format(port=free_port()) for key, value in env.items()}
    done = subprocess.run([sys.executable, "-c", OFFLINE], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    for answer in (out["models"][1], out["datasets"][1], out["dataset"], out["adapter"]):
        assert "The Hugging Face Hub is unreachable" in answer and "local models" in answer, answer
    assert out["models"][0] == [] and out["seconds"] < 5, out
    assert out["local"][0] == 72 and out["local"][1].endswith("smollm2-135m-instruct")


LOGITS = """
import json, sys, torch
sys.path.insert(0, '.')
from core.inference.adapters import attach_tuned
from core.inference.models import load_model
base = load_model("smollm2-135m-instruct")
hub, local = attach_tuned(base, "tester/chats-lora"), attach_tuned(base, sys.argv[1])
ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
out = {}
with torch.no_grad():
    for side in (hub, local):
        base.model.set_adapter(side.adapter_name)
        out[side.adapter_name] = base.model(ids).logits
names = [hub.adapter_name, local.adapter_name]
with torch.no_grad(), base.model.disable_adapter():
    plain = base.model(ids).logits
print(json.dumps({"names": names, "equal": bool(torch.equal(*out.values())),
                  "differs_from_base": bool((out[names[0]] != plain).any())}))
"""


@pytest.mark.slow
def test_train_on_a_hub_set_publish_and_compare_by_repo_id(hub, hub_app, data_home):
    """The issue's whole path: train on a Hub set, push the adapter, compare it by repo id."""
    owner = owner_client(hub_app)
    overrides = ("dataset: lab/chats\nmax_steps: 3\neval_fraction: 0\neval_rows: 0\n"
                 "report_prompts: []\noutput_name: hub-chats")
    run = owner.predict("tiny", overrides, api_name="/train_recipe")
    deadline = time.time() + 600
    while (status := owner.predict(run, api_name="/train_status"))["state"] not in ("completed", "failed"):
        assert time.time() < deadline, status
        time.sleep(2)
    assert status["state"] == "completed", status["error"]
    repos = hub[1].state.repos
    assert status["manifest"]["dataset"] == "lab/chats"
    assert status["manifest"]["dataset_revision"] == repos[("dataset", "lab/chats")]["sha"], "the run pins the data"
    pushed = owner.predict(run, "tester/chats-lora", False, TOKEN, "adapter", api_name="/publish_adapter")
    assert pushed.startswith("✅"), pushed
    card = repos[("model", "tester/chats-lora")]["files"]["README.md"].decode()
    assert "datasets:\n- lab/chats" in card and "dataset_revision: " + status["manifest"]["dataset_revision"] in card
    replies = {}
    for adapter in (run, "tester/chats-lora"):
        result = owner.predict("Hi!", [], [], "smollm2-135m-instruct", adapter, "Compare", "", 0.0, 0.9, 12, 1.1,
                               False, None, api_name="/chat")
        content = result[1][-1]["content"]
        replies[adapter] = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    assert replies[run] == replies["tester/chats-lora"], replies
    env = {**os.environ, "HF_ENDPOINT": hub[0], "HF_HOME": str(data_home / "hf-home-logits")}
    done = subprocess.run([sys.executable, "-c", LOGITS, run], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["equal"] and result["differs_from_base"] and len(set(result["names"])) == 2, result


@pytest.mark.slow
@pytest.mark.browser
def test_find_on_the_hub_fills_the_boxes_in_a_browser(hub_app):
    """A visitor finds a model for Chat, then a dataset for Train, and sees what the model sees."""
    from tests.browser import browser_page, shoot

    with browser_page(hub_app) as page:
        page.locator("#chat-model-hub").get_by_text("Find on the Hub").click()
        page.locator("#chat-model-hub-search").click()
        page.locator("#chat-model-hub-results [role=gridcell]", has_text="lab/tiny-chat").first.click()
        page.wait_for_function("() => document.querySelector('#chat-model input').value === 'lab/tiny-chat'",
                               timeout=30_000)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-data-hub").get_by_text("Find on the Hub").click()
        page.locator("#train-data-hub-search").click()
        page.locator("#train-data-hub-results [role=gridcell]", has_text="lab/chats").first.click()
        page.wait_for_function(
            "() => document.querySelector('#data-summary')?.innerText.includes('streamed from lab/chats@train')",
            timeout=60_000)
        assert "sharegpt" in page.locator("#data-summary").inner_text()
        page.get_by_text("Show what the model sees").click()
        page.wait_for_function(
            "() => document.querySelector('#model-sees')?.innerText.includes('I answer questions about the lab.')",
            timeout=60_000)
        page.locator("#train-data-hub").scroll_into_view_if_needed()
        shoot(page, "hub-dataset.png")


@pytest.mark.parametrize("value, parsed", [
    ("owner/name", ("owner/name", None, "train")),
    ("owner/name:sub@test", ("owner/name", "sub", "test")),
    ("owner/name@validation", ("owner/name", None, "validation")),
    ("data/train.jsonl", None), ("identity", None), ("chatterbot:ai", None), ("a/b/c", None), ("/etc/passwd", None),
])
def test_hub_dataset_ids_are_told_from_paths(value, parsed):
    from core.hub.source import parse_hub_source

    source = parse_hub_source(value)
    assert (source and (source.repo, source.subset, source.split)) == parsed or (source is None and parsed is None)


def test_a_hub_id_gives_a_valid_default_run_name():
    from training.config import config_from_dict
    from training.jobs import default_run_name

    assert default_run_name(config_from_dict({"dataset": "owner/na.me:sub@test"})).startswith("sft-lora-na-me-sub-test-")
    assert default_run_name(config_from_dict({"dataset": "/x/train.jsonl"})).startswith("sft-lora-train-")
