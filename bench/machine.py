"""What a bench's ratios depend on: the CPU, its matrix features, the threads torch uses.

    .venv/bin/python -c "from bench.machine import describe; print(describe())"

The bench scripts put this into their last JSON line, so a figure in BENCHMARKS.md carries the
hardware it was measured on (bf16 speed-ups need AVX512-BF16 or AMX; the int8 kernels use
AVX-512 or AVX2).
"""
from __future__ import annotations

import os
from pathlib import Path

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def describe() -> dict:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = set(cpuinfo.split())
    return {"cpu": name, "cpu_features": [f for f in FEATURES if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
