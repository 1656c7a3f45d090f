"""The Snakemake workflow: config validation at start-up, lint, the paper's experiment matrix, and
the whole DAG end to end on tiny sizes (every table and figure, sane values, a rerun does nothing)."""
import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
# PATH as a user's shell has it (no activated venv): the workflow must find its own interpreter.
ENV = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                             if Path(p) != Path(sys.executable).parent),
       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

SMOKE = {
    "results_dir": "results",
    "seeds": [1, 2],
    "seeded_methods": ["dpo"],  # DPO pooled over 2 seeds; RPO-paired (1 seed) pairs with its seed 1
    "threads": 1,
    "fork_server": True,  # the embedded default's launcher, end to end (rpo.launch)
    "mem_mb": 2000,
    "gpus": 0,
    "data": {"source": "world", "tasks": ["dialogue", "summarization"],
             "world": {"seed": 3, "dialogue_clusters": 4, "dialogue_train_pairs": 48, "dialogue_test_pairs": 12,
                       "summarization_clusters": 4, "summarization_train_pairs": 48,
                       "summarization_test_pairs": 12, "instruction_prompts": 6}},
    "models": {"tiny": {"kind": "small", "arch": "llama", "n_layers": 1, "d_model": 32, "n_heads": 2,
                        "vocab_size": 600, "max_position": 192}},
    "training": {"max_length": 160, "max_prompt_length": 112, "reference_batch_size": 32},
    "sft": {"lr": 0.003, "optimizer": "adamw", "batch_size": 8, "epochs": 1, "warmup_steps": 1},
    "preference": {"lr": 0.001, "optimizer": "adamw", "beta": 0.1, "batch_size": 8, "epochs": 1,
                   "warmup_steps": 1},
    "methods": ["dpo", "ipo", "kto", "rpo-paired", "rpo-unpaired", "rpo-diagonal", "rpo-uniform"],
    "rpo": {"taus": [0.5], "embedders": ["tfidf-svd"], "default_tau": 0.5, "default_embedder": "tfidf-svd",
            "control_embedder": "random", "matched_beta_control": True},
    "ablation_tasks": ["dialogue"],
    "batch_size_ablation": {"methods": ["dpo"], "batch_sizes": [4]},
    "generation": {"n_prompts": 12, "max_new_tokens": 8, "batch_size": 12,
                   "temperature": 1.0},  # a small model's generation config sets none
    "judge": {"backend": "local-oracle", "concurrency": 4},
    "alpacaeval": {"runs": ["sft", "dpo"], "n_prompts": 6},
}


