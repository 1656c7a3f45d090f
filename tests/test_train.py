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

from rpo import checkpoint
from rpo.data.records import PreferenceRecord, write_records
from rpo.embed import embed_prompts
from rpo.errors import CacheMismatchError, ConfigError, TrainingDivergedError
from rpo.losses import PPO_METRICS, REGISTRY, LossOutput
from rpo.models import build_model
from rpo.pipeline import Run
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
    embed_prompts(data, "tfidf-svd", emb, model_path=model, max_length=64, max_prompt_length=32)
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
    if method == "ppo":  # its own metrics, named as the public code names them; no rewards/*
        assert all(set(PPO_METRICS) <= set(r) and all(math.isfinite(r[k]) for k in PPO_METRICS) for r in rows)
    elif method != "sft":
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
    with pytest.raises(ConfigError, match="training config key 'run' must be a mapping with the run's name"):
        config(world, tmp_path, "dpo", run="dpo_bs4_seed3")


@pytest.mark.parametrize("packing", [True, False])
def test_first_dpo_step_sees_policy_equal_to_cached_reference(world, tmp_path, packing):
    """At step 1 the policy IS the reference, so a cache computed the same way (packed, in batches of other
    sequences) gives rewards 0 and loss log 2 exactly; the other layout's cache is refused. Padded, a
    sequence's numbers depend on its batch's padded width in the last bit (sdpa's reduction over the padded
    keys): with the public code's tokenisation (" " + EOS ending every response) some widths here give a
    one-ulp difference in a summed log-prob (7.6e-6 of ~-100), so padded is checked to that ulp."""
    cache = compute_reference_cache(world["model"], world["data"], tmp_path / "ref.pt", max_length=64,
                                    max_prompt_length=32, batch_size=8, packing=packing)
    trainer = Trainer(config(world, tmp_path, "dpo", reference_cache=str(cache), packing=packing))
    for chosen_idx, rejected_idx in trainer.plan[:3]:
        out, _, _, _ = trainer.micro_batch_loss(chosen_idx, rejected_idx)
        ulp = 0.0 if packing else 1.6e-5  # one fp32 ulp of a summed log-prob in [-256, -128]
        log2 = torch.tensor(math.log(2), dtype=out.loss.dtype).item()  # log 2 in fp32, exactly when packed
        assert out.loss.item() == log2 if packing else abs(out.loss.item() - log2) <= 0.1 * ulp
        assert max(out.chosen_rewards.abs().max().item(), out.rejected_rewards.abs().max().item()) <= 0.1 * ulp
    with pytest.raises(CacheMismatchError, match="padded batches|packed batches"):
        Trainer(config(world, tmp_path, "dpo", reference_cache=str(cache), packing=not packing))


def test_rpo_embeds_the_public_codes_prompt_text_per_side(world, tmp_path):
    """Paired: the rejected element's prompt_text for both sides (dataloader.py:922-923); unpaired: a chosen
    item its own element's (the file's chosen_embeddings), a rejected item the rejected one's."""
    stored = torch.load(world["emb"], weights_only=True)
    stored["chosen_embeddings"] = stored["chosen_embeddings"].flip(1)  # stand-in for other (cut) texts
    torch.save(stored, tmp_path / "emb.pt")
    for method, chosen_side in (("rpo-unpaired", "chosen_embeddings"), ("rpo-paired", "embeddings")):
        trainer = Trainer(config(world, tmp_path, method, embeddings=str(tmp_path / "emb.pt")))
        assert torch.equal(trainer.embeddings["chosen"], stored[chosen_side]), method
        assert torch.equal(trainer.embeddings["rejected"], stored["embeddings"]), method


