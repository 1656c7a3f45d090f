"""The fake results tree the report tests read (tests/test_report*.py): runs with known win rates,
so every table's numbers can be checked against its inputs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rpo.pipeline import Defaults, Run
from rpo.report import collect_runs, weight_example

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny-llama"
MINILM = "all-MiniLM-L6-v2"
# (method, tau, embedder, batch size) -> dialogue win rate; summarization gets the same minus 0.2.
RUNS = {
    ("sft", None, None, 8): 0.40, ("dpo", None, None, 8): 0.70, ("ipo", None, None, 8): 0.65,
    ("kto", None, None, 8): 0.68, ("rpo-unpaired", 0.5, MINILM, 8): 0.74,
    ("rpo-diagonal", None, None, 8): 0.69, ("rpo-uniform", None, None, 8): 0.66,
    ("rpo-paired", 0.25, MINILM, 8): 0.76, ("rpo-paired", 0.5, MINILM, 8): 0.785, ("rpo-paired", 0.75, MINILM, 8): 0.77,
    ("rpo-paired", 0.25, "tfidf-svd", 8): 0.71, ("rpo-paired", 0.5, "tfidf-svd", 8): 0.73,
    ("rpo-paired", 0.75, "tfidf-svd", 8): 0.72, ("rpo-paired", 0.5, "random", 8): 0.67,
    ("dpo", None, None, 2): 0.61, ("dpo", None, None, 4): 0.64,
    ("rpo-paired", 0.5, MINILM, 2): 0.62, ("rpo-paired", 0.5, MINILM, 4): 0.71,
}
SHORT = {MINILM: "minilm", "tfidf-svd": "tfidf", "random": "random"}
DEFAULTS = Defaults(batch_size=8, tau=0.5, embedder=MINILM, control_embedder="random")
DEFAULT_FLAGS = ["--main-batch-size", "8", "--default-tau", "0.5", "--default-embedder", MINILM,
                 "--control-embedder", "random"]


def add_run(root, task, method, tau, embedder, bs, win_rate, seed=1, n=256, beta=0.1, steps=30, beta_of=None,
            sweep_beta=None):
    """One run's outputs as the pipeline writes them, in the folder of the pipeline's name of these settings
    (sweep_beta: a beta sweep's own beta, rpo.sweep). Its samples: the response to prompt i is shared by
    every run where i % 4 (so any two runs have 75% identical samples) and chosen_logp is SFT's plus
    10 * (win_rate - 0.4). Its loss logits (not SFT's or PPO's): 2 of 8 per step past |x| = 1, and at the
    end of training every one in the bin [0, 0.25)."""
    identity = Run(method, seed) if method == "sft" else Run(method, seed, bs, tau, embedder, beta_of=beta_of,
                                                             beta=sweep_beta)
    run = identity.name
    model_dir = root / task / "models" / run
    model_dir.mkdir(parents=True, exist_ok=True)
    # Like the trainer's run.json: the run's identity as the rule passes it, no task key, tau on every
    # method, `model` = where training started (a preference run starts from its SFT run's folder).
    start = f"results/base/{MODEL}" if method == "sft" else f"results/{task}/models/sft_seed1"
    config = {"model": start, "data": f"results/{task}/data/train.jsonl", "out": str(model_dir), "method": method,
              "beta": beta, "tau": 0.5 if tau is None else tau, "embedder": embedder, "batch_size": bs, "seed": seed,
              "run": identity.record()}
    if beta_of:
        config["beta_matched_to"] = f"results/{task}/models/{beta_of}"
    (model_dir / "run.json").write_text(json.dumps(config))
    (root / task / "samples").mkdir(parents=True, exist_ok=True)
    (root / task / "samples" / f"{run}.jsonl").write_text("".join(json.dumps(
        {"id": f"{task}-{i}", "response": f"shared {i}" if i % 4 else f"{run} {i}",
         "chosen_logp": -50.0 - i / n + (0.0 if method == "sft" else 10 * (win_rate - 0.4))}) + "\n" for i in range(n)))
    rng = np.random.default_rng(seed + bs)
    with open(model_dir / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "loss": 0.69 * math.exp(-step / 20) + 0.02 * rng.standard_normal(), "lr": 5e-7,
                   "grad_norm": 1.0, "tokens_per_s": 1000.0}
            if method != "sft":
                margin = 0.05 * step + 0.1 * rng.standard_normal()
                row.update({"rewards/chosen": margin / 2, "rewards/rejected": -margin / 2, "rewards/margins": margin,
                            "rewards/accuracies": min(1.0, 0.5 + step / 60), "logps/chosen": -50.0, "logps/rejected": -60.0})
            if method not in ("sft", "ppo"):
                row.update({"logits/n": 8, "logits/n_saturated": 2})
                if step >= steps - 2:  # the last 10% of 30 steps
                    row.update({f"logits/hist{i}": 8 if i == 16 else 0 for i in range(32)})
            f.write(json.dumps(row) + "\n")
    wins = round(win_rate * n)
    low, high = max(0.0, win_rate - 0.064), min(1.0, win_rate + 0.055)
    judgment = {"run": run, "task": task, "n": n, "wins": wins, "ties": 3, "losses": n - wins - 3, "unparseable": 0,
                "win_rate": win_rate, "ci_low": low, "ci_high": high, "seed": 1}
    (root / task / "judgments").mkdir(parents=True, exist_ok=True)
    (root / task / "judgments" / f"{run}.winrate.json").write_text(json.dumps(judgment))
    verdicts = ["model_win"] * wins + ["tie"] * 3 + ["chosen_win"] * (n - wins - 3)
    (root / task / "judgments" / f"{run}.jsonl").write_text(
        "".join(json.dumps({"id": f"{task}-{i}", "verdict": v}) + "\n" for i, v in enumerate(verdicts)))
    return run


def build_tree(root):
    for task, shift in (("dialogue", 0.0), ("summarization", 0.2)):
        for (method, tau, embedder, bs), rate in RUNS.items():
            add_run(root, task, method, tau, embedder, bs, round(rate - shift, 4))
    # the exact interval of the headline cell, to check formatting
    path = root / "dialogue" / "judgments" / "rpo-paired_tau0.5_minilm_bs8_seed1.winrate.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ci_low": 0.721, "ci_high": 0.840}))
    alpaca = root / "instructions" / "alpacaeval"
    alpaca.mkdir(parents=True)
    for run, rate, lc in (("sft_seed1", 0.12, None), ("dpo_bs8_seed1", 0.25, 0.22),
                          ("rpo-paired_tau0.5_minilm_bs8_seed1", 0.331, 0.30)):
        (alpaca / f"{run}.json").write_text(json.dumps({"run": run, "win_rate": rate, "standard_error": 0.015, "n": 805,
                                                        "annotator": "alpaca_eval_gpt4_turbo_fn",
                                                        "reference_generator": "gpt4_turbo", "lc_win_rate": lc, "ci_low": rate - 0.03, "ci_high": rate + 0.03}))
    # as rpo.alpacaeval writes it: generator instead of run, no LC rate and why, the leaderboard's annotator
    (alpaca / "kto_bs8_seed1.json").write_text(json.dumps({
        "generator": "kto_bs8_seed1", "win_rate": 0.2, "standard_error": 0.01, "n": 800, "ci_low": 0.175,
        "ci_high": 0.226, "annotator": "weighted_alpaca_eval_gpt4_turbo", "lc_win_rate": None,
        "lc_unavailable": "offline, no df_gamed.csv", "lc_unavailable_reason": "alpaca_eval needs tatsu-lab/alpaca_eval "
        "df_gamed.csv from the hub; not in the HF cache and HF_HUB_OFFLINE=1"}))
    prompts = [f"\n<|user|>\nQuestion number {i} about {'cooking' if i % 2 else 'taxes and the law of the land'}?"
               f"\n<|assistant|>\n" for i in range(6)]
    embeddings = np.random.default_rng(0).standard_normal((6, 16))
    (root / "weights.json").write_text(json.dumps(weight_example(prompts, embeddings, 0.5, MINILM)))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def runs(tree):
    return collect_runs(tree)


def row_of(frame, **match):
    mask = np.ones(len(frame), dtype=bool)
    for key, value in match.items():
        mask &= frame[key].to_numpy() == value
    assert mask.sum() == 1, (match, frame)
    return frame[mask].iloc[0]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, (path, len(data))
    assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
