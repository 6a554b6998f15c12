"""The repos the Hub-source tests (tests/test_hub_source.py) find on the local Hub server:
models to search by task and size, datasets with subsets and splits in JSONL and Parquet,
ShareGPT chats, adapters (safetensors, pickled, not LoRA) and two sets too big to fetch whole.

    from tests.hub_seed import seed_hub; seed_hub(server.config.app)
"""
from __future__ import annotations

import io
import json

from tests.hub_server import seed

BIG_ROWS = 20_000  # about 22 MB per file: streaming ten rows must not fetch it


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()


def parquet(rows, row_group_size: int = 1000) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size, compression="none")
    return buffer.getvalue()


def configs_readme(kind: str, subsets: dict) -> bytes:
    """A dataset card whose YAML declares subsets and their split files, as Hub sets do."""
    lines = ["---", "configs:"]
    for subset, splits in subsets.items():
        lines += [f"- config_name: {subset}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {subset}/{split}.{kind}" for split in splits]
    return "\n".join(lines + ["---", "# test set"]).encode()


QA = [("easy", "train"), ("easy", "test"), ("hard", "train"), ("hard", "test")]
CHATS = [{"conversations": [{"from": "human", "value": "Hi!"},
                            {"from": "gpt", "value": f"Hello, I am Lumen {i}."},
                            {"from": "human", "value": "What do you do?"},
                            {"from": "gpt", "value": "I answer questions about the lab."}]} for i in range(12)]


def safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(8, 4)})


def seed_hub(app) -> None:
    models = [("lab/tiny-chat", "text-generation", "transformers", 135e6, 500, 5),
              ("lab/popular-chat", "text-generation", "transformers", 360e6, 100, 999),
              ("lab/mid-chat", "text-generation", "transformers", 1.7e9, 900, 50),
              ("lab/huge-chat", "text-generation", "transformers", 70e9, 5000, 2000),
              ("lab/pickled-chat", "text-generation", "transformers", None, 9000, 10),
              ("lab/embedder", "sentence-similarity", "sentence-transformers", 22e6, 800, 30)]
    for repo, task, library, params, downloads, likes in models:
        seed(app, "model", repo, {}, pipeline_tag=task, library_name=library, params=params, downloads=downloads,
             likes=likes, tags=[library, task, "license:apache-2.0"], gated="manual" if repo == "lab/mid-chat" else False)
    qa = {f"{subset}/{split}.jsonl": jsonl({"question": f"{subset} {split} q{i}", "answer": f"a{i}"} for i in range(6))
          for subset, split in QA}
    seed(app, "dataset", "lab/qa-mix", {"README.md": configs_readme("jsonl", {"easy": ["train", "test"],
                                                                             "hard": ["train", "test"]}), **qa},
         downloads=300, likes=3, tags=["task_categories:question-answering", "license:mit", "size_categories:n<1K"])
    pq = {f"{subset}/{split}.parquet": parquet([{"question": f"{subset} {split} q{i}", "answer": "x"} for i in range(4)])
          for subset in ("a", "b") for split in ("train", "validation")}
    seed(app, "dataset", "lab/qa-parquet", {"README.md": configs_readme("parquet", {"a": ["train", "validation"],
                                                                                   "b": ["train", "validation"]}), **pq},
         downloads=50, tags=["task_categories:question-answering"])
    seed(app, "dataset", "lab/chats", {"data/train.jsonl": jsonl(CHATS)}, downloads=700,
         tags=["task_categories:text-generation", "license:cc-by-4.0"])
    adapter_config = {"peft_type": "LORA", "base_model_name_or_path": "google/gemma-3-270m", "r": 8,
                      "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    seed(app, "model", "lab/gemma-adapter", {"adapter_config.json": json.dumps(adapter_config).encode(),
                                             "adapter_model.safetensors": safetensors_bytes()})
    seed(app, "model", "lab/pickled-adapter", {"adapter_config.json": json.dumps(adapter_config).encode(),
                                               "adapter_model.bin": b"not loaded, ever"})
    seed(app, "model", "lab/prefix-adapter", {"adapter_config.json": json.dumps({"peft_type": "PREFIX_TUNING"}).encode(),
                                              "adapter_model.safetensors": safetensors_bytes()})
    text = [{"text": f"row {i} " + "the lab keeps its notes in order " * 32} for i in range(BIG_ROWS)]
    seed(app, "dataset", "lab/big-parquet", {"data/train-00000.parquet": parquet(text)}, downloads=1)
    seed(app, "dataset", "lab/big-jsonl", {"data/train.jsonl": jsonl(text)}, downloads=2)
