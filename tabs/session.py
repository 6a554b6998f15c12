"""Files that belong to one browser session: its uploads and the files it downloads.

    from tabs.session import save_upload, download_path

Uploads are copied into the data dir, where the training process can read them: an owner's
into uploads/owner/, a public visitor's into uploads/visitors/<session>/ with a quota, removed
after a day. The session keeps the list of its uploads in gr.State, and the data checks accept
only those (core.access.check_data_source).

Downloads (the YAML config, topic exports) go to Gradio's own temp folder, which Gradio serves
from wherever the data dir is (~/.finetune-lab and /data are outside what it serves), each in a
random folder (a URL names no session: whoever saw a session id could act as that session), and
are removed after an hour. A file named by its own text (the YAML config) gets one folder per
name instead, so every page load's default config is one file, not one each. Visitors'
downloads share VISITOR_DOWNLOAD_BYTES.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from core.access import AccessDenied, is_trusted
from core.paths import check_name, data_dir


VISITOR_QUOTA_BYTES = 100 * 1024 * 1024
VISITOR_MAX_FILES = 10
VISITOR_UPLOAD_TTL_S = 24 * 3600
DOWNLOAD_TTL_S = 3600
VISITOR_DOWNLOAD_BYTES = 200 * 1024 * 1024


def session_name(request) -> str:
    """The Gradio session hash as a safe folder name ('local' outside a server)."""
    session = getattr(request, "session_hash", None) or "local"
    return check_name("".join(c for c in session if c.isalnum())[:64] or "local", "session")


def upload_folder(request) -> Path:
    if is_trusted(request):
        return data_dir() / "uploads" / "owner"
    return data_dir() / "uploads" / "visitors" / session_name(request)


def save_upload(upload: str | None, request=None) -> str | None:
    """Copy an uploaded file into this session's upload folder; return its new path."""
    if not upload:
        return None
    source = Path(upload)
    folder = upload_folder(request)
    if not is_trusted(request):
        remove_older_than(folder.parent, VISITOR_UPLOAD_TTL_S)
        _check_quota(folder, source.stat().st_size)
    folder.mkdir(parents=True, exist_ok=True)
    safe = check_name("".join(c if c.isalnum() or c in "._-" else "_" for c in source.name)[-80:].lstrip("._-")
                      or "data", "file name")
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{safe}"  # never overwrite
    shutil.copyfile(source, target)
    return str(target)


def _check_quota(folder: Path, incoming: int) -> None:
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    used = sum(p.stat().st_size for p in files)
    if len(files) >= VISITOR_MAX_FILES or used + incoming > VISITOR_QUOTA_BYTES:
        raise AccessDenied(f"Upload quota reached ({VISITOR_MAX_FILES} files or "
                           f"{VISITOR_QUOTA_BYTES // 2**20} MB per visitor): log in, or come back later.")


def remember_upload(path: str | None, uploads: list | None) -> list:
    """The session's gr.State list of its own uploads, with `path` added."""
    return [*(uploads or []), path] if path else list(uploads or [])


def download_path(request, name: str, named_by_content: bool = False) -> Path:
    """A path for a file this session downloads, in a folder Gradio serves: a random one, or
    one per name for a file whose name is a hash of its content (the same file every time)."""
    from gradio.utils import get_upload_folder  # the folder Gradio serves the app's own files from

    root = Path(get_upload_folder()) / "finetune-lab" / ("owner" if is_trusted(request) else "visitors")
    remove_older_than(root, DOWNLOAD_TTL_S)
    if not is_trusted(request):
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
        if used > VISITOR_DOWNLOAD_BYTES:
            raise AccessDenied("Visitors' downloads are full for now: try again within the hour, or log in.")
    name = check_name(name, "file name")
    folder = root / (f"content-{name}" if named_by_content else uuid.uuid4().hex)
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder)  # a folder in use is kept an hour more (remove_older_than reads its time)
    return folder / name


def remove_older_than(root: Path, seconds: float) -> None:
    """Delete root's sub-folders untouched for `seconds`."""
    if not root.is_dir():
        return
    cutoff = time.time() - seconds
    for folder in root.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
