"""Chat benchmark: decode paths against the bandwidth limit, Compare against a single pane,
the streaming path's overhead, compare-mode memory, time to first token.

    .venv/bin/python bench/bench_chat.py [--repeats 5] [--tokens 64] [--compare-tokens 128]
    FINETUNE_LAB_DTYPE=fp32 .venv/bin/python bench/bench_chat.py   # the fp32 figures
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/bench_chat.py   # as on an AVX2-only CPU

(d) decode rate of each path (eager fp32, eager bf16, int8 weights with bf16 activations:
    core.inference.fast_decode), the machine's read bandwidth, and each path's share of its bandwidth
    limit (bandwidth / bytes read per token); greedy agreement of int8 with eager bf16 on ten
    prompts (first 32 tokens), and with eager fp32 (`int8_vs_fp32_greedy`); `decode_speedup` is
    int8 over eager bf16; where our own kernels serve (core.inference.own_kernels: two int8
    bytes a value), the same for them (`int8-own`, `own_vs_bf16_greedy`, `own_over_int8`);
(e) wall time of Compare (both panes from one batch, --compare-tokens each) against a single
    pane: `compare_over_single` is over the base pane alone, on the int8 path as the app loads it
    outside a serving process (our kernels where they serve; no compiled step)
    (`two_base_rows_over_one`: a batch of two rows without any adapter over one row, its floor); the
    same figures on eager bf16 weights (`eager_bf16`), and the app's Compare over an eager
    single pane (`compare_over_eager_single`);
(a) wall time of core.inference.chat.stream_reply vs model.generate, same prompt, same greedy tokens;
    generate is timed on the main thread and on a worker thread, where the app's handlers run
    (with bf16 weights, OpenMP-parallel kernels ran ~25% slower off the main thread);
(b) peak RSS of compare mode (base + LoRA adapter, one copy of weights) vs a single model,
    each measured in its own fresh subprocess;
(c) time to first streamed token;
(f) where llama-cpp-python is installed, llama.cpp on the same model written as q8_0 by the app's
    GGUF writer (bench/llamacpp_speed.py): `int8_over_llamacpp_q8_0` is the int8 path's rate over
    it (the app's own figure, on its compiled step: bench/compiled_speed.py).
The last line printed is a JSON object with the figures (medians over the repeats).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import decode_speed, llamacpp_speed, machine  # noqa: E402
from core import threads  # noqa: E402
PROMPT = [{"role": "user", "content": "Write a short paragraph about the history of Paris."}]


def time_paths(tokens: int, repeats: int) -> dict:
    import torch

    from core.inference.chat import GenerationSettings, base_only, build_inputs, stream_reply
    from core import threads
    from core.inference.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    loaded = load_model("smollm2-135m-instruct")
    settings = GenerationSettings(max_new_tokens=tokens)
    ids, _ = build_inputs(loaded, PROMPT, settings)

    def generate():  # compare_figures attached an adapter to this same cached model: keep it off
        with torch.inference_mode(), base_only(loaded, None):
            return loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=tokens, do_sample=False,
                                         repetition_penalty=settings.repetition_penalty,
                                         pad_token_id=loaded.tokenizer.pad_token_id)

    times = {"raw": [], "raw_thread": [], "app": [], "ttft": []}
    counts = set()
    for _ in range(repeats):
        start = time.perf_counter()
        counts.add(generate().shape[1] - ids.shape[1])
        times["raw"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:  # where a Gradio handler runs: not the main thread
            pool.submit(generate).result()
        times["raw_thread"].append(time.perf_counter() - start)
        start, first = time.perf_counter(), None
        for reply in stream_reply(loaded, PROMPT, settings):
            first = first or time.perf_counter() - start
        times["app"].append(time.perf_counter() - start)
        times["ttft"].append(first)
        counts.add(reply.new_tokens)
    assert len(counts) == 1, f"paths generated different token counts: {counts}"
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"dtype": str(loaded.model.dtype).removeprefix("torch."), "new_tokens": counts.pop(),
            "raw_generate_s": med["raw"], "raw_generate_in_thread_s": med["raw_thread"],
            "app_stream_s": med["app"], "ttft_s": med["ttft"],
            "stream_over_raw": med["app"] / med["raw"],
            "stream_over_raw_in_thread": med["app"] / med["raw_thread"]}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of this process
# (which has loaded the model by then) would report the parent's peak.
RSS_SCRIPT = """
import pathlib, re, sys
sys.path.insert(0, {root!r})
from core.inference.adapters import attach_tuned
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import load_model
m = load_model("smollm2-135m-instruct")
s = GenerationSettings(max_new_tokens=16)
msgs = [{{"role": "user", "content": "Hello"}}]
list(stream_reply(m, msgs, s))
if {adapter!r}:
    t = attach_tuned(m, {adapter!r})
    list(stream_reply(m, msgs, s, t.adapter_name))
