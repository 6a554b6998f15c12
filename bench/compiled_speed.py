"""The app's decode on a CPU with native bf16, the compiled step, against the int8 path on torch's
kernels and llama.cpp, in one run.

    .venv/bin/python bench/compiled_speed.py [--tokens 64] [--compare-tokens 128] [--repeats 5]
                                             [--kernels auto|torch|own] [--compare-processes 5]

Both paths are the same loaded model (int8 weights on a bf16 CPU) answering through the Chat
tab's `stream_reply`; the compiled step is switched off and on between interleaved replies.
With `--kernels auto` (the app's default) or `own` the model runs on core.inference.own_kernels
where they serve (two int8 bytes a value, attention over the cache slots in use), and so does
the compiled step: what the app answers with. The int8 path stays on torch's kernels (the
app's decode until 2026-12-05), and a third path, `int8_own`, is the int8 path on ours, with its
greedy agreement.
Figures: each path's tok/s on one prompt and `compiled_over_int8`; greedy agreement of the
compiled step with the int8 path (bench.decode_speed.agreement: ten prompts, first 32 tokens,
as bench_chat measures int8 against bf16); the first warm-up (compiling into a fresh model
cache), and a restart: a new process on the same model cache, which loads the kept step (how
long the step took to be ready, the process to be ready, and its first compiled answer of 8
tokens, all from the process's start). Where llama-cpp-python is installed, llama.cpp on the same
model as q8_0 (bench/llamacpp_speed.py), taking turns with the app's paths in every round, with
each path over it (`app_over_llamacpp_q8_0`: the compiled step, as the app answers). Then
Compare with an adapter: its compiled step against the int8 path, each over a single pane
(`compare_figures`), on --compare-tokens tokens (128, as bench_chat's Compare figure: a longer
reply weighs the two prompts' pass less), timed in --compare-processes fresh processes on the
kept steps: the median process's ratio, and each one's. The last line is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import decode_speed, llamacpp_speed, machine  # noqa: E402
from bench.decode_speed import PROMPTS  # noqa: E402

RESTART = """
import sys, time; sys.path.insert(0, {root!r})
began = time.perf_counter()
from core import threads
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import load_model
threads.apply(threads.for_chat(job_running=False))
loaded = load_model("smollm2-135m-instruct")
loaded.compiled.settled.wait()
ready = time.perf_counter() - began
reply = list(stream_reply(loaded, [dict(role="user", content="Hi")], GenerationSettings(max_new_tokens=8)))[-1]
print(loaded.compiled.state, loaded.compiled.seconds, loaded.compiled.from_model_cache, ready,
      time.perf_counter() - began, reply.stats.endswith("compiled step"))
