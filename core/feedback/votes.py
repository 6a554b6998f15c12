"""The preference store: votes cast in Compare, kept as one JSON line each, and what they become.

    python cli.py votes export --out prefs.jsonl     # trl's conversational preference format
    python cli.py votes thumbs --out thumbs.jsonl    # every rated answer, marked good or bad
    python cli.py votes pull OWNER/DATASET            # a Space's votes, into review (core.hub.votes_pull)

Files in `<data dir>/votes/`: `owner.jsonl` (the owner's votes, and the votes the owner
accepted), `visitors.jsonl` (votes from a public app, capped, waiting for review) and
`pulled.jsonl` (votes a published Space collected, pulled from the Hub, waiting for review).
Every append takes an exclusive lock and writes one whole line, so concurrent voters from many
sessions never lose or interleave a line. A vote's id is the id of the answer (or answer pair)
the server gave, so one answer gets one vote however often, or however concurrently, it is
clicked; a vote holds at most MAX_VOTE_CHARS characters, and a visitor's session casts at most
VISITOR_VOTES_PER_MINUTE.

A line: id, time, session, the prompt (earlier turns and the question, as messages), the
answers and which model/adapter gave each (sides A and B), the choice (A, B, tie, both_bad for
a blind A/B vote; up, down for a thumb on one answer) and the generation settings.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import LabError
from core.paths import data_dir
from core.request_limits import RateWindow
from core.settings import settings

PAIR_CHOICES = ("A", "B", "tie", "both_bad")
GENERATED = "generated: "  # a source that no person voted: a training pair made from measurements
THUMB_CHOICES = ("up", "down")
MAX_TEXT = 20_000  # characters per message or answer: a vote is not an upload channel
MAX_VOTE_CHARS = 60_000  # all its messages and answers together
VISITOR_VOTES_PER_MINUTE = 12
_VISITOR_RATE = RateWindow(VISITOR_VOTES_PER_MINUTE, 60)
_RECORDED: dict[str, None] = {}  # ids voted on in this process, oldest first (bounded)
_RECORDED_LOCK = threading.Lock()


@dataclass
class Vote:
    """One vote. `sides` maps "A"/"B" to {"model": ..., "adapter": ... or None}."""

    prompt: list
    answers: dict
    sides: dict
    choice: str
    settings: dict = field(default_factory=dict)
    session: str = ""
    prompt_b: list = field(default_factory=list)  # B's context, when its earlier turns differ from A's
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    source: str = ""  # when not cast in this lab: "hub:OWNER/DATASET@COMMIT", or GENERATED + why

    def check(self) -> "Vote":
        allowed = PAIR_CHOICES if len(self.answers) == 2 else THUMB_CHOICES
        if self.choice not in allowed:
            raise LabError(f"Vote {self.choice!r}: choose one of {', '.join(allowed)}.")
        if set(self.answers) != set(self.sides) or not set(self.answers) <= {"A", "B"}:
            raise LabError("A vote needs the answer and the model of each side.")
        texts = [m.get("content", "") for m in self.prompt] + list(self.answers.values())
        if not self.prompt or not all(isinstance(t, str) and len(t) <= MAX_TEXT for t in texts):
            raise LabError(f"A vote holds text only, at most {MAX_TEXT} characters per message.")
        if sum(map(len, texts)) + sum(len(m.get("content", "")) for m in self.prompt_b) > MAX_VOTE_CHARS:
            raise LabError(f"This conversation is too long to vote on (over {MAX_VOTE_CHARS} characters): "
                           "clear the chat and ask again.")
        return self


@dataclass
class BlindPair:
    """Two answers to one prompt, shown as A and B with the models hidden, waiting for a vote:
    Chat's blind Compare and the judging of a run make them (tabs.chat_votes, core.feedback.judge), and
    it lives in server-side session state until the vote. Its id becomes the vote's id."""

    prompt: list
    answers: dict  # {"A": text, "B": text}
    sides: dict  # {"A": {"model", "adapter"}, "B": ...}
    settings: dict = field(default_factory=dict)
    prompt_b: list = field(default_factory=list)  # B's context, when its earlier turns differ
    swapped: bool = False  # Chat: the tuned answer is on the left
    voted: bool = False
    run: str | None = None  # judging: the run whose report the pair comes from
    left: int = 0  # judging: pairs still to judge, this one included
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def vote(self, choice: str, session: str = "") -> Vote:
        return Vote(prompt=self.prompt, answers=self.answers, sides=self.sides, choice=choice,
                    settings=self.settings, session=session, id=self.id,
                    prompt_b=self.prompt_b if self.prompt_b != self.prompt else [])


def store(visitor: bool = False) -> Path:
    """The store's path; only a vote creates the folder (reading writes nothing)."""
    return data_dir() / "votes" / ("visitors.jsonl" if visitor else "owner.jsonl")


