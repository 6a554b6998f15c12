"""The tables made from the blind A/B votes: a leaderboard of your own models (every adapter, and
base, that has votes, ranked by a Bradley-Terry fit over all pairwise verdicts, with bootstrap
intervals), each adapter's record against its own base, and a head-to-head of two models.

    python cli.py votes table          # the leaderboard, then each adapter against its base
    from core.feedback.leaderboard import leaderboard, position_bias, win_table

Bradley-Terry gives each entrant a strength p so that P(i beats j) = p_i / (p_i + p_j); it is
fitted by Hunter's MM iteration (each step raises the likelihood) on the votes' verdicts, a tie
or "both bad" counted as half a win for each side. Strengths are shown on the Elo scale
(1000 + 400 log10 p, the geometric mean at 1000), as Chatbot Arena does: 100 points apart is
a 64% win chance. The 95% interval comes from refitting on votes drawn with replacement.
Votes from every source count alike (the lab's Compare, judging, a Space's votes pulled in);
an entrant is a model and its adapter, so a Space's adapter repo is its own entrant.
"""
from __future__ import annotations

import math

import numpy as np

from core.feedback.votes import GENERATED, PAIR_CHOICES, side_key

BOOTSTRAP_SAMPLES = 200
SCORE = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}  # what A scores against B
BIAS_WARNING = 0.15  # |left share - 0.5| beyond this, over at least BIAS_MIN_VOTES, is a warning
BIAS_MIN_VOTES = 20


def entrant(side: dict) -> str:
    """How an entrant is named: its adapter, or '<model> (base)'."""
    return side.get("adapter") or f"{side['model']} (base)"


def verdicts(votes: list[dict]) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray]:
    """(entrants as (model, adapter) keys, index of A, index of B, A's score) of every pair vote
    between two different entrants."""
    keys, first, second, scores = {}, [], [], []
    for vote in human(votes):
        sides = vote.get("sides") or {}
        if vote.get("choice") not in PAIR_CHOICES or set(sides) != {"A", "B"}:
            continue
        a, b = side_key(sides["A"]), side_key(sides["B"])
        if a == b:
            continue
        first.append(keys.setdefault(a, len(keys)))
        second.append(keys.setdefault(b, len(keys)))
        scores.append(SCORE[vote["choice"]])
    return list(keys), np.array(first, dtype=int), np.array(second, dtype=int), np.array(scores)


def human(votes: list[dict]) -> list[dict]:
    """The votes people cast: a generated pair (the effect map's) is training data, not a verdict."""
    return [vote for vote in votes if not (vote.get("source") or "").startswith(GENERATED)]


def bradley_terry(count: int, first, second, scores, iterations: int = 500) -> np.ndarray:
    """Elo-scale ratings of `count` entrants from the verdicts (Hunter's MM). A small prior of
    one tie against every other entrant keeps an entrant that never won finite."""
    wins = np.zeros((count, count))
    np.add.at(wins, (first, second), scores)
    np.add.at(wins, (second, first), 1.0 - scores)
    wins += 0.5 * (1 - np.eye(count)) / max(count - 1, 1)  # the prior: half a tie each way
    games = wins + wins.T
    strength = np.ones(count)
    for _ in range(iterations):
        updated = wins.sum(axis=1) / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated /= math.exp(np.log(updated).mean())
        if np.abs(updated - strength).max() < 1e-9:
            strength = updated
            break
        strength = updated
    return 1000 + 400 * np.log10(strength)


