import json
from pathlib import Path

import pytest
import yaml

from rpo.config import validate_config
from rpo.errors import ConfigError
from rpo.pipeline import (TABLE_RUNS, TABLES, Defaults, Run, alpacaeval_runs, as_overrides, embedder_short, experiment_runs,
                          lookup_run, main, runs_by_name, shown_figures, table_inputs, table_runs,
                          train_settings)

ROOT = Path(__file__).resolve().parent.parent
MINILM = "all-MiniLM-L6-v2"
CONFIG = {
    "seeds": [1],
    "methods": ["dpo", "ipo", "kto", "rpo-paired", "rpo-unpaired", "rpo-diagonal", "rpo-uniform"],
    "preference": {"batch_size": 8},
    "rpo": {"taus": [0.25, 0.5], "embedders": ["all-MiniLM-L6-v2", "tfidf-svd"], "default_tau": 0.5,
            "default_embedder": "all-MiniLM-L6-v2", "control_embedder": "random"},
    "batch_size_ablation": {"methods": ["dpo", "rpo-paired"], "batch_sizes": [2, 8, 16]},
}


def profile(name):
    return validate_config(yaml.safe_load((ROOT / name).read_text()))


def test_names_say_what_a_run_is():
    assert Run("rpo-paired", 1, 8, 0.5, "all-MiniLM-L6-v2").name == "rpo-paired_tau0.5_minilm_bs8_seed1"
    assert Run("rpo-paired", 1, 32, 0.5, "all-MiniLM-L6-v2", "global").name == "rpo-paired_tau0.5_minilm_bs32_global_seed1"
    assert Run("dpo", 1, 8).name == "dpo_bs8_seed1"
    assert Run("sft", 1).name == "sft_seed1"


def test_one_short_name_per_embedder():
    assert embedder_short("all-MiniLM-L6-v2") == embedder_short("sentence-transformers/all-MiniLM-L6-v2") == "minilm"
    assert embedder_short("sentence-transformers/sentence-t5-large") == "t5large"
    assert embedder_short("org/some_model") == "org--some-model"
    assert all(embedder_short(embedder_short(n)) == embedder_short(n) for n in ("random", "org/x_y", "tfidf-svd"))


def test_runs_are_looked_up_by_name_never_parsed():
    runs = runs_by_name(CONFIG)
    run = Run("rpo-paired", 1, 8, 0.25, "tfidf-svd")
    assert lookup_run(runs, run.name, "dialogue") is runs[run.name] and runs[run.name] == run
    with pytest.raises(ConfigError) as err:
        lookup_run(runs, "dpo_bs3_seed1", "dialogue")  # a well-formed name the matrix does not have
    assert "not in the experiment matrix of task 'dialogue'" in str(err.value)
    assert "Did you mean " in str(err.value) and "dpo_bs2_seed1" in str(err.value)
    assert "python -m rpo.pipeline --configfile <profile> --task dialogue" in str(err.value)


def test_a_runs_record_is_read_back_as_the_same_run_or_refused():
    """run.json's `run` (Run.record, passed by the rule): the report reads the run itself, never rebuilds it."""
    runs = [Run("sft", 2), Run("dpo", 1, 8), Run("rpo-paired", 1, 32, 0.5, "random", "global"),
            Run("rpo-paired", 3, 8, 0.5, MINILM, beta=0.3), Run("dpo", 1, 8, beta_of="rpo-paired_tau0.5_minilm_bs8_seed1")]
    for run in runs:
        record = json.loads(json.dumps(run.record()))  # as run.json holds it
        assert record["name"] == run.name and Run.from_record(record) == run
    assert Run("dpo", 1, 8).record() == {"name": "dpo_bs8_seed1", "method": "dpo", "seed": 1, "batch_size": 8,
                                         "scope": "micro"}
    record = Run("dpo", 1, 8).record()
    with pytest.raises(ConfigError, match="run record names 'dpo_bs8_seed1' but its settings make 'dpo_bs4_seed1'"):
        Run.from_record({**record, "batch_size": 4})
    with pytest.raises(ConfigError, match="not a run record"):
        Run.from_record({**record, "lr": 1e-6})
    with pytest.raises(ConfigError, match="not a run record"):
        Run.from_record("dpo_bs8_seed1")
    with pytest.raises(ConfigError, match="run record .*tau"):
        Run.from_record({"name": "rpo-paired_tau0.5_minilm_bs8_seed1", "method": "rpo-paired", "seed": 1})


