"""rpo.stats' paired and hierarchical statistics against hand computations and scipy."""
import numpy as np
import pytest
from scipy.stats import binomtest

from rpo.errors import DataError
from rpo.stats import bootstrap_interval, hierarchical_interval, mcnemar_exact, paired_difference


def test_mcnemar_exact_is_the_two_sided_binomial_test_on_discordant_items():
    a = [1] * 8 + [0] * 2 + [1] * 30 + [0] * 60   # 8 items only a wins, 2 only b wins, 90 concordant
    b = [0] * 8 + [1] * 2 + [1] * 30 + [0] * 60
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10, abs=1e-15)  # 0.109375
    assert mcnemar_exact(a, b) == pytest.approx(binomtest(2, 10, 0.5).pvalue, abs=1e-12)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # nothing discordant
    assert mcnemar_exact([1] * 5, [0] * 5) == pytest.approx(2 / 32)
    with pytest.raises(DataError, match="0 or 1"):
        mcnemar_exact([0.5, 1], [1, 0])
    with pytest.raises(DataError, match="same non-empty items"):
        mcnemar_exact([1, 0], [1])


def test_paired_difference_is_the_mean_difference_and_tighter_than_unpaired_intervals():
    rng = np.random.default_rng(0)
    a = (rng.random(1000) < 0.6).astype(float)
    b = a.copy()
    flip = rng.choice(1000, size=40, replace=False)
    b[flip] = 1 - b[flip]  # b differs from a on 4% of the items
    diff, low, high = paired_difference(a, b, seed=1)
    assert diff == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert low <= diff <= high
    width_a = np.subtract(*bootstrap_interval(a, seed=1)[2:0:-1])
    assert high - low < width_a / 2  # pairing removes the prompts' shared difficulty
    assert paired_difference(a, a, seed=1) == (0.0, 0.0, 0.0)


def test_hierarchical_interval_covers_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    items = (rng.random(500) < 0.5).astype(float)
    one = hierarchical_interval([items], seed=3)
    assert one[0] == pytest.approx(items.mean())
    assert abs((one[2] - one[1]) - np.subtract(*bootstrap_interval(items, seed=3)[2:0:-1])) < 0.01
    seeds = [np.clip(items + shift, 0, 1) for shift in (-0.3, 0.0, 0.3)]  # seeds far apart
    mean, low, high = hierarchical_interval(seeds, seed=3)
    assert mean == pytest.approx(np.mean(seeds))
    pooled = bootstrap_interval(np.concatenate(seeds), seed=3)
    assert high - low > 2 * (pooled[2] - pooled[1])  # the seed level widens it
    with pytest.raises(DataError, match="S seeds x n items"):
        hierarchical_interval([[1, 0], [1]], seed=0)
