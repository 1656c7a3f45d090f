"""rpo.stats' paired and hierarchical statistics against hand computations and scipy."""
import numpy as np
import pytest
from scipy.stats import binomtest

from rpo.errors import DataError
from rpo.stats import (bootstrap_interval, hierarchical_interval, hierarchical_test, mcnemar_exact, paired_difference,
                       percentile_p_value)


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


def verdicts(rng, n, ahead, behind):
    """Two runs' wins on n prompts: `ahead` prompts only a wins, `behind` only b wins, the rest the same."""
    a = (rng.random(n) < 0.5).astype(float)
    b = a.copy()
    only = rng.choice(n, size=ahead + behind, replace=False)
    a[only[:ahead]], b[only[:ahead]] = 1.0, 0.0
    a[only[ahead:]], b[only[ahead:]] = 0.0, 1.0
    return a, b


def seed_pooled(rng, n, splits):
    """(a's wins, b's wins, a - b) over seeds: one (ahead, behind) split of discordant prompts per seed."""
    pairs = [verdicts(rng, n, ahead, behind) for ahead, behind in splits]
    return [a for a, _ in pairs], [b for _, b in pairs], [a - b for a, b in pairs]


def test_a_pure_seed_effect_is_not_significant_though_mcnemar_over_seed_prompt_pairs_says_it_is():
    """One seed of three differs by 200 of 1024 prompts, the others not at all (30 discordant each way):
    with probability (2/3)^3 a resample leaves that seed out, so the interval covers 0 and p is large.
    McNemar over the 3 x 1024 (seed, prompt) pairs, which ignores the seeds, calls it certain."""
    a, b, diff = seed_pooled(np.random.default_rng(0), 1024, [(230, 30), (30, 30), (30, 30)])
    mean, low, high, p = hierarchical_test(diff, seed=1)
    assert mean == pytest.approx(200 / 3072)
    assert low <= 0 <= high and high > 0.1
    assert 0.15 < p < 0.6
    assert mcnemar_exact(np.concatenate(a), np.concatenate(b)) < 1e-20


def test_a_pure_prompt_effect_is_significant():
    """Every seed: a wins alone on 50 prompts, b on 10: a difference the seeds agree on."""
    _, _, diff = seed_pooled(np.random.default_rng(1), 1024, [(50, 10)] * 3)
    mean, low, high, p = hierarchical_test(diff, seed=1)
    assert mean == pytest.approx(40 / 1024)
    assert low > 0.02 and p < 0.001


def test_no_effect_is_not_significant():
    _, _, diff = seed_pooled(np.random.default_rng(2), 1024, [(30, 30), (45, 45), (20, 20)])
    mean, low, high, p = hierarchical_test(diff, seed=1)
    assert mean == 0.0 and low < 0 < high and p > 0.8
    assert hierarchical_test([[0.0] * 10] * 3, seed=1) == (0.0, 0.0, 0.0, 1.0)  # nothing discordant


def test_p_below_0_05_exactly_when_the_interval_excludes_0_over_many_datasets():
    """Synthetic seed-pooled comparisons from no effect to clear ones, seed and prompt effects mixed:
    the interval of hierarchical_interval and the p of hierarchical_test (same seed: same resamples)
    agree on every one, and both answers occur often."""
    rng = np.random.default_rng(3)
    ps = []
    for _ in range(80):
        n_seeds = int(rng.choice([2, 3, 5]))
        common, spread = rng.uniform(0, 25), rng.uniform(0, 20)  # prompts a is ahead on, shared / per seed
        splits = [(int(10 + max(0.0, common + spread * rng.standard_normal())), 10) for _ in range(n_seeds)]
        _, _, diff = seed_pooled(rng, 200, splits)
        _, low, high = hierarchical_interval(diff, seed=7, n_resamples=1000)
        mean, *_, p = hierarchical_test(diff, seed=7, n_resamples=1000)
        assert (p < 0.05) == (low > 0 or high < 0), (splits, low, high, p)
        ps.append(p)
    ps = np.array(ps)
    assert 20 < (ps < 0.05).sum() < 60 and ((ps > 0.01) & (ps < 0.2)).sum() >= 8  # and near the threshold


@pytest.mark.parametrize("values", ["continuous", "ties at 0", "one side", "all 0", "one value"])
def test_percentile_p_value_inverts_the_percentile_interval_at_every_level(values):
    rng = np.random.default_rng(4)
    x = {"continuous": rng.normal(0.3, 0.2, 999), "ties at 0": rng.integers(-3, 12, 2000) / 10,
         "one side": rng.uniform(0.1, 1, 500), "all 0": np.zeros(50), "one value": np.array([-0.2])}[values]
    p = percentile_p_value(x)
    for alpha in np.linspace(0.001, 0.999, 999):
        if abs(alpha - p) > 1e-9:
            low, high = np.quantile(x, [alpha / 2, 1 - alpha / 2])
            assert (low > 0 or high < 0) == (p < alpha), (alpha, low, high, p)
    # the usual bootstrap p, 2 * min(share <= 0, share >= 0), up to the quantiles' interpolation
    assert p == pytest.approx(min(1.0, 2 * min(np.mean(x <= 0), np.mean(x >= 0))), abs=2 / x.size)
