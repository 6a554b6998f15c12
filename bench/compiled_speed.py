"""The compiled decode step (FINETUNE_LAB_DECODE=compiled) against the app's int8 path, in one run.

    .venv/bin/python bench/compiled_speed.py [--tokens 64] [--repeats 5]

Both paths are the same loaded model (int8 weights on a bf16 CPU) answering through the Chat
tab's `stream_reply`; the compiled step is switched off and on between interleaved replies.
Figures: each path's tok/s on one prompt and `compiled_over_int8`; greedy agreement of the
compiled step with the int8 path (bench.decode_speed.agreement: ten prompts, first 32 tokens,
as bench_chat measures int8 against bf16); the first warm-up (a cold inductor cache, fresh temp
folder) and a restart's warm-up in a new process on the same cache, with inductor's FX-graph
cache hits. The last line is a JSON object.
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
from bench import decode_speed, machine  # noqa: E402
from bench.decode_speed import PROMPTS  # noqa: E402

RESTART = """
import sys; sys.path.insert(0, {root!r})
from torch._dynamo.utils import counters
from core.inference.models import load_model
loaded = load_model("smollm2-135m-instruct")
loaded.compiled.settled.wait()
print(loaded.compiled.state, loaded.compiled.seconds, counters["inductor"]["fxgraph_cache_hit"],
      counters["inductor"]["fxgraph_cache_miss"])
"""


def rates(loaded, tokens: int, repeats: int) -> dict:
    from core.inference.chat import GenerationSettings, stream_reply

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    messages, step, times = [{"role": "user", "content": PROMPTS[1]}], loaded.compiled, {"int8": [], "compiled": []}
    for round_ in range(repeats + 1):  # the first round warms both up
        for path in times:  # interleaved, so the host's noise hits both alike
            loaded.compiled = step if path == "compiled" else None
            start = time.perf_counter()
            reply = list(stream_reply(loaded, messages, settings))[-1]
            if round_:
                times[path].append(tokens / (time.perf_counter() - start))
            assert path != "compiled" or reply.stats.endswith("compiled step"), reply.stats
    loaded.compiled = step
    return {path: statistics.median(rate) for path, rate in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(FINETUNE_LAB_DECODE="compiled", TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-"))
    from core import threads
    from core.inference.models import load_model

    threads.apply(threads.for_chat(job_running=False))
    loaded = load_model("smollm2-135m-instruct")
    loaded.compiled.settled.wait()
    assert loaded.compiled.state == "ready", loaded.compiled.error
    tok_s = rates(loaded, args.tokens, args.repeats)  # stream_reply decodes on the decode thread
    from core.inference.compiled_decode import generate_options

    agree = decode_speed.agreement(loaded, loaded, candidate_options=generate_options(loaded.model.device.type))
    out = subprocess.run([sys.executable, "-c", RESTART.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True, env=os.environ).stdout.split()
    figures = {**machine.describe(), "decode_weights": loaded.decode, "tokens": args.tokens,
               "int8_tok_s": round(tok_s["int8"], 1), "compiled_tok_s": round(tok_s["compiled"], 1),
               "compiled_over_int8": round(tok_s["compiled"] / tok_s["int8"], 3),
               "compiled_vs_int8_greedy": agree, "first_compile_s": round(loaded.compiled.seconds, 1),
               "restart_compile_s": round(float(out[1]), 1), "restart_fxgraph_cache_hits": int(out[2]),
               "restart_fxgraph_cache_misses": int(out[3])}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
