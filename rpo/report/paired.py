"""Table cells from judged runs, and whether a cell differs from a baseline (rpo.stats).

A cell is one run or several training seeds of one configuration (rpo.pipeline: seeds repeat the
preference stage from one SFT model, generation and judging use one sampling seed). Its win rate is
the mean over seeds and prompts; with several seeds its interval is hierarchical (seeds resampled,
then prompts), so it covers the spread between seeds as well as the sampling of prompts, and the
cell shows the seeds' own range.

A comparison pairs the two cells' seeds by number and their prompts by id: the win-rate difference with
its paired bootstrap 95% interval and a p-value. One shared seed: the exact McNemar test on the prompts
where exactly one of the two wins. Several: the hierarchical bootstrap (seeds, then prompts) gives the
interval and, from the same resamples, the p-value (rpo.stats.hierarchical_test, which says why not a
permutation test): McNemar over (seed, prompt) pairs would count one prompt's verdicts under different
seeds as independent and call a difference clear that the interval beside it, covering 0, does not.
"""
from __future__ import annotations

import pandas as pd

from rpo.errors import DataError
from rpo.io import read_jsonl_once
from rpo.stats import hierarchical_interval, hierarchical_test, mcnemar_exact, paired_difference

MCNEMAR, BOOTSTRAP = "McNemar", "bootstrap"  # the p-value's test, as the cells name it
PAIRED_NOTE = ("{}: this row's win rate minus that method's, in points, on the same prompts: paired bootstrap 95% "
               "interval (prompts resampled together; seeds, then prompts, when a cell pools seeds) and a p-value "
               f"whose test the cell names: '{MCNEMAR}' (one seed): the exact McNemar test on the prompts where only "
               f"one of the two wins; '{BOOTSTRAP}' (seeds pooled): the hierarchical bootstrap's own two-sided p, "
               "from the interval's resamples, so p < 0.05 exactly when the interval excludes 0 (McNemar would "
               "count each (seed, prompt) pair as independent and ignore the spread between seeds); "
               "'(paper ...)': the paper's difference where it publishes both numbers.")
POOL_CHECK = ("beta", "tau", "embedder", "batch_size", "contrast_scope", "model", "matched_control")


def wins_by_prompt(run) -> dict[str, float]:
    """prompt id -> 1.0 if the run's response won, else 0.0 (ties and losses are non-wins, as in win rates)."""
    path, n, wins = run["judgments"], int(run["n"]), int(run["wins"])
    # read once: a baseline's verdicts are compared with every row of a table
    judged = read_jsonl_once(path, f"rejudge {run['task']}/{run['run']}")
    won = sum(row.get("verdict") == "model_win" for row in judged)
    if (len(judged), won) != (n, wins):
        raise DataError(f"{path}: {len(judged)} verdicts with {won} wins, but its winrate.json says n={n}, "
                        f"wins={wins}: rejudge this run")
    return {row["id"]: float(row.get("verdict") == "model_win") for row in judged}


def _seed_matrix(group: pd.DataFrame, seeds: list, prompts: list | None = None) -> tuple[list, list[list[float]]]:
    """(prompts, one row of per-prompt wins per seed), the same prompts in every row."""
    by_seed = {s: wins_by_prompt(group[group["seed"] == s].iloc[0]) for s in seeds}
    prompts = prompts if prompts is not None else sorted(by_seed[seeds[0]])
    for s, wins in by_seed.items():
        if set(wins) != set(prompts):
            raise DataError(f"runs {', '.join(group['run'])}: seed {s} was not judged on the same prompts as the "
                            "others: regenerate them with the same generation settings")
    return prompts, [[by_seed[s][p] for p in prompts] for s in seeds]


def _judge_seed(group: pd.DataFrame) -> int:
    seeds = group["judge_seed"].dropna().unique() if "judge_seed" in group else []
    if len(seeds) != 1:
        raise DataError(f"runs {', '.join(group['run'])}: pooling needs the one judge seed their winrate.json "
                        f"files record (key 'seed'), found {sorted(seeds)}")
    return int(seeds[0])


