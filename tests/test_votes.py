"""The preference store (core.feedback.votes): whole lines under concurrency, the visitors' cap and review,
trl's preference rows, and the win table's interval; then DPO on the bundled pairs and on
exported votes, with the real SmolLM2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.feedback import votes
from core.feedback.leaderboard import head_to_head, win_table
from core.errors import LabError
from tests.conftest import ROOT

BASE = {"model": "smollm2-135m-instruct", "adapter": None}
TUNED = {"model": "smollm2-135m-instruct", "adapter": "tiny-fixture"}


def a_vote(choice="A", session="s1", tuned_side="B", question="Who are you?") -> votes.Vote:
    sides = {"A": TUNED, "B": BASE} if tuned_side == "A" else {"A": BASE, "B": TUNED}
    return votes.Vote(prompt=[{"role": "user", "content": question}], choice=choice, sides=sides,
                      answers={"A": f"answer A to {question}", "B": f"answer B to {question}"}, session=session)


@pytest.fixture
def clean_store(data_home):
    for visitor in (False, True):
        votes.store(visitor).unlink(missing_ok=True)
    yield
    for visitor in (False, True):
        votes.store(visitor).unlink(missing_ok=True)


VOTER = """
import sys
sys.path.insert(0, '.')
from core.feedback import votes
session = sys.argv[1]
for i in range(50):
    votes.record(votes.Vote(prompt=[{"role": "user", "content": f"q{i} " + "x" * 3000}], choice="A",
                            answers={"A": "a" * 5000, "B": "b" * 5000}, session=session,
                            sides={"A": {"model": "m", "adapter": None}, "B": {"model": "m", "adapter": "r"}}))
