import pytest

from rpo.errors import ConfigError
from rpo.pipeline import Run, experiment_runs, parse_run

EMBEDDERS = ["all-MiniLM-L6-v2", "tfidf-svd", "random", "sentence-transformers/sentence-t5-large"]
CONFIG = {
    "seeds": [1],
    "methods": ["dpo", "ipo", "kto", "rpo-paired", "rpo-unpaired", "rpo-diagonal", "rpo-uniform"],
    "preference": {"batch_size": 8},
    "rpo": {"taus": [0.25, 0.5], "embedders": ["all-MiniLM-L6-v2", "tfidf-svd"], "default_tau": 0.5,
            "default_embedder": "all-MiniLM-L6-v2", "control_embedder": "random"},
    "batch_size_ablation": {"methods": ["dpo", "rpo-paired"], "batch_sizes": [2, 8, 16]},
}


@pytest.mark.parametrize("run", [
    Run("sft", 1), Run("dpo", 2, 8), Run("rpo-diagonal", 1, 4), Run("rpo-paired", 1, 8, 0.25, "all-MiniLM-L6-v2"),
    Run("rpo-unpaired", 3, 16, 0.75, "random"), Run("rpo-paired", 1, 8, 0.5, "sentence-transformers/sentence-t5-large"),
])
def test_run_names_round_trip(run):
    assert parse_run(run.name, EMBEDDERS) == run


def test_names_say_what_a_run_is():
    assert Run("rpo-paired", 1, 8, 0.5, "all-MiniLM-L6-v2").name == "rpo-paired_tau0.5_minilm_bs8_seed1"
    assert Run("dpo", 1, 8).name == "dpo_bs8_seed1"
    assert Run("sft", 1).name == "sft_seed1"


def test_bad_names_are_refused():
    for bad, message in [("orpo_bs8_seed1", "known method"), ("dpo_seed1", "batch size"),
                         ("rpo-paired_bs8_seed1", "_tau"), ("rpo-paired_tau0.5_bert_bs8_seed1", "bert")]:
        with pytest.raises(ConfigError, match=message):
            parse_run(bad, EMBEDDERS)


def test_experiment_matrix():
    names = [r.name for r in experiment_runs(CONFIG)]
    assert len(names) == len(set(names))
    assert "sft_seed1" in names and "kto_bs8_seed1" in names
    for method in ("rpo-paired", "rpo-unpaired"):
        for tau in ("0.25", "0.5"):
            for emb in ("minilm", "tfidf"):
                assert f"{method}_tau{tau}_{emb}_bs8_seed1" in names
        assert f"{method}_tau0.5_random_bs8_seed1" in names
    assert {"dpo_bs2_seed1", "dpo_bs16_seed1", "rpo-paired_tau0.5_minilm_bs2_seed1"} <= set(names)
    # 1 sft + 5 plain methods + 2 x (4 grid + 1 control) + ablation (2 sizes new for each of 2 methods)
    assert len(names) == 1 + 5 + 10 + 4


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