"""
COMPARE_TIMING = """
import json, sys; sys.path.insert(0, {root!r})
from bench.compiled_speed import compare_times
print(json.dumps(compare_times({folder!r}, {tokens}, {repeats})))
"""


def rates(loaded, tokens: int, repeats: int, llama=None) -> dict:
    """Median tok/s of the int8 path on torch's kernel, of the compiled step, where the model
    runs on our own kernels of the int8 path on them (`int8_own`), and of `llama`
    (llamacpp_speed.TakingTurns: llama.cpp, one reply a round) where it runs."""
    from core.inference.chat import GenerationSettings, stream_reply

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    messages, step = [{"role": "user", "content": PROMPTS[1]}], loaded.compiled
    times = {"int8": [], "compiled": [], **({"int8_own": []} if own(loaded) else {})}
    for round_ in range(repeats + 1):  # the first round warms both up
        for path in times:  # interleaved, so the host's noise hits both alike
            loaded.compiled = step if path == "compiled" else None
            with kernels(loaded, path):  # laying the weights out for a path's kernels is not its time
                start = time.perf_counter()
                reply = list(stream_reply(loaded, messages, settings))[-1]
                seconds = time.perf_counter() - start
            if round_:
                times[path].append(tokens / seconds)
            assert path != "compiled" or reply.stats.endswith("compiled step"), reply.stats
        rate = llama.rate() if llama is not None and llama.facts is not None else None
        if rate is not None and round_:
            times.setdefault("llamacpp", []).append(rate)
    loaded.compiled = step
    return {path: statistics.median(rate) for path, rate in times.items()}


def own(loaded) -> bool:
    from core.inference import own_kernels

    return own_kernels.serves(loaded.model)


def kernels(loaded, path: str):
    """A context in which a path's replies run on its kernels: the app's default (torch's) for
    the int8 path, the model's own for the others."""
    return decode_speed.on_kernels(loaded.model, own(loaded) and path != "int8")


def greedy_figures(loaded) -> dict:
    """Greedy agreement with the int8 path on torch's kernel: of the compiled step, and of the
    int8 path on our kernels where the model has them."""
    from core.inference.compiled_decode import generate_options, in_model_cache

    def greedy(path, **options):
        step, loaded.compiled = loaded.compiled, None
        with kernels(loaded, path):
            tokens = [decode_speed.greedy_tokens(loaded, prompt, 32, **options) for prompt in PROMPTS]
        loaded.compiled = step
        return tokens

    want = greedy("int8")
    # transformers compiles the forward here: into the app's inductor cache, kept apart per CPU
    # capability (torch's default one gave code compiled for AVX-512 back under avx2: wrong tokens)
    with in_model_cache():
        compiled = greedy("compiled", **generate_options(loaded.model.device.type))
    figures = {"compiled_vs_int8_greedy": decode_speed.agreement_with(want, compiled)}
    if own(loaded):
        figures["int8_own_vs_int8_greedy"] = decode_speed.agreement_with(want, greedy("int8_own"))
    return figures


def compare_figures(loaded, tokens: int, repeats: int, processes: int) -> dict:
    """Compare with an adapter (r=16 on every Linear, as bench_chat's): how long its compiled
    step took to compile; its time against a single base pane on the compiled step and on the
    int8 path, each measured in `processes` fresh processes on the kept steps (`compare_times`)
    and reported as the median process's ratio and every process's; and the greedy agreement of
    its panes with the int8 path's (ten prompts, the reply texts' first 28 tokens)."""
    from bench.bench_chat import make_adapter
    from core import threads
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings
    from core.inference.compare import stream_compare

    folder = threads.in_own_thread(make_adapter, Path(tempfile.mkdtemp(prefix="adapter-")) / "adapter")
    tuned, ask = attach_tuned(loaded, folder), [{"role": "user", "content": PROMPTS[1]}]
    list(stream_compare(loaded, tuned, ask, ask, GenerationSettings(max_new_tokens=2)))  # starts the compile
    compare_step = next(iter(loaded.compiled.compare.values()))
    compare_step.settled.wait()
    assert compare_step.state == "ready", compare_step.error
    runs = [json.loads(subprocess.run([sys.executable, "-c", COMPARE_TIMING.format(root=str(ROOT), folder=folder,
                                                                                    tokens=tokens, repeats=repeats)],
                                      capture_output=True, text=True, check=True, env=os.environ).stdout.splitlines()[-1])
            for _ in range(processes)]
    figures = {"compare_compile_s": round(compare_step.seconds, 1), "compare_processes": processes,
               "compiled_compare_tok_s": round(statistics.median(tokens / run["compiled_compare"] for run in runs), 1)}
    for path in ("compiled", "int8"):
        ratios = sorted(run[f"{path}_compare"] / run[f"{path}_single"] for run in runs)
        figures[f"{path}_compare_over_single"] = round(statistics.median(ratios), 3)
        figures[f"{path}_compare_over_single_each"] = [round(ratio, 3) for ratio in ratios]
    return {**figures, **compare_agreement(loaded, tuned)}


def compare_times(folder: str, tokens: int, repeats: int) -> dict:
    """In a process of its own, on the steps the first one kept: the median seconds of a single
    base pane and of Compare with the adapter in `folder`, on the compiled steps and on the int8
    path, interleaved (the model's kernels for both). One process's figures move with where its
    memory landed: the ratio ranged 1.17-1.32 over 15 processes of the same code (BENCHMARKS.md)."""
    from core import threads
    from core.inference.adapters import attach_tuned
    from core.inference.chat import GenerationSettings, stream_reply
    from core.inference.compare import stream_compare
    from core.inference.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    loaded = load_model("smollm2-135m-instruct")
    loaded.compiled.settled.wait()
    tuned, ask = attach_tuned(loaded, folder), [{"role": "user", "content": PROMPTS[1]}]
    settings, step = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens), loaded.compiled
    list(stream_compare(loaded, tuned, ask, ask, GenerationSettings(max_new_tokens=2)))  # loads the kept Compare step
    next(iter(step.compare.values())).settled.wait()
    runs = {"single": lambda: list(stream_reply(loaded, ask, settings))[-1],
            "compare": lambda: list(stream_compare(loaded, tuned, ask, ask, settings))[-1][-1]}
    times = {f"{path}_{run}": [] for path in ("compiled", "int8") for run in runs}
    for round_ in range(repeats + 1):  # the first round warms every path up
        for name in times:  # interleaved, so the host's noise hits all alike
            path, run = name.split("_")
            loaded.compiled = step if path == "compiled" else None
            start = time.perf_counter()
            reply = runs[run]()
            if round_:
                times[name].append(time.perf_counter() - start)
            assert (path == "compiled") == reply.stats.endswith("step"), reply.stats
    return {name: statistics.median(values) for name, values in times.items()}


