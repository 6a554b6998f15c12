"""The compiled decode step for chat: inductor compiles the model's forward over a static KV cache.

    python app.py                                   # on a CPU with int8 weights: the default (`wanted`)
    FINETUNE_LAB_DECODE=compiled python cli.py chat "Hi"   # in any process, GPUs included
    .venv/bin/python bench/compiled_speed.py      # compiled_over_int8, Compare and a restart, same run

It runs inside transformers' own machinery: `generate(cache_implementation="static",
compile_config=...)` calls the compiled decoding step (the prompt's prefill stays eager); a
greedy reply's steps after the first token run in core.inference.step_loop, on generate's
inputs, updated in place. On a
CPU it keeps the int8 weights of core.inference.fast_decode, whose kernel is one opaque op in
the graph, and inductor fuses what lies between the products (norms, rotary, residuals,
attention glue). On a GPU transformers compiles it with CUDA graphs (`reduce-overhead`):
310-396 tok/s on an H100 (bench/gpu_check.py, BENCHMARKS.md).

Two kinds of step, each on a view of the model that shares its weights (core.inference.compiled_views):
- the base step, one batch row of the base model: compiled when the model loads, and serving
  base replies before and after adapters attach;
- a Compare step, two rows (the base, then the tuned pane with its LoRA adapter in the graph):
  compiled on the first Compare with an adapter of its layout (layers, ranks), then serving
  every adapter of that layout.

Each is got ready by a background thread; replies use the int8 path while it compiles, and
switch over when it is ready (a reply waits a few seconds for one loading from the model cache).
On a CPU a step is compiled once ahead of time and kept in the model cache
(core.inference.compiled_store), so a restart loads it in seconds instead of tracing the model
again; inductor's cache lives in the model cache too (`inductor/`, per torch version and CPU
capability). A step serves a reply only where its graph is exact for it, else the reply takes
the int8 path and the status line says why: other batch shapes (several visitors, a tuned pane
alone, two adapters) and a prompt with its new tokens over `SLOTS` cache slots (a static
cache's attention reads all its slots every step, so a longer one would cost more than the
compile saves).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from core import threads
from core.inference import compiled_store, compiled_views
from core.inference.fast_decode import BASE
from core.paths import models_dir
from core.settings import settings

SLOTS = 512
WARM_UP_TOKENS = 3
# How long a reply waits for a step loading from the model cache (about 2 s) rather than
# decoding beside the load on the int8 path: the two share the CPU and the GIL (18 tok/s, where
# the step decodes about 100), and waiting answered sooner (bench/first_answer.py).
LOADING_WAIT_S = 6.0
_NEW_STEPS = threading.Lock()


@dataclass
class CompiledStep:
    """Where a compiled decode step stands ("compiling", "loading" from the model cache, "ready"
    or "failed"), and the view of the model it runs on. The base step also holds the Compare
    steps, by adapter layout."""

    model: object = None  # the view (core.inference.compiled_views) the step runs on
    rows: int = 1
    layout: str = ""  # a Compare step's adapter layout; "" for the base step
    state: str = "compiling"
    seconds: float = 0.0  # how long the warm-up took
    from_model_cache: bool = False  # loaded as kept by an earlier run, not compiled
    error: str = ""
    settled: threading.Event = field(default_factory=threading.Event)
    compare: dict = field(default_factory=dict)  # layout -> CompiledStep
    # adapter name -> its LoRA layers ({}: no Compare step runs it). Found once: walking the
    # model for them took 14.6 ms of every Compare (6.6 now), and an attached adapter stays as it is.
    lora_layers: dict = field(default_factory=dict)


@dataclass
class Route:
    """How a reply decodes: extra `generate` arguments, the model to call (None: the loaded
    model), a context to enter on the decode thread, and the words for the status line."""

    options: dict = field(default_factory=dict)
    model: object = None
    context: object = None
    words: str = ""


def in_model_cache():
    """A context in which inductor caches into the model cache (torch's own switch, which also
    restores the default after), unless the user chose a folder with TORCHINDUCTOR_CACHE_DIR.
    A folder per torch version and CPU capability: inductor's own keys miss ATEN_CPU_CAPABILITY,
    and code compiled for AVX-512 came back under avx2 with wrong results."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir, temporary_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in (None, os.path.abspath(default_cache_dir())):
        return contextlib.nullcontext()
    return temporary_cache_dir(str(models_dir() / "inductor" / f"{torch.__version__}-"
                                   f"{torch.backends.cpu.get_cpu_capability().lower()}"))


