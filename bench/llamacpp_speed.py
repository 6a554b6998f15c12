"""llama.cpp beside the app, for bench/bench_chat.py: the default chat model written as q8_0 by
the app's own GGUF writer, read by llama.cpp (llama-cpp-python, the optional extra
requirements-llamacpp.txt), the same prompt, threads and token count as the app's decode
figure (prefill included in both). None where llama-cpp-python is not installed.

    .venv/bin/python -m bench.llamacpp_speed [--tokens 64] [--repeats 3]   # one JSON line

bench_chat runs it in a process of its own (`in_own_process`): a llama.cpp built for the wrong
CPU features dies of a fault (seen with GGML_NATIVE=ON on an AMX Xeon), and that must not end
the whole benchmark. bench/compiled_speed.py takes turns with one (`TakingTurns`, `--serve`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.decode_speed import PROMPTS
from core import threads


def llamacpp_rate(tokens: int, repeats: int, folder: Path) -> dict | None:
    """{"tok_s", "threads", "file_mb"} of greedy decoding in llama.cpp, median over the repeats."""
    ready = prepared(tokens, folder)
    if ready is None:
        return None
    once, facts = ready
    once()  # warm-up
    return {"tok_s": statistics.median(once() for _ in range(repeats)), **facts}


def prepared(tokens: int, folder: Path):
    """(a function that decodes `tokens` greedy tokens of the prompt and returns its tok/s,
    {"threads", "file_mb"}), or None where llama-cpp-python is not installed."""
    from training.gguf_runtime import llama_cpp_installed

    if not llama_cpp_installed():
        return None
    import llama_cpp
    from transformers import AutoTokenizer

    from core.assets import smollm2_gguf
    from core.inference.models import resolve_model
    from training.export_parity import prompt_ids
    from training.gguf_export import write_gguf

    source = Path(resolve_model("smollm2-135m-instruct"))
    gguf = write_gguf(source, folder / "smollm2-135m-instruct-q8_0.gguf", "q8_0", smollm2_gguf())
    count = threads.for_chat(job_running=False)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=count, n_threads_batch=count, verbose=False)
    ids = prompt_ids(AutoTokenizer.from_pretrained(str(source)), [{"role": "user", "content": PROMPTS[1]}])

    def once() -> float:
        start = time.perf_counter()
        for made, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True), start=1):
            if made == tokens:  # the app's figure forces the same count (min_new_tokens)
                break
        return tokens / (time.perf_counter() - start)

    return once, {"threads": count, "file_mb": gguf.stat().st_size / 1e6}


class TakingTurns:
    """llama.cpp in a process of its own that decodes one reply each time `rate()` asks, so a
    benchmark can interleave it with the app's replies: the host's changes then hit both alike
    (timed one after the other, llama.cpp over the app moved 0.73-0.97 between runs of one code).
    `facts` is None where llama-cpp-python is not installed or its process died."""

    def __init__(self, tokens: int):
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen([sys.executable, "-m", "bench.llamacpp_speed", "--tokens", str(tokens), "--serve"],
                                        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.facts = json.loads(self.process.stdout.readline() or "null")
        if self.facts is not None:
            self.rate()  # warm-up

    def rate(self) -> float | None:
        """One reply's tok/s, or None where the process died."""
        try:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            return float(self.process.stdout.readline())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def beside(tokens: int, repeats: int, **app_tok_s: float) -> dict:
    """llama.cpp's figure and each app path's rate over it (`<path>_over_llamacpp_q8_0`), for a
    benchmark's JSON line; {} where llama-cpp-python is not installed."""
    llama = in_own_process(tokens, repeats)
    if not llama or "error" in llama:
        return {"llamacpp_q8_0": llama} if llama else {}
    return {"llamacpp_q8_0": llama,
            **{f"{path}_over_llamacpp_q8_0": round(rate / llama["tok_s"], 3) for path, rate in app_tok_s.items()}}


def in_own_process(tokens: int, repeats: int) -> dict | None:
    """`llamacpp_rate` run by a child process; {"error": ...} where that process died."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bench.llamacpp_speed", "--tokens", str(tokens), "--repeats",
                           str(repeats)], cwd=root, capture_output=True, text=True)
    if done.returncode:
        return {"error": f"llama.cpp's process ended with code {done.returncode}: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="one JSON line once ready, then a rate per line read")
    args = parser.parse_args()
    threads.apply(threads.for_chat(job_running=False))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.serve:
            print(json.dumps(llamacpp_rate(args.tokens, args.repeats, Path(tmp))))
            return
        ready = prepared(args.tokens, Path(tmp))
        print(json.dumps(ready and ready[1]), flush=True)
        for _ in sys.stdin if ready else ():
            print(ready[0](), flush=True)


if __name__ == "__main__":
    main()