def leaderboard(votes: list[dict], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[dict]:
    """One row per entrant, best first: rating, its 95% interval, and raw wins, losses, ties."""
    keys, first, second, scores = verdicts(votes)
    if not keys:
        return []
    ratings = bradley_terry(len(keys), first, second, scores)
    rng, drawn = np.random.default_rng(seed), []
    for _ in range(samples):
        pick = rng.integers(0, len(scores), len(scores))
        drawn.append(bradley_terry(len(keys), first[pick], second[pick], scores[pick], iterations=200))
    low, high = np.percentile(np.array(drawn), [2.5, 97.5], axis=0)
    rows = []
    for index, (model, adapter) in enumerate(keys):
        mine_a, mine_b = first == index, second == index
        won = np.concatenate([scores[mine_a], 1 - scores[mine_b]])
        rows.append({"entrant": entrant({"model": model, "adapter": adapter}), "model": model, "adapter": adapter,
                     "rating": round(float(ratings[index])), "interval_95": (round(float(low[index])),
                                                                           round(float(high[index]))),
                     "wins": int((won == 1).sum()), "losses": int((won == 0).sum()),
                     "ties": int((won == 0.5).sum()), "votes": int(len(won))})
    return sorted(rows, key=lambda row: -row["rating"])


def position_bias(votes: list[dict]) -> tuple[float | None, int]:
    """(share of decided blind A/B votes won by the left answer, how many were decided)."""
    decided = [vote["choice"] for vote in human(votes) if vote.get("choice") in ("A", "B")]
    return (round(decided.count("A") / len(decided), 3) if decided else None), len(decided)


def position_bias_line(votes: list[dict]) -> str:
    """One line on the left answer's share, a warning when it is far from half."""
    share, decided = position_bias(votes)
    if share is None:
        return "No decided A/B votes yet."
    line = f"The left answer (A) won {share:.0%} of {decided} decided blind votes"
    if decided >= BIAS_MIN_VOTES and abs(share - 0.5) > BIAS_WARNING:
        return f"⚠️ {line}: far from half, so voters may favour a side; the sides are shuffled, so the ranking holds."
    return line + "."


def leaderboard_lines(votes: list[dict], rows: list[dict] | None = None) -> list[str]:
    """The leaderboard (`rows`, or fitted on `votes`) as text lines, then the position-bias
    line; none without pair votes. The CLI and the model card print it."""
    rows = leaderboard(votes) if rows is None else rows
    lines = [f"{n}. {row['entrant']}: {row['rating']} [95%: {row['interval_95'][0]}-{row['interval_95'][1]}], "
             f"{row['wins']}-{row['losses']}-{row['ties']} (win-loss-tie)" for n, row in enumerate(rows, 1)]
    return lines + [position_bias_line(votes)] if lines else []


def wilson_interval(wins: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a win share: honest at small counts, unlike +-2 SE."""
    if total == 0:
        return 0.0, 1.0
    share = wins / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_table(votes: list[dict]) -> list[dict]:
    """For each adapter voted against its own base: wins, losses, ties, both-bad, and the win
    share of the decided votes with its 95% interval."""
    tally: dict[tuple, dict] = {}
    for vote in human(votes):
        sides = vote["sides"]
        if vote["choice"] not in PAIR_CHOICES or len(sides) != 2:
            continue
        tuned = next((s for s in "AB" if sides[s].get("adapter")), None)
        base = "B" if tuned == "A" else "A"
        if tuned is None or sides[base].get("adapter") or sides[base]["model"] != sides[tuned]["model"]:
            continue
        key = (sides[tuned]["model"], sides[tuned]["adapter"])
        row = tally.setdefault(key, _empty_row(*key))
        row[_outcome(vote["choice"], tuned)] += 1
    return sorted((_with_share(row) for row in tally.values()), key=lambda r: (r["model"], r["adapter"]))


def head_to_head(votes: list[dict], challenger: dict, opponent: dict) -> dict:
    """The blind A/B record of `challenger` against `opponent` (each {"model", "adapter"}), in
    either pane order; the row has the fields of a win_table row plus `against`."""
    row = {**_empty_row(challenger["model"], challenger.get("adapter")), "against": opponent.get("adapter")}
    wanted = {side_key(challenger), side_key(opponent)}
    for vote in human(votes):
        sides = vote["sides"]
        if vote["choice"] not in PAIR_CHOICES or len(sides) != 2 or {side_key(s) for s in sides.values()} != wanted:
            continue
        mine = next(s for s in "AB" if side_key(sides[s]) == side_key(challenger))
        row[_outcome(vote["choice"], mine)] += 1
    return _with_share(row)


def _empty_row(model: str, adapter: str | None) -> dict:
    return {"model": model, "adapter": adapter, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0}


def _outcome(choice: str, mine: str) -> str:
    if choice in ("tie", "both_bad"):
        return {"tie": "ties", "both_bad": "both_bad"}[choice]
    return "wins" if choice == mine else "losses"


def _with_share(row: dict) -> dict:
    decided = row["wins"] + row["losses"]
    low, high = wilson_interval(row["wins"], decided)
    row["win_share"] = round(row["wins"] / decided, 3) if decided else None
    row["interval_95"] = (round(low, 3), round(high, 3))
    return row