def compile_config(device_type: str):
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead" if device_type == "cuda" else None)
    config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    return config


def generate_options(device_type: str) -> dict:
    """The `generate` arguments that run the decoding steps through the compiled forward."""
    return dict(cache_implementation="static", max_cache_len=SLOTS, compile_config=compile_config(device_type))


def start(loaded) -> CompiledStep:
    """Compile `loaded`'s base step in a background thread; its progress is the returned value.
    Call it before any adapter attaches: the view it runs on is the plain base model's."""
    step = CompiledStep(model=compiled_views.base_view(loaded.model), state=_first_state(loaded, 1, ""))
    threading.Thread(target=_warm_up, args=(loaded, step), daemon=True, name="compile-decode").start()
    return step


def _first_state(loaded, rows: int, layout: str) -> str:
    """ "loading" where a CPU step of this shape is kept in the model cache, else "compiling":
    said before the warm-up thread runs, so the first reply knows to wait for a kept step."""
    kept = loaded.model.device.type == "cpu" and compiled_store.step_file(loaded, SLOTS, rows, layout).is_file()
    return "loading" if kept else "compiling"


def _warm_up(loaded, step: CompiledStep, make_view=None) -> None:
    # The model lock only while a Compare view is made: it packs the adapter's A under shared
    # base layers, as a reply on the int8 path may be doing. Then the weights are only read, and
    # a view's tree is its own. The thread is short-lived, so its OpenMP team ends with it.
    began = time.perf_counter()
    try:
        if make_view is not None:
            with loaded.lock:
                step.model = make_view()
        with in_model_cache():
            if step.model.device.type == "cpu":
                step.from_model_cache = _install_kept_step(loaded, step)
            else:
                _generate(step, loaded.tokenizer, WARM_UP_TOKENS)  # transformers compiles the step here
        step.state = "ready"
    except Exception as exc:  # the int8 path goes on serving; the status line says why
        message = str(exc).strip()
        step.state, step.error = "failed", message.splitlines()[0][:200] if message else type(exc).__name__
    step.seconds = time.perf_counter() - began
    step.settled.set()


def _generate(step: CompiledStep, tokenizer, tokens: int) -> None:
    ids = tokenizer(["Hello"] * step.rows, return_tensors="pt")["input_ids"].to(step.model.device)
    with torch.inference_mode():
        step.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id,
                            top_p=None, top_k=None, **generate_options(step.model.device.type))


def _install_kept_step(loaded, step: CompiledStep) -> bool:
    """Give `generate` on the step's view the step kept in the model cache and warm it up,
    compiling and keeping it first where there is none, or where it does not load or answer.
    True if the kept one serves."""
    path = compiled_store.step_file(loaded, SLOTS, step.rows, step.layout)
    try:
        call = compiled_store.load(step.model, path)
        if call is not None:
            _use_for_generate(step.model, call)
            _warm_up_between_replies(step, loaded.tokenizer)
            return True
    except Exception as exc:  # written by other code, or cut short: compile it again
        print(f"[compiled step] not reusing {path.name}: {(str(exc).strip() or type(exc).__name__).splitlines()[0][:200]}",
              flush=True)
    step.state = "compiling"
    _use_for_generate(step.model, compiled_store.compile_and_keep(step.model, _step_kwargs(step, loaded.tokenizer), path))
    _warm_up_between_replies(step, loaded.tokenizer)
    return False


def _warm_up_between_replies(step: CompiledStep, tokenizer) -> None:
    # On the decode thread: torch work on this short-lived one starts an OpenMP team of its own
    # beside the decode thread's, and replies decoded at half speed meanwhile.
    threads.decode_thread().submit(_generate, step, tokenizer, WARM_UP_TOKENS).result()


