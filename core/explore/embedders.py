"""Which embedder a name means: the packaged MiniLM, a finished run of the `embed` objective
(a fine-tuned MiniLM, loaded from its run folder), a Hub id or a folder.

    python -c "from core.explore.embedders import embedder_source; print(embedder_source('all-MiniLM-L6-v2'))"

core.explore.embeddings loads and caches the model a name resolves to here.
"""
from __future__ import annotations

from pathlib import Path

from core import assets
from core.errors import LabError
from core.runs import EMBEDDER, Manifest, RunFolder, finished_runs

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
PACKAGED_EMBEDDERS = (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2")  # offline copy


def cosine_label(embedder: str | None) -> str:
    """How a table names the cosine of answers: "MiniLM cosine", or the tuned embedder's."""
    return "MiniLM cosine" if (embedder or DEFAULT_EMBEDDER) in PACKAGED_EMBEDDERS else f"cosine by {embedder}"


def hub_id(name: str) -> str:
    """The Hub id of an embedder known by a short name (the packaged MiniLM), else the name."""
    return PACKAGED_EMBEDDERS[1] if name in PACKAGED_EMBEDDERS else name


def tuned_embedders() -> list[str]:
    """Finished runs whose product is an embedder, newest first."""
    return [run.name for run in finished_runs(EMBEDDER)]


def embedder_source(name: str) -> str:
    """What SentenceTransformer loads for `name`: the packaged MiniLM folder, a tuned embedder's
    run folder, or the name itself (a Hub id or a folder)."""
    name = (name or "").strip() or DEFAULT_EMBEDDER
    if name in PACKAGED_EMBEDDERS:
        return str(assets.minilm_dir() or name)
    if _tuned_manifest(name):
        return str(RunFolder.named(name).adapter)
    if not Path(name).expanduser().is_dir():
        _check_not_another_run(name)
    return name


def embedder_key(name: str) -> str:
    """The cache key of an embedder: its name, and for a tuned one also when it finished."""
    name = (name or "").strip() or DEFAULT_EMBEDDER
    manifest = _tuned_manifest(name)
    return f"{name}@{manifest.created}" if manifest else name


def is_tuned_embedder(name: str) -> bool:
    return _tuned_manifest((name or "").strip()) is not None


def _run_named(name: str) -> RunFolder | None:
    """The run folder called `name`, where there is one (a Hub id has a slash: no run's name)."""
    if name in PACKAGED_EMBEDDERS:
        return None
    try:
        run = RunFolder.named(name)
    except LabError:
        return None
    return run if run.path.is_dir() else None


def _check_not_another_run(name: str) -> None:
    """A run's name that is no finished embedder is said in one line: as a Hub id it would
    wait out the Hub's retries (76 s offline) before failing."""
    run = _run_named(name)
    if run is None:
        return
    if not run.is_finished:
        raise LabError(f"Run '{name}' has not finished: it has no embedder to use yet.")
    raise LabError(f"Run '{name}' tuned a chat model, not an embedder: pick {DEFAULT_EMBEDDER}, a tuned "
                   "embedder's run, a Hub id or a folder.")


def _tuned_manifest(name: str) -> Manifest | None:
    """The manifest of the finished embedder run called `name`; None for any other name."""
    run = _run_named(name)
    manifest = run.manifest() if run is not None and run.is_finished else None
    return manifest if manifest is not None and manifest.kind == EMBEDDER else None
