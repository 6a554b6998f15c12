"""What a data source's first rows say: their columns, whether there is more than one, and, for
a small file, every row. Start checks with them that the data fits the objective, and that a row
is left to train on when some are held out, before a run exists
(training.config.TrainConfig.checked_for_start).

    python -c "from core.data.columns import first_rows; print(first_rows('identity'))"

Of a JSON-lines, CSV or Parquet file over 4 MB only the first block is read, so a large one
answers in a fraction of a second; a JSON array is parsed whole (2.6 s for 74 MB on 2 cores).
The run still reads and checks every row.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from core.data.file_types import READ_OPTIONS
from core.data.rows import BUNDLED, apply_mapping, file_kind, load_rows


@dataclass
class FirstRows:
    """The columns of a source's rows once mapped; how many rows it has, counted up to `SEEN`
    unless all were read (None for a text file, whose lines DAPT cuts into windows); and all
    of them, mapped, where the source is small enough to read whole at Start (else None)."""

    columns: list[str]
    count: int | None
    every_row: object = None  # a datasets.Dataset


SEEN = 2  # rows counted in a large file: with two, one can be held out and one trained on
WHOLE_BYTES = 4 * 2**20  # a file this small is read whole (4 MB of preference rows: 0.2-0.35 s)


def first_rows(source: str, columns: str = "") -> FirstRows | None:
    """What a checked `source`'s first rows say, once `columns` maps them. None where only the
    run can tell: a Hub dataset (its rows come over the network, in the run) or a file whose
    first block does not parse (the run names the line)."""
    from datasets import Dataset

    from core.hub.source import parse_hub_source

    if source in BUNDLED or source.startswith("chatterbot:"):
        rows = load_rows(source, columns)
        return FirstRows(rows.column_names, len(rows), rows)
    if parse_hub_source(source):
        return None
    path = Path(source)
    if file_kind(path) == "text":
        return FirstRows(["text"], None)
    whole = path.stat().st_size <= WHOLE_BYTES
    read = _first_rows(path, None if whole else SEEN)
    if not read:
        return None
    every_row = _as_dataset(read) if whole else None  # None: rows that differ in type, for the run to name
    return FirstRows(apply_mapping(Dataset.from_list(read[:1]), columns, path.name).column_names, len(read),
                     None if every_row is None else apply_mapping(every_row, columns, path.name))


def _as_dataset(rows: list[dict]):
    """The rows as one Dataset, or None where one column holds values of different types."""
    import pyarrow
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except (pyarrow.ArrowException, TypeError, ValueError):
        return None


def _first_rows(path: Path, limit: int | None) -> list[dict] | None:
    """A data file's first `limit` rows (None: all), each with every column its first block
    has; None where a block read does not parse."""
    from datasets import load_dataset
    from datasets.utils import logging as datasets_logging

    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # a parse error is the run's to report, once
    try:
        rows = load_dataset(file_kind(path), data_files=str(path), split="train", streaming=True,
                            **READ_OPTIONS.get(path.suffix.lower(), {}))
        return list(islice(rows, limit))
    except Exception:  # datasets wraps parser errors in several exception types
        return None
    finally:
        datasets_logging.set_verbosity(verbosity)