def test_unpaired_batches_draw_chosen_and_rejected_independently(world, tmp_path):
    from rpo.data.records import read_records
    records = read_records(world["data"])
    cfg = config(world, tmp_path, "rpo-unpaired", batch_size=6, epochs=2)
    plan = micro_batch_plan(cfg, records)
    assert len(plan) == 2 * (24 // 3)  # 24 records a queue, 3 a side: no short batch to drop
    assert all(len(c) == 3 and len(r) == 3 for c, r in plan)  # every matrix is (n/2) x (n/2)
    for epoch in (plan[:8], plan[8:]):  # each epoch uses every chosen and every rejected item once
        assert sorted(i for c, _ in epoch for i in c) == list(range(24))
        assert sorted(j for _, r in epoch for j in r) == list(range(24))
    assert any(set(c) != set(r) for c, r in plan)  # a batch's chosen and rejected prompts differ
    assert plan[:8] != plan[8:]  # each epoch reshuffles
    assert micro_batch_plan(cfg, records) == plan
    assert micro_batch_plan({**cfg, "seed": cfg["seed"] + 7}, records) != plan
    assert len(micro_batch_plan({**cfg, "batch_size": 10, "epochs": 1}, records)) == 24 // 5  # 4 a side left over
    with pytest.raises(ConfigError, match="training key batch_size is 5: rpo-unpaired .* must be even"):
        micro_batch_plan({**cfg, "batch_size": 5}, records)


def test_resume_after_interruption_is_bit_identical(world, tmp_path):
    full = Trainer(config(world, tmp_path / "a", "rpo-paired", max_steps=5, save_every=2)).fit()
    cfg_b = config(world, tmp_path / "b", "rpo-paired", max_steps=5, save_every=2, stop_after_steps=3)
    assert Trainer(cfg_b).fit() is None  # stopped after step 3 with a checkpoint
    # `run` (the identity the rule passes, recorded for the report) is a label: a checkpoint written without it resumes
    identity = Run("rpo-paired", 3, 4, 0.5, "tfidf-svd").record()
    resumed = Trainer({**cfg_b, "stop_after_steps": None, "run": identity}).fit()
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5]
    recorded = json.loads((resumed / "run.json").read_text())
    assert recorded["resumed"] is True and recorded["run"] == identity
    assert json.loads((full / "run.json").read_text())["run"] is None  # trained by hand: no identity given


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


def test_save_every_minutes_saves_by_the_clock(world, tmp_path, monkeypatch):
    readings = iter(range(0, 10_000, 40))  # each look at the clock is 40 s after the last
    monkeypatch.setattr(checkpoint, "_now", lambda: next(readings))
    saved = []
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: saved.append(self.step))
    Trainer(config(world, tmp_path / "a", "dpo", max_steps=5, save_every=100, save_every_minutes=1)).fit()
    assert saved == [2, 4]  # 80 s after the start, then 80 s after the save at step 2
    saved.clear()
    Trainer(config(world, tmp_path / "b", "dpo", max_steps=5, save_every=100)).fit()
    assert saved == []  # by steps only
    with pytest.raises(ConfigError, match="'save_every_minutes' must be > 0"):
        config(world, tmp_path, "dpo", save_every_minutes=0)


def _fake_sharded(folder: Path, files=(checkpoint.META, checkpoint.DCP_METADATA, "__0_0.distcp")) -> Path:
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_a_partial_sharded_checkpoint_is_never_resumed(tmp_path):
    root = tmp_path / "run.ckpt"
    _fake_sharded(root / "step-9.tmp", files=("__0_0.distcp",))  # a save killed before its rename
    with pytest.warns(UserWarning, match=r"step-9\.tmp: ignored"):
        assert checkpoint.latest(root) is None
    done = _fake_sharded(root / "step-4")
    with pytest.warns(UserWarning, match=r"step-9\.tmp: ignored"):
        assert checkpoint.latest(root) == done  # the last complete one, not the newer partial one
    damaged = _fake_sharded(root / "step-6", files=(checkpoint.DCP_METADATA,))
    message = rf"{re.escape(str(damaged))}: incomplete sharded checkpoint \(no meta.pt\); delete .* to resume from an older"
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=message):
        checkpoint.latest(root)


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
    with pytest.raises(ConfigError, match="'packing' must be true or false"):
        config(world, tmp_path, "dpo", packing="yes")


# -- ppo: the value head, per-token reference log-probs, resumption -----------------------------------
def test_ppo_saves_the_model_without_its_value_head(world, tmp_path):
    trainer = Trainer(config(world, tmp_path, "ppo", max_steps=3))
    head = trainer.model.v_head[-1].weight
    assert head.requires_grad  # a submodule: the optimizer trains it
    assert any(p is head for g in trainer.optimizer.param_groups for p in g["params"])
    head_before = head.detach().clone()
    out = trainer.fit()
    assert not torch.equal(head, head_before)  # the critic loss reached it
    saved = weights(out)
    assert set(saved) == set(weights(world["model"]))  # the keys of any other run, no v_head.*
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model, "v_head")
    assert not torch.equal(saved["transformer.wte.weight"], weights(world["model"])["transformer.wte.weight"])


