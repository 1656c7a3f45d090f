"""The beta sweep (rpo.sweep): its runs and their names, its place beside the default DAG (which it must
leave exactly as it was), and its table and figure on a fake results tree whose every number is known."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rpo.config import validate_config
from rpo.errors import ConfigError, DataError
from rpo.pipeline import Run, experiment_runs, train_settings
from rpo.report import collect_runs
from rpo.report.__main__ import main
from rpo.report.sweep import place_runs, sweep_table
from rpo.sweep import configured_beta, known_runs, main as sweep_main, sweep_runs
from report_tree import MINILM, add_run, assert_png, row_of

ROOT = Path(__file__).resolve().parent.parent


def embedded(**sweep):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if sweep:
        config["sweep"] = sweep
    return validate_config(config)


# -- the runs -------------------------------------------------------------------------------------
def test_sweep_runs_carry_their_beta_and_reuse_the_main_runs_at_the_configured_one():
    config = embedded()
    runs = sweep_runs(config)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == len(config["sweep"]["betas"]) * 3 * 3  # x (DPO, RPO, control) x seeds
    main = {r.name for r in experiment_runs(config)}
    at_default = [n for n in names if "_beta" not in n]
    assert sorted(at_default) == sorted(
        [f"dpo_bs8_seed{s}" for s in (1, 2, 3)] + [f"rpo-paired_tau0.5_minilm_bs8_seed{s}" for s in (1, 2, 3)]
        + [f"dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed{s}" for s in (1, 2, 3)])
    assert set(at_default) <= main  # the default run's own: the sweep does not train them again
    assert not {n for n in names if "_beta" in n} & main  # and the default target trains none of the others
    assert "rpo-paired_tau0.5_minilm_beta0.3_bs8_seed2" in names and "dpo_beta1_bs8_seed3" in names
    control = next(r for r in runs if r.name == "dpo_matched-rpo-paired_tau0.5_minilm_beta1_bs8_seed3")
    assert control.beta_of == "rpo-paired_tau0.5_minilm_beta1_bs8_seed3" and control.beta is None
    assert set(known_runs(config, "dialogue")) == main | set(names) - {n for n in main if "summ" in n}


def test_cli_lists_the_sweeps_run_names(capsys):
    """`python -m rpo.sweep` lists what `snakemake sweep` trains (rpo.pipeline lists the default target's)."""
    assert sweep_main(["--configfile", str(ROOT / "config.yaml")]) == 0
    assert capsys.readouterr().out.split() == [r.name for r in sweep_runs(embedded())]
    assert sweep_main(["--configfile", str(ROOT / "config.yaml"), "--task", "hh"]) == 1
    assert "--task: 'hh' is not in data.tasks" in capsys.readouterr().err


def test_the_trainer_gets_the_sweeps_beta_and_the_control_its_sources():
    config = embedded()
    by_name = {r.name: r for r in sweep_runs(config)}
    assert train_settings(config, by_name["rpo-paired_tau0.5_minilm_beta0.3_bs8_seed1"])["beta"] == 0.3
    assert train_settings(config, by_name["dpo_beta1_bs8_seed1"])["beta"] == 1.0
    # the control takes beta x mean w_ii from its source's run.json (rule input beta_matched_to), as the default one
    assert "beta" not in train_settings(config, by_name["dpo_matched-rpo-paired_tau0.5_minilm_beta1_bs8_seed1"])
    # otherwise the runs are the main runs' settings: only beta differs
    main, swept = (train_settings(config, by_name[n]) for n in ("dpo_bs8_seed2", "dpo_beta0.3_bs8_seed2"))
    assert {k for k in main if main[k] != swept[k]} == {"beta", "run"}  # run: each one's own identity (run.json)
    assert swept["run"] == by_name["dpo_beta0.3_bs8_seed2"].record() and swept["run"]["beta"] == 0.3


def test_a_methods_own_beta_decides_which_sweep_beta_is_its_main_run():
    config = embedded(betas=[0.1, 0.2], methods=["dpo"])
    config["losses"] = {"dpo": {"beta": 0.2}}
    assert configured_beta(config, "dpo") == 0.2
    assert [r.name for r in sweep_runs(config) if r.seed == 1] == ["dpo_beta0.1_bs8_seed1", "dpo_bs8_seed1"]


@pytest.mark.parametrize("sweep, message", [
    ({"betas": [0.3], "methods": ["ppo"]}, r"'sweep.methods': loss 'ppo' has no beta"),
    ({"betas": [0.3], "methods": ["cdpo"]}, r"'sweep.methods\[0\]': 'cdpo' is not in methods"),
])
def test_sweep_config_errors_name_the_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        sweep_runs(embedded(**sweep))
    with pytest.raises(ConfigError, match=r"config key 'sweep.betas\[0\]'"):
        embedded(betas=[0.0], methods=["dpo"])


# -- the DAG: `snakemake -n sweep`, and the default target untouched --------------------------------
def dry_run(tmp_path, config, target):
    path = tmp_path / f"{target}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--cores", "2", "--configfile", str(path), "--directory", str(tmp_path), target],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def jobs(plan: str) -> dict[str, str]:
    """output -> shell command of every job of a dry run's plan."""
    return dict(re.findall(r"\n\s+output: ([^\n]+)\n(?:.*\n)*?Shell command: ([^\n]+)", plan))


