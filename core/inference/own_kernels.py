"""Chat's own CPU kernels, where they serve (the default): int8-weight products with
AVX512-VNNI or AVX2, and a decoding step's attention over the cache slots in use, as torch ops
built here with g++.

    FINETUNE_LAB_CPU_KERNELS=auto|own|torch python app.py   # auto: ours where they serve
    .venv/bin/python -m core.inference.own_kernels     # build them into the model cache, say how it went

- `finetune_lab::w8a8_mm` (kernels/w8a8_ops.h). torch's int8 kernel (core.inference.
  fast_decode) converts every int8 weight to bf16 before it multiplies. This one quantizes each
  activation row per block of 32 values instead (as llama.cpp's q8_0 does, but to 16 bits, two
  int8 bytes a value, and each block is one 4-byte lane of 8 chunks of 64 values: the header's
  comment says why), and multiplies integers by integers, on the weight packed in tiles of 16
  rows (`pack`): a prompt's pass multiplies dozens of rows, and packed, each load serves them
  all. Two builds compute the same outputs to the bit: bytes by bytes with AVX512-VNNI's
  `vpdpbusd` (kernels/w8a8_vnni.cpp), or with AVX2's `vpmaddwd` on each value whole
  (kernels/w8a8_avx2.cpp: AVX2-only CPUs, AVX-512 ones without VNNI, and any CPU torch is told
  to run as AVX2). Greedy answers keep eager fp32's as the int8 path's do (bench/bench_chat.py
  reports the agreement).
- `finetune_lab::one_query_attention` (kernels/decode_attention.cpp): the compiled step's static
  cache has 512 slots, and torch's attention reads all of them every step; this reads each row's
  slots up to the last one its mask lets through (core.inference.decode_attention calls it).

The build the CPU runs (`instruction_set`, as torch runs it) is compiled once per source,
torch version and machine into `<models>/kernels/` (about 10 s) and loaded with
`torch.ops.load_library`; inside a compiled decode step each op is one opaque op, as torch's
kernels are. Where they cannot be built or run here (no g++, no AVX2, not x86-64 Linux, weights
not bf16), chat keeps torch's kernels and the model's status says why.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from core.inference.fast_decode import rows_times_int8 as torch_rows_times_int8
from core.paths import models_dir
from core.settings import settings

KERNELS = Path(__file__).parent / "kernels"
SHARED_HEADER = KERNELS / "w8a8_ops.h"  # what the two builds of the int8 ops share
# Each build's files to compile and flags: the same ops on each instruction set.
BUILDS = {"avx512-vnni": (["w8a8_vnni.cpp", "decode_attention.cpp"], []),
          "avx2": (["w8a8_avx2.cpp", "decode_attention.cpp"], ["-DFINETUNE_LAB_AVX2"])}
# Every kernel file: a kept compiled step is named by them too (core.inference.compiled_store).
SOURCES = [SHARED_HEADER, *(KERNELS / name for name in ("w8a8_vnni.cpp", "w8a8_avx2.cpp", "decode_attention.cpp"))]
BLOCK = 32  # activation values per scale: the op takes rows whose width is a multiple of it
TILE = 16  # weight rows per packed tile: the 16 outputs each weight load serves
BUILD_SECONDS = 300


def instruction_set() -> str:
    """The build this CPU runs, as torch runs it: "avx512-vnni", "avx2", or "" (neither)."""
    capability = torch.backends.cpu.get_cpu_capability()  # ATEN_CPU_CAPABILITY may ask for less than the CPU has
    if capability == "AVX512" and torch.cpu._is_avx512_supported() and torch.cpu._is_vnni_supported():
        return "avx512-vnni"
    return "avx2" if capability in ("AVX512", "AVX2") else ""  # torch's AVX2 needs FMA too, as ours does


def library_file(build: str) -> Path:
    """Where a build of the ops is kept: named by its sources, torch's version and the machine."""
    files = [SHARED_HEADER, *(KERNELS / name for name in BUILDS[build][0])]
    key = hashlib.sha256(b"".join(path.read_bytes() for path in files)
                         + f"{build} {torch.__version__} {platform.machine()} {compile_flags(build)}".encode())
    return models_dir() / "kernels" / f"own-{build}-{key.hexdigest()[:20]}.so"


def compile_flags(build: str) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    # -fopenmp: without it at::parallel_for's OpenMP pragma is ignored and the ops run on one core
    return ["-O3", "-fopenmp", "-std=c++20", "-shared", "-fPIC", "-w", *BUILDS[build][1],
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{torch_dir / 'include'}",
            f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}"]


