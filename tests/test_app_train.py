"""Training through the real app server with gradio_client: start, poll to completion, list."""
from __future__ import annotations

import time

import pytest

from tests.conftest import owner_client

pytestmark = pytest.mark.slow


def test_train_tiny_recipe_over_the_api(app_server):
    client = owner_client(app_server)
    # No answers scored (eval_rows: 0): the tiny fixture's run checks those; this checks the API.
    overrides = "max_steps: 3\nsave_steps: 2\neval_rows: 0\noutput_name: api-run\nreport_prompts: [\"Who are you?\"]"
    name = client.predict("tiny", overrides, api_name="/train_recipe")
    assert name == "api-run"
    with pytest.raises(Exception, match="still running"):
        client.predict("tiny", "output_name: api-second", api_name="/train_recipe")
    seen_steps, phases, deadline = set(), set(), time.time() + 400
    while time.time() < deadline:
        status = client.predict(name, api_name="/train_status")
        seen_steps.add(status["step"])
        phases.add(status["phase"])
        if status["state"] != "running":
            break
        time.sleep(0.5)
    assert status["state"] == "completed", status["error"]
    assert status["phase"] == "" and any(phase.startswith("evaluat") for phase in phases), phases
    assert status["step"] == status["max_steps"] == 3 and len(seen_steps) >= 2
    losses = [e["loss"] for e in status["log"] if e["loss"] is not None]
    assert len(losses) == 3
    assert status["manifest"]["steps"] == 3 and status["manifest"]["held_out"][0]["after"] > 1
    assert "api-run" in client.predict(api_name="/adapters"), "listed by run name"


def test_bad_recipe_is_a_clear_error(app_server):
    """One line to the caller, and no traceback in the server's log: each refused call printed
    one (a visitor's calls could fill the log with them)."""
    from tests.conftest import ARTIFACTS

    with pytest.raises(Exception, match="Unknown setting"):
        owner_client(app_server).predict("tiny", "learning_rat: 1", api_name="/train_recipe")
    log = (ARTIFACTS / f"app-{app_server.rstrip('/').rsplit(':', 1)[1]}.log").read_text()
    assert "Unknown setting(s): learning_rat" not in log, log[-2000:]


def test_visitors_see_no_server_paths(app_server, tiny_run, data_home):
    from gradio_client import Client

    status = Client(app_server, verbose=False).predict(tiny_run.name, api_name="/train_status")
    assert status["state"] == "completed" and str(data_home) not in str(status)


def test_export_over_the_api_is_owner_only(app_server, tiny_run):
    """The Publish tab's Export: a visitor is refused and nothing is written; the owner gets
    the merged folder, then a GGUF file with its Modelfile, each with its size."""
    import shutil

    from gradio_client import Client

    from core.runs import RunFolder

    run = RunFolder(tiny_run)
    shutil.rmtree(run.merged, ignore_errors=True)  # another test may have exported it already
    shutil.rmtree(run.gguf_dir("q4_0"), ignore_errors=True)
    for fmt in ("merged", "gguf"):
        refused = Client(app_server, verbose=False).predict(tiny_run.name, fmt, "bf16", "q4_0",
                                                            api_name="/export_model")
        assert "Log in" in refused and "only chat is open" in refused
    assert not run.merged.exists() and not run.gguf_dir("q4_0").exists()
    done = owner_client(app_server).predict(tiny_run.name, "merged", "bf16", "q8_0", api_name="/export_model")
    assert "Merged model" in done and "MB" in done and (run.merged / "model.safetensors").is_file()
    done = owner_client(app_server).predict(tiny_run.name, "gguf", "bf16", "q4_0", api_name="/export_model")
    assert "GGUF and Modelfile" in done and "MB" in done and "ollama create" in done
    assert "Parity: q4_0 in " in done and "template identical" in done, done  # checked after every export
    assert (run.gguf_dir("q4_0") / "Modelfile").is_file() and list(run.gguf_dir("q4_0").glob("*.gguf"))
    from gradio_client.exceptions import AppError

    # The run picker takes a run finished after the page was built, so the name check refuses this
    refused = owner_client(app_server).predict("../../etc", "gguf", "bf16", "q8_0", api_name="/export_model")
    assert refused.startswith("⚠️") and "run name" in refused, refused
    with pytest.raises(AppError, match="not in the list of choices"):
        owner_client(app_server).predict(tiny_run.name, "gguf", "bf16", "../q8_0", api_name="/export_model")
