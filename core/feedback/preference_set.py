"""Build the bundled preference set, so the vote -> DPO loop can be shown offline.

    FINETUNE_LAB_DECODE=eager python -m core.feedback.preference_set   # rewrites core/data/datasets/identity_preferences.jsonl

For every question of the bundled identity set: the identity answer ("I am Lumen...") is
chosen, and the base SmolLM2's own greedy answer to the same question, generated here by the
app's chat code with its default settings, is rejected. Nothing is hand-written on the rejected
side: it is what the model really says before training. Takes about two minutes on 2 cores.
"""
from __future__ import annotations

import json

from core.inference.chat import GenerationSettings, stream_reply
from core.data.rows import IDENTITY_PREFERENCES, load_rows
from core.inference.models import DEFAULT_MODEL, load_model

MAX_NEW_TOKENS = 64


def base_answer(loaded, question: str) -> str:
    *_, reply = stream_reply(loaded, [{"role": "user", "content": question}],
                             GenerationSettings(max_new_tokens=MAX_NEW_TOKENS))
    return reply.text.strip()


def build() -> list[dict]:
    loaded = load_model(DEFAULT_MODEL)
    rows = []
    for number, row in enumerate(load_rows("identity"), 1):
        rows.append({"prompt": [{"role": "user", "content": row["question"]}],
                     "chosen": [{"role": "assistant", "content": row["answer"]}],
                     "rejected": [{"role": "assistant", "content": base_answer(loaded, row["question"])}]})
        print(f"{number}: {rows[-1]['rejected'][0]['content'][:80]!r}", flush=True)
    return rows


if __name__ == "__main__":
    pairs = build()
    IDENTITY_PREFERENCES.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                                    encoding="utf-8")
    print(f"wrote {len(pairs)} pairs to {IDENTITY_PREFERENCES}")
