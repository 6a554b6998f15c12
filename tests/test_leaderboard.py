"""The leaderboard of one's own models (core.feedback.leaderboard): Bradley-Terry over the blind
votes, bootstrap intervals, and the position-bias line, on synthetic votes of known order."""
from __future__ import annotations

import random

from core.feedback.leaderboard import leaderboard, leaderboard_lines, position_bias, position_bias_line

MODEL = "smollm2-135m-instruct"
# P(row beats column): X wins 80% of its games, Y 50%, Z 20% (100 votes per pairing).
BEATS = {("X", "Y"): 0.75, ("X", "Z"): 0.85, ("Y", "Z"): 0.75}


def synthetic(left_bias: float = 0.5, seed: int = 1) -> list[dict]:
    rng, votes = random.Random(seed), []
    for (one, other), chance in BEATS.items():
        for _ in range(100):
            winner, loser = (one, other) if rng.random() < chance else (other, one)
            left_wins = rng.random() < left_bias
            left, right = (winner, loser) if left_wins else (loser, winner)
            votes.append({"choice": "A" if left_wins else "B",
                          "sides": {"A": {"model": MODEL, "adapter": left}, "B": {"model": MODEL, "adapter": right}}})
    return votes


def test_a_known_order_comes_out_with_separate_intervals():
    rows = leaderboard(synthetic())
    assert [row["entrant"] for row in rows] == ["X", "Y", "Z"]
    (x_low, x_high), (y_low, y_high), (z_low, z_high) = (row["interval_95"] for row in rows)
    assert x_low > y_high and y_low > z_high, rows
    assert all(row["interval_95"][0] < row["rating"] < row["interval_95"][1] for row in rows)
    assert [row["votes"] for row in rows] == [200, 200, 200]
    x = rows[0]
    assert x["wins"] + x["losses"] == 200 and 0.7 < x["wins"] / 200 < 0.9, x


def test_ties_count_half_and_a_base_is_an_entrant():
    base, tuned = {"model": MODEL, "adapter": None}, {"model": MODEL, "adapter": "run-1"}
    votes = [{"choice": "tie", "sides": {"A": base, "B": tuned}}] * 10
    rows = leaderboard(votes, samples=20)
    assert {row["entrant"] for row in rows} == {f"{MODEL} (base)", "run-1"}
    assert rows[0]["rating"] == rows[1]["rating"] == 1000 and rows[0]["ties"] == 10
    one_win = leaderboard(votes + [{"choice": "B", "sides": {"A": base, "B": tuned}}], samples=20)
    assert one_win[0]["entrant"] == "run-1" and one_win[0]["rating"] > 1000 > one_win[1]["rating"]
    assert leaderboard([{"choice": "up", "sides": {"A": tuned}}]) == [], "a thumb is no pairwise verdict"


def test_position_bias_reads_about_half_when_shuffled_and_warns_when_not():
    fair, biased = synthetic(0.5), synthetic(0.9, seed=2)
    assert 0.44 < position_bias(fair)[0] < 0.56 and "⚠️" not in position_bias_line(fair)
    assert 0.86 < position_bias(biased)[0] < 0.94 and position_bias_line(biased).startswith("⚠️")
    lines = leaderboard_lines(fair)
    assert lines[0].startswith("1. X: ") and lines[-1].startswith("The left answer (A) won")