def compare_agreement(loaded, tuned) -> dict:
    from core.inference.chat import GenerationSettings
    from core.inference.compare import stream_compare

    step, settings = loaded.compiled, GenerationSettings(max_new_tokens=32, min_new_tokens=32)
    panes = {}
    for path in ("compiled", "int8"):
        loaded.compiled = step if path == "compiled" else None
        replies = [list(stream_compare(loaded, tuned, ask, ask, settings))[-1]
                   for ask in ([{"role": "user", "content": prompt}] for prompt in PROMPTS)]
        assert all((path == "compiled") == pair[1].stats.endswith("step") for pair in replies), replies[0][1].stats
        # 32 tokens were generated; their text, tokenized again, can come out a token shorter
        panes[path] = [[loaded.tokenizer(reply.text)["input_ids"][:28] for reply in pane] for pane in zip(*replies)]
    loaded.compiled = step
    return {f"compiled_compare_{pane}_vs_int8_greedy": decode_speed.agreement_with(want, got)
            for pane, want, got in zip(("base", "tuned"), panes["int8"], panes["compiled"])}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--compare-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-processes", type=int, default=5,
                        help="fresh processes that time Compare (one process's ratio moved 1.17-1.32 over 15 processes of one code)")
    parser.add_argument("--kernels", choices=("auto", "torch", "own"), default="auto",
                        help="the kernels the compiled step runs on (FINETUNE_LAB_CPU_KERNELS; auto: ours where they serve)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    from core import threads
    from core.inference.models import load_model, resolve_model

    models = Path(tempfile.mkdtemp(prefix="models-"))  # a cold model cache: no kept step, no inductor cache
    (models / "smollm2-135m-instruct").symlink_to(resolve_model("smollm2-135m-instruct"))
    os.environ.update(FINETUNE_LAB_DECODE="compiled", FINETUNE_LAB_MODELS=str(models),
                      FINETUNE_LAB_CPU_KERNELS=args.kernels)
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)

    threads.apply(threads.for_chat(job_running=False))
    loaded = load_model("smollm2-135m-instruct")
    loaded.compiled.settled.wait()
    assert loaded.compiled.state == "ready", loaded.compiled.error
    assert args.kernels != "own" or own(loaded), loaded.activations
    llama = llamacpp_speed.TakingTurns(args.tokens)
    try:
        tok_s = rates(loaded, args.tokens, args.repeats, llama)  # stream_reply decodes on the decode thread
    finally:
        llama.close()
    llama_tok_s = tok_s.pop("llamacpp", None)
    agree = greedy_figures(loaded)
    out = subprocess.run([sys.executable, "-c", RESTART.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True, env=os.environ).stdout.split()
    figures = {**machine.describe(), "decode_weights": loaded.decode, "activations": loaded.activations,
               "tokens": args.tokens, **{f"{path}_tok_s": round(rate, 1) for path, rate in tok_s.items()},
               "compiled_over_int8": round(tok_s["compiled"] / tok_s["int8"], 3),
               **({"int8_own_over_int8": round(tok_s["int8_own"] / tok_s["int8"], 3)} if own(loaded) else {}),
               **agree, "first_compile_s": round(loaded.compiled.seconds, 1),
               "restart_step_ready_s": round(float(out[1]), 1), "restart_step_from_model_cache": out[2] == "True",
               "restart_process_ready_s": round(float(out[3]), 1), "restart_first_answer_s": round(float(out[4]), 1),
               "restart_first_answer_compiled": out[5] == "True"}
    figures["compare_tokens"] = args.compare_tokens
    figures.update(compare_figures(loaded, args.compare_tokens, args.repeats, args.compare_processes))
    if llama_tok_s is not None:  # the same rounds as the app's paths, taking turns with them
        figures["llamacpp_q8_0"] = {"tok_s": round(llama_tok_s, 1), **llama.facts, "taking_turns": True}
        figures.update({f"{path}_over_llamacpp_q8_0": round(rate / llama_tok_s, 3)
                        for path, rate in {"app": tok_s["compiled"], **tok_s}.items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