def _same(values) -> bool:
    return len({None if pd.isna(v) else v for v in values}) <= 1


def pool_runs(group: pd.DataFrame) -> dict:
    """One cell from its runs: win_rate, ci_low, ci_high, runs, n_runs, seed_low, seed_high (the lowest and
    highest seed's win rate). Raises if the runs differ beyond the seed. A matched-beta control's beta
    follows its source run, so its seeds may differ in beta."""
    runs = ", ".join(group["run"])
    group = group.assign(matched_control=group["beta_of"].notna() if "beta_of" in group else False)
    matched = bool(group["matched_control"].all())
    for column in POOL_CHECK:
        if column in group and not (column == "beta" and matched) and not _same(group[column]):
            raise DataError(f"runs {runs} land in one table cell but differ in {column!r} "
                            f"({sorted(map(str, group[column].unique()))}); pass the defaults "
                            "(--config or --main-batch-size/--default-tau/--default-embedder) or fix the configs")
    if len(group) == 1:
        row = group.iloc[0]
        return {"win_rate": row["win_rate"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "runs": runs,
                "n_runs": 1, "seed_low": row["win_rate"], "seed_high": row["win_rate"]}
    if group["seed"].isna().any() or group["seed"].nunique() != len(group):
        raise DataError(f"runs {runs} land in one table cell with the same (or no) seed: "
                        "remove the duplicate or tell them apart in run.json")
    _, matrix = _seed_matrix(group, sorted(group["seed"]))
    win_rate, low, high = hierarchical_interval(matrix, seed=_judge_seed(group))
    rates = [sum(row) / len(row) for row in matrix]
    return {"win_rate": win_rate, "ci_low": low, "ci_high": high, "runs": runs, "n_runs": len(group),
            "seed_low": min(rates), "seed_high": max(rates)}


def compare(cell: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """diff, low, high (fractions), p, test (MCNEMAR or BOOTSTRAP: p's) and n_seeds of `cell` minus
    `baseline`, both groups of collect_runs rows, over the training seeds they share."""
    seeds = sorted(set(cell["seed"]) & set(baseline["seed"]))
    if not seeds:
        raise DataError(f"runs {', '.join(cell['run'])} and {', '.join(baseline['run'])}: no training seed in "
                        "common to pair them by")
    prompts, a = _seed_matrix(cell, seeds)
    try:
        _, b = _seed_matrix(baseline, seeds, prompts)
    except DataError:
        raise DataError(f"runs {', '.join(cell['run'])} and {', '.join(baseline['run'])} were not judged on "
                        "the same prompts: regenerate both with the same generation settings") from None
    judge_seed = int(cell["judge_seed"].dropna().iloc[0]) if cell["judge_seed"].notna().any() else 0
    if len(seeds) == 1:
        diff, low, high = paired_difference(a[0], b[0], seed=judge_seed)
        p, test = mcnemar_exact(a[0], b[0]), MCNEMAR
    else:
        diff, low, high, p = hierarchical_test([[x - y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)],
                                               seed=judge_seed)
        test = BOOTSTRAP
    return {"diff": diff, "diff_low": low, "diff_high": high, "p": p, "test": test, "n_seeds": len(seeds)}


def format_difference(result: dict, paper_diff: float | None = None) -> str:
    """'+0.6 [-1.2, +2.4] p=0.52 (McNemar)' in points, or '... p=0.31 (bootstrap, 3 seeds)' when it pools
    seeds, and the paper's difference beside it where it has both numbers. A bootstrap p below 0.001
    reads 'p<0.001': 10,000 resamples cannot resolve it."""
    def points(x):
        return f"{100 * x:+.1f}"

    test = result["test"]
    p = "p<0.001" if test == BOOTSTRAP and result["p"] < 0.001 else f"p={result['p']:.2g}"
    seeds = f", {result['n_seeds']} seeds" if result.get("n_seeds", 1) > 1 else ""
    text = f"{points(result['diff'])} [{points(result['diff_low'])}, {points(result['diff_high'])}] {p} ({test}{seeds})"
    return text + (f" (paper {points(paper_diff)})" if paper_diff is not None else "")
