"""Export benchmark: merge time, merged size and logit difference for a LoRA and a QLoRA run.

    FINETUNE_LAB_HOME=/tmp/ftl-bench .venv/bin/python bench/bench_export.py

Trains the `tiny` recipe (identity data, SmolLM2-135M) as LoRA and as QLoRA, merges each with
training.export.merge_run (bf16), and measures the largest next-token logit difference between the
merged model and the unmerged adapter on its training-time base (NF4 for QLoRA), both computed
in fp32, over every position of three prompts, and the share of positions whose top token
agrees. A QLoRA adapter merges into its de-quantized NF4 base (see training/export.py for what
merging into the original weights did instead). The last line printed is JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = ["Who are you?", "What is the capital of France?", "Tell me about yourself."]


def main() -> None:
    from training.export import logit_gap, merge_run
    from core.runs import RunFolder
    from training.config import load_config
    from training.run import train

    figures = {}
    for adapter in ("lora", "qlora"):
        name = f"bench-export-{adapter}"
        cfg = load_config("tiny", adapter=adapter, output_name=name)
        train(cfg, RunFolder.named(name).path)
        export = merge_run(name)
        figures[adapter] = {"merge_s": round(export.seconds, 1), "size_mb": round(export.size_mb, 1),
                            "logit_gap": {k: round(v, 4) for k, v in logit_gap(name, export.folder, PROMPTS).items()}}
        print(adapter, json.dumps(figures[adapter]), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
