"""Where Finetune Lab keeps its files, and the name checks that keep them inside.

Everything lives under one data directory: `$FINETUNE_LAB_HOME`, else `/data/finetune-lab`
on a Hugging Face Space with persistent storage, else `~/.finetune-lab`. The converted-model
cache may live elsewhere (`$FINETUNE_LAB_MODELS`), so tests can share it across data dirs.

    python -c "from core.paths import data_dir; print(data_dir())"
"""
from __future__ import annotations

import fcntl
import json
import re
from contextlib import contextmanager
from pathlib import Path

from core.errors import LabError
from core.settings import settings


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def data_dir() -> Path:
    """The root data directory, created on first use."""
    if settings().home:
        root = settings().home
    elif settings().space_id and Path("/data").is_dir():
        root = Path("/data/finetune-lab")
    else:
        root = Path.home() / ".finetune-lab"
    return _made(root, "FINETUNE_LAB_HOME")


def models_dir() -> Path:
    """Cache of converted (GGUF -> safetensors) model folders ($FINETUNE_LAB_MODELS overrides)."""
    return _made(settings().models or data_dir() / "models", "FINETUNE_LAB_MODELS")


def _made(folder: Path, variable: str) -> Path:
    """`folder`, created if need be; a LabError that names the setting when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"Cannot create {folder} ({exc.strerror}): set {variable} to a folder you can write.") from None
    return folder


def runs_dir() -> Path:
    """One sub-folder per training run."""
    path = data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a safe single path component, else raise LabError.

    Allows letters, digits, '.', '_' and '-', starting with a letter or digit; this rules out
    path traversal ('..'), absolute paths and separators.
    """
    if isinstance(name, str) and not name.strip():  # an empty picker, not a bad name
        raise LabError(f"No {what} given: pick one.")
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise LabError(
            f"Invalid {what} {name!r}: use 1-96 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


@contextmanager
def file_lock(lock_path: Path):
    """An exclusive inter-process lock on `lock_path` (two processes never convert a model, or
    time the CPU's matmuls, at once)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename), so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
