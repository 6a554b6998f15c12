"""Search the Hugging Face Hub for models and datasets by task, as the tutorial's first step does.

    python -c "from core.hub.search import search_models; print(search_models('text-generation', max_params=5e8))"

Uses huggingface_hub's `list_models` / `list_datasets`. Models are filtered by task tag, library
and a size limit read from the safetensors parameter count: the app loads safetensors only, so a
model without that count is not offered. Results come sorted by downloads or likes, with
license, size, last update and gated status. Offline (no route to the Hub, or HF_HUB_OFFLINE=1)
every call raises HubUnreachable at once, with one short probe instead of the client's retries.
HF_ENDPOINT selects another Hub (the tests use a local server that speaks the protocol).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import LabError

# label -> Hub tag. Models: the pipeline tag. Datasets: the task_categories tag.
MODEL_TASKS = {
    "chat / text generation": "text-generation",
    "sentence embeddings": "sentence-similarity",
    "feature extraction": "feature-extraction",
    "text classification": "text-classification",
}
DATASET_TASKS = {
    "text generation (SFT, DAPT)": "text-generation",
    "question answering": "question-answering",
    "summarization": "summarization",
    "text classification": "text-classification",
    "any task": "",
}
LIBRARIES = ("transformers", "sentence-transformers", "peft")
SORTS = ("downloads", "likes", "last_modified")
PROBE_SECONDS = 3.0


class HubUnreachable(LabError):
    """No answer from the Hub; the message says why and what still works."""


@dataclass
class HubResult:
    """One search result, as the panel's table shows it."""

    repo_id: str
    downloads: int
    likes: int
    license: str
    size: str  # models: parameters, e.g. "135M"; datasets: the size category
    updated: str  # YYYY-MM-DD
    gated: str  # "no", "auto" or "manual"

    def row(self) -> list:
        return [self.repo_id, self.downloads, self.likes, self.license, self.size, self.updated, self.gated]


COLUMNS = ["repo", "downloads", "likes", "license", "size", "updated", "gated"]


def check_reachable() -> None:
    """Raise HubUnreachable unless the Hub answers one request within PROBE_SECONDS."""
    from huggingface_hub import constants, get_session

    offline = "Hub search and Hub ids need the Hub; the known local models and your files still work."
    if constants.HF_HUB_OFFLINE:
        raise HubUnreachable(f"The Hugging Face Hub is unreachable: HF_HUB_OFFLINE=1. {offline}")
    try:
        get_session().head(f"{constants.ENDPOINT}/api/whoami-v2", timeout=PROBE_SECONDS)
    except Exception as exc:  # DNS failure, refused, timeout: all mean the same to the user
        raise HubUnreachable(f"The Hugging Face Hub is unreachable ({type(exc).__name__} from {constants.ENDPOINT}). "
                             f"{offline}") from None


def search_models(task: str = "text-generation", query: str = "", library: str = "transformers",
                  max_params: float = 1e9, sort: str = "downloads", limit: int = 20) -> list[HubResult]:
    """Models with this pipeline tag and library, at most `max_params` parameters."""
    from huggingface_hub import HfApi

    check_reachable()
    found = HfApi().list_models(
        pipeline_tag=task or None, search=query.strip() or None, filter=library or None,
        num_parameters=f"max:{max(1, round(max_params / 1e6))}M" if max_params else None, sort=_sort(sort), limit=limit,
        expand=["downloads", "likes", "lastModified", "gated", "tags", "safetensors", "pipeline_tag"])
    results = []
    for model in _guarded(found):
        params = model.safetensors.total if model.safetensors else None
        if params and (not max_params or params <= max_params):
            results.append(HubResult(model.id, model.downloads or 0, model.likes or 0, _license(model.tags),
                                     human_count(params), _day(model.last_modified), _gated(model.gated)))
    return results


def search_datasets(task: str = "", query: str = "", sort: str = "downloads", limit: int = 20) -> list[HubResult]:
    """Datasets with this task category (any task when empty)."""
    from huggingface_hub import HfApi

    check_reachable()
    found = HfApi().list_datasets(
        task_categories=task or None, search=query.strip() or None, sort=_sort(sort), limit=limit,
        expand=["downloads", "likes", "lastModified", "gated", "tags"])
    return [HubResult(d.id, d.downloads or 0, d.likes or 0, _license(d.tags), _size_category(d.tags),
                      _day(d.last_modified), _gated(d.gated)) for d in _guarded(found)]


def model_parameters(repo_id: str) -> int | None:
    """The model's parameter count from its safetensors metadata, or None."""
    from huggingface_hub import HfApi

    check_reachable()
    try:
        info = HfApi().model_info(repo_id, expand=["safetensors"], timeout=10)
    except Exception:  # not found, gated, private: no size known, so no visitor load
        return None
    return info.safetensors.total if info.safetensors else None


def _guarded(listing):
    """The listing's items; a failure half-way becomes a one-line HubUnreachable."""
    try:
        return list(listing)
    except Exception as exc:
        raise HubUnreachable(f"The Hub search failed: {str(exc).splitlines()[0][:200]}") from None


def _sort(sort: str) -> str:
    if sort not in SORTS:
        raise LabError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
    return sort


def _license(tags) -> str:
    return next((t.split(":", 1)[1] for t in tags or () if t.startswith("license:")), "unknown")


def _size_category(tags) -> str:
    return next((t.split(":", 1)[1] for t in tags or () if t.startswith("size_categories:")), "unknown")


def _day(when) -> str:
    return when.strftime("%Y-%m-%d") if when else ""


def _gated(gated) -> str:
    return "no" if not gated else str(gated)


def human_count(n: float) -> str:
    """135_000_000 -> '135M'; 1_700_000_000 -> '1.7B'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def endpoint_name() -> str:
    """Where searches go, for the panel's caption (HF_ENDPOINT or the public Hub)."""
    from huggingface_hub import constants

    return constants.ENDPOINT