def snakemake(workdir, *args, timeout=1800):
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], cwd=workdir, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path, config):
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(learning_rate=1), "config key 'learning_rate': unknown key"),
    (lambda c: c["rpo"].update(taus=[0.5, 0]), "config key 'rpo.taus[1]'"),
    (lambda c: c["methods"].append("orpo"), "config key 'methods[7]'"),
    (lambda c: c["preference"].update(batch_size="eight"), "config key 'preference.batch_size'"),
    (lambda c: c["data"]["world"].update(label_nois=0.1), "data.world"),
])
def test_bad_config_stops_at_start_naming_the_key(tmp_path, edit, message):
    config = copy.deepcopy(SMOKE)
    edit(config)
    result = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)), timeout=120)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_lint_is_clean():
    result = snakemake(ROOT, "--lint", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_paper_profile_lists_the_papers_experiment_matrix(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "workflow/paper.yaml"), timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # 3 models x (HH: 6 plain methods (PPO included) + RPO-paired's 3 taus x 3 embedders + RPO-unpaired
    #                 at its default + random for both + 2 methods x 3 more batch sizes + 2 methods x 1
    #                 global-scope size; TL;DR: the 6 preference methods of Table 1 at their defaults;
    #                 both: the matched-beta DPO control of RPO-paired)
    assert _job_line(out, "preference").split()[-1] == str(3 * ((6 + 9 + 1 + 2 + 6 + 2 + 1) + 6 + 1))
    assert "dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed1" in out
    for needle in ("mistral-7b", "llama2-13b", "rpo-paired_tau0.75_t5large_bs8_seed1",
                   "rpo-unpaired_tau0.5_minilm_bs8_seed1", "dpo_bs16_seed1",
                   "rpo-paired_tau0.5_minilm_bs64_global_seed1"):
        assert needle in out
    assert "rpo-unpaired_tau0.25_distilroberta_bs8_seed1" not in out  # no run that no table shows


def test_packing_switch_reaches_training_and_the_reference_cache(tmp_path):
    """training.packing: false gives the padded layout to rpo.train and rpo.refcache alike."""
    commands = {}
    for packing in (True, False):
        config = copy.deepcopy(SMOKE)
        config["training"]["packing"] = packing
        path = write_config(tmp_path / f"packing-{packing}.yaml", config)
        result = snakemake(tmp_path, "-n", "-p", "--configfile", str(path), timeout=120)
        assert result.returncode == 0, result.stderr
        commands[packing] = [line for line in result.stdout.splitlines() if "-m rpo.refcache" in line
                             or "-m rpo.train" in line]
    assert commands[True] and all("--no-packing" not in c and "packing=false" not in c for c in commands[True])
    refcache = [c for c in commands[False] if "rpo.refcache" in c]
    train = [c for c in commands[False] if "rpo.train" in c]
    assert refcache and all("--no-packing" in c for c in refcache)
    assert train and all("packing=false" in c for c in train)


def _job_line(out, job):
    return next((line for line in out.splitlines() if line.strip().startswith(job + " ")), "")


@pytest.mark.slow
def test_whole_dag_end_to_end_on_tiny_sizes(tmp_path):
    config = write_config(tmp_path / "smoke.yaml", SMOKE)
    result = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-4000:]
    results = tmp_path / "results"

    table1 = list(csv.DictReader(open(results / "tables/tiny/table1.data.csv")))
    assert {row["method"] for row in table1} >= {"sft", "dpo", "ipo", "kto", "rpo-paired", "rpo-unpaired"}
    for row in table1:
        assert 0.0 <= float(row["win_rate"]) <= 1.0 and float(row["ci_low"]) <= float(row["ci_high"])
    for table in ("table1", "table2", "table3", "table4", "weighting", "regime"):
        for ext in ("md", "csv", "tex"):
            assert (results / f"tables/tiny/{table}.{ext}").stat().st_size > 100, (table, ext)
    assert "n/a" in (results / "tables/tiny/table1.md").read_text()
    assert "(2 seeds: " in (results / "tables/tiny/table1.md").read_text()  # DPO's cell pools its seeds
    for figure in ("table1", "table2", "tau", "table4", "weighting", "vs_dpo", "regime"):
        assert (results / f"figures/tiny/{figure}.png").stat().st_size > 10_000
    weighting = list(csv.DictReader(open(results / "tables/tiny/weighting.data.csv")))
    control = next(row for row in weighting if row["method"] == "dpo-matched" and row["task"] == "dialogue")
    assert control["runs"] == "dpo_matched-rpo-paired_tau0.5_tfidf_bs8_seed1"
    source = json.loads((results / "tiny/dialogue/models/rpo-paired_tau0.5_tfidf_bs8_seed1/run.json").read_text())
    matched = json.loads((results / "tiny/dialogue/models" / control["runs"] / "run.json").read_text())
    assert matched["beta"] == pytest.approx(0.1 * source["contrast_weights"]["mean_diagonal"], rel=1e-12)
    regime = list(csv.DictReader(open(results / "tables/tiny/regime.data.csv")))
    assert all(0 <= float(row["identical_sft"]) <= 1 for row in regime if row["method"] != "sft")
    assert {float(row["log_ratio"]) for row in regime if row["method"] == "sft"} == {0.0}  # the reference
    # dialogue runs the ablations (11 runs + DPO's seed 2 + the control), summarization Table 1's methods (6
    # runs + DPO's seed 2 + the control)
    assert len(list((results / "figures/tiny/curves/dialogue").rglob("*.png"))) == 13
    assert len(list((results / "figures/tiny/curves/summarization").rglob("*.png"))) == 8
    weights = json.loads((results / "figures/weights_dialogue.json").read_text())
    assert all(abs(sum(row) - 1) < 1e-6 for row in weights["weights"])
    alpaca = json.loads((results / "tiny/instructions/alpacaeval/dpo_bs8_seed1.json").read_text())
    assert alpaca["n"] == 6 and 0 <= alpaca["win_rate"] <= 1
    assert all((results / "logs").rglob("*.log"))

    rerun = snakemake(tmp_path, "-n", "--configfile", str(config), timeout=120)
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr

    report = snakemake(tmp_path, "--report", "results/report.html", "--configfile", str(config), timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (results / "report.html").read_text(errors="replace")
    for name in ("table1.md", "table4.md", "weighting.png", "tau.png", "weights_heatmap_dialogue.png"):
        assert name in html, name

    # A new tau adds only its own runs (and re-reads the tables): nothing already trained reruns.
    changed = copy.deepcopy(SMOKE)
    changed["rpo"]["taus"] = [0.5, 2.0]
    plan = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "tau.yaml", changed)), timeout=120)
    trained = [line.split("models/")[1] for line in plan.stdout.splitlines()
               if line.strip().startswith("output:") and "/models/" in line]
    assert trained == ["rpo-paired_tau2_tfidf_bs8_seed1"]  # the tau grid is Table 3's: RPO-paired only
