"""rpo.report on several training seeds: pooled cells, their hierarchical intervals and the p-value that
agrees with them, and the refusals of runs that cannot pool or pair."""
import json
import shutil

import pytest

from rpo.errors import DataError
from rpo.judge.winrate import summarize
from rpo.report import collect_runs, table1
from rpo.stats import hierarchical_interval

from report_tree import DEFAULTS, MINILM, MODEL, add_run, row_of, runs, tree  # noqa: F401 (runs, tree: fixtures)


def test_seed_pooled_differences_take_the_bootstrap_p_that_agrees_with_their_interval(tree, tmp_path):
    """A pure seed effect: RPO-Paired's seed 1 wins alone on k = 22 dialogue prompts, its seeds 2 and 3
    judge exactly as DPO's. McNemar over the 3 x 256 (seed, prompt) pairs would say p = 2 * 2^-22; the
    hierarchical bootstrap leaves seed 1 out of (2/3)^3 of its resamples (difference exactly 0), so its
    interval starts at 0 and its p is about 2 * 8/27. Against SFT (one seed) the cell keeps McNemar."""
    copy = shutil.copytree(tree, tmp_path / "r")
    for seed in (2, 3):
        add_run(copy, "dialogue", "dpo", None, None, 8, 0.70, seed=seed)
        add_run(copy, "dialogue", "rpo-paired", 0.5, MINILM, 8, 0.70, seed=seed)
    table = table1(collect_runs(copy), DEFAULTS)
    cell = row_of(table.data, task="dialogue", method="rpo-paired")
    k = round(0.785 * 256) - round(0.70 * 256)
    assert (cell["vs DPO: test"], cell["vs DPO: n_seeds"]) == ("bootstrap", 3)
    assert cell["vs DPO: diff"] == pytest.approx(k / 768) and cell["vs DPO: diff_low"] == 0.0
    assert cell["vs DPO: p"] == pytest.approx(2 * 8 / 27, abs=0.03)
    assert cell["vs DPO: p"] > 0.05 and cell["vs DPO: diff_low"] <= 0 <= cell["vs DPO: diff_high"]
    text = row_of(table.frame, method="RPO-Paired")["dialogue: vs DPO"]
    assert text.startswith(f"+{100 * k / 768:.1f} [+0.0, ") and f"p={cell['vs DPO: p']:.2g} (bootstrap, 3 seeds)" in text
    assert "(McNemar)" in row_of(table.frame, method="RPO-Paired")["dialogue: vs SFT"]
    assert any("'bootstrap' (seeds pooled)" in note and "'McNemar' (one seed)" in note for note in table.notes)


def test_paired_comparison_refuses_runs_judged_on_other_prompts(tree, tmp_path):
    from rpo.report.paired import compare

    copy = tmp_path / "results"
    shutil.copytree(tree, copy)
    path = copy / "dialogue" / "judgments" / "dpo_bs8_seed1.jsonl"
    path.write_text(path.read_text().replace('"dialogue-0"', '"dialogue-other"'))
    frame = collect_runs(copy)
    dialogue = frame[frame["task"] == "dialogue"]
    with pytest.raises(DataError, match="not judged on the same prompts"):
        compare(dialogue[dialogue["run"] == "sft_seed1"], dialogue[dialogue["run"] == "dpo_bs8_seed1"])


def test_seeds_pool_and_conflicting_runs_refuse(tree, tmp_path):
    copy = shutil.copytree(tree, tmp_path / "r")
    add_run(copy, "dialogue", "sft", None, None, 8, 0.40, seed=2)
    add_run(copy, "dialogue", "ipo", None, None, 8, 0.60, seed=2)
    frame, data = (lambda t: (t.frame, t.data))(table1(collect_runs(copy), DEFAULTS))
    # pooled: the mean over seeds and prompts, the hierarchical interval (seeds, then prompts; the judge's
    # seed) over the seeds' per-prompt wins in prompt-id order, and the seeds' own range
    wins = {}
    for seed in (1, 2):
        for line in (copy / "dialogue" / "judgments" / f"ipo_bs8_seed{seed}.jsonl").read_text().splitlines():
            row = json.loads(line)
            wins.setdefault(seed, {})[row["id"]] = float(row["verdict"] == "model_win")
    prompts = sorted(wins[1])
    rate, low, high = hierarchical_interval([[wins[s][p] for p in prompts] for s in (1, 2)], seed=1)
    assert rate == (166 + 154) / 512
    expected = f"{100 * rate:.1f} [{100 * low:.1f}, {100 * high:.1f}] (2 seeds: 60.2-64.8)"
    assert row_of(frame, method="IPO")["dialogue"] == expected
    assert row_of(data, task="dialogue", method="ipo")["ci_low"] == low
    one_seed = summarize([{"verdict": "model_win" if wins[1][p] else "tie"} for p in prompts], seed=1)
    assert high - low > one_seed["ci_high"] - one_seed["ci_low"]  # the seeds' spread widens the interval
    assert set(frame["model"]) == {MODEL}  # seed 2's runs descend from sft_seed2, whose base is the same
    assert row_of(data, task="dialogue", method="ipo")["n_runs"] == 2
    add_run(copy, "dialogue", "kto", None, None, 8, 0.60, seed=2, beta=0.5)
    with pytest.raises(DataError, match=r"kto_bs8_seed1, kto_bs8_seed2 land in one table cell but differ in 'beta'"):
        table1(collect_runs(copy), DEFAULTS)
    (copy / "dialogue" / "judgments" / "ipo_bs8_seed2.jsonl").write_text('{"verdict": "tie"}\n')
    with pytest.raises(DataError, match=r"ipo_bs8_seed2\.jsonl: 1 verdicts with 0 wins, but its winrate.json says n=256"):
        table1(collect_runs(copy, expected_runs=["dialogue/ipo_bs8_seed1", "dialogue/ipo_bs8_seed2"]), DEFAULTS)


def test_without_defaults_runs_that_differ_are_not_pooled(runs):
    with pytest.raises(DataError, match=r"dpo_bs2_seed1, dpo_bs4_seed1, dpo_bs8_seed1 .* differ in 'batch_size'.*pass the defaults"):
        table1(runs)