def test_a_sweeps_own_beta_is_no_tables_run():
    defaults = Defaults(8, 0.5, MINILM)
    swept, main = Run("dpo", 1, 8, beta=0.3), Run("dpo", 1, 8)
    assert defaults.matches(main) and not any(defaults.matches(swept, vary) for _, vary in TABLE_RUNS.values())


def test_cli_lists_run_names(capsys):
    assert main(["--configfile", str(ROOT / "config.yaml"), "--task", "summarization"]) == 0
    assert capsys.readouterr().out.split() == [r.name for r in experiment_runs(profile("config.yaml"), "summarization")]
    assert main(["--configfile", str(ROOT / "config.yaml"), "--task", "hh"]) == 1


def test_experiment_matrix():
    names = [r.name for r in experiment_runs(CONFIG)]
    assert len(names) == len(set(names))
    assert "sft_seed1" in names and "kto_bs8_seed1" in names
    for tau in ("0.25", "0.5"):
        for emb in ("minilm", "tfidf"):
            assert f"rpo-paired_tau{tau}_{emb}_bs8_seed1" in names
    # the tau x embedder grid is Table 3's, which shows RPO-paired only: RPO-unpaired at its default
    assert [n for n in names if n.startswith("rpo-unpaired") and "random" not in n] == \
           ["rpo-unpaired_tau0.5_minilm_bs8_seed1"]
    for method in ("rpo-paired", "rpo-unpaired"):
        assert f"{method}_tau0.5_random_bs8_seed1" in names
    assert {"dpo_bs2_seed1", "dpo_bs16_seed1", "rpo-paired_tau0.5_minilm_bs2_seed1"} <= set(names)
    # 1 sft + 5 plain methods + 4 grid + 1 default + 2 controls + ablation (2 sizes new for each of 2 methods)
    assert len(names) == 1 + 5 + 4 + 1 + 2 + 4


def test_control_methods_choose_which_methods_get_the_random_embedding_control():
    def controls(config):
        return sorted(r.method for r in experiment_runs(config) if r.embedder == "random")
    assert controls(CONFIG) == ["rpo-paired", "rpo-unpaired"]  # default: every embedding-weighted method
    assert controls({**CONFIG, "rpo": {**CONFIG["rpo"], "control_methods": ["rpo-paired"]}}) == ["rpo-paired"]
    assert controls({**CONFIG, "rpo": {**CONFIG["rpo"], "control_methods": []}}) == []


def test_ablations_run_only_on_the_ablation_tasks():
    config = {**CONFIG, "data": {"tasks": ["dialogue", "summarization"]}, "ablation_tasks": ["dialogue"]}
    dialogue = [r.name for r in experiment_runs(config, "dialogue")]
    summarization = [r.name for r in experiment_runs(config, "summarization")]
    assert dialogue == [r.name for r in experiment_runs(CONFIG)]  # the full matrix
    # Table 1 only: SFT and every method at its defaults, without the weighting variants
    assert summarization == ["sft_seed1", "dpo_bs8_seed1", "ipo_bs8_seed1", "kto_bs8_seed1",
                             "rpo-paired_tau0.5_minilm_bs8_seed1", "rpo-unpaired_tau0.5_minilm_bs8_seed1"]
    assert [r.name for r in experiment_runs(config)] == dialogue  # the union
    everywhere = {**config, "ablation_tasks": None}
    assert [r.name for r in experiment_runs(everywhere, "summarization")] == dialogue


