"""Our int8 kernel against other versions of its source, taking turns in one process.

    .venv/bin/python bench/kernel_pair.py                          # the working tree's kernel against HEAD's
    .venv/bin/python bench/kernel_pair.py --against HEAD~3 --variant wide=/tmp/w8a8_wide.cpp --reps 60
    .venv/bin/python bench/kernel_pair.py --pane-rows 37 --reps 10   # a 37-token prompt's pass a pane
    .venv/bin/python bench/kernel_pair.py --variant avx2=core/inference/kernels/w8a8_avx2.cpp  # the other build

What a change to the int8 kernel of the build this CPU runs (core/inference/kernels/w8a8_vnni.cpp
or w8a8_avx2.cpp, as core.inference.own_kernels picks it) buys, measured so the host's noise cancels:
between two runs of bench/compiled_speed.py this host's speed moves by more than most kernel
changes. Each other source is built with g++ under an op namespace of its own (the app's flags,
own_kernels.compile_flags) and loaded beside the app's ops. A chain is one decoding step's
products of SmolLM2-135M (random int8 weights of its shapes, 134 MB: more than the last-level
cache, so read from memory as a step reads them): q/k/v and gate/up as one product each, as
core.inference.shared_products multiplies them, and the LM head; with one row (a single pane),
two rows (Compare's rows without the adapter) or two with an r=16 adapter on the second
(Compare's op); with --pane-rows N, N rows a pane (a prompt's pass), the LM head over each
pane's last row. The chains of all sources take turns, in alternating order, and each figure is
the median of paired differences from the working tree's chain: two copies of one source read
within +-0.06 ms. Each source's outputs are checked against the working tree's to the bit first.
The last line is a JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import machine  # noqa: E402
from core.inference import own_kernels  # noqa: E402
from core.inference.fast_decode import quantized_rows  # noqa: E402

BUILD = own_kernels.instruction_set()
SOURCE = f"core/inference/kernels/{own_kernels.BUILDS[BUILD][0][0]}" if BUILD else ""
HEADER = str(own_kernels.SHARED_HEADER.relative_to(ROOT))  # included by the kernels since the AVX2 build
# SmolLM2-135M: per layer q/k/v (960 outputs from 576), o (576 from 576), gate/up (3072 from
# 576), down (576 from 1536), the layers each product holds; 30 layers; the LM head 49152 x 576.
LAYER_SHAPES = [(960, 576, 3), (576, 576, 1), (3072, 576, 2), (576, 1536, 1)]
LAYERS, VOCAB, RANK = 30, 49152, 16
CHAINS = ("one_row", "two_rows", "two_rows_adapter")


def with_header(source: str, header: str) -> str:
    """The kernel's C++ text with its shared header's text in place of the #include."""
    return source.replace(f'#include "{own_kernels.SHARED_HEADER.name}"', header)


def text_at(revision: str, path: str, check: bool = True) -> str:
    """A file's text at a git revision ("" where it is missing and `check` is off)."""
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{path}"], capture_output=True, text=True,
                          check=check).stdout


def built_ops(name: str, source: str):
    """The ops of `source` (the kernel's C++ text, its header inlined) under namespace `name`,
    built once per text."""
    text = source.replace("TORCH_LIBRARY(finetune_lab", f"TORCH_LIBRARY({name}").replace(
        "TORCH_LIBRARY_IMPL(finetune_lab", f"TORCH_LIBRARY_IMPL({name}")
    folder = own_kernels.library_file(BUILD).parent / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    library = stem.with_suffix(".so")
    if not library.is_file():
        stem.with_suffix(".cpp").write_text(text)
        subprocess.run(["g++", str(stem.with_suffix(".cpp")), "-o", str(library), *own_kernels.compile_flags(BUILD)],
                       check=True, capture_output=True, text=True)
    torch.ops.load_library(str(library))
    return getattr(torch.ops, name)