status = pathlib.Path("/proc/self/status").read_text()
print(*(re.search(key + r":\\s+(\\d+)", status).group(1) for key in ("VmHWM", "VmRSS")))
"""


def rss_mb(adapter: str) -> tuple[float, float]:
    """(peak, current after the replies) resident MB of a fresh process."""
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT.format(root=str(ROOT), adapter=adapter)],
                         capture_output=True, text=True, check=True)
    peak, now = out.stdout.split()[-2:]
    return int(peak) / 1024, int(now) / 1024


def make_adapter(folder: Path, model_folder: Path | None = None) -> str:
    """A random LoRA (r=16 on every Linear, seed 0) of the packaged SmolLM2, or of `model_folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.inference.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(model_folder or resolve_model("smollm2-135m-instruct"))
    # Drawn from seed 0: its garbled answers are full of near-ties, so another draw each run
    # moved the tuned pane's greedy agreement from 1/10 to 8/10 prompts identical.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapted = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False))
    adapted.save_pretrained(folder)
    return str(folder)


def decode_paths(tokens: int, repeats: int) -> tuple[dict, dict]:
    from core.inference.models import resolve_model

    threads.apply(threads.for_chat(job_running=False))  # as the app does; torch's default is 1 here
    bandwidth = threads.in_own_thread(decode_speed.read_bandwidth_gbs)
    source = resolve_model("smollm2-135m-instruct")
    from core.inference import own_kernels

    own = () if own_kernels.unavailable() else ("int8-own",)
    paths = {path: threads.in_own_thread(decode_speed.load_path, source, path)  # as the app loads
             for path in ("eager-fp32", "eager-bf16", "int8", *own)}
    rates = decode_speed.decode_rates(paths, tokens, repeats)
    figures = {**machine.describe(), "read_bandwidth_gbs": bandwidth}
    for path, loaded in paths.items():
        limit = bandwidth * 1e9 / decode_speed.bytes_per_token(loaded.model)
        figures[path] = {"tok_s": rates[path], "bandwidth_limit_tok_s": limit, "share_of_limit": rates[path] / limit}
        print(path, json.dumps(figures[path]), flush=True)
    figures["int8_vs_bf16_greedy"] = decode_speed.agreement(paths["eager-bf16"], paths["int8"])
    # Against fp32: eager decoding's weights on a CPU without native bf16, which also decodes int8.
    figures["int8_vs_fp32_greedy"] = decode_speed.agreement(paths["eager-fp32"], paths["int8"])
    if own:
        figures["own_vs_bf16_greedy"] = decode_speed.agreement(paths["eager-bf16"], paths["int8-own"])
        figures["own_over_int8"] = figures["int8-own"]["tok_s"] / figures["int8"]["tok_s"]
    # For scale: how far bf16 itself moves greedy answers from fp32.
    figures["bf16_vs_fp32_greedy"] = decode_speed.agreement(paths["eager-fp32"], paths["eager-bf16"])
    figures["decode_speedup"] = figures["int8"]["tok_s"] / figures["eager-bf16"]["tok_s"]
    return figures, paths


def compare_figures(adapter: str, tokens: int, repeats: int, eager) -> dict:
    """Compare on the app's own path, then on `eager` (the eager bf16 model decode_paths
    loaded): whether a batch of two costs about what one row costs depends on the matmul kernel."""
    from core.inference.adapters import attach_tuned
    from core.inference.models import load_model

    loaded = load_model("smollm2-135m-instruct")  # the app's int8 path on this machine (not serving: no compiled step)
    floor = decode_speed.two_rows_over_one(loaded, tokens, repeats)  # before the adapter attaches
    times = decode_speed.compare_timing(loaded, attach_tuned(loaded, adapter), tokens, repeats)
    eager_times = decode_speed.compare_timing(eager, attach_tuned(eager, adapter), tokens, repeats)
    return {"decode_path": loaded.decode, "compare_tokens": tokens, **times,
            "compare_over_single": times["compare_s"] / times["single_base_s"],
            "two_base_rows_over_one": floor,
            "compare_over_single_tuned": times["compare_s"] / times["single_tuned_s"],
            "compare_over_one_after_other": times["compare_s"] / (times["single_base_s"] + times["single_tuned_s"]),
            "eager_bf16": {**eager_times, "compare_over_single": eager_times["compare_s"] / eager_times["single_base_s"]},
            "compare_over_eager_single": times["compare_s"] / eager_times["single_base_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--compare-tokens", type=int, default=128)
    args = parser.parse_args()
    figures, paths = decode_paths(args.tokens, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        own = {"own": figures["int8-own"]["tok_s"]} if "int8-own" in figures else {}
        figures.update(llamacpp_speed.beside(args.tokens, args.repeats, int8=figures["int8"]["tok_s"], **own))
        adapter = threads.in_own_thread(make_adapter, Path(tmp) / "adapter")
        figures.update(compare_figures(adapter, args.compare_tokens, max(3, args.repeats // 2),
                                       paths["eager-bf16"]))
        # Last: its raw generate on the main thread leaves that thread an OpenMP team, which
        # slows every other thread's decoding from then on (core.threads).
        figures.update(time_paths(args.tokens, args.repeats))
        (single, single_now), (compare, compare_now) = rss_mb(""), rss_mb(adapter)
    figures.update(single_peak_rss_mb=single, compare_peak_rss_mb=compare,
                   compare_over_single_rss=compare / single,
                   single_rss_after_mb=single_now, compare_rss_after_mb=compare_now)
    print(json.dumps(rounded(figures)))


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