@contextmanager
def _locked(path: Path, mode: str):
    with path.open(mode, encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record(vote: Vote, visitor: bool = False) -> Vote:
    """Append `vote` to the owner's store, or to the capped visitors' store; a second vote with
    the same id (the same answer) is refused."""
    vote.check()
    if visitor and not _VISITOR_RATE.allow(vote.session or "anonymous"):
        raise LabError(f"At most {VISITOR_VOTES_PER_MINUTE} votes a minute: wait a moment.")
    with _RECORDED_LOCK:
        if vote.id in _RECORDED:
            raise LabError("You already voted on this answer; ask another question.")
        _RECORDED[vote.id] = None
        while len(_RECORDED) > 100_000:
            _RECORDED.pop(next(iter(_RECORDED)))
    try:
        return _append(vote, visitor)
    except BaseException:
        with _RECORDED_LOCK:
            _RECORDED.pop(vote.id, None)  # not saved: the answer may be voted on again
        raise


def _append(vote: Vote, visitor: bool) -> Vote:
    path = store(visitor)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, "a+") as handle:
        if visitor:
            handle.seek(0)
            if sum(1 for _ in handle) >= settings().visitor_votes:
                raise LabError("The visitors' vote box is full until the owner reviews it. Thank you!")
        handle.write(json.dumps(asdict(vote), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return vote


def read(visitor: bool = False) -> list[dict]:
    return _read(store(visitor))


def pulled_store() -> Path:
    """Votes pulled from a Space's Hub dataset (core.hub.votes_pull), and pairs the effect map
    made (training.effect), waiting for review."""
    return data_dir() / "votes" / "pulled.jsonl"


def waiting() -> list[dict]:
    """Every vote waiting for the owner's review: visitors' and pulled ones."""
    return _read(store(visitor=True)) + _read(pulled_store())


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with _locked(path, "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def queue_for_review(lines: list[dict]) -> None:
    """Append checked votes from the Hub, or generated pairs, to the review queue (they bypass
    the visitors' cap: the owner asked for them)."""
    path = pulled_store()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, "a") as handle:
        handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())


def accept_waiting(ids: list[str] | None = None) -> int:
    """Move the votes waiting for review (all, or those in `ids`) into the owner's store:
    visitors' and pulled ones; return how many."""
    return sum(_move_to_owner(path, ids) for path in (store(visitor=True), pulled_store()) if path.is_file())


def _move_to_owner(path: Path, ids: list[str] | None) -> int:
    with _locked(path, "r+") as handle:
        wanted = None if ids is None else set(ids)
        chosen, kept = [], []
        for line in (line for line in handle if line.strip()):
            (chosen if wanted is None or json.loads(line)["id"] in wanted else kept).append(line)
        with _locked(store(), "a") as owner:
            owner.writelines(chosen)
            owner.flush()
            os.fsync(owner.fileno())
        handle.seek(0)
        handle.truncate()
        handle.writelines(kept)
    return len(chosen)


LAB_SOURCE = "this lab"


def preference_rows(votes: list[dict]) -> list[dict]:
    """trl's conversational preference rows from the decided A/B votes (ties and both-bad
    carry no preference and are left out), each with the vote's source, which the run's
    manifest counts."""
    rows = []
    for vote in votes:
        if vote["choice"] not in ("A", "B"):
            continue
        loser = "B" if vote["choice"] == "A" else "A"
        prompt = vote.get("prompt_b") if vote["choice"] == "B" and vote.get("prompt_b") else vote["prompt"]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": vote["answers"][vote["choice"]]}],
                     "rejected": [{"role": "assistant", "content": vote["answers"][loser]}],
                     "source": vote.get("source") or LAB_SOURCE})
    return rows


def export_preferences(out: Path) -> int:
    """Write the owner's decided votes as preference jsonl; return the number of pairs."""
    rows = preference_rows(read())
    if not rows:
        raise LabError("No decided A/B votes yet: vote in Compare (A or B is better) first.")
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def rated_answers(votes: list[dict]) -> list[dict]:
    """trl's unpaired rows (prompt, completion, label) from every vote that rated an answer: a
    thumb up or down, and both answers of a decided A/B vote (the better one good)."""
    rows = []
    for vote in votes:
        if vote["choice"] in THUMB_CHOICES:
            side, good = next(iter(vote["answers"])), vote["choice"] == "up"
            rows.append(_rated(vote["prompt"], vote["answers"][side], good))
        elif vote["choice"] in ("A", "B"):
            for side, answer in vote["answers"].items():
                prompt = vote.get("prompt_b") if side == "B" and vote.get("prompt_b") else vote["prompt"]
                rows.append(_rated(prompt, answer, side == vote["choice"]))
    return rows


def _rated(prompt: list, answer: str, good: bool) -> dict:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": good}


def export_rated(out: Path) -> int:
    """Write the owner's rated answers as unpaired jsonl; return the number of rows."""
    rows = rated_answers(read())
    if not rows or len({row["label"] for row in rows}) < 2:
        raise LabError("Rate some answers up and some down first (thumbs in Chat, or A/B votes in Compare): "
                       "training needs good and bad answers.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def side_key(side: dict) -> tuple:
    return side["model"], side.get("adapter")
