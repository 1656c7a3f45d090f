"""Seeds, the matched-beta control and the regime diagnostics in the report, on test_report's fake
results tree (whose samples, log-probs and loss-logit counts are set so every number is known)."""
import json
import shutil

import numpy as np
import pytest

from rpo.diagnostics import HIST_EDGES
from rpo.errors import DataError
from rpo.report import collect_runs
from rpo.report.__main__ import main
from rpo.report.regime import histogram_quantiles, regime
from rpo.report.tables import weighting
from report_tree import DEFAULTS, MINILM, add_run, assert_png, build_tree, row_of

SOURCE = "rpo-paired_tau0.5_minilm_bs8_seed{}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The fake tree plus seed 2 of DPO and RPO-Paired, PPO, and a matched-beta control for each seed."""
    root = build_tree(tmp_path_factory.mktemp("seeded"))
    for task, shift in (("dialogue", 0.0), ("summarization", 0.2)):
        add_run(root, task, "dpo", None, None, 8, 0.66 - shift, seed=2)
        add_run(root, task, "rpo-paired", 0.5, MINILM, 8, 0.70 - shift, seed=2)
        add_run(root, task, "ppo", None, None, 8, 0.45 - shift)
        for seed, rate, beta in ((1, 0.72, 0.0412), (2, 0.71, 0.0409)):
            add_run(root, task, "dpo", None, None, 8, rate - shift, seed=seed, beta=beta, beta_of=SOURCE.format(seed))
    return root


def test_matched_control_is_its_own_row_and_column(seeded):
    table = weighting(collect_runs(seeded), DEFAULTS)
    frame, data = table.frame, table.data
    label = "DPO at RPO-Paired's beta_eff (matched-beta control)"
    control = row_of(data, task="dialogue", method="dpo-matched")
    assert control["n_runs"] == 2 and control["win_rate"] == (round(0.72 * 256) + round(0.71 * 256)) / 512
    # DPO's own row pools its two seeds and not the controls, though they are DPO runs too
    dpo = row_of(data, task="dialogue", method="dpo")
    assert dpo["runs"] == "dpo_bs8_seed1, dpo_bs8_seed2"
    assert row_of(frame, method=label)["dialogue"].endswith("(2 seeds: 71.1-71.9)")
    # RPO-Paired against the control: both seeds paired, verdicts known exactly (wins are the first prompts)
    rpo = row_of(data, task="dialogue", method="rpo-paired")
    assert rpo["vs matched-beta DPO: n_seeds"] == 2
    assert rpo["vs matched-beta DPO: diff"] == pytest.approx(
        (round(0.785 * 256) + round(0.70 * 256) - round(0.72 * 256) - round(0.71 * 256)) / 512)
    assert "dialogue: vs matched-beta DPO" in frame
    assert any("beta_eff by task and seed: dialogue 0.0412, 0.0409" in note for note in table.notes)
    # one-seed rows pair with the seed they share
    uniform = row_of(data, task="dialogue", method="rpo-uniform")
    assert uniform["vs DPO: n_seeds"] == 1


def test_seeds_that_differ_in_beta_pool_only_as_matched_controls(seeded, tmp_path):
    copy = shutil.copytree(seeded, tmp_path / "r")
    add_run(copy, "dialogue", "dpo", None, None, 8, 0.66, seed=3, beta=0.05)
    with pytest.raises(DataError, match="differ in 'beta'"):
        weighting(collect_runs(copy), DEFAULTS)


def test_histogram_quantiles_interpolate_within_bins():
    counts = np.zeros(len(HIST_EDGES) - 1)
    counts[16] = 8  # every value in [0, 0.25)
    assert histogram_quantiles(counts, (0.0, 0.5, 1.0)) == [0.0, 0.125, 0.25]
    counts[0] = 8  # and as many below -3.75
    assert histogram_quantiles(counts, (0.5,)) == [pytest.approx(-3.75)]


def test_regime_table_numbers_equal_the_inputs(seeded):
    table = regime(collect_runs(seeded), DEFAULTS)
    data = table.data
    sft = row_of(data, task="dialogue", method="sft")  # the reference row
    assert sft["log_ratio"] == 0.0 and np.isnan(sft["identical_sft"]) and sft["identical_dpo"] == 0.75
    assert np.isnan(sft["saturated"]) and sft["runs"] == "sft_seed1"
    rpo = row_of(data, task="dialogue", method="rpo-paired")
    assert rpo["n_seeds"] == 2 and rpo["saturated"] == 0.25
    assert rpo["logit_q50"] == pytest.approx(0.125)
    # chosen_logp is SFT's + 10 * (win rate - 0.4): the mean over seeds of 10 * (rate - 0.4)
    assert rpo["log_ratio"] == pytest.approx(np.mean([10 * (0.785 - 0.4), 10 * (0.70 - 0.4)]))
    assert (rpo["log_ratio_low"], rpo["log_ratio_high"]) == pytest.approx((3.0, 3.85))
    assert rpo["identical_dpo"] == 0.75 and rpo["identical_sft"] == 0.75
    dpo = row_of(data, task="dialogue", method="dpo", label="DPO")
    assert np.isnan(dpo["identical_dpo"])
    assert row_of(table.frame, task="dialogue", method="DPO")["identical to DPO (%)"] == "-"
    control = row_of(data, task="dialogue", label="DPO at RPO-Paired's beta_eff")
    assert control["n_seeds"] == 2
    assert np.isnan(row_of(data, task="dialogue", method="ppo")["saturated"])  # PPO has no loss logits


def test_regime_refuses_samples_without_log_probs(seeded, tmp_path):
    copy = shutil.copytree(seeded, tmp_path / "r")
    path = copy / "dialogue" / "samples" / "kto_bs8_seed1.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "chosen_logp"}) + "\n"
                            for line in path.read_text().splitlines()))
    with pytest.raises(DataError, match=r"kto_bs8_seed1\.jsonl: no chosen_logp .*--score-chosen"):
        regime(collect_runs(copy), DEFAULTS)


def test_cli_writes_the_regime_table_and_figure(seeded, tmp_path):
    assert main(["table", "regime", "--results", str(seeded), "--out", str(tmp_path / "regime"),
                 "--default-tau", "0.5", "--default-embedder", MINILM, "--main-batch-size", "8"]) == 0
    assert "log-ratio, test chosen (nats)" in (tmp_path / "regime.md").read_text()
    assert main(["figure", "regime", "--results", str(seeded), "--out", str(tmp_path / "fig"),
                 "--default-tau", "0.5", "--default-embedder", MINILM, "--main-batch-size", "8"]) == 0
    assert_png(tmp_path / "fig.png")
