"""What a bench's ratios depend on: the CPU, its matrix features, the threads torch uses.

    .venv/bin/python -c "from bench.machine import describe; print(describe())"
    .venv/bin/python bench/machine.py      # the same, with the matmul peaks (a few seconds)

The bench scripts put this into their last JSON line, so a figure in BENCHMARKS.md carries the
hardware it was measured on (bf16 speed-ups need AVX512-BF16 or AMX; the int8 kernels use
AVX-512 or AVX2, and `own_kernels_build` says which build of ours the CPU runs).
`matmul_gflops` is where hosts differ most for training: one square bf16 and fp32 product on
torch's threads, the best of a few.
"""
from __future__ import annotations

import os
from pathlib import Path

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def describe() -> dict:
    import torch

    from core.inference.own_kernels import instruction_set

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = set(cpuinfo.split())
    return {"cpu": name, "cpu_features": [f for f in FEATURES if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "own_kernels_build": instruction_set() or None, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def matmul_gflops(size: int = 2048, repeats: int = 5) -> dict:
    """{dtype: GFLOP/s} of a size x size x size product, the best of `repeats` (bf16 on a quarter
    of the size where the CPU emulates it)."""
    import time

    import torch

    from core.inference.models import cpu_has_native_bf16  # as the app decides it (ATEN_CPU_CAPABILITY too)

    native_bf16 = cpu_has_native_bf16()
    figures = {}
    for dtype in (torch.bfloat16, torch.float32):
        # Emulated bf16 (AVX2 only) multiplies at a few GFLOP/s: a smaller product says as much in seconds.
        n = size if dtype == torch.float32 or native_bf16 else size // 4
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: oneDNN picks and caches its kernel
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        figures[str(dtype).removeprefix("torch.")] = round(2 * n**3 / best / 1e9, 1)
    return figures


if __name__ == "__main__":
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages

    print(json.dumps({**describe(), "matmul_gflops": matmul_gflops()}))