def _step_kwargs(step: CompiledStep, tokenizer) -> dict:
    """One decoding step's keyword arguments, as `generate` passes them over a static cache."""
    seen = []

    def record(**kwargs):
        seen.append(kwargs)
        return step.model(**kwargs)

    _use_for_generate(step.model, record)
    try:
        _generate(step, tokenizer, 2)
    finally:  # the model is compiled next, and must not carry this function into the file
        del step.model._compiled_call, step.model._last_compile_config
    return seen[0]


def _use_for_generate(model, call) -> None:
    # transformers keeps its compiled forward here (PreTrainedModel.get_compiled_call) and calls
    # it for every decoding step while the compile config it was made for is the one asked for.
    model._compiled_call, model._last_compile_config = call, compile_config(model.device.type)


def choose(loaded, rows: int, tokens: int, adapter_names: list | None) -> Route:
    """How a reply of `rows` batch rows (row i with adapter_names[i], BASE or None: no adapter)
    that may reach `tokens` tokens decodes: on a ready compiled step where one serves it, else on
    the loaded model, with the status words saying why."""
    base = loaded.compiled
    if base is None:
        return Route()
    fallback, names = loaded.decode, [name or BASE for name in adapter_names or [BASE] * rows]
    if tokens > SLOTS:
        return Route(words=f"{fallback} path (over the compiled step's {SLOTS} tokens)")
    if names == [BASE]:
        step, context = base, None
    elif len(names) == 2 and names[0] == BASE and names[1] != BASE:
        step, context = _compare_step(loaded, base, names[1])
        if step is None:
            return Route(words=f"{fallback} path (the Compare step takes plain LoRA on Linear layers only)")
    else:
        return Route(words=f"{fallback} path (the compiled step serves one base row, or Compare's base and tuned rows)")
    kind = "compiled step" if step is base else "compiled Compare step"
    if step.state == "loading":
        step.settled.wait(LOADING_WAIT_S)
    if step.state in ("compiling", "loading"):
        return Route(words=f"{fallback} path (the {kind} is still {step.state})")
    if step.state == "failed":
        return Route(words=f"{fallback} path (the {kind} failed to compile: {step.error})")
    return Route(generate_options(step.model.device.type), step.model, context, kind)


def _compare_step(loaded, base: CompiledStep, adapter: str):
    """(the Compare step for `adapter`'s layout, started now if new; the context that puts the
    adapter into its view), or (None, None) where the adapter is not one a Compare step runs."""
    if adapter not in base.lora_layers:
        base.lora_layers[adapter] = compiled_views.lora_layers(loaded.model, adapter)
    layers = base.lora_layers[adapter]
    if not layers or base.state != "ready":
        return (base if layers else None), None  # the base step's state speaks for both
    layout = compiled_views.layout(layers, adapter)
    with _NEW_STEPS:  # two Compares at once start one warm-up
        step = base.compare.get(layout)
        new = step is None
        if new:
            step = base.compare[layout] = CompiledStep(rows=2, layout=layout, state=_first_state(loaded, 2, layout))
    if new:
        threading.Thread(target=_warm_up, args=(loaded, step, lambda: compiled_views.compare_view(base.model, layers, adapter)),
                         daemon=True, name="compile-compare").start()
    return step, _adapter_in(step, layers, adapter)


@contextlib.contextmanager
def _adapter_in(step: CompiledStep, layers: dict, adapter: str):
    compiled_views.use(step.model, layers, adapter)  # on the decode thread, under the model's lock
    yield


def wait_until_settled(loaded) -> None:
    """Block until `loaded`'s base warm-up has finished (at once if it has none)."""
    if loaded.compiled is not None:
        loaded.compiled.settled.wait()


def wanted(decode: str) -> bool:
    """Whether a chat model loaded with `decode` weights gets the compiled step: always with
    $FINETUNE_LAB_DECODE=compiled; with auto (the default), on int8 weights (a CPU) in a process
    that serves chat (core.settings.declare_serving: the app, cli.py serve), where a first
    compile of 30-50 s pays back over many replies and later starts load it in seconds. Not in a
    one-off reply or a job's evaluation, nor in a public app whose visitors may load Hub models:
    each new model would take a core for that long."""
    chosen = settings()
    if chosen.decode == "compiled":
        return True
    visitors_choose = chosen.public and chosen.visitor_hub
    return chosen.decode == "auto" and decode == "int8" and chosen.serving and not visitors_choose
