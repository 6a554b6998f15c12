"""The compiled decode step kept in the model cache, so a restart loads it instead of compiling.

    used by core.inference.compiled_decode; bench/compiled_speed.py measures a restart with it

torch's precompile API compiles one decoding step ahead of time (`torch.compile(...)
.aot_compile`) and writes dynamo's bytecode with inductor's generated code to a file;
`torch.compiler.load_compiled_function` reads it back in about 2 s, where tracing the model
again took 7.6-12 s even with inductor's cache warm. One file serves every model of one
architecture, dtype, decode path and kernels on one CPU kind, with the same library versions and
the same code of ours in the graph or compiling it, and the same batch rows and adapter layout
(`step_file` names it by all of them), since the step reads the weights from the model it is
given, not from the file.

The step keeps no guards: `compiled_decode.choose` is its guard (the rows and adapter layout it
was compiled for, at most `SLOTS` cache slots), as the graph was compiled for exactly that. Nor
does it check its inputs' sizes and strides each call, as inductor's code does by default: the
file's name fixes them (the model's config, the rows, the adapter layout, the slots), and those
checks were a sixth of a Compare step's own time. The files are pickles and
code that torch writes and runs, like inductor's own cache: the app loads only files it wrote in
its own model cache, never one from the Hub.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import platform
import types
from pathlib import Path

import torch

from core.inference import compiled_views, decode_attention, fast_decode, lora_rows, own_kernels, shared_products
from core.paths import models_dir


def step_file(loaded, slots: int, rows: int = 1, layout: str = ""):
    """Where `loaded`'s compiled step is kept: named by everything the generated code depends on."""
    import transformers  # loaded by then with the model; not at the app's start

    config = {k: v for k, v in loaded.model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    ours = [hashlib.sha256(Path(path).read_bytes()).hexdigest()
            for path in (__file__, compiled_views.__file__, shared_products.__file__, fast_decode.__file__, lora_rows.__file__,
                          decode_attention.__file__, own_kernels.__file__, *own_kernels.SOURCES)]
    key = json.dumps([config, str(loaded.model.dtype), loaded.decode, loaded.activations, slots, rows, layout, loaded.model.device.type, torch.__version__,
                      transformers.__version__, torch.backends.cpu.get_cpu_capability(), platform.machine(), ours],
                     sort_keys=True, default=str)
    return models_dir() / "compiled" / f"decode-{hashlib.sha256(key.encode()).hexdigest()[:20]}.bin"


def load(model, path):
    """The step kept at `path` as a function of the decode step's keyword arguments on `model`,
    or None if there is none. Raises if the file is unreadable or was written by other code."""
    names = path.with_suffix(".json")
    if not (path.is_file() and names.is_file()):
        return None
    modules = {name: importlib.import_module(module) for name, module in json.loads(names.read_text()).items()}
    with path.open("rb") as file:
        step = torch.compiler.load_compiled_function(file, f_globals=modules, external_data={"model": model})
    return _unguarded(step, model)


def compile_and_keep(model, step_kwargs: dict, path):
    """Compile `model`'s decoding step for calls shaped like `step_kwargs` (a `generate` step's
    own arguments), keep it at `path`, and return it as `load` does."""
    # Not inductor's cpp_wrapper: measured on both int8 kernels, it decoded no faster (85.2
    # against 84.7 tok/s on ours) and its compile took 145-164 s instead of 33-41.
    compiled = torch.compile(model.__call__, fullgraph=True, dynamic=False,
                             options={"guard_filter_fn": lambda guards: [False] * len(guards)})
    # Without the input checks (see the docstring): a Python call each, 819 of them in a single
    # pane's step and 1239 in Compare's; measured on the Xeon, 0.36 and 0.6 ms of 6.8 and 9.3 ms.
    # Patched here, on the thread that compiles: inductor's settings set on another do not reach it.
    from torch._inductor import config as inductor_config  # loaded with the compiler, not at the app's start

    # And no OpenMP team for a kernel of under 4,096 values a thread (inductor's default: 512):
    # starting the team cost more than it saved on a Compare step's norms and activations over
    # two rows (measured in one process: its step 1.3-2.2% faster; a single pane's the same).
    options = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False, "cpp.min_chunk_size": 4096}
    with torch.inference_mode(), inductor_config.patch(options):
        step = compiled.aot_compile(((), step_kwargs))
    path.parent.mkdir(parents=True, exist_ok=True)
    # dynamo's bytecode loads modules through globals it named at compile time; the file keeps
    # their names, and `load` imports them again.
    env, scope = step._artifacts.runtime_env, step._extra_globals
    modules = {name: scope[name].__name__ for name in env.external_refs
               if name not in env.used_globals and isinstance(scope.get(name), types.ModuleType)}
    names = path.with_suffix(".json")
    partial = names.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps(modules))
    os.replace(partial, names)
    step.save_compiled_function(str(path), external_data={"model": model})  # written whole, then renamed
    return _unguarded(step, model)


def _unguarded(step, model):
    step.disable_guard_check()  # the guard is compiled_decode.choose: see the docstring
    return functools.partial(step, model)  # the step's first argument is the model (`self`)
