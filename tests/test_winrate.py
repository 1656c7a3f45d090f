"""Win-rate summary: the paper's counting rule and the project's one interval, the seeded bootstrap."""
import math

import numpy as np
import pytest

import rpo.stats
from rpo.errors import DataError
from rpo.judge.winrate import summarize
from rpo.stats import bootstrap_interval


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


@pytest.mark.parametrize("n, seed, chunk", [(7, 0, 1 << 22), (1024, 1, 1 << 22), (300, 3, 1000)])
def test_interval_is_bit_identical_to_one_draw_of_all_resamples(monkeypatch, n, seed, chunk):
    """The judge summary's interval as it was before rpo.stats: one draw of every resample, then the
    quantiles. Drawing in blocks (chunk: resampled indices per block) keeps the random stream."""
    monkeypatch.setattr(rpo.stats, "_CHUNK", chunk)
    wins = (np.random.default_rng(99).random(n) < 0.6).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, n, size=(10_000, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    summary = summarize(["model_win" if w else "chosen_win" for w in wins], seed=seed)
    assert (summary["win_rate"], summary["ci_low"], summary["ci_high"]) == (float(wins.mean()), float(low), float(high))


def test_the_interval_takes_scores_of_any_kind():
    mean, low, high = bootstrap_interval([1.0, 0.5, 0.0, 1.0, 0.25] * 40, seed=1)  # draws, soft preferences
    assert mean == pytest.approx(0.55) and low < mean < high
    assert bootstrap_interval([1.0] * 5, seed=0) == (1.0, 1.0, 1.0)
    for bad in ([], [[1.0]], [float("nan")]):
        with pytest.raises(DataError, match="bootstrap_interval"):
            bootstrap_interval(bad, seed=0)
