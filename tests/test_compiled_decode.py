"""The compiled decode step (core.inference.compiled_decode) on the real packaged SmolLM2: which
replies it serves and what the status says, its agreement with the int8 path, and a restart that
loads the step kept in the model cache instead of compiling it again.

    .venv/bin/python -m pytest tests/test_compiled_decode.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.inference import compiled_store
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.compiled_decode import SLOTS, CompiledStep, choose

ROOT = Path(__file__).resolve().parent.parent

# One process as the app runs it: load with FINETUNE_LAB_DECODE=compiled, wait for the warm-up,
# answer through the Chat tab's stream_reply, then the same prompts with the step switched off.
PROCESS = """
import json, sys; sys.path.insert(0, {root!r})
from torch._dynamo.utils import counters
from core import threads
import pytest

from core.inference import compiled_store
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import load_model

threads.apply(threads.for_chat(job_running=False))
loaded = load_model("smollm2-135m-instruct")
loaded.compiled.settled.wait()
described = loaded.describe()
step, settings, replies = loaded.compiled, GenerationSettings(max_new_tokens=24, repetition_penalty=1.0), {{}}
for path in ("compiled", "int8"):
    loaded.compiled = step if path == "compiled" else None
    replies[path] = [list(stream_reply(loaded, [{{"role": "user", "content": q}}], settings))[-1].__dict__
                     for q in {prompts!r}]
print(json.dumps({{"state": step.state, "error": step.error, "seconds": step.seconds, "replies": replies,
                  "described": described,
                  "hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"]}}))
"""
PROMPTS = ["What is the capital of France?", "Explain LoRA in one sentence.", "What is photosynthesis?"]


def run_app_process(models: Path) -> dict:
    env = {**os.environ, "FINETUNE_LAB_DECODE": "compiled", "FINETUNE_LAB_MODELS": str(models)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", PROCESS.format(root=str(ROOT), prompts=PROMPTS)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiled_step_answers_and_a_restart_loads_it_from_the_model_cache(tmp_path):
    """The first process compiles the step and keeps it in the model cache; the second (a
    restart) loads it, compiles nothing, is ready in a fraction of the time, and answers the
    same tokens. Both answer with the status naming the compiled step, and its greedy answers
    open with the int8 path's words: the graph sums the same bf16 products in another order, so
    near-ties part (over bench/compiled_speed.py's ten prompts, a common prefix of 25.9 tokens
    on average, against 14.7 for int8 with eager bf16)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm2-135m-instruct").symlink_to(_converted_smollm2())
    first = run_app_process(models)
    assert first["state"] == "ready", first["error"]
    assert any((models / "inductor").rglob("*.py")), "inductor wrote into the model cache"
    assert "compiled step ready, loaded" in first["described"]
    assert [p.suffix for p in sorted((models / "compiled").iterdir())] == [".bin", ".json"]
    pairs = list(zip(first["replies"]["compiled"], first["replies"]["int8"]))
    for compiled, int8 in pairs:
        assert compiled["stats"].endswith(", compiled step") and not int8["stats"].endswith("compiled step")
        assert _common_words(compiled["text"], int8["text"]) >= 4, (compiled["text"], int8["text"])
    assert pairs[0][0]["text"] == pairs[0][1]["text"] == "The capital of France is Paris."
    restart = run_app_process(models)
    assert restart["state"] == "ready" and restart["misses"] == 0, restart
    assert "compiled step ready (kept in the model cache)" in restart["described"]
    assert restart["seconds"] < first["seconds"] / 3, (restart["seconds"], first["seconds"])
    assert restart["replies"]["compiled"] == [dict(r, seconds=s["seconds"], stats=s["stats"])
                                              for r, s in zip(first["replies"]["compiled"], restart["replies"]["compiled"])]


def test_an_unreadable_kept_step_raises_and_none_kept_is_none(smol, tmp_path):
    """compiled_decode compiles again when `load` raises: a cut-short file must not load."""
    path = tmp_path / "decode-x.bin"
    assert compiled_store.load(smol, path) is None
    path.write_bytes(b"\x80\x04 cut short")
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(Exception):
        compiled_store.load(smol, path)
    assert compiled_store.step_file(smol, SLOTS) != compiled_store.step_file(smol, SLOTS + 1)


def _converted_smollm2() -> Path:
    from core.inference.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


def _common_words(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        count += 1
    return count


def test_the_status_says_which_path_answers_and_why(smol):
    """Only a ready step serves, and only one row of the base model without adapters that fits
    its slots; every other reply names the int8 path and the reason."""
    ready = replace(smol, compiled=CompiledStep(state="ready"), adapters={})
    options, words = choose(ready, 1, SLOTS, None)
    assert words == "compiled step" and options["cache_implementation"] == "static"
    assert options["max_cache_len"] == SLOTS and options["compile_config"]._compile_all_devices
    assert choose(ready, 1, SLOTS + 1, None) == ({}, f"int8 path (over the compiled step's {SLOTS} tokens)")
    assert choose(ready, 2, 64, None)[1] == choose(ready, 1, 64, ["adapter0"])[1] == choose(
        replace(ready, adapters={"/a": "adapter0"}), 1, 64, None)[1] == (
        "int8 path (the compiled step serves the base model without adapters)")
    assert choose(replace(ready, compiled=CompiledStep()), 1, 64, None) == (
        {}, "int8 path (the compiled step is still compiling)")
    failed = replace(ready, compiled=CompiledStep(state="failed", error="graph break"))
    assert choose(failed, 1, 64, None) == ({}, "int8 path (compiling failed: graph break)")
    assert choose(replace(ready, compiled=None), 1, 64, None) == ({}, "")
    reply = list(stream_reply(replace(smol, compiled=CompiledStep(), adapters={}),
                              [{"role": "user", "content": "Hi"}], GenerationSettings(max_new_tokens=4)))[-1]
    assert reply.stats.endswith("tok/s, int8 path (the compiled step is still compiling)")


def test_a_kept_step_that_does_not_load_is_compiled_again(tiny_model_dir, tmp_path, monkeypatch):
    """A cut-short file in the model cache costs a compile, not the compiled step: the next
    warm-up compiles and keeps a good one, and the one after loads it (tiny random Llama)."""
    from core.inference import compiled_decode
    from core.inference.models import _load_fresh

    monkeypatch.setenv("FINETUNE_LAB_MODELS", str(tmp_path))
    loaded = _load_fresh("tiny", str(tiny_model_dir))
    path = compiled_store.step_file(loaded, SLOTS)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x04 cut short")
    path.with_suffix(".json").write_text("{}")
    assert compiled_decode._install_kept_step(loaded) is False
    assert compiled_decode._install_kept_step(loaded) is True
