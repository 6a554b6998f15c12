"""Training through the real app server with gradio_client: start, poll to completion, list."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow


def test_train_tiny_recipe_over_the_api(app_server):
    from gradio_client import Client

    client = Client(app_server, verbose=False)
    overrides = "max_steps: 3\nsave_steps: 2\noutput_name: api-run\nreport_prompts: [\"Who are you?\"]"
    name = client.predict("tiny", overrides, api_name="/train_recipe")
    assert name == "api-run"
    with pytest.raises(Exception, match="still running"):
        client.predict("tiny", "output_name: api-second", api_name="/train_recipe")
    seen_steps, deadline = set(), time.time() + 400
    while time.time() < deadline:
        status = client.predict(name, api_name="/train_status")
        seen_steps.add(status["step"])
        if status["state"] != "running":
            break
        time.sleep(1)
    assert status["state"] == "completed", status["error"]
    assert status["step"] == status["max_steps"] == 3 and len(seen_steps) >= 2
    losses = [e["loss"] for e in status["log"] if e["loss"] is not None]
    assert len(losses) == 3
    assert status["manifest"]["steps"] == 3 and status["manifest"]["perplexity_after"]
    adapters = client.predict(api_name="/adapters")
    assert any(path.endswith("api-run/adapter") for path in adapters)


def test_bad_recipe_is_a_clear_error(app_server):
    from gradio_client import Client

    with pytest.raises(Exception, match="Unknown setting"):
        Client(app_server, verbose=False).predict("tiny", "learning_rat: 1", api_name="/train_recipe")
