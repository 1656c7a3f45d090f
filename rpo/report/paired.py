"""Does a method differ from a baseline? Two table cells judged on the same prompts, compared prompt by
prompt (rpo.stats): the win-rate difference with its paired bootstrap 95% interval and the exact McNemar
p-value on the prompts where exactly one of them wins.

A cell is one run or several training seeds of one configuration. Seeds are paired with the baseline's
seed of the same number (the same SFT model, batch order and sampling seeds); with more than one seed
the interval is hierarchical (seeds, then prompts) and McNemar runs over every (seed, prompt) pair.
"""
from __future__ import annotations

import pandas as pd

from rpo.errors import DataError
from rpo.report.collect import read_judgments
from rpo.stats import hierarchical_interval, mcnemar_exact, paired_difference

PAIRED_NOTE = ("{}: this row's win rate minus that method's, in points, on the same prompts: paired bootstrap 95% "
               "interval (prompts resampled together; seeds, then prompts, when a cell pools seeds) and the exact "
               "McNemar p-value on the prompts where only one of the two wins; '(paper ...)': the paper's "
               "difference where it publishes both numbers.")


def wins_by_prompt(run) -> dict[str, float]:
    """prompt id -> 1.0 if the run's response won, else 0.0 (ties and losses are non-wins, as in win rates)."""
    return {row["id"]: float(row.get("verdict") == "model_win") for row in read_judgments(run)}


def compare(cell: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """diff, low, high (fractions) and p of `cell` minus `baseline`, both groups of collect_runs rows."""
    seeds = sorted(set(cell["seed"]) & set(baseline["seed"]))
    if not seeds:
        raise DataError(f"runs {', '.join(cell['run'])} and {', '.join(baseline['run'])}: no training seed in "
                        "common to pair them by")
    ours = {s: wins_by_prompt(cell[cell["seed"] == s].iloc[0]) for s in seeds}
    theirs = {s: wins_by_prompt(baseline[baseline["seed"] == s].iloc[0]) for s in seeds}
    prompts = sorted(ours[seeds[0]])
    for s in seeds:
        if set(ours[s]) != set(prompts) or set(theirs[s]) != set(prompts):
            raise DataError(f"runs {', '.join(cell['run'])} and {', '.join(baseline['run'])} were not judged on "
                            "the same prompts: regenerate both with the same generation settings")
    a = [[ours[s][p] for p in prompts] for s in seeds]
    b = [[theirs[s][p] for p in prompts] for s in seeds]
    judge_seed = int(cell["judge_seed"].dropna().iloc[0]) if cell["judge_seed"].notna().any() else 0
    if len(seeds) == 1:
        diff, low, high = paired_difference(a[0], b[0], seed=judge_seed)
    else:
        diff, low, high = hierarchical_interval([[x - y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)],
                                                seed=judge_seed)
    p = mcnemar_exact([x for row in a for x in row], [y for row in b for y in row])
    return {"diff": diff, "diff_low": low, "diff_high": high, "p": p, "n_seeds": len(seeds)}


def format_difference(result: dict, paper_diff: float | None = None) -> str:
    """'+0.6 [-1.2, +2.4] p=0.52' in points, and the paper's difference beside it where it has both numbers."""
    def points(x):
        return f"{100 * x:+.1f}"

    text = (f"{points(result['diff'])} [{points(result['diff_low'])}, {points(result['diff_high'])}] "
            f"p={result['p']:.2g}")
    return text + (f" (paper {points(paper_diff)})" if paper_diff is not None else "")
