"""Export a run in either format, the one entry point of the UI and the CLI.

    python cli.py export --run RUN --format merged             # training.export
    python cli.py export --run RUN --format gguf --quant q8_0  # training.gguf_export

`ensure_export` makes sure the folder Publish pushes (adapter, merged, gguf-<quant>) exists.
"""
from __future__ import annotations

from core.errors import LabError
from core.runs import EMBEDDER, RunFolder
from training.export import Export, merge_run
from training.gguf_export import export_gguf

FORMATS = ("merged", "gguf")


def export_run(run_name: str, fmt: str = "merged", dtype: str = "bf16", quant: str = "q8_0",
               progress=None) -> Export:
    """The one entry point of the UI and the CLI: a merged folder or a GGUF file with its Modelfile."""
    refuse_embedder(run_name)
    if fmt == "merged":
        return merge_run(run_name, dtype, progress)
    if fmt == "gguf":
        return export_gguf(run_name, quant, progress)
    raise LabError(f"format={fmt!r}: choose one of {', '.join(FORMATS)}.")


def refuse_embedder(run_name: str) -> None:
    manifest = RunFolder.existing(run_name).manifest()
    if manifest is not None and manifest.kind == EMBEDDER:
        raise LabError(f"'{run_name}' is a tuned embedder: it is already a whole sentence-transformers model, "
                       "with nothing to merge; GGUF export is for chat models.")


def ensure_export(run_name: str, what: str, progress=None) -> None:
    """Make sure the folder Publish pushes for `what` (adapter, merged, gguf-<quant>) exists."""
    run = RunFolder.existing(run_name)
    if what != "adapter":
        refuse_embedder(run_name)
    if what == "merged" and not (run.merged / "config.json").is_file():
        merge_run(run_name, "bf16", progress)
    elif what.startswith("gguf-") and not run.gguf_dir(what[len("gguf-"):]).is_dir():
        export_run(run_name, "gguf", quant=what[len("gguf-"):], progress=progress)
