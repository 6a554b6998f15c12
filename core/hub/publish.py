"""Publish a finished run to the Hugging Face Hub: the adapter with a model card (the compare-chat
Space is core.hub.space's).

    python cli.py publish --run RUN --repo USER/NAME [--space USER/SPACE] [--private]
    python cli.py publish --run RUN --repo USER/NAME --what merged|gguf-q8_0   # an export instead

`what` picks the folder to push: the adapter (default), the merged model or a GGUF export
(training.export and training.gguf_export write those into the run folder first).

The token comes from the caller (the tab's password box) or HF_TOKEN. It is passed to
huggingface_hub only: never printed, logged, written to a file, or echoed in an error.
HF_ENDPOINT selects another Hub (the tests use a local server that speaks the protocol).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from core.errors import LabError
from core.explore.embedders import cosine_label
from core.runs import EMBEDDER, Manifest, RunFolder


TEMPLATES = Path(__file__).parent / "templates"


class HubError(LabError):
    """A one-line, token-free message about a failed Hub action."""


def resolve_token(token: str | None) -> str:
    token = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise HubError("No Hugging Face token: set HF_TOKEN or paste a write token in the token box.")
    return token


def check_repo_id(repo_id: str, what: str = "repo") -> str:
    """OWNER/NAME, checked by huggingface_hub's own rules (the owner is required here)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id = (repo_id or "").strip()
    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise HubError(f"Invalid {what} name {repo_id!r}: use OWNER/NAME with letters, digits, '.', '_' or '-'.")
    return repo_id


def hub_api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


@contextmanager
def hub_errors(token: str, repo_id: str = ""):
    """Turn any Hub failure into a HubError whose text cannot contain the token."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HubError:
        raise
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        messages = {401: "The Hugging Face token was rejected: it is invalid or expired.",
                    403: f"No write access to {repo_id}: it belongs to someone else, or the token is read-only.",
                    404: f"{repo_id} was not found on the Hub."}
        raise HubError(_scrub(messages.get(status, f"The Hub refused the request (HTTP {status})."), token)) from None
    except (OSError, ConnectionError) as exc:
        raise HubError(_scrub(f"The Hugging Face Hub is unreachable ({type(exc).__name__}).", token)) from None
    except Exception as exc:  # httpx transport errors and anything else: still one clean line
        name = type(exc).__name__
        said = ("The Hugging Face Hub is unreachable" if "Connect" in name or "Timeout" in name
                else f"The Hugging Face Hub request failed: {str(exc)[:160]}")
        raise HubError(_scrub(f"{said} ({name}).", token)) from None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text


def finished_run(name: str) -> RunFolder:
    run = RunFolder.named(name)
    if not run.is_finished:
        raise HubError(f"Run '{name}' has no finished adapter to publish.")
    return run


WHAT = re.compile(r"adapter|merged|gguf-[a-z0-9_]+")


def folder_to_push(run: RunFolder, what: str) -> Path:
    """The run's folder for `what` (adapter, merged or gguf-<quant>), which must already exist."""
    if not WHAT.fullmatch(what or ""):
        raise HubError(f"Cannot push {what!r}: choose adapter, merged or gguf-<type> (e.g. gguf-q8_0).")
    folder = {"adapter": run.adapter, "merged": run.merged}.get(what) or run.gguf_dir(what[len("gguf-"):])
    if not folder.is_dir():
        raise HubError(f"Run '{run.name}' has no {what} export yet: export it first "
                       f"(Publish tab, Export; or cli.py export --run {run.name}).")
    return folder


def _library(run: RunFolder, manifest: Manifest, what: str) -> tuple[str, list[str]]:
    """The card's library_name and the extra tags for what is pushed."""
    if manifest.kind == EMBEDDER:
        return "sentence-transformers", ["sentence-transformers", "feature-extraction"]
    if what.startswith("gguf-"):
        return "gguf", ["gguf", what[len("gguf-"):]]
    if what == "merged":
        return "transformers", ["merged"]
    return ("peft" if run.is_lora else "transformers"), []


