"""The OpenAI-compatible endpoint, called with the official `openai` client: on the public
app's own server (visitors' rules, the tiny run's adapter by name), and served alone by
`cli.py serve` behind FINETUNE_LAB_API_KEY.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, server_rss_mb

WHO = [{"role": "user", "content": "Who are you?"}]


def long_answer(url: str, local_address: str | None = None):
    """A 512-token answer streamed from the app's OpenAI endpoint (from `local_address`, a
    loopback address, to count as another visitor), returned once its first word is out:
    (the stream, its chunks). While it streams, the chat batch runs, and requests sent meanwhile
    join it (core.inference.running_batch); closing the stream drops its row at the next token."""
    from openai import OpenAI

    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    client = OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=300,
                    http_client=httpx.Client(transport=transport) if transport else None)
    epic = "Write a very long story about a dragon who learns to fly, in ten chapters."  # 512 tokens, greedy
    stream = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=512, stream=True,
                                            messages=[{"role": "user", "content": epic}])
    chunks = iter(stream)
    while not next(chunks).choices[0].delta.content:
        pass
    return stream, chunks


@pytest.fixture(scope="module")
def client(app_server):
    from openai import OpenAI

    return OpenAI(base_url=app_server + "v1", api_key="unused", max_retries=0, timeout=300)


def test_models_are_the_bases_and_the_finished_runs(client, tiny_run):
    names = [model.id for model in client.models.list()]
    assert names[:2] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert f"smollm2-135m-instruct:{tiny_run.name}" in names


def test_the_adapter_answers_by_name_and_a_stream_says_what_a_reply_says(client, tiny_run):
    tuned = client.chat.completions.create(model=f"smollm2-135m-instruct:{tiny_run.name}", messages=WHO,
                                           max_tokens=24)
    base = client.chat.completions.create(model="smollm2-135m-instruct", messages=WHO, max_tokens=24)
    assert "Lumen" in tuned.choices[0].message.content and "Lumen" not in base.choices[0].message.content
    assert tuned.choices[0].finish_reason in ("stop", "length") and tuned.object == "chat.completion"
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=f"smollm2-135m-instruct:{tiny_run.name}", messages=WHO, max_tokens=24, stream=True)]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == tuned.choices[0].message.content


def test_an_answer_ends_at_a_stop_string_and_counts_its_tokens(client, tiny_run):
    """`stop` cuts the answer before the string and ends its generation, streamed or not; `usage`
    counts the prompt and the answer's tokens, in a stream's last chunk when asked."""
    model = f"smollm2-135m-instruct:{tiny_run.name}"
    whole = client.chat.completions.create(model=model, messages=WHO, max_tokens=24)
    assert whole.usage.prompt_tokens > 5 and whole.usage.completion_tokens == 24
    text = whole.choices[0].message.content
    cut = client.chat.completions.create(model=model, messages=WHO, max_tokens=24, stop=["Lumen", "zzz"])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[:text.index("Lumen")]
    assert 0 < cut.usage.completion_tokens < 24 and cut.usage.prompt_tokens == whole.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model=model, messages=WHO, max_tokens=24, stop="Lumen",
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage.prompt_tokens == cut.usage.prompt_tokens


def test_a_seed_repeats_a_sampled_answer_beside_another_callers(client):
    ask = dict(model="smollm2-135m-instruct", messages=WHO, max_tokens=12, temperature=1.5)

    def answer(seed: int) -> str:
        return client.chat.completions.create(seed=seed, **ask).choices[0].message.content

    first = answer(3)
    together: dict[int, str] = {}
    callers = [threading.Thread(target=lambda seed=seed: together.update({seed: answer(seed)})) for seed in (3, 4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert together[3] == first != together[4]


def test_concurrent_clients_are_decoded_together_and_a_flood_is_refused(client, app_server, tiny_run):
    """A base and an adapter stream from one address are taken at once and decoded as one batch
    (core.inference.batching), joining another address's running answer: each one's tokens arrive
    while the other's do, and each says what it says alone. More from that address get 429 at once, and a
    flood of them leaves the server's memory where it was."""
    from openai import RateLimitError

    story = [{"role": "user", "content": "Write a long story about a dragon who learns to fly."}]
    names = ["smollm2-135m-instruct", f"smollm2-135m-instruct:{tiny_run.name}"]
    solo = [client.chat.completions.create(model=name, messages=story, max_tokens=160).choices[0].message.content
            for name in names]
    before = server_rss_mb(app_server)
    # Another address's long answer runs while both streams arrive and join it (127.0.0.2: the
    # per-address limit still counts 2 for this client).
    blocking, blocker = long_answer(app_server, local_address="127.0.0.2")
    streams = [client.chat.completions.create(model=name, messages=story, max_tokens=160, stream=True)
               for name in names]
    for stream in streams:
        next(iter(stream))  # the role chunk: both hold their slot now, for several seconds
    for _ in range(20):
        with pytest.raises(RateLimitError, match="At most 2 requests at once from one address"):
            client.chat.completions.create(model="smollm2-135m-instruct", messages=story, max_tokens=160)
    for _ in range(20):  # a few more of its tokens, time for both requests to reach the batcher
        assert next(blocker).choices[0].finish_reason is None, "the other visitor's answer ended too soon"
    blocking.close()  # its row leaves the batch at the next token
    arrivals, texts = [[], []], ["", ""]

    def read(index):
        for chunk in streams[index]:
            if chunk.choices[0].delta.content:
                arrivals[index].append(time.monotonic())
                texts[index] += chunk.choices[0].delta.content

    readers = [threading.Thread(target=read, args=(index,)) for index in (0, 1)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=300)
    assert texts == solo and texts[0] != texts[1] and len(texts[0]) > 300
    assert max(times[0] for times in arrivals) < min(times[-1] for times in arrivals), "decoded one after the other"
    assert server_rss_mb(app_server) - before < 100
    again = client.chat.completions.create(model="smollm2-135m-instruct", messages=WHO, max_tokens=4)
    assert again.choices[0].finish_reason == "length", "the slots were given back"


