"""The first answer after `make run`: what preparing costs once, and how soon the app then answers,
with the defaults (our kernels and the compiled step, loaded as the app starts) against the int8
path on torch's kernels (the defaults until 2026-12-05), in one run.

    .venv/bin/python bench/first_answer.py [--later 8]

1. `python -m core.inference.prepare` (what setup.sh runs) into a cold model cache, timed: the
   packaged GGUF converted, and with the defaults our kernels built and the step compiled.
2. For each setting, fresh processes that start as app.main does (the app's imports, serving
   declared, `prepare.at_app_start`, the UI built) and ask "Who are you?" (greedy, the Chat
   tab's defaults) through `stream_reply`: once at the very start, once `--later` seconds after
   (a user opening the page and typing). Each reports the first token's and the whole
   answer's seconds after the send, and the status line (which path answered).
The last line is a JSON object; `later_answer_over_baseline` is the defaults' answer time over
the baseline's, asked later.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import machine  # noqa: E402

BASELINE = {"FINETUNE_LAB_DECODE": "int8", "FINETUNE_LAB_CPU_KERNELS": "torch"}

ASK = """
import json, sys, time
sys.path.insert(0, {root!r})
import app  # the app's own imports, as its process has them before any chat
from core import threads
from core.inference import prepare
from core.inference.chat import GenerationSettings, stream_reply
from core.inference.models import DEFAULT_MODEL, load_model
from core.settings import declare_serving

app.import_libraries()
declare_serving()
threads.apply(threads.for_chat(job_running=False))
prepare.at_app_start()
app.build_app()  # as app.main does before it serves the page
time.sleep({later})
send, first = time.perf_counter(), None
for reply in stream_reply(load_model(DEFAULT_MODEL), [{{"role": "user", "content": "Who are you?"}}], GenerationSettings()):
    first = first or time.perf_counter() - send
print(json.dumps({{"first_token_s": round(first, 2), "answer_s": round(time.perf_counter() - send, 2),
                  "tokens": reply.new_tokens, "status": reply.stats}}))
"""


def ask(env: dict, later: float) -> dict:
    done = subprocess.run([sys.executable, "-c", ASK.format(root=str(ROOT), later=later)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--later", type=float, default=8.0, help="seconds after the start for the second question")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="first-answer-"))  # a cold data dir and model cache
    env = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_LAB_DECODE", "FINETUNE_LAB_CPU_KERNELS",
                                                            "TORCHINDUCTOR_CACHE_DIR")}
    env.update(FINETUNE_LAB_HOME=str(home), FINETUNE_LAB_MODELS=str(home / "models"))
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core.inference.prepare"], env=env, cwd=ROOT, check=True,
                   capture_output=True, text=True)
    figures = {**machine.describe(), "prepare_s": round(time.perf_counter() - began, 1), "later_s": args.later}
    for name, setting in (("defaults", {}), ("baseline", BASELINE)):
        for when, later in (("at_start", 0.0), ("later", args.later)):
            figures[f"{name}_{when}"] = ask({**env, **setting}, later)
            print(name, when, json.dumps(figures[f"{name}_{when}"]), flush=True)
    figures["later_answer_over_baseline"] = round(figures["defaults_later"]["answer_s"] / figures["baseline_later"]["answer_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
