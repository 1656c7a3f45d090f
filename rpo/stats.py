"""The one confidence interval of the project: a seeded percentile bootstrap over per-item scores.

Every win-rate interval goes through `bootstrap_interval`: the judge's summary of one run
(rpo.judge.winrate), seeds pooled into one table cell (rpo.report.tables) and AlpacaEval
(rpo.alpacaeval). Why this method and not the two it replaced: it works on per-item scores of any
kind (a judge's wins / non-wins, alpaca_eval's 0 / 0.5 / 1 or its soft preferences in [0, 1]), and
it extends to paired differences between two runs and to resampling seeds and then prompts
(hierarchical), which comparing runs needs. A Wilson interval needs binary counts; the normal
interval (mean +- 1.96 SE, what alpaca_eval's standard error gives) is poor near 0 and 1 and at small n.

Comparisons of runs judged on the same prompts: `paired_difference` (the paired bootstrap of a
win-rate difference), `mcnemar_exact` (the exact test on discordant prompts) and, over training seeds,
`hierarchical_interval` (seeds, then prompts) with `hierarchical_test`, its interval and the p-value that
agrees with it.

It lives here rather than in rpo.judge: AlpacaEval and the report use it too and are not judge code.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

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


def paired_difference(a: Iterable[float], b: Iterable[float], *, seed: int, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) for two runs scored on the SAME items, item i of both belonging
    together: the paired bootstrap, which resamples items (both runs' scores of an item together), is
    `bootstrap_interval` over the per-item differences."""
    a, b = _same_items(a, b)
    return bootstrap_interval(a - b, seed=seed, n_resamples=n_resamples, confidence=confidence)


def mcnemar_exact(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided exact McNemar p-value for two runs' binary outcomes (win = 1) on the same items: the
    binomial(n, 1/2) probability, doubled, of a split of the n discordant items at least as uneven as
    the one observed (1.0 when no item is discordant)."""
    a, b = _same_items(a, b)
    if not np.isin(a, (0.0, 1.0)).all() or not np.isin(b, (0.0, 1.0)).all():
        raise DataError("mcnemar_exact: outcomes must be 0 or 1 (win / non-win)")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))  # exact integers, no scipy
    return min(1.0, 2 * tail / 2 ** n)


def hierarchical_interval(scores: Sequence[Iterable[float]], *, seed: int, n_resamples: int = N_RESAMPLES,
                          confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) over S seeds x n items (row s: seed s's per-item scores, the same items in every
    row): each resample draws S seeds with replacement, then n items with replacement (the same items for
    every drawn seed: the seeds were judged on one prompt set), so the interval covers both the spread
    between training seeds and the sampling of prompts. One seed reduces to `bootstrap_interval`'s
    resampling of items."""
    return hierarchical_test(scores, seed=seed, n_resamples=n_resamples, confidence=confidence)[:3]


def hierarchical_test(scores: Sequence[Iterable[float]], *, seed: int, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, low, high, p): `hierarchical_interval` and, from the same resamples, the two-sided p-value
    of mean = 0 (`percentile_p_value`), so p < 1 - confidence exactly when the interval excludes 0.

    For per-item differences between two runs over shared seeds, this is the test of a seed-pooled
    comparison. Why not a seed-stratified permutation test: swapping the two runs' verdicts within each
    (seed, prompt) gives the mean difference exactly McNemar's sign-test distribution over the discordant
    (seed, prompt) pairs, so it holds the trained seeds fixed and calls one seed's large difference
    certain while the interval, which resamples seeds, covers 0; swapping whole seeds has only 2^S
    arrangements (p >= 0.25 at 3 seeds). The bootstrap's own p inverts the interval beside it and costs
    no extra resampling."""
    matrix = _score_matrix(scores)
    means = _hierarchical_means(matrix, seed, n_resamples)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(matrix.mean()), float(low), float(high), percentile_p_value(means)


def percentile_p_value(resampled: np.ndarray) -> float:
    """Two-sided p-value of 0 from resampled statistics: the largest 1 - confidence whose percentile
    interval (np.quantile's default linear interpolation, as every interval here) still covers 0. So
    p < 1 - c exactly when the c interval of the same resamples excludes 0, at every level c; and p is
    2 * min(share of resamples <= 0, share >= 0) up to 2 / len(resampled). 0 when every resample lies on
    one side of 0 (the bootstrap resolves nothing below about 2 / len(resampled))."""
    x = np.sort(np.asarray(resampled, dtype=np.float64))
    last = x.size - 1
    below, upto = int(np.searchsorted(x, 0.0, "left")), int(np.searchsorted(x, 0.0, "right"))
    if last == 0:
        return 1.0 if upto > below else 0.0
    # The interpolated quantile function Q(h), h = q * last, is 0 on [first, end] (positions), < 0 before it
    # and > 0 after it; the c interval [Q((1-c)/2 * last), Q((1+c)/2 * last)] excludes 0 when (1-c)/2 * last
    # lies past `end` or (1+c)/2 * last before `first`.
    if upto > below:  # resamples exactly at 0
        first, end = below, upto - 1
    elif 0 < below <= last:  # 0 between x[below-1] < 0 and x[below] > 0
        first = end = below - 1 - x[below - 1] / (x[below] - x[below - 1])
    else:  # every resample on one side
        return 0.0
    return float(min(1.0, 2.0 * end / last, 2.0 * (last - first) / last))


def _score_matrix(scores) -> np.ndarray:
    rows = [np.asarray(list(row), dtype=np.float64) for row in scores]
    if not rows or len({row.shape for row in rows}) != 1 or rows[0].ndim != 1 or rows[0].size == 0:
        raise DataError(f"hierarchical_interval: expected S seeds x n items of scores (the same items for every "
                        f"seed), got rows of shapes {[row.shape for row in rows]}")
    matrix = np.stack(rows)
    if not np.isfinite(matrix).all():
        raise DataError("hierarchical_interval: per-item scores must be finite")
    return matrix


def _hierarchical_means(matrix: np.ndarray, seed: int, n_resamples: int) -> np.ndarray:
    """The means of `n_resamples` resamples (S seeds, then n items, with replacement) of an S x n matrix,
    drawn by one seeded stream. Each resample sums the drawn seeds' columns (seed counts @ matrix) at the
    drawn items instead of copying the drawn rows: for integer scores (wins, differences of wins) every
    sum is exact, so each mean is bit for bit drawn[:, items].mean(), with one copy fewer per resample."""
    n_seeds, n = matrix.shape
    rng = np.random.default_rng(seed)
    sums = np.empty(n_resamples)
    for r in range(n_resamples):
        columns = np.bincount(rng.integers(0, n_seeds, size=n_seeds), minlength=n_seeds) @ matrix
        sums[r] = np.add.reduce(columns[rng.integers(0, n, size=n)])
    return sums / (n_seeds * n)


def _same_items(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(list(a), dtype=np.float64)
    b = np.asarray(list(b), dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise DataError(f"paired statistics need the same non-empty items in both runs, got {a.shape} and {b.shape}")
    return a, b