def test_defaults_pick_each_tables_runs():
    config = {**CONFIG, "data": {"tasks": ["dialogue"]}}
    names = {table: [r.name for _, r in table_runs(config, table)] for table in ("table1", "table3", "table4", "weighting")}
    assert names["table1"] == ["sft_seed1", "dpo_bs8_seed1", "ipo_bs8_seed1", "kto_bs8_seed1",
                               "rpo-paired_tau0.5_minilm_bs8_seed1", "rpo-unpaired_tau0.5_minilm_bs8_seed1"]
    assert set(names["table3"]) == {f"rpo-paired_tau{t}_{e}_bs8_seed1" for t in ("0.25", "0.5") for e in ("minilm", "tfidf")} | {
        "rpo-paired_tau0.5_random_bs8_seed1"}
    assert set(names["table4"]) == {"dpo_bs2_seed1", "dpo_bs8_seed1", "dpo_bs16_seed1", "rpo-unpaired_tau0.5_minilm_bs8_seed1",
                                    *(f"rpo-paired_tau0.5_minilm_bs{b}_seed1" for b in (2, 8, 16))}
    assert set(names["weighting"]) == {"dpo_bs8_seed1", "rpo-uniform_bs8_seed1", "rpo-diagonal_bs8_seed1",
                                       *(f"{m}_tau0.5_{e}_bs8_seed1" for m in ("rpo-paired", "rpo-unpaired")
                                         for e in ("minilm", "random"))}
    # Table 3 also reads DPO at the defaults, the baseline of its 'vs DPO' columns; the others show it already
    inputs = [r.name for _, r in table_inputs(config, "table3")]
    assert set(inputs) == set(names["table3"]) | {"dpo_bs8_seed1"} and len(inputs) == len(set(inputs))
    assert [r.name for _, r in table_inputs(config, "table1")] == names["table1"]
    defaults = Defaults.from_config(config)
    assert defaults.cli_args() == ("--main-batch-size 8 --default-tau 0.5 --default-embedder all-MiniLM-L6-v2 "
                                   "--control-embedder random")
    assert not defaults.matches(Run("rpo-paired", 1, 8, 0.5, "all-MiniLM-L6-v2", "global"))
    assert Defaults().matches(Run("rpo-paired", 1, 2, 0.25, "x"))  # no defaults: every run


def test_vs_dpo_figure_only_with_a_dpo_run():
    assert "vs_dpo" in shown_figures(profile("config.yaml"))
    without = {**profile("config.yaml"), "methods": ["rpo-paired"]}
    assert "vs_dpo" not in shown_figures(without) and "table1" in shown_figures(without)


@pytest.mark.parametrize("name", ["config.yaml", "workflow/paper.yaml"])
def test_every_table_of_a_profile_has_runs(name):
    config = profile(name)
    assert all(table_runs(config, table) for table in TABLES)
    assert [r.name for r in alpacaeval_runs(config)] == ["sft_seed1", "dpo_bs8_seed1", "rpo-paired_tau0.5_minilm_bs8_seed1"]


def test_a_run_gets_only_its_own_losses_hyperparameters():
    config = profile("config.yaml")
    runs = runs_by_name(config, "dialogue")
    dpo = train_settings(config, runs["dpo_bs8_seed1"])
    assert dpo["beta"] == 0.1 and "diagonal_weight" not in dpo and "tau" not in dpo
    # threads: the job's own, which the rule passes (a job of N ranks books N x config threads)
    assert "reference_batch_size" not in dpo and dpo["max_length"] == 160 and "threads" not in dpo
    assert "reference_chunk_records" not in dpo and "device" not in dpo  # device null: the trainer's auto
    assert train_settings(config, runs["rpo-diagonal_bs8_seed1"])["diagonal_weight"] == 0.8
    paired = train_settings(config, runs["rpo-paired_tau0.25_minilm_bs8_seed1"])
    assert (paired["tau"], paired["embedder"], "diagonal_weight" in paired) == (0.25, "all-MiniLM-L6-v2", False)
    sft = train_settings(config, runs["sft_seed1"])
    assert sft["lr"] == 0.002 and not {"beta", "tau", "diagonal_weight", "contrast_scope"} & set(sft)
    wide = train_settings(config, runs["rpo-paired_tau0.5_minilm_bs32_global_seed1"])
    assert (wide["batch_size"], wide["gradient_accumulation_steps"], wide["contrast_scope"]) == (8, 4, "global")
    assert as_overrides({"method": "dpo", "lr": 5e-05}) == "'method=\"dpo\"' lr=5e-05"


def test_a_global_runs_batch_is_the_global_batch_on_any_number_of_gpus():
    """bs64_global is the paper's 64 pairs in one contrast matrix: 8 GPUs x 8 x accumulation 1, one GPU
    x 8 x 8. Accumulation that ignored the ranks made it 512 pairs on 8 GPUs."""
    config = profile("workflow/paper.yaml")
    run = runs_by_name(config, "dialogue")["rpo-paired_tau0.5_minilm_bs64_global_seed1"]
    batch = lambda gpus: train_settings({**config, "gpus": gpus}, run)
    for gpus, accumulation in ((8, 1), (2, 4), (1, 8), (0, 8)):
        settings = batch(gpus)
        assert (settings["batch_size"], settings["gradient_accumulation_steps"]) == (8, accumulation), gpus
        assert settings["batch_size"] * settings["gradient_accumulation_steps"] * max(gpus, 1) == 64
    with pytest.raises(ConfigError, match=r"global batch 64 is not a multiple of the micro-batch 8 .* x 3 "
                                          r"training rank\(s\) \(gpus\)"):
        batch(3)


