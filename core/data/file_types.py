"""The data file types Finetune Lab reads, by extension, and the `datasets` builder of each.

    python -c "from core.data.file_types import EXTENSIONS; print(EXTENSIONS)"

One list for the file loader (core.data.rows), the Hub-id parser (a name ending in one of these is a
file, not a repo: core.hub.source) and run names (training.jobs).
"""
EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
              ".txt": "text", ".md": "text"}
