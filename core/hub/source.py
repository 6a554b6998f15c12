"""The Hub as a source: datasets by id (with subset and split) and LoRA adapters by repo id.

    python -c "from core.hub.source import parse_hub_source, load_hub_rows; print(load_hub_rows(parse_hub_source('owner/name:subset@train'), 5))"

A dataset box value `owner/name`, `owner/name:subset`, `owner/name@split` or
`owner/name:subset@split` (split defaults to train) loads with `datasets.load_dataset`. With a
row limit it streams and stops after that many rows, reading in 1 MiB blocks (parquet: one
row group at a time), so a preview or a `max_rows` run never downloads the whole set; without
a limit the split is downloaded and cached as usual. An adapter box value `owner/repo` that is
neither a run nor a folder downloads the adapter's safetensors and config (never pickles).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from core.data.file_types import EXTENSIONS
from core.errors import LabError
from core.hub.search import check_reachable

HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_SOURCE = re.compile(rf"(?P<repo>{HUB_REPO.pattern})(?::(?P<subset>[\w.-]+))?(?:@(?P<split>[\w.-]+))?")
BLOCK_BYTES = 1 << 20  # the default 5 MiB read-ahead fetched 6 MiB for ten short rows
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "README.md"]


class HubSourceError(LabError):
    """A Hub dataset or adapter that cannot be used; the message names it and why."""


@dataclass(frozen=True)
class HubSource:
    repo: str
    subset: str | None
    split: str

    def __str__(self) -> str:
        return self.repo + (f":{self.subset}" if self.subset else "") + f"@{self.split}"


def parse_hub_source(value: str) -> HubSource | None:
    """A HubSource when `value` reads as a Hub dataset id and is not a local path, else None.
    'data/train.jsonl' stays a (missing) file: a data file name is never taken for a repo."""
    value = (value or "").strip()
    match = HUB_SOURCE.fullmatch(value)
    if not match or Path(value).expanduser().exists() or match["repo"].lower().endswith(tuple(EXTENSIONS)):
        return None
    return HubSource(match["repo"], match["subset"], match["split"] or "train")


def load_hub_rows(source: HubSource, limit: int = 0, revision: str = ""):
    """A `datasets.Dataset` of the split's first `limit` rows (streamed), or of all its rows, at
    `revision` (empty: the newest)."""
    from datasets import Dataset, load_dataset

    check_reachable()
    try:
        if not limit:
            return load_dataset(source.repo, source.subset, split=source.split, revision=revision or None)
        stream = load_dataset(source.repo, source.subset, split=source.split, streaming=True, revision=revision or None,
                              storage_options={"hf": {"block_size": BLOCK_BYTES}}, **_reader_options(source.repo))
        rows = list(islice(stream, limit))
    except Exception as exc:  # not found, gated, bad subset or split: datasets raises many kinds
        raise HubSourceError(f"{source}: {_first_line(exc)}") from None
    if not rows:
        raise HubSourceError(f"{source}: no rows.")
    return Dataset.from_list(rows)


def dataset_revision(repo: str) -> str:
    """The commit id of the dataset repo's newest revision, which a run pins."""
    from huggingface_hub import HfApi

    check_reachable()
    try:
        return HfApi().dataset_info(repo).sha
    except Exception as exc:
        raise HubSourceError(f"{repo}: {_first_line(exc)}") from None


def _reader_options(repo: str) -> dict:
    """Reader settings that keep a streamed read small, for the repo's one file type."""
    from huggingface_hub import HfApi

    suffixes = {Path(name).suffix.lower() for name in HfApi().list_repo_files(repo, repo_type="dataset")}
    if ".parquet" in suffixes and not suffixes & {".json", ".jsonl", ".csv"}:
        import pyarrow.dataset

        # pre-buffering coalesced every row group of a 44 MB file into one 38 MB request
        return {"fragment_scan_options": pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False)}
    if suffixes & {".json", ".jsonl"} and not suffixes & {".parquet", ".csv"}:
        return {"chunksize": BLOCK_BYTES}
    return {}


def download_adapter(repo_id: str) -> Path:
    """The local snapshot of a LoRA adapter on the Hub, with its safetensors weights."""
    from huggingface_hub import snapshot_download

    check_reachable()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=ADAPTER_FILES))
    except Exception as exc:
        raise HubSourceError(f"Adapter '{repo_id}' could not be downloaded: {_first_line(exc)}") from None
    if not (folder / "adapter_config.json").is_file():
        raise HubSourceError(f"'{repo_id}' holds no adapter_config.json: it is not a LoRA adapter.")
    if not (folder / "adapter_model.safetensors").is_file():
        raise HubSourceError(f"'{repo_id}' has no adapter_model.safetensors (only safetensors load).")
    kind = json.loads((folder / "adapter_config.json").read_text()).get("peft_type")
    if kind != "LORA":
        raise HubSourceError(f"'{repo_id}' is a {kind} adapter; Compare attaches LoRA adapters only.")
    return folder


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]
