"""Publish a run's compare-chat Space: base and tuned side by side, with blind A/B votes and
thumbs kept in a private Hub dataset (the app is templates/space_app.py).

    python cli.py publish --run RUN --repo USER/NAME --space USER/SPACE [--votes-repo USER/DATA]

Publishing creates (or updates) the Space, creates the votes dataset (private; by default
`<space>-votes`) and gives the Space the token as its HF_TOKEN secret, so the Space's
CommitScheduler can push votes there. The token travels to the Hub only: never into a file.
`python cli.py votes pull USER/DATA` brings the votes back (core.hub.votes_pull).
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from core import log_budget
from core.hub.publish import (TEMPLATES, HubError, check_namespace, check_repo_id, finished_manifest, finished_run,
                              hub_api, hub_errors, resolve_token, step)
from core.inference.qlora import trained_on_4bit
from core.runs import EMBEDDER

SPACE_PACKAGES = ("torch", "transformers", "peft", "gradio", "huggingface_hub", "safetensors")


def space_requirements(four_bit: bool = False) -> list[str]:
    """The Space's pins, taken from this repo's requirements.txt: one source for both
    (bitsandbytes too where a QLoRA adapter runs on its 4-bit base)."""
    lines = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text().splitlines()
    pins = {re.split(r"[=<>~!\[ ]", line, 1)[0].lower(): line.strip() for line in lines
            if line.strip() and not line.startswith(("#", "-"))}
    return [pins.get(name, name) for name in SPACE_PACKAGES + (("bitsandbytes",) if four_bit else ())]


def default_votes_repo(space_id: str) -> str:
    return f"{space_id}-votes"


def space_files(model_repo: str, base_model: str, is_lora: bool, votes_repo: str = "",
                four_bit: dict | None = None) -> dict[str, str]:
    """The Space folder: app.py (compare chat for this adapter), requirements.txt, README.md, and
    core.log_budget as log_budget.py, which app.py puts its stderr under.
    `four_bit`: a QLoRA adapter's settings (core.inference.qlora), which it then runs with."""
    name = model_repo.split("/")[-1]
    app = (TEMPLATES / "space_app.py").read_text()
    app = app.replace("@@MODEL_REPO@@", model_repo).replace("@@BASE_MODEL@@", base_model)
    app = app.replace("@@IS_LORA@@", "True" if is_lora else "False").replace("@@VOTES_REPO@@", votes_repo)
    app = app.replace("@@FOUR_BIT@@", json.dumps(four_bit))
    pins = space_requirements(four_bit is not None)
    gradio_version = next(p for p in pins if p.startswith("gradio")).partition("==")[2]
    votes_line = (f"Blind A/B votes and thumbs are kept in the private dataset {votes_repo}."
                  if votes_repo else "This Space keeps no votes.")
    readme = (TEMPLATES / "space_readme.md").read_text().format(
        title=name[:30], model_repo=model_repo, base_model=base_model, sdk_version=gradio_version,
        votes_line=votes_line)
    requirements = "\n".join(pins) + "\n"
    return {"app.py": app, "requirements.txt": requirements, "README.md": readme,
            "log_budget.py": Path(log_budget.__file__).read_text()}  # the Space is public: its log has a budget


def push_space(run_name: str, space_id: str, model_repo: str, token: str | None = None,
               private: bool = False, progress=None, votes_repo: str | None = None) -> str:
    """Create or update a Gradio Space serving the base-vs-tuned compare chat, and its votes
    dataset (`votes_repo`; None: the default name, "": no votes); return the Space's URL."""
    run, space_id = finished_run(run_name), check_repo_id(space_id, "Space")
    model_repo, token = check_repo_id(model_repo), resolve_token(token)
    votes_repo = default_votes_repo(space_id) if votes_repo is None else votes_repo.strip()
    if votes_repo:
        check_repo_id(votes_repo, "votes dataset")
    manifest, is_lora = finished_manifest(run), run.is_lora
    if manifest.kind == EMBEDDER:
        raise HubError(f"'{run.name}' is a tuned embedder: the compare-chat Space is for chat models. "
                       "Push it as a model; it loads with SentenceTransformer(repo id).")
    api = hub_api(token)
    with hub_errors(token, space_id), tempfile.TemporaryDirectory() as tmp:
        step(progress, 0.1, "Checking the token")
        check_namespace(api, space_id)
        step(progress, 0.2, "Creating or updating the Space")
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        if votes_repo:
            step(progress, 0.4, f"Creating the private votes dataset {votes_repo} and the Space's token secret")
            check_namespace(api, votes_repo)
            api.create_repo(votes_repo, repo_type="dataset", private=True, exist_ok=True)
            api.add_space_secret(space_id, "HF_TOKEN", token, description="Pushes the votes to " + votes_repo)
        files = space_files(model_repo, manifest.base_model, is_lora, votes_repo, trained_on_4bit(run.adapter))
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        step(progress, 0.6, "Uploading app.py, requirements.txt and README.md")
        api.upload_folder(repo_id=space_id, repo_type="space", folder_path=tmp, commit_message="Update Space")
        step(progress, 1.0, "Done")
    return str(url)
