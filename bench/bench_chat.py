"""Chat benchmark: the app's streaming path vs raw `model.generate`, compare-mode memory, TTFT.

    .venv/bin/python bench/bench_chat.py [--repeats 5] [--tokens 64]
    FINETUNE_LAB_DTYPE=fp32 .venv/bin/python bench/bench_chat.py   # the fp32 figures

(a) wall time of core.chat.stream_reply vs model.generate, same prompt, same greedy tokens;
(b) peak RSS of compare mode (base + LoRA adapter, one copy of weights) vs a single model,
    each measured in its own fresh subprocess;
(c) time to first streamed token.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = [{"role": "user", "content": "Write a short paragraph about the history of Paris."}]


def time_paths(tokens: int, repeats: int) -> dict:
    import torch

    from core.chat import GenerationSettings, build_inputs, stream_reply
    from core.models import load_model, set_threads

    set_threads()
    loaded = load_model("smollm2-135m-instruct")
    settings = GenerationSettings(max_new_tokens=tokens)
    ids, _ = build_inputs(loaded, PROMPT, settings)
    raw, app, ttft, counts = [], [], [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=tokens, do_sample=False,
                                        repetition_penalty=settings.repetition_penalty,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        raw.append(time.perf_counter() - start)
        counts.add(out.shape[1] - ids.shape[1])
        start, first = time.perf_counter(), None
        for reply in stream_reply(loaded, PROMPT, settings):
            first = first or time.perf_counter() - start
        app.append(time.perf_counter() - start)
        ttft.append(first)
        counts.add(reply.new_tokens)
    assert len(counts) == 1, f"paths generated different token counts: {counts}"
    return {"dtype": str(loaded.model.dtype).removeprefix("torch."),
            "new_tokens": counts.pop(), "raw_generate_s": statistics.median(raw),
            "app_stream_s": statistics.median(app), "ttft_s": statistics.median(ttft),
            "stream_over_raw": statistics.median(app) / statistics.median(raw)}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of this process
# (which has loaded the model by then) would report the parent's peak.
RSS_SCRIPT = """
import pathlib, re, sys
sys.path.insert(0, {root!r})
from core.chat import GenerationSettings, attach_tuned, stream_reply
from core.models import load_model
m = load_model("smollm2-135m-instruct")
s = GenerationSettings(max_new_tokens=16)
msgs = [{{"role": "user", "content": "Hello"}}]
list(stream_reply(m, msgs, s))
if {adapter!r}:
    t = attach_tuned(m, {adapter!r})
    list(stream_reply(m, msgs, s, t.adapter_name))
print(re.search(r"VmHWM:\\s+(\\d+)", pathlib.Path("/proc/self/status").read_text()).group(1))
"""


def peak_rss_mb(adapter: str) -> float:
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT.format(root=str(ROOT), adapter=adapter)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def make_adapter(folder: Path) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False)
                   ).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    figures = time_paths(args.tokens, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(Path(tmp) / "adapter")
        single, compare = peak_rss_mb(""), peak_rss_mb(adapter)
    figures.update(single_peak_rss_mb=single, compare_peak_rss_mb=compare,
                   compare_over_single_rss=compare / single)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
