"""The real app server driven by gradio_client: streaming chat, compare, isolation between clients."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, owner_client
from tests.test_openai_api import long_answer

pytestmark = pytest.mark.slow


def chat_args(message, history=(), mode="Single", adapter=None, max_new_tokens=24):
    return dict(message=message, base_history=list(history), tuned_history=[],
                model_name="smollm2-135m-instruct", adapter=adapter, mode=mode,
                system_prompt="", temperature=0.0, top_p=0.9, max_new_tokens=max_new_tokens,
                repetition_penalty=1.1, api_name="/chat")


def text_of(message):
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_chat_streams_over_the_api(app_server):
    from gradio_client import Client

    job = Client(app_server, verbose=False).submit(**chat_args("What is the capital of France?"))
    updates = []
    while not job.done():
        updates = job.outputs()
        time.sleep(0.05)
    updates = job.outputs()
    assert len(updates) >= 3, "the reply should arrive in several streamed updates"
    base, tuned, status, box = updates[-1]
    assert "Paris" in text_of(base[-1]) and base[-1]["role"] == "assistant"
    assert "tok/s" in status and box == ""


def test_two_clients_keep_their_own_history(app_server):
    from gradio_client import Client

    results = {}

    def converse(name, first, second):
        client = Client(app_server, verbose=False)
        base, *_ = client.predict(**chat_args(first))
        base, *_ = client.predict(**chat_args(second, history=base))
        results[name] = [text_of(m) for m in base if m["role"] == "user"]

    threads = [threading.Thread(target=converse, args=("a", "My name is Ada.", "What is 2+2?")),
               threading.Thread(target=converse, args=("b", "I like tea.", "Name a color."))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results["a"] == ["My name is Ada.", "What is 2+2?"]
    assert results["b"] == ["I like tea.", "Name a color."]


def test_two_visitors_answers_decode_as_one_batch(app_server, tiny_run):
    """One visitor's answer and another's Compare (base and adapter) join a third caller's long
    answer (through the OpenAI endpoint, greedy too) while it runs (core.inference.running_batch):
    both grow before it ends, each one's text grows while the other's does, and every pane says
    what it says when asked alone."""
    from gradio_client import Client

    story = "Write a long story about a dragon who learns to fly."
    asks = [chat_args(story, max_new_tokens=64),
            chat_args(story, mode="Compare", adapter=tiny_run.name, max_new_tokens=64)]
    alone = [Client(app_server, verbose=False).predict(**ask)[:2] for ask in asks]
    clients = [Client(app_server, verbose=False) for _ in asks]  # each fetches the config first
    blocking, chunks = long_answer(app_server)
    jobs = [client.submit(**ask) for client, ask in zip(clients, asks)]
    grew = [[], []]  # when each visitor's base pane got longer

    def watch():
        for job, times in zip(jobs, grew):
            outputs = job.outputs()
            length = len(text_of(outputs[-1][0][-1])) if outputs and outputs[-1][0] else 0
            if length > (times[-1][1] if times else 0):
                times.append((time.monotonic(), length))

    while not all(grew):  # both joined the running batch: their answers grow before it ends
        assert next(chunks).choices[0].finish_reason is None, "the long answer ended before both joined it"
        watch()
    blocking.close()
    while not all(job.done() for job in jobs):
        watch()
        time.sleep(0.02)
    assert grew[0][0][0] < grew[1][-1][0] and grew[1][0][0] < grew[0][-1][0], "the answers were decoded in turn"
    together = [job.outputs()[-1][:2] for job in jobs]
    assert text_of(together[0][0][-1]) == text_of(alone[0][0][-1]) == text_of(alone[1][0][-1])
    assert text_of(together[1][1][-1]) == text_of(alone[1][1][-1]) != text_of(alone[1][0][-1])
    assert text_of(together[1][0][-1]) == text_of(alone[1][0][-1])


def test_compare_gives_two_different_answers(app_server, tiny_run):
    from gradio_client import Client

    base, tuned, status, _ = Client(app_server, verbose=False).predict(
        **chat_args("Who are you?", mode="Compare", adapter=tiny_run.name, max_new_tokens=32))
    assert text_of(base[-1]) and text_of(tuned[-1])
    assert text_of(base[-1]) != text_of(tuned[-1])
    assert "Lumen" in text_of(tuned[-1]) and "tuned" in status


@pytest.mark.parametrize("kwargs, expected", [
    (dict(message="hi", model_name="nobody/nothing-here"), "the Hub has no such model"),  # the local test Hub
    (dict(message="   "), "Empty message"),
    (dict(message="hi", mode="Compare", adapter="/no/such/adapter"), "neither a finished run, a folder nor a Hub repo id"),
])
def test_bad_inputs_show_a_message_not_a_traceback(app_server, kwargs, expected, monkeypatch):
    args = {**chat_args("x"), **kwargs}
    *_, status, _ = owner_client(app_server).predict(**args)
    assert expected in status and "Traceback" not in status


HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "gradio", "sentence_transformers")
HELP_IMPORTS = ("import runpy, sys; sys.argv = ['cli.py', '--help']\n"
                "try:\n    runpy.run_path('cli.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                f"print('heavy:', [m for m in {HEAVY!r} if m in sys.modules])")


def test_cli_help_is_instant_and_chat_streams():
    """--help imports no heavy library (so it answers at once on any host), and chat streams."""
    out = subprocess.run([sys.executable, "-c", HELP_IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "usage: cli.py" in out.stdout and out.stdout.strip().endswith("heavy: []"), out.stdout[-300:]
    out = subprocess.run([sys.executable, "cli.py", "train", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "(0.03 = 3%)" in " ".join(out.stdout.split()), out.stderr[-300:]
    out = subprocess.run([sys.executable, "cli.py", "chat", "--max-new-tokens", "16",
                          "What is the capital of France?"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "Paris" in out.stdout