def test_ppo_first_step_sees_the_reference_as_old_policy(world, tmp_path):
    """At step 1 the policy IS the reference: every ratio is 1, the KL term 0, nothing is clipped, and
    the policy loss is -mean(A) = 0 (whitened advantages have mean 0 over the response tokens)."""
    trainer = Trainer(config(world, tmp_path, "ppo"))
    chosen, rejected = next((c, r) for c, r in trainer.plan if c and r)
    assert len(chosen) + len(rejected) == 4  # items: chosen and rejected episodes as they fall
    out, pc, pr, _ = trainer.micro_batch_loss(chosen, rejected)
    assert abs(out.metrics["loss/policykl"].item()) < 1e-5 and out.metrics["clipfrac/policy"].item() == 0
    assert abs(out.metrics["loss/policy"].item()) < 1e-5
    assert torch.allclose(pc, trainer.reference_logps("chosen", chosen), atol=1e-4)
    assert torch.allclose(pr, trainer.reference_logps("rejected", rejected), atol=1e-4)


def test_ppo_refuses_global_scope_and_a_cache_without_tokens(world, tmp_path):
    with pytest.raises(ConfigError, match="global has no meaning for ppo"):
        config(world, tmp_path, "ppo", contrast_scope="global", gradient_accumulation_steps=2)
    stale = {k: v for k, v in torch.load(world["cache"], weights_only=True).items()
             if k not in ("token_logps", "token_counts")}
    torch.save(stale, tmp_path / "old.pt")
    trainer = Trainer(config(world, tmp_path, "ppo", reference_cache=str(tmp_path / "old.pt")))
    with pytest.raises(CacheMismatchError, match="no per-token log-probs"):
        trainer.micro_batch_loss(*trainer.plan[0])


def test_ppo_resume_with_the_value_head_is_bit_identical(world, tmp_path):
    full_trainer = Trainer(config(world, tmp_path / "a", "ppo", max_steps=5, save_every=2))
    full = full_trainer.fit()
    cfg_b = config(world, tmp_path / "b", "ppo", max_steps=5, save_every=2, stop_after_steps=3)
    assert Trainer(cfg_b).fit() is None
    state = torch.load(Path(cfg_b["checkpoint_dir"]) / "state.pt", weights_only=False)
    assert "v_head.4.weight" in state["model"]  # the checkpoint carries the critic
    resumed_trainer = Trainer({**cfg_b, "stop_after_steps": None})
    resumed = resumed_trainer.fit()
    a, b = weights(full), weights(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full_trainer.model.v_head[-1].weight, resumed_trainer.model.v_head[-1].weight)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    ref = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/critic"] for r in rows] == [r["loss/critic"] for r in ref]


def test_reference_cache_sums_unchanged_and_holds_per_token_logps(world):
    """The summed log-probs are the numbers rpo.scoring gives (the path every other loss reads),
    and the per-token ones are the same forward's tokens, one tensor per record."""
    from rpo.data.tokenize import tokenize_records
    from rpo.models import load_model
    from rpo.refcache import load_reference_cache as load
    from rpo.scoring import score
    cache = load(world["cache"], world["data"], world["model"], max_length=64, max_prompt_length=32,
                 truncation="keep_end", precision=Precision(torch.float32))
    model, tok = load_model(world["model"], device="cpu")
    from rpo.data.records import read_records
    seqs = tokenize_records(read_records(world["data"]), tok, 64, 32, "keep_end")
    for side in ("chosen", "rejected"):  # no KL side: KTO's KL sequences are the trainer's (rpo.kto)
        for start in range(0, 24, 8):  # the cache's batches (batch_size 8): the same packed rows, the same numbers
            with torch.no_grad():
                scores = score(model, seqs[side][start:start + 8], tok.pad_token_id)
            assert torch.equal(cache[side][start:start + 8], scores.sums.float()), side
            assert cache["token_counts"][side][start:start + 8].tolist() == scores.counts.tolist()
    for side in ("chosen", "rejected"):
        assert len(cache["tokens"][side]) == 24
        sums = torch.stack([t.double().sum() for t in cache["tokens"][side]])
        assert torch.allclose(sums, cache[side].double(), atol=1e-4) and (cache["token_counts"][side] > 1).all()
        assert all((t < 0).all() for t in cache["tokens"][side])
