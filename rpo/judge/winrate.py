"""Win rate over judged prompts, with the project's one interval (rpo.stats.bootstrap_interval).

Paper rule: win rate = wins / number of prompts; ties and unparseable answers are non-wins.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from rpo.errors import DataError
from rpo.judge.base import OUTCOMES
from rpo.stats import CONFIDENCE, N_RESAMPLES, bootstrap_interval


def summarize(judgments: Iterable, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
              confidence: float = CONFIDENCE) -> dict:
    """`judgments`: outcome strings or judgment rows with a "verdict" key (one of OUTCOMES).

    Returns n, wins, ties, losses, unparseable, win_rate, ci_low, ci_high (the rates are None for n = 0).
    unparseable counts answers without a verdict; a row marked failed (no answer at all: attempt_counts'
    failed_items) is a non-win too but is not counted there, so n = wins + ties + losses + unparseable + failed.
    """
    judgments = list(judgments)
    outcomes = [j if isinstance(j, str) else j["verdict"] for j in judgments]
    failed = sum(1 for j, o in zip(judgments, outcomes)
                 if o == "unparseable" and not isinstance(j, str) and j.get("failed", False))
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
        "unparseable": counts["unparseable"] - failed,
        "win_rate": None,
        "ci_low": None,
        "ci_high": None,
    }
    if n == 0:
        return summary
    wins = np.array([o == "model_win" for o in outcomes], dtype=np.float64)
    win_rate, low, high = bootstrap_interval(wins, seed=seed, n_resamples=n_resamples, confidence=confidence)
    summary.update(win_rate=win_rate, ci_low=low, ci_high=high)
    return summary


def attempt_counts(rows: Iterable[dict]) -> dict:
    """retried_items: items whose answer took more than one attempt; failed_items: items with no answer
    (the request was refused, or every attempt failed; counted as no winner), and each one's id and error in
    failures. The public code makes one attempt and reads any failure as no winner, so its count would treat
    every retried item as unparseable."""
    rows = list(rows)
    failures = [{"id": r["id"], "error": r.get("error", "")} for r in rows if r.get("failed", False)]
    return {"retried_items": sum(1 for r in rows if r.get("retries", 0) > 0),
            "failed_items": len(failures), "failures": failures}