@functools.cache
def unavailable() -> str:
    """Why the ops cannot serve here, in a few words; "" once they are built (if need be) and loaded."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"they are built for x86-64 Linux, not {platform.system()} {platform.machine()}"
    build = instruction_set()
    if not build:
        return ("this CPU has no AVX2" if not torch.cpu._is_avx2_supported()
                else f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels here")
    if shutil.which("g++") is None:
        return "no g++ here to build them"
    path = library_file(build)
    try:
        try:
            torch.ops.load_library(str(path))
        except OSError:  # none kept yet, or a damaged file: build it (again)
            compile_build(build, path)
            torch.ops.load_library(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"building or loading them failed: {(str(exc).strip() or type(exc).__name__).splitlines()[-1][:160]}"
    return ""


def compile_build(build: str, path: Path) -> None:
    """Compile a build of the ops into `path` (written whole or not at all: two processes may
    build at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[own kernels] building {path.name} with g++ (once per torch version: about 10 s)", flush=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        sources = [str(KERNELS / name) for name in BUILDS[build][0]]
        done = subprocess.run(["g++", *sources, "-o", partial, *compile_flags(build)], capture_output=True,
                              text=True, timeout=BUILD_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"g++ exited with {done.returncode}")
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


def pack(qweight: torch.Tensor) -> torch.Tensor | None:
    """int8 weight rows (N, K) laid out as our op reads them: tiles of 16 rows, each lane by lane
    (4 bytes of each 64), chunk by chunk, the tile's 16 rows' 4 bytes of that lane, as w + 128
    (kernels/w8a8_vnni.cpp says why). None where N is no multiple of 16 (rows appended under the
    weight, an adapter's A, must start a tile) or K of 32: such weights stay rows."""
    rows, width = qweight.shape
    if rows % TILE or width % BLOCK:
        return None
    chunks = -(-width // 64)
    whole = torch.nn.functional.pad(qweight, (0, chunks * 64 - width))
    tiles = whole.view(rows // TILE, TILE, chunks, 16, 4).permute(0, 3, 2, 1, 4)
    return (tiles.contiguous().view(torch.uint8) ^ 0x80).view(rows // TILE, 16, chunks, 64)


def unpack(packed: torch.Tensor, width: int) -> torch.Tensor:
    """The int8 weight rows (N, width) that `pack` laid out as `packed`."""
    tiles, _, chunks, _ = packed.shape
    rows = (packed ^ 0x80).view(torch.int8).view(tiles, 16, chunks, TILE, 4).permute(0, 3, 2, 1, 4)
    return rows.reshape(tiles * TILE, chunks * 64)[:, :width].contiguous()


def rows_times_int8(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """2-D bf16 `rows` times an int8 weight with per-row `scales`: packed (`pack`), by our op,
    which quantizes the rows to two int8 bytes a value per block of 32 values; a weight left as rows (a LoRA B of
    rank 16, a width no multiple of 32), by torch's kernel."""
    if weight.dtype != torch.uint8:
        return torch_rows_times_int8(rows, weight, scales)
    return torch.ops.finetune_lab.w8a8_mm(rows.to(torch.bfloat16), weight, scales)


def pack_lora_b(lora_b: torch.Tensor) -> torch.Tensor:
    """An adapter's int8 s B, (rank, outputs), as our op reads it: by tile of 16 outputs, each
    tile's rank rows of 16 bytes together, so a thread's run of tiles reads one stretch."""
    rank, outputs = lora_b.shape
    return lora_b.view(rank, outputs // TILE, TILE).permute(1, 0, 2).contiguous()


def pack_adapter(lora_a: torch.Tensor, lora_a_scales: torch.Tensor, lora_b: torch.Tensor, lora_b_scales: torch.Tensor,
                 lora_b_from: torch.Tensor) -> torch.Tensor:
    """An adapter's parts over one weight as the one byte tensor `lora_rows_times_int8` takes:
    `lora_a` its A packed by `pack` (its rank padded to 16), `lora_b` its s B in int8 as
    `pack_lora_b` lays it out, each with its scales (bf16, one per row of A, one per output),
    and `lora_b_from` (one int64 per tile of 16 outputs) where in x A each tile's s B starts, or
    -1 for a tile without the adapter (several layers in one weight: their A's one under
    another, core.inference.shared_products). One tensor, not five: each is an argument the op's
    call pays for, 120 times a step of Compare (kernels/w8a8_vnni.cpp, AdapterParts)."""
    parts = (lora_a, lora_b, lora_b_from.to(torch.int64), lora_a_scales.to(torch.bfloat16), lora_b_scales.to(torch.bfloat16))
    return torch.cat([part.contiguous().view(torch.uint8).reshape(-1) for part in parts])


def lora_rows_times_int8(rows: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, adapter: torch.Tensor,
                         a_rows: int, rank: int, tuned: int) -> torch.Tensor:
    """A layer plus one LoRA adapter on the last `tuned` rows, in one call of our op: `packed`
    the layer's weight by `pack`, and `adapter` by `pack_adapter`, with `a_rows` rows of A and
    s B of `rank` (padded to 16)."""
    return torch.ops.finetune_lab.w8a8_lora_mm(rows.to(torch.bfloat16), packed, scales, adapter, a_rows, rank, tuned)


def int8_product(dtype: torch.dtype):
    """(the function that multiplies rows by an int8 weight, the one that lays a weight out for
    it (None: rows as they are), its activations in words) as $FINETUNE_LAB_CPU_KERNELS asks:
    torch's kernel, or ours where they serve here (auto, the default, and own, which also
    prints why not)."""
    words = f"{str(dtype).removeprefix('torch.')} activations"
    choice = settings().cpu_kernels
    if choice == "torch":
        return torch_rows_times_int8, None, words
    why_not = "the weights are not bf16" if dtype != torch.bfloat16 else unavailable()
    if why_not:
        if choice == "own":
            print(f"[own kernels] keeping torch's: {why_not}", flush=True)
        return torch_rows_times_int8, None, f"{words} (our own kernels do not serve: {why_not})"
    return rows_times_int8, pack, "16-bit activations (own kernels)"


def serves(model: torch.nn.Module) -> bool:
    """Whether `model`'s int8 layers multiply with our op (then its attention takes ours too)."""
    return any(getattr(layer, "rows_product", None) is rows_times_int8 for layer in model.modules())


if __name__ == "__main__":
    print(unavailable() or f"ready: {library_file(instruction_set())}")