def step_weights() -> tuple[list, tuple]:
    """Every product's (packed weight, scales, packed adapter, rows of A, width), and the LM head's."""
    torch.manual_seed(0)
    layers = []
    for outputs, width, parts in LAYER_SHAPES * LAYERS:
        weight = own_kernels.pack(torch.randint(-127, 128, (outputs, width), dtype=torch.int8))
        qa, sa = quantized_rows(torch.randn(RANK * parts, width) / 24, torch.bfloat16)
        qb, sb = quantized_rows(torch.randn(outputs, RANK) / 4, torch.bfloat16)
        starts = torch.arange(parts).repeat_interleave(outputs // parts // own_kernels.TILE) * RANK
        adapter = own_kernels.pack_adapter(own_kernels.pack(qa), sa, own_kernels.pack_lora_b(qb.t().contiguous()),
                                           sb, starts)
        layers.append((weight, torch.rand(outputs).to(torch.bfloat16), adapter, RANK * parts, width))
    head = (own_kernels.pack(torch.randint(-127, 128, (VOCAB, 576), dtype=torch.int8)),
            torch.rand(VOCAB).to(torch.bfloat16))
    return layers, head


def activations(pane_rows: int) -> dict:
    """{(rows, width): bf16 rows}: the chains' inputs, `pane_rows` rows a pane, and one a pane for the LM head."""
    torch.manual_seed(1)
    return {(rows, width): torch.randn(rows, width).to(torch.bfloat16)
            for rows in (1, 2, pane_rows, 2 * pane_rows) for width in (576, 1536)}


@dataclass
class Step:
    """What the chains multiply: step_weights' layers and LM head, and `pane_rows` rows a pane."""

    layers: list
    head: tuple
    pane_rows: int
    inputs: dict


def chain(ops, step: Step, chain_name: str) -> list[torch.Tensor]:
    """One chain's outputs (chain_name in CHAINS) on `ops`: each pane `step.pane_rows` rows
    through every layer, then the LM head over each pane's last row (as a prompt's pass)."""
    panes, pane_rows, rows = (1 if chain_name == "one_row" else 2), step.pane_rows, step.inputs
    outputs = []
    for weight, scales, adapter, a_rows, width in step.layers:
        x = rows[(panes * pane_rows, width)]
        if chain_name == "two_rows_adapter":
            outputs.append(ops.w8a8_lora_mm(x, weight, scales, adapter, a_rows, RANK, pane_rows))
        else:
            outputs.append(ops.w8a8_mm(x, weight, scales))
    outputs.append(ops.w8a8_mm(rows[(panes, 576)], *step.head))
    return outputs


def timings(sources: dict, step: Step, reps: int) -> dict:
    """{source: {chain: [ms per rep]}}, the sources taking turns in alternating order."""
    seen = {name: {c: [] for c in CHAINS} for name in sources}
    for rep in range(reps):
        for chain_name in CHAINS:
            for name, ops in (list(sources.items()) if rep % 2 else list(sources.items())[::-1]):
                start = time.perf_counter()
                chain(ops, step, chain_name)
                seen[name][chain_name].append((time.perf_counter() - start) * 1e3)
    return seen


def figures(seen: dict, identical: dict) -> dict:
    """Each chain's median per source, and each source's median paired difference from the working tree's."""
    own = seen["working_tree"]
    return {"chain_ms": {name: {c: round(statistics.median(v), 3) for c, v in chains.items()}
                           for name, chains in seen.items()},
              "paired_diff_ms": {name: {c: round(statistics.median([a - b for a, b in zip(v, own[c])]), 3)
                                        for c, v in chains.items()}
                                 for name, chains in seen.items() if name != "working_tree"},
              "identical_outputs": identical}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="a git revision whose kernel to time (default HEAD)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FILE",
                        help="another source of the kernel, as a file (repeatable)")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--pane-rows", type=int, default=1,
                        help="rows a pane: 1 times a decoding step's products, a prompt's length its pass")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if own_kernels.unavailable():
        raise SystemExit(f"Our kernels cannot run here: {own_kernels.unavailable()}.")
    # the header is "" at revisions before the AVX2 build, whose kernel was one file
    against = with_header(text_at(args.against, SOURCE), text_at(args.against, HEADER, check=False))
    texts = {"against_" + "".join(ch if ch.isalnum() else "_" for ch in args.against): against}
    header = (ROOT / HEADER).read_text()
    for item in args.variant:
        name, _, path = item.partition("=")
        texts[name] = with_header(Path(path).read_text(), header)
    sources = {"working_tree": torch.ops.finetune_lab, **{name: built_ops(name, text) for name, text in texts.items()}}
    step = Step(*step_weights(), args.pane_rows, activations(args.pane_rows))
    reference = {c: chain(sources["working_tree"], step, c) for c in CHAINS}
    identical = {name: all(all(torch.equal(a, b) for a, b in zip(chain(ops, step, c), reference[c])) for c in CHAINS)
                 for name, ops in sources.items() if name != "working_tree"}
    result = figures(timings(sources, step, args.reps), identical)
    print(json.dumps({**result, "pane_rows": args.pane_rows, "reps": args.reps, **machine.describe()}))


if __name__ == "__main__":
    main()