def test_the_trainer_accepts_what_the_pipeline_passes(tmp_path):
    from rpo.train_config import resolve_config

    for name in ("config.yaml", "workflow/paper.yaml"):
        config = profile(name)
        for run in experiment_runs(config):
            paths = {"model": "m", "data": "d", "out": str(tmp_path / run.name), "reference_cache": "r",
                     "embeddings": "e"}
            resolve_config({**paths, **train_settings(config, run)})


def test_seeds_repeat_the_seeded_methods_main_runs_from_one_sft_model():
    config = {**CONFIG, "seeds": [1, 2, 3], "seeded_methods": ["dpo", "rpo-paired"]}
    names = [r.name for r in experiment_runs(config)]
    assert [n for n in names if n.startswith("sft")] == ["sft_seed1"]  # SFT trains once, at the first seed
    extra = sorted(n for n in names if not n.endswith("_seed1"))
    assert extra == ["dpo_bs8_seed2", "dpo_bs8_seed3", "rpo-paired_tau0.5_minilm_bs8_seed2",
                     "rpo-paired_tau0.5_minilm_bs8_seed3"]  # main runs only: no grid, control or batch size
    assert len(names) == len(experiment_runs(CONFIG)) + 4
    every = [r.name for r in experiment_runs({**config, "seeded_methods": None}) if r.seed == 2]
    assert len(every) == 7 and "kto_bs8_seed2" in every  # default: every method's main run


def test_the_matched_beta_control_runs_beside_each_rpo_paired_main_run():
    config = {**CONFIG, "seeds": [1, 2], "seeded_methods": ["dpo", "rpo-paired"],
              "rpo": {**CONFIG["rpo"], "matched_beta_control": True}}
    controls = [r for r in experiment_runs(config) if r.beta_of]
    assert [r.name for r in controls] == ["dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed1",
                                          "dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed2"]
    control = controls[0]
    assert (control.method, control.seed, control.batch_size) == ("dpo", 1, 8)
    settings = train_settings({**profile("config.yaml"), **config}, control)
    assert settings["method"] == "dpo" and "beta" not in settings  # rpo.train reads it from the source run
    assert settings["run"] == control.record() and settings["run"]["beta_of"] == "rpo-paired_tau0.5_minilm_bs8_seed1"
    defaults = Defaults.from_config(config)
    assert not defaults.matches(control) and defaults.matches(control, ("matched",))
    assert control not in [run for _, run in table_runs({**config, "data": {"tasks": ["dialogue"]}}, "table1")]
    assert control in [run for _, run in table_runs({**config, "data": {"tasks": ["dialogue"]}}, "weighting")]
    with pytest.raises(ConfigError, match="needs a paired embedding-weighted run"):
        Run.matched_beta(Run("rpo-unpaired", 1, 8, 0.5, "all-MiniLM-L6-v2"))


def test_seed_and_control_config_errors_name_the_key():
    config = profile("config.yaml")
    with pytest.raises(ConfigError, match=r"'seeded_methods\[0\]': 'cdpo' is not in methods"):
        validate_config({**config, "seeded_methods": ["cdpo"]})
    with pytest.raises(ConfigError, match="rpo.matched_beta_control"):
        validate_config({**config, "methods": ["dpo"], "seeded_methods": None})


