"""Pull the votes a published Space collected (a Hub dataset of JSONL files, written by the
Space's CommitScheduler) into the lab's review queue.

    python cli.py votes pull OWNER/DATASET [--token T]   # then: python cli.py votes accept

The dataset is read at one commit (named in each vote's `source` and in the summary), every line
is checked like a vote cast here (fields, choice, sizes); a bad line is counted and reported,
never fatal. A vote whose id is already in the lab (owner's store or review queue) is skipped,
so pulling twice adds nothing. Accepted votes train like any other (Train DPO on my votes).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.errors import LabError
from core.feedback import votes
from core.hub.publish import check_repo_id, hub_api, hub_errors

MAX_LINE_CHARS = votes.MAX_VOTE_CHARS * 2  # a vote line is JSON: escapes lengthen it
MAX_NEW_VOTES = 20_000  # per pull: the rest come with the next pull, after a review
VOTE_FIELDS = {f.name for f in fields(votes.Vote)}


@dataclass
class Pulled:
    """What one pull did: votes added to review, already-known ones, bad lines, the commit."""

    dataset: str
    commit: str
    added: int = 0
    known: int = 0
    bad: int = 0
    bad_lines: list[str] = field(default_factory=list)  # the first few, as "file:line: why"
    cut: bool = False  # MAX_NEW_VOTES reached: pull again for the rest

    def line(self) -> str:
        text = (f"{self.added} vote(s) from {self.dataset}@{self.commit[:12]} added for review, "
                f"{self.known} already here")
        if self.bad:
            text += f"; {self.bad} bad line(s) skipped (first: {self.bad_lines[0]})"
        if self.cut:
            text += f"; stopped at {MAX_NEW_VOTES} new votes: pull again for the rest"
        return text + "."


def pull_votes(dataset: str, token: str | None = None) -> Pulled:
    """Download `dataset` at its current commit and queue its new, valid votes for review."""
    from huggingface_hub import snapshot_download

    dataset = check_repo_id(dataset, "votes dataset")
    token = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip() or None
    api = hub_api(token)
    with hub_errors(token or "", dataset), tempfile.TemporaryDirectory() as tmp:
        commit = api.dataset_info(dataset).sha
        folder = snapshot_download(dataset, repo_type="dataset", revision=commit, allow_patterns=["*.jsonl"],
                                   local_dir=tmp, token=token, endpoint=api.endpoint)
        result = Pulled(dataset, commit)
        fresh = collect(Path(folder), result, f"hub:{dataset}@{commit}")
    votes.queue_for_review(fresh)
    result.added = len(fresh)
    return result


def collect(folder: Path, result: Pulled, source: str) -> list[dict]:
    """The valid votes in the folder's JSONL files not yet in the lab, marked with `source`."""
    seen = {vote["id"] for vote in votes.read() + votes.waiting()}
    fresh = []
    for path in sorted(folder.rglob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, 1):
                if len(fresh) >= MAX_NEW_VOTES:
                    result.cut = True
                    return fresh
                if not text.strip():
                    continue
                try:
                    vote = checked_vote(text, source)
                except LabError as exc:
                    result.bad += 1
                    if len(result.bad_lines) < 20:
                        result.bad_lines.append(f"{path.relative_to(folder)}:{number}: {exc}")
                    continue
                if vote["id"] in seen:
                    result.known += 1
                    continue
                seen.add(vote["id"])
                fresh.append(vote)
    return fresh


def checked_vote(text: str, source: str) -> dict:
    """One JSONL line as a vote dict, checked as a vote cast here is; LabError says why not."""
    if len(text) > MAX_LINE_CHARS:
        raise LabError("too long")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise LabError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not 8 <= len(data["id"]) <= 64:
        raise LabError("not a vote (no id)")
    known = {key: value for key, value in data.items() if key in VOTE_FIELDS}
    try:
        vote = votes.Vote(**{**known, "source": source}).check()
    except (TypeError, AttributeError, KeyError):
        raise LabError("not a vote (fields)") from None
    if not all(isinstance(side, dict) and isinstance(side.get("model"), str) for side in vote.sides.values()):
        raise LabError("not a vote (sides)")
    return asdict(vote)
