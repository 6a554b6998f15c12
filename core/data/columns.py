"""What a data source's first rows say: their columns and whether there is more than one. Start
checks with them that the data fits the objective, and that a row is left to train on when one is
held out, before a run exists (training.config.TrainConfig.checked_for_start).

    python -c "from core.data.columns import first_rows; print(first_rows('identity'))"

Of a JSON-lines, CSV or Parquet file only the first block is read, so a large one answers in a
fraction of a second; a JSON array is parsed whole (2.6 s for 74 MB on 2 cores). The run still
reads and checks every row.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from core.data.file_types import READ_OPTIONS
from core.data.rows import BUNDLED, apply_mapping, file_kind, load_rows


@dataclass
class FirstRows:
    """The columns of a source's rows once mapped, and how many rows it has, counted up to `SEEN`
    (None for a text file, whose lines DAPT cuts into windows)."""

    columns: list[str]
    count: int | None


SEEN = 2  # rows counted: with two, one can be held out and one trained on


def first_rows(source: str, columns: str = "") -> FirstRows | None:
    """What a checked `source`'s first rows say, once `columns` maps them. None where only the
    run can tell: a Hub dataset (its rows come over the network, in the run) or a file whose
    first block does not parse (the run names the line)."""
    from datasets import Dataset

    from core.hub.source import parse_hub_source

    if source in BUNDLED or source.startswith("chatterbot:"):
        rows = load_rows(source, columns)
        return FirstRows(rows.column_names, min(len(rows), SEEN))
    if parse_hub_source(source):
        return None
    path = Path(source)
    if file_kind(path) == "text":
        return FirstRows(["text"], None)
    first = _first_rows(path)
    if not first:
        return None
    return FirstRows(apply_mapping(Dataset.from_list(first[:1]), columns, path.name).column_names, len(first))


def _first_rows(path: Path) -> list[dict] | None:
    """A data file's first `SEEN` rows, each with every column its first block has; None where
    that block does not parse."""
    from datasets import load_dataset
    from datasets.utils import logging as datasets_logging

    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # a parse error is the run's to report, once
    try:
        rows = load_dataset(file_kind(path), data_files=str(path), split="train", streaming=True,
                            **READ_OPTIONS.get(path.suffix.lower(), {}))
        return list(islice(rows, SEEN))
    except Exception:  # datasets wraps parser errors in several exception types
        return None
    finally:
        datasets_logging.set_verbosity(verbosity)
