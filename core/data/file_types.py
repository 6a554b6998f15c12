"""The data file types Finetune Lab reads, by extension, and the `datasets` builder of each.

    python -c "from core.data.file_types import EXTENSIONS; print(EXTENSIONS)"

One list for the file loader (core.data.rows), the Train tab's upload, the Hub-id parser (a name
ending in one of these is a file, not a repo: core.hub.source) and run names (training.jobs).
"""
EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
              ".txt": "text", ".md": "text"}
# What a file type's builder is told beyond the file: a tab between columns; a document per paragraph.
READ_OPTIONS = {".tsv": {"sep": "\t"}, ".txt": {"sample_by": "paragraph"}, ".md": {"sample_by": "paragraph"}}


def listed() -> str:
    """The extensions as a user reads them: 'csv / tsv / json / ...'."""
    return " / ".join(extension.lstrip(".") for extension in EXTENSIONS)