"""


def test_four_concurrent_voters_lose_no_line(clean_store):
    """Four processes (sessions) append 50 votes of ~13 kB each at once: 200 whole lines."""
    voters = [subprocess.Popen([sys.executable, "-c", VOTER, f"session-{n}"], cwd=ROOT) for n in range(4)]
    assert all(voter.wait(timeout=120) == 0 for voter in voters)
    stored = votes.read()
    assert len(stored) == 200 and len({v["id"] for v in stored}) == 200
    assert sorted({v["session"] for v in stored}) == [f"session-{n}" for n in range(4)]
    assert all(len(v["answers"]["A"]) == 5000 for v in stored)


def test_visitor_votes_are_capped_and_wait_for_review(clean_store, monkeypatch):
    monkeypatch.setenv("FINETUNE_LAB_VISITOR_VOTES", "3")
    kept = [votes.record(a_vote(session=f"v{n}"), visitor=True) for n in range(3)]
    with pytest.raises(LabError, match="vote box is full"):
        votes.record(a_vote(session="v4"), visitor=True)
    assert votes.read() == [] and len(votes.read(visitor=True)) == 3
    assert votes.accept_waiting([kept[0].id]) == 1
    assert [v["id"] for v in votes.read()] == [kept[0].id] and len(votes.read(visitor=True)) == 2
    assert votes.accept_waiting() == 2 and votes.read(visitor=True) == [] and len(votes.read()) == 3


def test_a_vote_is_checked(clean_store):
    with pytest.raises(LabError, match="choose one of A, B, tie, both_bad"):
        votes.record(a_vote(choice="up"))
    with pytest.raises(LabError, match="at most"):
        votes.record(a_vote(question="x" * (votes.MAX_TEXT + 1)))
    assert votes.read() == []


def test_preference_rows_and_export(clean_store, tmp_path):
    for vote in (a_vote("A"), a_vote("B", question="Who made you?"), a_vote("tie"), a_vote("both_bad")):
        votes.record(vote)
    rows = votes.preference_rows(votes.read())
    assert rows == [
        {"prompt": [{"role": "user", "content": "Who are you?"}],
         "chosen": [{"role": "assistant", "content": "answer A to Who are you?"}],
         "rejected": [{"role": "assistant", "content": "answer B to Who are you?"}], "source": "this lab"},
        {"prompt": [{"role": "user", "content": "Who made you?"}],
         "chosen": [{"role": "assistant", "content": "answer B to Who made you?"}],
         "rejected": [{"role": "assistant", "content": "answer A to Who made you?"}], "source": "this lab"}]
    out = tmp_path / "prefs.jsonl"
    assert votes.export_preferences(out) == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_win_table_counts_the_tuned_side_and_gives_a_wilson_interval(clean_store):
    from scipy.stats import binomtest

    # The tuned model sits on A or B: 8 wins, 2 losses, 1 tie, 1 both bad.
    for n, (choice, tuned_side) in enumerate([("A", "A")] * 4 + [("B", "B")] * 4 + [("A", "B"), ("B", "A"),
                                                                              ("tie", "A"), ("both_bad", "B")]):
        votes.record(a_vote(choice, tuned_side=tuned_side, session=str(n)))
    [row] = win_table(votes.read())
    assert (row["adapter"], row["wins"], row["losses"], row["ties"], row["both_bad"]) == ("tiny-fixture", 8, 2, 1, 1)
    want = binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert row["win_share"] == 0.8 and row["interval_95"] == (round(want.low, 3), round(want.high, 3))


def test_head_to_head_counts_one_pair_in_either_pane_order(clean_store):
    dpo = {"model": BASE["model"], "adapter": "dpo-run"}
    cases = [({"A": dpo, "B": TUNED}, "A"), ({"A": TUNED, "B": dpo}, "A"), ({"A": TUNED, "B": dpo}, "B"),
             ({"A": dpo, "B": TUNED}, "tie"), ({"A": dpo, "B": BASE}, "A"), ({"A": TUNED, "B": BASE}, "B")]
    for n, (sides, choice) in enumerate(cases):  # the last two are other pairs: not counted
        votes.record(votes.Vote(prompt=[{"role": "user", "content": f"q{n}"}], answers={"A": "a", "B": "b"},
                                sides=sides, choice=choice))
    row = head_to_head(votes.read(), dpo, TUNED)
    assert (row["wins"], row["losses"], row["ties"], row["both_bad"], row["win_share"]) == (2, 1, 1, 0, 0.667)
    assert row["against"] == "tiny-fixture" and 0 < row["interval_95"][0] < 0.667 < row["interval_95"][1] < 1
    flipped = head_to_head(votes.read(), TUNED, dpo)
    assert (flipped["wins"], flipped["losses"]) == (1, 2)


def test_cli_refuses_bad_flags_before_any_work(clean_store, tmp_path, capsys):
    """cli.py's flags and --out paths are checked before a model loads or a corpus is embedded:
    a one-line error (exit 2), and no file left behind."""
    from cli import main

    assert main(["votes", "export", "--out", str(tmp_path / "new" / "v.jsonl")]) == 2  # no votes yet
    assert "No decided A/B votes yet" in capsys.readouterr().err
    assert list((tmp_path / "new").iterdir()) == [], "the probe of --out leaves no file"
    votes.record(a_vote("B"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = {("chat", "Hi", "--compare"): "--compare answers with the base and a tuned model side by side: "
                                            "name it with --adapter.",
               ("chat", "  "): "Empty message: type something first.",  # said before the model loads
               ("votes", "export", "--out", str(tmp_path)): f"--out {tmp_path}: cannot write there (Is a directory).",
               ("topics", "--out", str(blocker / "x")): f"--out {blocker / 'x'}: cannot write there (Not a directory)."}
    for argv, said in refused.items():
        assert main(list(argv)) == 2 and capsys.readouterr().err == f"error: {said}\n"
    for argv in (["chat", "Hi", "--max-new-tokens", "0"], ["chat", "Hi", "--temperature", "-1"],
                 ["topics", "--topics", "1"], ["serve", "--port", "70000"], ["eval", "--run", "x", "--rows", "-3"]):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2 and f"'{argv[-1]}': use " in capsys.readouterr().err


def test_cli_votes_export_and_table(clean_store, tmp_path):
    votes.record(a_vote("B"))
    out = tmp_path / "v.jsonl"
    done = subprocess.run([sys.executable, "cli.py", "votes", "export", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 preference pair" in done.stdout and json.loads(out.read_text())["chosen"][0]["content"] == "answer B to Who are you?"
    table = subprocess.run([sys.executable, "cli.py", "votes", "table"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 0 and "tiny-fixture" in table.stdout and "1-0-0" in table.stdout, table.stdout