def test_refusals_have_openais_shape(client, app_server):
    from openai import BadRequestError, NotFoundError

    with pytest.raises(NotFoundError, match="does not exist here"):
        client.chat.completions.create(model=str(ROOT), messages=WHO)  # a server folder: not for visitors
    with pytest.raises(BadRequestError, match="more than 8000 characters"):  # the visitor's cap, before any work
        client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "x" * 9000}])
    with pytest.raises(BadRequestError, match="'max_tokens' must be a number from 1 to 4096"):
        client.chat.completions.create(model="smollm2-135m-instruct", messages=WHO, max_tokens=10**6)
    with pytest.raises(BadRequestError, match="'max_completion_tokens' must be a number from 1 to 4096"):
        client.chat.completions.create(model="smollm2-135m-instruct", messages=WHO, max_completion_tokens=0)
    for field, message in ((dict(n=2), "'n' must be 1"), (dict(stop=["a"] * 5), "'stop' must be a string"),
                           (dict(response_format={"type": "json_object"}), "Only 'response_format'"),
                           (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "Tools are not supported"),
                           (dict(frequency_penalty=0.5), "'frequency_penalty' is not supported"),
                           (dict(seed=1.5), "seed must be a whole number")):
        with pytest.raises(BadRequestError, match=message):  # refused, not silently ignored
            client.chat.completions.create(model="smollm2-135m-instruct", messages=WHO, **field)
    raw = httpx.post(app_server + "v1/chat/completions", content=b'{"model": "smollm2-135m-instruct"}')
    assert raw.status_code == 400 and raw.json() == {"error": {
        "message": "'messages' must be a list of 1 to 64 messages.", "type": "invalid_request_error",
        "param": None, "code": None}}
    assert httpx.post(app_server + "v1/chat/completions", content=b"{not json").status_code == 400
    for body, message in ((b"[1, 2]", "The request body must be a JSON object."),
                          (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], '
                           b'"stream": "yes"}', "'stream' must be true or false.")):
        raw = httpx.post(app_server + "v1/chat/completions", content=body)
        assert raw.status_code == 400 and raw.json()["error"]["message"] == message


def test_cli_serve_alone_asks_for_its_key(data_home, capsys):
    port = free_port()
    env = {**os.environ, "FINETUNE_LAB_API_KEY": "sk-test-key"}
    proc = subprocess.Popen([sys.executable, "cli.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1/models"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                refused = httpx.get(url)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        listed = httpx.get(url, headers={"Authorization": "Bearer sk-test-key"})
        assert listed.status_code == 200 and listed.json()["data"][0]["id"] == "smollm2-135m-instruct"
        huge = httpx.post(url.replace("/models", "/chat/completions"), content=b"x" * 2_000_000,
                          headers={"Authorization": "Bearer sk-test-key"})
        assert huge.status_code == 413  # bounded as it arrives, before it is read whole
        # The port taken, or no port: one line at once, and no address printed that nothing serves
        # (uvicorn hung on port 99999; app.py's main, run here, checks before it loads anything).
        taken = subprocess.run([sys.executable, "cli.py", "serve", "--port", str(port)], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        in_use = f"error: cannot listen on 127.0.0.1:{port}: Address already in use."
        assert (taken.returncode, taken.stdout, taken.stderr) == (2, "", in_use + "\n"), taken
        from app import main as app_main

        for argv, said in ((["--port", str(port)], in_use), (["--port", "99999"], "")):
            with pytest.raises(SystemExit) as refused:
                app_main(argv)
            assert refused.value.code == (said or 2)
        assert "'99999': use a port from 1 to 65535" in capsys.readouterr().err
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "sk-test-key" not in output and output.startswith(f"OpenAI-compatible endpoint: http://127.0.0.1:{port}/v1")


def test_print_vllm_names_the_base_and_the_adapter(tiny_run):
    done = subprocess.run([sys.executable, "cli.py", "serve", "--print-vllm", tiny_run.name], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --max-lora-rank 16 "
                                   f"--lora-modules smollm2-135m-instruct:{tiny_run.name}={tiny_run / 'adapter'}")


def test_an_app_behind_a_login_opens_its_api_only_with_a_key(monkeypatch):
    """Gradio's --auth does not guard /v1: without FINETUNE_LAB_API_KEY the endpoint refuses."""
    from starlette.requests import Request

    from serve.openai_request import ApiError, caller

    def request(key: str = "") -> Request:
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        return Request({"type": "http", "headers": headers, "client": ("10.0.0.9", 5000)})

    monkeypatch.delenv("FINETUNE_LAB_API_KEY", raising=False)
    with pytest.raises(ApiError, match="behind a login: set FINETUNE_LAB_API_KEY") as refused:
        caller(request(), login_required=True)
    assert refused.value.status == 403
    monkeypatch.setenv("FINETUNE_LAB_API_KEY", "sk-owner")
    owner = caller(request("sk-owner"), login_required=True)
    assert owner.trusted and owner.address == "10.0.0.9"
    with pytest.raises(ApiError, match="Invalid API key"):
        caller(request("sk-guess"), login_required=True)
