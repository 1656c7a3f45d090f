"""The one confidence interval of the project: a seeded percentile bootstrap over per-item scores.

Every win-rate interval goes through `bootstrap_interval`: the judge's summary of one run
(rpo.judge.winrate), seeds pooled into one table cell (rpo.report.tables) and AlpacaEval
(rpo.alpacaeval). Why this method and not the two it replaced: it works on per-item scores of any
kind (a judge's wins / non-wins, alpaca_eval's 0 / 0.5 / 1 or its soft preferences in [0, 1]), and
it extends to paired differences between two runs and to resampling seeds and then prompts
(hierarchical), which comparing runs needs. A Wilson interval needs binary counts; the normal
interval (mean +- 1.96 SE, what alpaca_eval's standard error gives) is poor near 0 and 1 and at small n.

It lives here rather than in rpo.judge: AlpacaEval and the report use it too and are not judge code.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from rpo.errors import DataError

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
_CHUNK = 1 << 22  # resampled indices per block: bounds memory; the random stream is the same as one draw


def bootstrap_interval(scores: Iterable[float], *, seed: int, n_resamples: int = N_RESAMPLES,
                       confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `scores` and the central `confidence` mass of the means of
    `n_resamples` resamples of the items with replacement, drawn by numpy's default_rng(seed)."""
    scores = np.asarray(scores if isinstance(scores, np.ndarray) else list(scores), dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise DataError(f"bootstrap_interval: expected a non-empty 1-D list of per-item scores, got shape "
                        f"{scores.shape}")
    if not np.isfinite(scores).all():
        raise DataError("bootstrap_interval: per-item scores must be finite")
    n = scores.size
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    means = np.concatenate([scores[rng.integers(0, n, size=(min(rows, n_resamples - start), n))].mean(axis=1)
                            for start in range(0, n_resamples, rows)])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(scores.mean()), float(low), float(high)