def model_card(run: RunFolder, repo_id: str, what: str = "adapter") -> str:
    """README.md for the model repo: valid card metadata, results, report and usage."""
    from huggingface_hub import ModelCard, ModelCardData

    from core.hub.source import parse_hub_source

    manifest, config, is_lora = finished_manifest(run), run.config.read_text(), run.is_lora and what == "adapter"
    library, extra_tags = _library(run, manifest, what)
    hub_data = parse_hub_source(manifest.dataset)
    task = "sentence-similarity" if manifest.kind == EMBEDDER else "text-generation"
    data = ModelCardData(base_model=manifest.base_model, library_name=library,
                         datasets=[hub_data.repo] if hub_data else None, pipeline_tag=task, license="apache-2.0",
                         tags=["finetune-lab", manifest.objective, manifest.adapter, task] + extra_tags)
    report = run.report() or "(no report)"
    body = (TEMPLATES / "model_card.md").read_text().format(
        repo_id=repo_id, method=manifest.method, base=manifest.base_model, dataset=manifest.dataset,
        steps=manifest.steps, results_rows=results_rows(manifest),
        votes_note=votes_note(run, manifest) + effect_note(run),
        config=config, report=report,
        usage=_usage(repo_id, manifest, is_lora, run, what), weights_note=weights_note(manifest))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)


def finished_manifest(run: RunFolder) -> Manifest:
    manifest = run.manifest()
    if manifest is None:
        raise LabError(f"Run '{run.name}' has not finished: nothing to publish yet.")
    return manifest


def results_rows(manifest: Manifest) -> str:
    """The card's before/after rows: the objective's held-out figures, answers, loss."""
    rows = [measure.card_row() for measure in manifest.held_out]
    answers = manifest.answer_scores
    if answers:
        for key, label in (("exact_match", "exact match"), ("rouge_l", "ROUGE-L F1"),
                           ("cosine", cosine_label(answers.get("embedder")))):
            rows.append(f"| held-out answers, {label} ({answers['rows']} rows, greedy) | {answers['base'][key]} "
                        f"| {answers['tuned'][key]} |")
    rows.append(f"| training loss (first → last step) | {manifest.first_loss} | {manifest.final_loss} |")
    return "\n".join(rows)


def votes_note(run: RunFolder, manifest: Manifest) -> str:
    """Blind Compare votes for this adapter against its base, and for a run whose report is
    judged blind (DPO, KTO) the head-to-head against the model it started from."""
    from core.feedback.leaderboard import leaderboard, leaderboard_lines, win_table
    from core.feedback.votes import read

    lines, owned = [], read()
    board = leaderboard(owned)
    if any(row["adapter"] == run.name for row in board):
        *ranked, bias = leaderboard_lines(owned, board)
        lines.append("Leaderboard of the owner's models from blind A/B votes (Bradley-Terry, Elo scale):\n\n"
                     + "\n".join(ranked) + "\n\n" + bias)
    if manifest.vote_sources:
        lines.append("Trained on preference pairs from votes: " + ", ".join(
            f"{count} from {source}" for source, count in sorted(manifest.vote_sources.items())) + ".")
    row = next((r for r in win_table(owned) if r["adapter"] == run.name), None)
    if row is not None:
        low, high = row["interval_95"]
        lines.append(f"Blind A/B votes in Finetune Lab's Compare against the base: {row['wins']} wins, "
                     f"{row['losses']} losses, {row['ties']} ties ({row['both_bad']} both bad); win share "
                     f"{row['win_share']}, 95% interval {low}-{high}.")
    if manifest.judged_blind:
        from core.feedback.judge import unjudged_pairs, win_rate_line

        left = len(unjudged_pairs(run))
        lines.append(win_rate_line(run) or "Win rate against the model it started from: not judged yet.")
        if left:
            lines.append(f"{left} held-out answer pair(s) of the report still wait for a blind vote.")
    return "".join(f"\n{line}\n" for line in lines)


