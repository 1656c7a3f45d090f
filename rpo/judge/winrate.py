"""Win rate over judged prompts, with a seeded percentile-bootstrap confidence interval.

Paper rule: win rate = wins / number of prompts; ties and unparseable answers are non-wins.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from rpo.errors import DataError
from rpo.judge.base import OUTCOMES


def summarize(judgments: Iterable, *, seed: int = 0, n_resamples: int = 10_000, confidence: float = 0.95) -> dict:
    """`judgments`: outcome strings or judgment rows with a "verdict" key (one of OUTCOMES).

    Returns n, wins, ties, losses, unparseable, win_rate, ci_low, ci_high (the rates are None for n = 0).
    """
    outcomes = [j if isinstance(j, str) else j["verdict"] for j in judgments]
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise DataError(f"judgments: unknown verdicts {unknown}; expected one of {', '.join(OUTCOMES)}")
    counts = Counter(outcomes)
    n = len(outcomes)
    summary = {
        "n": n,
        "wins": counts["model_win"],
        "ties": counts["tie"],
        "losses": counts["chosen_win"],
        "unparseable": counts["unparseable"],
        "win_rate": None,
        "ci_low": None,
        "ci_high": None,
    }
    if n == 0:
        return summary
    wins = np.array([o == "model_win" for o in outcomes], dtype=np.float64)
    # Resample prompts with replacement; the interval is the central `confidence` mass of the means.
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    summary.update(win_rate=float(wins.mean()), ci_low=float(low), ci_high=float(high))
    return summary