def trained(plan: str) -> list[str]:
    return sorted(re.findall(r"-m rpo\.train model=\S+ data=\S+ out=\S+/(\S+/models/[^/\s]+) ", plan))


def test_snakemake_sweep_plans_each_run_once_and_leaves_the_default_dag_as_it_was(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    without = {k: v for k, v in config.items() if k != "sweep"}
    sweep_plan, default_plan = dry_run(tmp_path, config, "sweep"), dry_run(tmp_path, config, "all")
    names = [r.name for r in sweep_runs(validate_config(dict(config)))]
    # each sweep run once per task, from the one SFT model of each task (from an empty results folder)
    assert trained(sweep_plan) == sorted([f"{t}/models/{n}" for t in ("dialogue", "summarization") for n in names]
                                         + ["dialogue/models/sft_seed1", "summarization/models/sft_seed1"])
    sweep_jobs, default_jobs = jobs(sweep_plan), jobs(default_plan)
    shared = set(sweep_jobs) & set(default_jobs)
    # the configured beta's runs are the default DAG's jobs, with the same commands, and only those
    assert {o for o in shared if "/models/" in o and "/sft_" not in o} == {
        f"results/small/{t}/models/{n}" for t in ("dialogue", "summarization") for n in names if "_beta" not in n}
    assert all(sweep_jobs[o] == default_jobs[o] for o in shared)
    assert not [o for o in default_jobs if "_beta" in o or "sweep" in o]
    # the default target's plan is the one it had without the sweep key: every job, every command
    assert jobs(dry_run(tmp_path, without, "all")) == default_jobs
    assert "rpo.report sweep" in sweep_plan and "sweep_report" not in default_plan


def test_the_sweep_target_without_runs_says_which_keys_to_set(tmp_path):
    config = {k: v for k, v in yaml.safe_load((ROOT / "config.yaml").read_text()).items() if k != "sweep"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                             "--configfile", str(path), "--directory", str(tmp_path), "sweep"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "set config keys sweep.betas and sweep.methods" in result.stdout + result.stderr


# -- the table and figure ---------------------------------------------------------------------------
BETAS = (0.1, 0.3, 1.0)
SEEDS = (1, 2)
N = 256
ROLES = ("rpo-paired", "control", "dpo")


def rate(role, b, seed):
    return {"rpo-paired": 0.70, "control": 0.66, "dpo": 0.62}[role] + 0.04 * b + 0.01 * seed


def saturated(role, b, seed):  # of 8 end-of-training loss logits
    return (ROLES.index(role) + 2 * b + seed) % 9


def end_loss(role, b, seed):
    return 0.69 - 0.1 * b - 0.01 * ROLES.index(role) - 0.001 * seed


def write_logits(root, task, run, n_saturated, loss):
    """metrics.jsonl with 10 steps; the last (the end of training) holds 8 loss logits, n_saturated past 1."""
    rows = [{"step": s, "loss": 0.69, "logits/n": 8, "logits/n_saturated": 8} for s in range(1, 10)]
    rows.append({"step": 10, "loss": loss, "logits/n": 8, "logits/n_saturated": n_saturated,
                 **{f"logits/hist{i}": (8 if i == 16 else 0) for i in range(32)}})
    (root / task / "models" / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Per task: SFT (where every run starts), and at each beta and seed RPO-Paired, its control and DPO."""
    root = tmp_path_factory.mktemp("sweep")
    for task in ("dialogue", "summarization"):
        add_run(root, task, "sft", None, None, 8, 0.4, n=N)
        for b, beta in enumerate(BETAS):
            own = None if beta == 0.1 else beta
            for seed in SEEDS:
                source = Run("rpo-paired", seed, 8, 0.5, MINILM, beta=own)
                runs = {"rpo-paired": add_run(root, task, "rpo-paired", 0.5, MINILM, 8, rate("rpo-paired", b, seed),
                                              seed=seed, beta=beta, sweep_beta=own, n=N),
                        "control": add_run(root, task, "dpo", None, None, 8, rate("control", b, seed), seed=seed,
                                           beta=0.3 * beta + 0.001 * seed, beta_of=source.name, n=N),
                        "dpo": add_run(root, task, "dpo", None, None, 8, rate("dpo", b, seed), seed=seed, beta=beta,
                                       sweep_beta=own, n=N)}
                assert runs["rpo-paired"] == source.name and runs["dpo"] == Run("dpo", seed, 8, beta=own).name
                for role, run in runs.items():
                    write_logits(root, task, run, saturated(role, b, seed), end_loss(role, b, seed))
    return root


def swept(root):
    """The sweep's runs of the tree (as the rule reads them: --expected-runs, without SFT)."""
    names = sorted({p.name for p in root.glob("*/models/*") if not p.name.startswith("sft_")})
    return collect_runs(root, expected_runs=names)


def test_sweep_table_numbers_equal_the_inputs(tree):
    table = sweep_table(swept(tree))
    data, frame = table.data, table.frame
    assert len(frame) == 2 * len(BETAS) and len(data) == 2 * len(BETAS) * 3
    for b, beta in enumerate(BETAS):
        for role in ROLES:
            item = row_of(data, task="dialogue", beta=beta, method=role)
            wins = [round(rate(role, b, s) * N) for s in SEEDS]
            assert item["win_rate"] == pytest.approx(sum(wins) / (N * len(SEEDS)))
            assert item["saturated"] == pytest.approx(sum(saturated(role, b, s) for s in SEEDS) / (8 * len(SEEDS)))
            assert item["loss_end"] == pytest.approx(np.mean([end_loss(role, b, s) for s in SEEDS]))
            assert item["n_runs"] == 2
        control = row_of(data, task="summarization", beta=beta, method="control")
        assert control["beta_trained"] == pytest.approx(0.3 * beta + 0.0015)  # its seeds' mean beta_eff
        source = row_of(data, task="dialogue", beta=beta, method="rpo-paired")
        for name, role in (("control", "control"), ("DPO", "dpo")):
            diff = sum(round(rate("rpo-paired", b, s) * N) - round(rate(role, b, s) * N) for s in SEEDS) / (N * len(SEEDS))
            assert source[f"vs {name}: diff"] == pytest.approx(diff)
            assert source[f"vs {name}: diff_low"] <= diff <= source[f"vs {name}: diff_high"]
            assert source[f"vs {name}: n_seeds"] == 2
        line = row_of(frame, task="dialogue", beta=f"{beta:g}")
        assert line["RPO-Paired - control"].startswith(f"{100 * source['vs control: diff']:+.1f} [")
        shares = " / ".join(f"{100 * sum(saturated(r, b, s) for s in SEEDS) / 16:.1f}" for r in ROLES)
        assert line["|x| > 1 (%): RPO-Paired / matched-beta control / DPO"] == shares


def test_controls_sit_at_their_sources_beta_and_need_them(tree):
    runs = swept(tree)
    placed = place_runs(runs)
    control = placed[placed["run"] == "dpo_matched-rpo-paired_tau0.5_minilm_beta0.3_bs8_seed1"].iloc[0]
    assert control["role"] == "control" and control["sweep_beta"] == 0.3 and math.isclose(control["beta"], 0.091)
    alone = runs[runs["run"] != "rpo-paired_tau0.5_minilm_beta0.3_bs8_seed1"]
    with pytest.raises(DataError, match="without their source run: dialogue/dpo_matched-rpo-paired_tau0.5_minilm_beta0.3"):
        place_runs(alone)
    with pytest.raises(DataError, match="neither rpo-paired, DPO nor a matched-beta control"):
        place_runs(runs.assign(method=runs["method"].replace("dpo", "ipo")))
    one_beta = runs[~runs["run"].str.contains("dpo_beta1_")]
    with pytest.raises(DataError, match="at beta 1 has no DPO run"):
        sweep_table(one_beta)


def test_cli_writes_the_sweep_table_and_figure(tree, tmp_path, capsys):
    table, figure = tmp_path / "tables" / "sweep", tmp_path / "figures" / "sweep"
    names = sorted({p.name for p in tree.glob("*/models/*") if not p.name.startswith("sft_")})
    assert main(["sweep", "--results", str(tree), "--out", str(table), "--figure", str(figure),
                 "--expected-runs", *names]) == 0
    for suffix in (".md", ".csv", ".tex", ".data.csv"):
        assert (table.parent / f"sweep{suffix}").stat().st_size > 0
    assert_png(figure.parent / "sweep.png")
    assert "RPO-Paired - DPO" in (table.parent / "sweep.md").read_text()
    assert main(["sweep", "--results", str(tree), "--out", str(table), "--figure", str(figure),
                 "--expected-runs", "dialogue/dpo_beta3_bs8_seed1"]) == 1
    assert "dpo_beta3_bs8_seed1 is missing" in capsys.readouterr().err
