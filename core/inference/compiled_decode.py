"""The compiled decode step for chat: inductor compiles the model's forward over a static KV cache.

    FINETUNE_LAB_DECODE=compiled python app.py
    .venv/bin/python bench/compiled_speed.py      # compiled_over_int8 and a restart, same run

It runs inside transformers' own machinery: `generate(cache_implementation="static",
compile_config=...)` calls the compiled decoding step (the prompt's prefill stays eager). On a
CPU it keeps the int8 weights of core.inference.fast_decode, whose kernel is one opaque op in
the graph, and inductor fuses what lies between the products (norms, rotary, residuals,
attention glue). On a GPU transformers compiles it with CUDA graphs (`reduce-overhead`); not
measured here.

When a model loads, a background thread gets the step ready; replies use the int8 path
meanwhile, and switch over when it is ready. On a CPU the step is compiled once ahead of time
and kept in the model cache (core.inference.compiled_store), so a restart loads it in seconds
instead of tracing the model again; inductor's cache lives in the model cache too
(`inductor/`, per torch version). The compiled step serves a reply only where its graph is exact
for it, else the reply takes the int8 path and the status line says why:
- one batch row, and no adapter ever attached (peft swaps layers and flags per request;
  Compare and tuned replies keep the int8 rows path they are tested on);
- the prompt and the new tokens fit `SLOTS` cache slots: a static cache's attention reads all
  its slots every step, so a longer one would cost more than the compile saves.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from core.inference import compiled_store
from core.paths import models_dir
from core.settings import settings

SLOTS = 512
WARM_UP_TOKENS = 3


@dataclass
class CompiledStep:
    """Where a model's compiled decode step stands: "compiling", "ready" or "failed"."""

    state: str = "compiling"
    seconds: float = 0.0  # how long the warm-up took
    from_model_cache: bool = False  # loaded as kept by an earlier run, not compiled
    error: str = ""
    settled: threading.Event = field(default_factory=threading.Event)


def in_model_cache():
    """A context in which inductor caches into the model cache (torch's own switch, which also
    restores the default after), unless the user chose a folder with TORCHINDUCTOR_CACHE_DIR."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir, temporary_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in (None, os.path.abspath(default_cache_dir())):
        return contextlib.nullcontext()
    return temporary_cache_dir(str(models_dir() / "inductor" / torch.__version__))


def compile_config(device_type: str):
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead" if device_type == "cuda" else None)
    config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    return config


def generate_options(device_type: str) -> dict:
    """The `generate` arguments that run the decoding steps through the compiled forward."""
    return dict(cache_implementation="static", max_cache_len=SLOTS, compile_config=compile_config(device_type))


def start(loaded) -> CompiledStep:
    """Compile `loaded`'s decode step in a background thread; its progress is the returned value."""
    step = CompiledStep()
    threading.Thread(target=_warm_up, args=(loaded, step), daemon=True, name="compile-decode").start()
    return step


def _warm_up(loaded, step: CompiledStep) -> None:
    # No model lock: the plain model is only read, and attaching an adapter (the one change to
    # its layers) waits for `settled`. The thread is short-lived, so its OpenMP team ends with it.
    began = time.perf_counter()
    try:
        with in_model_cache():
            if loaded.model.device.type == "cpu":
                step.from_model_cache = _install_kept_step(loaded)
            else:
                _generate(loaded, WARM_UP_TOKENS)  # transformers compiles the step here
        step.state = "ready"
    except Exception as exc:  # the int8 path goes on serving; the status line says why
        message = str(exc).strip()
        step.state, step.error = "failed", message.splitlines()[0][:200] if message else type(exc).__name__
    step.seconds = time.perf_counter() - began
    step.settled.set()


def _generate(loaded, tokens: int) -> None:
    ids = loaded.tokenizer("Hello", return_tensors="pt")["input_ids"].to(loaded.model.device)
    with torch.inference_mode():
        loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=loaded.tokenizer.pad_token_id,
                              top_p=None, top_k=None, **generate_options(loaded.model.device.type))


def _install_kept_step(loaded) -> bool:
    """Give `generate` the step kept in the model cache and warm it up, compiling and keeping it
    first where there is none, or where it does not load or answer. True if the kept one serves."""
    path = compiled_store.step_file(loaded, SLOTS)
    try:
        call = compiled_store.load(loaded, path)
        if call is not None:
            _use_for_generate(loaded.model, call)
            _generate(loaded, WARM_UP_TOKENS)
            return True
    except Exception as exc:  # written by other code, or cut short: compile it again
        print(f"[compiled step] not reusing {path.name}: {(str(exc).strip() or type(exc).__name__).splitlines()[0][:200]}",
              flush=True)
    _use_for_generate(loaded.model, compiled_store.compile_and_keep(loaded, _step_kwargs(loaded), path))
    _generate(loaded, WARM_UP_TOKENS)
    return False


def _step_kwargs(loaded) -> dict:
    """One decoding step's keyword arguments, as `generate` passes them over a static cache."""
    seen = []

    def record(**kwargs):
        seen.append(kwargs)
        return loaded.model(**kwargs)

    _use_for_generate(loaded.model, record)
    try:
        _generate(loaded, 2)
    finally:  # the model is compiled next, and must not carry this function into the file
        del loaded.model._compiled_call, loaded.model._last_compile_config
    return seen[0]


def _use_for_generate(model, call) -> None:
    # transformers keeps its compiled forward here (PreTrainedModel.get_compiled_call) and calls
    # it for every decoding step while the compile config it was made for is the one asked for.
    model._compiled_call, model._last_compile_config = call, compile_config(model.device.type)


def choose(loaded, rows: int, tokens: int, adapter_names: list | None) -> tuple[dict, str]:
    """(extra `generate` arguments, the status words) for a reply of `rows` batch rows that may
    reach `tokens` tokens: the compiled step's arguments where it serves, else none."""
    step = loaded.compiled
    if step is None:
        return {}, ""
    fallback = loaded.decode
    if step.state == "compiling":
        return {}, f"{fallback} path (the compiled step is still compiling)"
    if step.state == "failed":
        return {}, f"{fallback} path (compiling failed: {step.error})"
    if rows != 1 or adapter_names or loaded.adapters:
        return {}, f"{fallback} path (the compiled step serves the base model without adapters)"
    if tokens > SLOTS:
        return {}, f"{fallback} path (over the compiled step's {SLOTS} tokens)"
    return generate_options(loaded.model.device.type), "compiled step"


def wait_until_settled(loaded) -> None:
    """Block until `loaded`'s warm-up has finished (at once if it has none)."""
    if loaded.compiled is not None:
        loaded.compiled.settled.wait()


def wanted() -> bool:
    """Whether chat models get the compiled step ($FINETUNE_LAB_DECODE=compiled)."""
    return settings().decode == "compiled"
