"""What columns a data source's rows have, read from its first row: Start's check that the
data fits the objective, made before a run exists (training.config.TrainConfig.checked_for_start).

    python -c "from core.data.columns import first_columns; print(first_columns('identity'))"

Of a JSON-lines, CSV or Parquet file only the first block is read, so a large one answers in a
fraction of a second; a JSON array is parsed whole (2.6 s for 74 MB on 2 cores). The run still
reads and checks every row.
"""
from __future__ import annotations

from pathlib import Path

from core.data.file_types import READ_OPTIONS
from core.data.rows import BUNDLED, apply_mapping, file_kind, load_rows


def first_columns(source: str, columns: str = "") -> list[str] | None:
    """The columns a checked `source`'s rows have once `columns` maps them. None where only the
    run can tell: a Hub dataset (its rows come over the network, in the run) or a file whose
    first row does not parse (the run names the line)."""
    from datasets import Dataset

    from core.hub.source import parse_hub_source

    if source in BUNDLED or source.startswith("chatterbot:"):
        return load_rows(source, columns).column_names
    if parse_hub_source(source):
        return None
    path = Path(source)
    first = _first_row(path)
    return None if first is None else apply_mapping(Dataset.from_list([first]), columns, path.name).column_names


def _first_row(path: Path) -> dict | None:
    """A data file's first row, with every column its first block has; None where it does not parse."""
    from datasets import load_dataset
    from datasets.utils import logging as datasets_logging

    kind = file_kind(path)
    if kind == "text":
        return {"text": ""}
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # a parse error is the run's to report, once
    try:
        rows = load_dataset(kind, data_files=str(path), split="train", streaming=True,
                            **READ_OPTIONS.get(path.suffix.lower(), {}))
        return next(iter(rows), None)
    except Exception:  # datasets wraps parser errors in several exception types
        return None
    finally:
        datasets_logging.set_verbosity(verbosity)
