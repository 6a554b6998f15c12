"""Do ahead what the app's first chat would wait for: once per machine, the packaged model
converted, our own CPU kernels built and the compiled decode step compiled, each kept in the
model cache (`main`); at each start of the app, the default model and its kept step loaded
before anyone asks (`at_app_start`).

    .venv/bin/python -m core.inference.prepare     # setup.sh runs it for `make run`

It loads the default chat model as the app does (core.settings.declare_serving), so it prepares
exactly what the settings pick here and nothing more: no kernels where torch's serve
(FINETUNE_LAB_CPU_KERNELS=torch, or a CPU without AVX2), no compiled step where the app
would not compile one (FINETUNE_LAB_DECODE=int8 or eager, a GPU).
Models added later still convert and compile on first use.
"""
from __future__ import annotations

import contextlib
import threading
import time

import torch

from core.inference.compiled_decode import wait_until_settled
from core.inference.models import DEFAULT_MODEL, load_model
from core.settings import declare_serving, settings


def main() -> None:
    declare_serving()
    began = time.perf_counter()
    loaded = load_model(DEFAULT_MODEL)
    if loaded.compiled is not None:
        print("[prepare] compiling the decode step into the model cache (once: 30-50 s)", flush=True)
        wait_until_settled(loaded)
    print(f"[prepare] {loaded.describe()}; ready in {time.perf_counter() - began:.0f} s", flush=True)



def at_app_start() -> threading.Thread | None:
    """Where the settings may give chat models a compiled decode step (app.main declared it
    serves; FINETUNE_LAB_DECODE auto or compiled), load the default model now, in a background
    thread: the step's load from the model cache (about 2 s) or its compile must not share the
    CPU with the first answer. Beside the load, a first answer of 55 tokens decoded at 19 tok/s
    on the int8 path, which alone decodes it at 70 (a 2-core Xeon); so a question asked while the
    step loads waits for it (compiled_decode.LOADING_WAIT_S). Where no step comes after all (a
    GPU or a CPU without native bf16 under auto, visitors' Hub models), this only loads the
    model sooner."""
    chosen = settings()
    if not (chosen.serving and chosen.decode in ("auto", "compiled")):
        return None
    loading = threading.Thread(target=_load_default_model, daemon=True, name="load-default-model")
    loading.start()
    if not torch.cuda.is_available():  # a compiled step on a CPU
        threading.Thread(target=_probe_compiler_isa, daemon=True, name="probe-isa").start()
    return loading


def _probe_compiler_isa() -> None:
    # Loading a kept step asks inductor which vector instructions this CPU runs, which it finds
    # by running a small program per kind in a subprocess: 0.9 s of a 2 s load. Asked here, the
    # waits overlap the model's load (the step was ready 0.3-0.4 s sooner on a 2-core EPYC).
    from torch._inductor import cpu_vec_isa

    with contextlib.suppress(Exception):  # the step's load asks again, and says what failed
        cpu_vec_isa.valid_vec_isa_list()


def _load_default_model() -> None:
    try:
        load_model(DEFAULT_MODEL)
    except Exception as exc:  # the first chat loads it again and shows the error to whoever asked
        print(f"[chat] the default model did not load ahead: {str(exc).strip()[:200]}", flush=True)


if __name__ == "__main__":
    main()
