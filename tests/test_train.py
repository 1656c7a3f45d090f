"""The trainer and the reference cache on a tiny model: every loss runs, resumption is bit-exact,
stale caches are refused, divergence stops the run."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rpo.data.records import PreferenceRecord, write_records
from rpo.embed import embed_prompts
from rpo.errors import CacheMismatchError, ConfigError, TrainingDivergedError
from rpo.losses import REGISTRY, LossOutput
from rpo.models import build_model
from rpo.precision import Precision
from rpo.refcache import compute_reference_cache, load_reference_cache
from rpo.train import Trainer, micro_batch_plan, resolve_config

TOPICS = ["bread", "bikes", "tea", "chess", "rain", "maps"]


def make_records(n=24):
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"\n<|user|>\nhow do i start with {topic} number {i}?\n<|assistant|>\n"
        records.append(PreferenceRecord(
            id=f"r{i}", prompt=prompt, chosen=f"start small with {topic} and practice daily.",
            rejected=f"no. {topic} is bad. go away.", metadata={"task": "dialogue", "truncation": "keep_end"}))
    return records


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    records = make_records()
    data = root / "train.jsonl"
    write_records(data, records)
    corpus = [r.prompt + r.chosen + r.rejected for r in records]
    spec = {"kind": "small", "arch": "gpt2", "n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 300,
            "max_position": 128}
    model = build_model(spec, root / "base", corpus=corpus, seed=0)
    (root / "spec.json").write_text(json.dumps(spec))
    cache = compute_reference_cache(model, data, root / "ref.pt", max_length=64, max_prompt_length=32, batch_size=8)
    emb = root / "emb.pt"
    embed_prompts(data, "tfidf-svd", emb)
    return {"root": root, "data": data, "model": model, "cache": cache, "emb": emb}


def config(world, tmp_path, method, **kw):
    cfg = {"model": str(world["model"]), "data": str(world["data"]), "out": str(tmp_path / method), "method": method,
           "reference_cache": str(world["cache"]), "embeddings": str(world["emb"]), "embedder": "tfidf-svd",
           "batch_size": 4, "lr": 1e-3, "optimizer": "adamw", "warmup_steps": 1, "max_length": 64,
           "max_prompt_length": 32, "seed": 3, "threads": 1}
    cfg.update(kw)
    return resolve_config(cfg)


def weights(folder):
    return load_file(Path(folder) / "model.safetensors")


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_and_saves_a_loadable_model(world, tmp_path, method):
    out = Trainer(config(world, tmp_path, method, max_steps=3)).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in rows)
    if method != "sft":
        # (an unpaired micro-batch may hold only chosen or only rejected items: no reward that step)
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set().union(*rows)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method and run["steps"] == 3
    # run.json holds the loss's own hyperparameters, at the registry's defaults, and no other loss's
    hyper = dict(REGISTRY[method].hyperparameters)
    assert {k: run[k] for k in hyper} == hyper and not {"beta", "tau", "diagonal_weight"} - set(hyper) & set(run)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(model.state_dict()["transformer.wte.weight"], weights(world["model"])["transformer.wte.weight"])
    assert not Path(str(out) + ".ckpt").exists()


def test_a_run_takes_only_its_losss_hyperparameters(world, tmp_path):
    with pytest.raises(ConfigError, match="key\\(s\\) tau: not hyperparameters of loss 'dpo' \\(it takes beta\\)"):
        config(world, tmp_path, "dpo", tau=0.5)
    with pytest.raises(ConfigError, match="unknown training config key\\(s\\): betta"):
        config(world, tmp_path, "dpo", betta=0.5)
    assert config(world, tmp_path, "rpo-paired", tau="2.5e-1")["tau"] == 0.25  # YAML 1.1 reads 2.5e-1 as text


def test_first_dpo_step_sees_policy_equal_to_cached_reference(world, tmp_path):
    """At step 1 the policy IS the reference, so a correct cache gives rewards 0 and loss log 2."""
    trainer = Trainer(config(world, tmp_path, "dpo"))
    out, _, _, _ = trainer.micro_batch_loss(*trainer.plan[0])
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert out.chosen_rewards.abs().max().item() < 1e-5


def test_unpaired_batches_draw_chosen_and_rejected_independently(world, tmp_path):
    cfg = config(world, tmp_path, "rpo-unpaired", batch_size=6)
    from rpo.data.records import read_records
    plan = micro_batch_plan(cfg, read_records(world["data"]))
    assert len(plan) == 48 // 6
    assert all(len(c) + len(r) == 6 for c, r in plan)
    assert any(len(c) != len(r) for c, r in plan)  # chosen/rejected counts vary per batch
    assert any(set(c) != set(r) for c, r in plan)  # and their prompts differ


def test_resume_after_interruption_is_bit_identical(world, tmp_path):
    full = Trainer(config(world, tmp_path / "a", "rpo-paired", max_steps=5, save_every=2)).fit()
    cfg_b = config(world, tmp_path / "b", "rpo-paired", max_steps=5, save_every=2, stop_after_steps=3)
    assert Trainer(cfg_b).fit() is None  # stopped after step 3 with a checkpoint
    resumed = Trainer({**cfg_b, "stop_after_steps": None}).fit()
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5]
    assert json.loads((resumed / "run.json").read_text())["resumed"] is True


def test_killed_process_resumes_to_identical_weights(world, tmp_path):
    common = ["method=dpo", f"model={world['model']}", f"data={world['data']}", f"reference_cache={world['cache']}",
              "batch_size=2", "lr=0.001", "optimizer=adamw", "warmup_steps=1", "max_length=64",
              "max_prompt_length=32", "seed=5", "threads=1", "save_every=1", "epochs=6"]
    cmd = [sys.executable, "-m", "rpo.train"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd + common + [f"out={tmp_path / 'ref'}"], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(cmd + common + [f"out={tmp_path / 'run'}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "run.ckpt" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # kill mid-way through a later step, possibly mid-checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "run" / "model.safetensors").exists(), "run finished before it could be killed"
    subprocess.run(cmd + common + [f"out={tmp_path / 'run'}"], check=True, env=env, capture_output=True)
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stale_reference_cache_is_refused(world, tmp_path):
    records = make_records()[:-1]
    other = tmp_path / "other.jsonl"
    write_records(other, records)
    with pytest.raises(CacheMismatchError, match="data_sha256"):
        load_reference_cache(world["cache"], other, world["model"], max_length=64, max_prompt_length=32,
                             truncation="keep_end", precision=Precision(torch.float32))
    with pytest.raises(CacheMismatchError, match="max_length"):
        load_reference_cache(world["cache"], world["data"], world["model"], max_length=63, max_prompt_length=32,
                             truncation="keep_end", precision=Precision(torch.float32))
    spec = json.loads((world["root"] / "spec.json").read_text())
    other_model = build_model(spec, tmp_path / "other-model", corpus=["a b c"] * 50, seed=1)
    with pytest.raises(CacheMismatchError, match="model_fingerprint"):
        Trainer(config(world, tmp_path, "dpo", model=str(other_model)))


def test_cache_of_another_precision_is_refused(world, tmp_path):
    """Reference and policy log-probs must share their numerics: the cache records its precision."""
    assert torch.load(world["cache"], weights_only=True)["meta"]["precision"] == {"weights": "float32",
                                                                                 "autocast": None}  # auto on CPU
    cache = compute_reference_cache(world["model"], world["data"], tmp_path / "ref64.pt", max_length=64,
                                    max_prompt_length=32, batch_size=8, dtype="float64")
    assert torch.load(cache, weights_only=True)["meta"]["precision"] == {"weights": "float64", "autocast": None}
    expected = (f"{cache} holds reference log-probs computed in float64 weights, no autocast, but the trainer runs "
                "in float32 weights, no autocast; recompute it with `python -m rpo.refcache --dtype")
    with pytest.raises(CacheMismatchError, match=re.escape(expected)):
        Trainer(config(world, tmp_path, "dpo", reference_cache=str(cache), dtype="float32"))
    with pytest.raises(CacheMismatchError, match="float32 weights, no autocast, but the trainer runs in float64"):
        Trainer(config(world, tmp_path, "dpo", dtype="float64"))  # the float32 cache
    assert Trainer(config(world, tmp_path, "dpo", reference_cache=str(cache), dtype="float64")).ref["meta"]["n"] == 24
    mixed = Precision(torch.float32, torch.bfloat16)  # what a bf16 GPU trains in: a CPU cache is refused
    with pytest.raises(CacheMismatchError, match="float32 weights \\+ bfloat16 autocast"):
        load_reference_cache(world["cache"], world["data"], world["model"], max_length=64, max_prompt_length=32,
                             truncation="keep_end", precision=mixed)


def test_nan_loss_stops_with_a_clear_error(world, tmp_path):
    trainer = Trainer(config(world, tmp_path, "dpo"))
    nan = torch.tensor(float("nan"), requires_grad=True)
    trainer.contrast_loss = lambda *a, **k: LossOutput(nan, torch.zeros(1), torch.zeros(1))
    with pytest.raises(TrainingDivergedError, match="loss is nan at step 1"):
        trainer.fit()


def test_config_errors_name_the_key(world, tmp_path):
    with pytest.raises(ConfigError, match="unknown training config key.*learning_rate"):
        config(world, tmp_path, "dpo", learning_rate=1)
    with pytest.raises(ConfigError, match="'method': unknown loss 'orpo'"):
        config(world, tmp_path, "orpo")
    with pytest.raises(ConfigError, match="'embeddings' is required"):
        config(world, tmp_path, "rpo-paired", embeddings=None)
    with pytest.raises(ConfigError, match="'batch_size' must be a positive integer"):
        config(world, tmp_path, "dpo", batch_size=0)