def effect_note(run: RunFolder) -> str:
    """The three most improved and most harmed topics of the run's effect map, when it has one."""
    from core.runs import read_json

    topics = [t for t in read_json(run.effect_file).get("topics", []) if not t.get("general")]
    if not topics:
        return ""
    ranked = sorted(topics, key=lambda t: t["mean_change"])

    def named(some):
        return "; ".join(f"{t['topic']} ({t['mean_change']:+.3f}, {t['rows']} rows)" for t in some)
    return (f"\nWhere tuning helped or hurt (held-out rows by topic, mean change in loss on the reference): "
            f"most improved: {named(ranked[:3])}; most harmed: {named(ranked[::-1][:3])}.\n")


def weights_note(manifest: Manifest) -> str:
    """What the adapter was trained on, when that was not the Hub's original base weights."""
    trained_on = manifest.base_weights or manifest.base_model
    if trained_on == manifest.base_model:
        return f"Trained on the original weights of {trained_on}."
    return (f"**Trained on {trained_on}.** Loaded on the original {manifest.base_model} weights "
            "(as the code below and the compare Space do), the adapter meets slightly different base "
            "weights than it was trained with, so its outputs can differ a little from the figures here.")


def _usage(repo_id: str, manifest: Manifest, is_lora: bool, run: RunFolder, what: str) -> str:
    base = manifest.base_model
    if manifest.kind == EMBEDDER:
        return (f'from sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer("{repo_id}")\n'
                'vectors = model.encode(["What is AI?", "Who are you?"], normalize_embeddings=True)')
    if what.startswith("gguf-"):
        files = sorted(p.name for p in folder_to_push(run, what).glob("*.gguf"))
        name = files[0] if files else "model.gguf"
        return (f'# llama.cpp: llama-cli -hf {repo_id}    Ollama: ollama run hf.co/{repo_id}\n'
                f'from transformers import AutoModelForCausalLM\n'
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", gguf_file="{name}")')
    if is_lora:
        return (f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
                f'\n# or: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{repo_id}")')
    return f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{repo_id}")'


def push_adapter(run_name: str, repo_id: str, token: str | None = None, private: bool = False,
                 progress=None, what: str = "adapter") -> str:
    """Create or update the model repo with the adapter (or full model, or an export) and its
    card; return its URL."""
    from huggingface_hub import CommitOperationAdd

    run, repo_id, token = finished_run(run_name), check_repo_id(repo_id), resolve_token(token)
    folder = folder_to_push(run, what)
    api = hub_api(token)
    with hub_errors(token, repo_id):
        step(progress, 0.1, "Checking the token")
        check_namespace(api, repo_id)
        step(progress, 0.3, "Creating or updating the repo")
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        step(progress, 0.5, f"Uploading the {what} and model card in one commit")
        # An embedder keeps modules in subfolders (pooling, normalize); peft and sentence-transformers
        # write a stub card at the top, which ours replaces.
        files = [CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in sorted(folder.rglob("*"))
                 if p.is_file() and str(p.relative_to(folder)) != "README.md"]
        files.append(CommitOperationAdd("README.md", model_card(run, repo_id, what).encode()))
        api.create_commit(repo_id, operations=files, commit_message=f"Upload {run.name} from Finetune Lab")
        step(progress, 1.0, "Done")
    return str(url)


def check_namespace(api, repo_id: str) -> None:
    """Refuse early, with a clear message, a repo outside the token owner's user and orgs."""
    me = api.whoami()
    allowed = {me.get("name", "")} | {org.get("name", "") for org in me.get("orgs", [])}
    if repo_id.split("/")[0] not in allowed:
        raise HubError(f"{repo_id} belongs to someone else: this token can write to {', '.join(sorted(allowed))}.")


def step(progress, fraction: float, text: str) -> None:
    if progress:
        progress(fraction, desc=text)
