"""Where and how the compiled decode step (core.inference.compiled_decode) serves: which
processes compile it, which replies it answers and what the status says otherwise, and a kept
step in the model cache that does not load. Its answers on the real model and a restart that
loads it: tests/test_compiled_decode.py.

    .venv/bin/python -m pytest tests/test_compiled_route.py
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from core.inference import compiled_decode, compiled_store
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.compiled_decode import SLOTS, CompiledStep, Route, choose, wanted
from core.inference.fast_decode import BASE


def test_the_app_compiles_where_it_serves_chat(monkeypatch):
    """By default the step is compiled for int8 weights in a process that serves chat (the app,
    cli.py serve), not in a one-off reply or a job's evaluation, nor where visitors may load Hub
    models; FINETUNE_LAB_DECODE=compiled compiles anywhere, int8 and eager nowhere."""
    from core import settings

    monkeypatch.delenv("FINETUNE_LAB_DECODE")
    monkeypatch.setitem(settings._DECLARED, "serving", False)
    assert not wanted("int8")
    monkeypatch.setitem(settings._DECLARED, "serving", True)
    assert wanted("int8") and not wanted("eager")  # eager: a GPU, or FINETUNE_LAB_DECODE=eager
    monkeypatch.setenv("FINETUNE_LAB_PUBLIC", "1")
    assert wanted("int8")
    monkeypatch.setenv("FINETUNE_LAB_VISITOR_HUB", "1")
    assert not wanted("int8")
    monkeypatch.setenv("FINETUNE_LAB_DECODE", "compiled")
    assert wanted("int8") and wanted("eager")
    for choice in ("int8", "eager"):
        monkeypatch.setenv("FINETUNE_LAB_DECODE", choice)
        monkeypatch.delenv("FINETUNE_LAB_VISITOR_HUB", raising=False)
        assert not wanted("int8")


def test_the_app_loads_its_default_model_at_start_where_it_compiles(monkeypatch):
    """app.main's prepare.at_app_start: the default model (and so its step) starts loading before
    anyone asks where the app compiles steps, and a failed load leaves the first chat to say why."""
    from core import settings
    from core.inference import prepare

    asked, probed = [], []
    monkeypatch.setattr(prepare, "load_model", lambda name: asked.append(name) or 1 / 0)
    monkeypatch.setattr(prepare, "_probe_compiler_isa", lambda: probed.append(1))  # inductor's, beside the load
    monkeypatch.setitem(settings._DECLARED, "serving", True)
    monkeypatch.setenv("FINETUNE_LAB_DECODE", "int8")  # as the suite runs: no step, nothing ahead
    assert prepare.at_app_start() is None
    for choice in ("auto", "compiled"):
        monkeypatch.setenv("FINETUNE_LAB_DECODE", choice)
        prepare.at_app_start().join(timeout=10)
    deadline = time.monotonic() + 10  # the probe runs in a thread of its own
    while len(probed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asked == [prepare.DEFAULT_MODEL] * 2 and probed == [1, 1]
    monkeypatch.setitem(settings._DECLARED, "serving", False)  # a one-off process: cli.py chat, a job
    assert prepare.at_app_start() is None


def test_the_status_says_which_path_answers_and_why(smol, monkeypatch):
    """Only a ready step serves, one base row that fits its slots; every other reply names the
    weights' path (int8 on a CPU) and the reason (Compare's own step:
    tests/test_compiled_compare.py)."""
    path = f"{smol.decode} path"
    monkeypatch.setattr(compiled_decode, "LOADING_WAIT_S", 0.05)
    ready = replace(smol, compiled=CompiledStep(state="ready", model=smol.model), adapters={})
    route = choose(ready, 1, SLOTS, None)
    assert route.words == "compiled step" and route.options["cache_implementation"] == "static"
    assert route.model is smol.model and route.context is None
    assert route.options["max_cache_len"] == SLOTS and route.options["compile_config"]._compile_all_devices
    assert choose(ready, 1, SLOTS, [None]).words == "compiled step"
    assert choose(ready, 1, SLOTS + 1, None) == Route(words=f"{path} (over the compiled step's {SLOTS} tokens)")
    other = f"{path} (the compiled step serves one base row, or Compare's base and tuned rows)"
    assert choose(ready, 2, 64, None).words == choose(ready, 1, 64, ["adapter0"]).words == other
    assert choose(ready, 2, 64, ["adapter0", BASE]).words == choose(ready, 3, 64, [BASE, "a", "b"]).words == other
    assert choose(replace(ready, compiled=CompiledStep()), 1, 64, None) == Route(
        words=f"{path} (the compiled step is still compiling)")
    assert choose(replace(ready, compiled=CompiledStep(state="loading")), 1, 64, None) == Route(
        words=f"{path} (the compiled step is still loading)")  # from the model cache: about 2 s
    loading = CompiledStep(state="loading", model=smol.model)  # a reply waits for a kept step that settles
    threading.Timer(0.3, lambda: (setattr(loading, "state", "ready"), loading.settled.set())).start()
    monkeypatch.setattr(compiled_decode, "LOADING_WAIT_S", 30)
    began = time.monotonic()
    assert choose(replace(ready, compiled=loading), 1, 64, None).words == "compiled step"
    assert 0.2 < time.monotonic() - began < 10
    failed = replace(ready, compiled=CompiledStep(state="failed", error="graph break"))
    assert choose(failed, 1, 64, None) == Route(words=f"{path} (the compiled step failed to compile: graph break)")
    assert choose(replace(ready, compiled=None), 1, 64, None) == Route()
    reply = list(stream_reply(replace(smol, compiled=CompiledStep(), adapters={}),
                              [{"role": "user", "content": "Hi"}], GenerationSettings(max_new_tokens=4)))[-1]
    assert reply.stats.endswith(f"tok/s, {path} (the compiled step is still compiling)")


def test_an_unreadable_kept_step_raises_and_none_kept_is_none(smol, tmp_path):
    """compiled_decode compiles again when `load` raises: a cut-short file must not load."""
    path = tmp_path / "decode-x.bin"
    assert compiled_store.load(smol.model, path) is None
    path.write_bytes(b"\x80\x04 cut short")
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(Exception):
        compiled_store.load(smol.model, path)
    assert compiled_store.step_file(smol, SLOTS) != compiled_store.step_file(smol, SLOTS + 1)
    assert compiled_store.step_file(smol, SLOTS) != compiled_store.step_file(smol, SLOTS, 2, "layout")


def test_a_kept_step_that_does_not_load_is_compiled_again(tiny_model_dir, tmp_path, monkeypatch):
    """A cut-short file in the model cache costs a compile, not the compiled step: the next
    warm-up compiles and keeps a good one, and the one after loads it (tiny random Llama)."""
    from core.inference.compiled_views import base_view
    from core.inference.models import _load_fresh

    monkeypatch.setenv("FINETUNE_LAB_MODELS", str(tmp_path))
    loaded = _load_fresh("tiny", str(tiny_model_dir))
    step = CompiledStep(model=base_view(loaded.model))
    path = compiled_store.step_file(loaded, SLOTS)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x04 cut short")
    path.with_suffix(".json").write_text("{}")
    assert compiled_decode._install_kept_step(loaded, step) is False
    assert compiled_decode._install_kept_step(loaded, step) is True