def test_a_methods_own_loss_settings_win_over_the_stage_wide_ones():
    """preference.beta no longer gives SLiC the 0.1 meant for DPO: losses.slic sets its own; a stage-wide
    value still applies where the method sets none, and the registry's default where neither does."""
    config = profile("config.yaml")
    config["methods"] = [*config["methods"], "slic", "cdpo"]
    config["losses"] = {"slic": {"beta": 1.0, "lambda_coef": 0.2}, "sft": {"normalization": "sequence"},
                        "rpo-paired": {"beta": 0.05}}
    runs = runs_by_name(validate_config(config), "dialogue")
    assert {k: train_settings(config, runs["slic_bs8_seed1"])[k] for k in ("beta", "lambda_coef")} == {
        "beta": 1.0, "lambda_coef": 0.2}
    assert train_settings(config, runs["dpo_bs8_seed1"])["beta"] == 0.1  # preference.beta: dpo sets none
    assert "epsilon" not in train_settings(config, runs["cdpo_bs8_seed1"])  # neither: rpo.train's registry default
    assert train_settings(config, runs["sft_seed1"])["normalization"] == "sequence"
    paired = train_settings(config, runs["rpo-paired_tau0.25_minilm_bs8_seed1"])
    assert (paired["beta"], paired["tau"]) == (0.05, 0.25)
    control = runs["dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed1"]
    assert "beta" not in train_settings({**config, "losses": {"dpo": {"beta": 0.3}}}, control)  # the source's


@pytest.mark.parametrize("losses,message", [
    ({"orpo": {"beta": 0.1}}, "config key 'losses.orpo': unknown loss; known: sft, dpo"),
    ({"slic": {"epsilon": 0.1}}, r"config key 'losses.slic.epsilon': not a hyperparameter of loss 'slic' "
                                 r"\(it takes beta, lambda_coef\)"),
    ({"rpo-paired": {"tau": 0.3}}, r"config key 'losses.rpo-paired.tau': tau is each run's own"),
    ({"sft": {"normalization": "tokens"}}, "config key 'losses.sft': loss 'sft': 'normalization' must be one of"),
])
def test_loss_settings_errors_name_the_key(losses, message):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=message):
        validate_config({**config, "losses": losses})


def test_keys_at_the_trainers_default_leave_the_runs_params_as_they_were():
    """activation_checkpointing and attn_implementation reach rpo.train only where set otherwise than the
    trainer's default: the embedded runs' params (what Snakemake reruns on) predate the keys."""
    config = profile("config.yaml")
    for run in runs_by_name(config, "dialogue").values():
        assert not {"activation_checkpointing", "attn_implementation"} & set(train_settings(config, run)), run.name
    run = next(iter(runs_by_name(config, "dialogue").values()))
    config["training"].update(activation_checkpointing=True, attn_implementation="eager")
    settings = train_settings(config, run)
    assert (settings["activation_checkpointing"], settings["attn_implementation"]) == (True, "eager")


@pytest.mark.parametrize("name", ["workflow/paper.yaml", "workflow/one-gpu.yaml", "workflow/rehearsal.yaml"])
def test_paper_profiles_take_the_public_codes_training_protocol(name):
    """config/loss/*.yaml's values, trainers.py:351's schedule, :559's SFT loss, base_model.yaml's pure bf16
    (the CPU rehearsal: fp32 master weights, its comment says why), activation checkpointing and flash attention."""
    config = profile(name)
    public = {"dpo": {"beta": 0.1}, "ipo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "epsilon": 0.2},
              "slic": {"beta": 1.0, "lambda_coef": 0.1}, "kto": {"beta": 0.1}, "rpo-paired": {"beta": 0.1},
              "rpo-unpaired": {"beta": 0.1}, "rpo-diagonal": {"beta": 0.1, "diagonal_weight": 0.8}}
    runs = runs_by_name({**config, "methods": [*config["methods"], "cdpo", "slic", "rpo-diagonal"]}, "dialogue")
    for run in runs.values():
        settings = train_settings(config, run)
        assert settings["scheduler"] == "linear_warmup_constant" and settings["warmup_steps"] == 150, run.name
        assert settings["dtype"] == "bfloat16"
        assert settings["fp32_master_weights"] is (name == "workflow/rehearsal.yaml"), run.name
        assert settings["activation_checkpointing"] is True, run.name  # base_model.yaml:36
        # use_flash_attention (llama7b.yaml, llama13b.yaml); the CPU rehearsal's sdpa is the default, not passed
        assert settings.get("attn_implementation") == (None if "rehearsal" in name else "flash_attention_2")
        if run.method == "sft":
            assert settings["normalization"] == "sequence"
        elif run.method in public and run.beta_of is None:
            assert {k: settings[k] for k in public[run.method]} == public[run.method], run.name
        if run.method.startswith("rpo-p") or run.method == "rpo-unpaired":
            assert run.tau in config["rpo"]["taus"] and config["rpo"]["default_tau"] == 0.5
