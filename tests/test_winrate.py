"""Win-rate summary: the paper's counting rule and the seeded bootstrap interval."""
import math

import pytest

from rpo.errors import DataError
from rpo.judge.winrate import summarize


def test_ties_and_unparseable_are_non_wins():
    outcomes = ["model_win"] * 5 + ["chosen_win"] * 3 + ["tie"] * 1 + ["unparseable"] * 1
    summary = summarize(outcomes)
    assert {k: summary[k] for k in ("n", "wins", "ties", "losses", "unparseable")} == {
        "n": 10, "wins": 5, "ties": 1, "losses": 3, "unparseable": 1}
    assert summary["win_rate"] == 0.5
    assert summary["ci_low"] < 0.5 < summary["ci_high"]


def test_accepts_judgment_rows():
    rows = [{"verdict": "model_win"}, {"verdict": "tie"}, {"verdict": "chosen_win"}, {"verdict": "model_win"}]
    assert summarize(rows)["win_rate"] == 0.5


def test_bootstrap_is_seeded_and_matches_the_normal_approximation():
    outcomes = ["model_win", "chosen_win"] * 200  # p = 0.5, n = 400
    first, again, other = summarize(outcomes, seed=1), summarize(outcomes, seed=1), summarize(outcomes, seed=2)
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert other["ci_low"] == pytest.approx(first["ci_low"], abs=0.006)  # 10k resamples: stable across seeds
    half_width = 1.96 * math.sqrt(0.25 / 400)  # 0.049
    assert first["ci_low"] == pytest.approx(0.5 - half_width, abs=0.01)
    assert first["ci_high"] == pytest.approx(0.5 + half_width, abs=0.01)


def test_degenerate_cases():
    all_wins = summarize(["model_win"] * 7)
    assert (all_wins["win_rate"], all_wins["ci_low"], all_wins["ci_high"]) == (1.0, 1.0, 1.0)
    empty = summarize([])
    assert empty["n"] == 0 and empty["win_rate"] is None and empty["ci_low"] is None


def test_unknown_verdict_is_refused():
    with pytest.raises(DataError, match="unknown verdicts \\['A'\\]"):
        summarize(["model_win", "A"])
