"""Activation checkpointing (rpo.memory) changes memory, never the numbers: the gradients of SFT, DPO and
RPO-paired with it equal those without (float64, packed scorer, chunked LM head), in one process and under
FSDP2 on 2 gloo ranks; checkpoints resume and the saved model keeps the plain HF names. The autocast weight
cache is off (rpo.precision) and gives the same bits as with it. attn_implementation reaches the model."""
import importlib.util
import os
from pathlib import Path

import pytest
from conftest import float64_config, float64_world_with_embeddings, free_port, start_two_ranks
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import rpo.scoring
from rpo.data.records import PreferenceRecord
from rpo.distributed import as_local_tensor, unwrap
from rpo.embed import embed_prompts
from rpo.errors import ConfigError
from rpo.memory import checkpointed_blocks
from rpo.models import load_model
from rpo.precision import Precision
from rpo.train import Trainer, resolve_config

TOLERANCE = 1e-10
METHODS = ("sft", "dpo", "rpo-paired")


def make_records(n=16):
    topics = ["soup", "kites", "clocks", "moss"]
    return [PreferenceRecord(
        id=f"c{i}", prompt=f"\n<|user|>\nwhat about {topics[i % 4]}, case {i}?\n<|assistant|>\n",
        chosen=f"{topics[i % 4]} are fine; try case {i % 3} first.", rejected=f"no {topics[i % 4]}.",
        metadata={"truncation": "keep_end"}) for i in range(n)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, build_tiny_world):
    return float64_world_with_embeddings(build_tiny_world, tmp_path_factory.mktemp("ckpt"), make_records())


config = float64_config


def step_gradients(cfg) -> tuple[dict, dict, int]:
    """One step's gradients in train mode (where checkpointing acts), its metrics, and how often the first
    block's attention ran (twice per micro-batch when its block is recomputed in backward)."""
    trainer = Trainer(cfg)
    trainer.model.train()
    calls = []
    attention = unwrap(trainer.model).transformer.h[0].attn
    handle = attention.register_forward_hook(lambda *_: calls.append(1))
    row = trainer.accumulate_gradients()
    handle.remove()
    grads = {n: as_local_tensor(p.grad).detach().clone() for n, p in unwrap(trainer.model).named_parameters()}
    return grads, row, len(calls)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_keeps_the_gradients(paths, method, monkeypatch):
    # one response position per LM-head chunk: the head's own checkpointed chunks inside the blocks' forward
    monkeypatch.setattr(rpo.scoring, "HEAD_CHUNK_ELEMENTS", 1)
    plain, plain_row, plain_calls = step_gradients(config(paths, f"plain-{method}", method))
    ckpt, ckpt_row, ckpt_calls = step_gradients(config(paths, f"ac-{method}", method, activation_checkpointing=True))
    assert (plain_calls, ckpt_calls) == (2, 4)  # 2 micro-batches; recomputed in backward with checkpointing
    assert max_diff(plain, ckpt) < TOLERANCE
    assert abs(plain_row["loss"] - ckpt_row["loss"]) < TOLERANCE


def test_checkpointing_keeps_the_gradients_padded(paths):
    plain = step_gradients(config(paths, "plain-padded", "sft", packing=False))[0]
    ckpt = step_gradients(config(paths, "ac-padded", "sft", packing=False, activation_checkpointing=True))[0]
    assert max_diff(plain, ckpt) < TOLERANCE


def test_checkpointing_resumes_and_saves_plain_names(paths):
    base = dict(max_steps=3, epochs=2, save_every=10)
    plain = Trainer(config(paths, "run-plain", "rpo-paired", **base)).fit()
    # activation_checkpointing is resume-free: a run stopped without it resumes with it
    assert Trainer(config(paths, "run-ac", "rpo-paired", stop_after_steps=1, **base)).fit() is None
    trainer = Trainer(config(paths, "run-ac", "rpo-paired", activation_checkpointing=True, **base))
    assert checkpointed_blocks(trainer.model) == 2
    resumed = trainer.fit()
    a, b = load_file(plain / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() == load_file(Path(paths["model"]) / "model.safetensors").keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOLERANCE
    loaded = AutoModelForCausalLM.from_pretrained(resumed, dtype=torch.float64)
    assert torch.equal(loaded.state_dict()["lm_head.weight"], b["transformer.wte.weight"])


def test_autocast_without_weight_cache_gives_the_same_bits(paths, monkeypatch):
    """fp32 master weights + bf16 autocast (the opt-in): losses and gradients bitwise equal with autocast's
    weight cache (torch's default, the old code) and without it (ours), with and without checkpointing."""
    kw = dict(method="sft", dtype="bfloat16", fp32_master_weights=True, gradient_accumulation_steps=1)
    precision = Precision(torch.float32, torch.bfloat16)
    with precision.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
    ours = [step_gradients(config(paths, f"nocache-{ac}", activation_checkpointing=ac, **kw))[:2] for ac in (False, True)]
    monkeypatch.setattr(Precision, "autocast", lambda self, device: torch.autocast("cpu", dtype=torch.bfloat16))
    cached = step_gradients(config(paths, "cache", **kw))[:2]
    for grads, row in ours:
        assert row["loss"] == cached[1]["loss"]
        assert all(torch.equal(grads[k], cached[0][k]) for k in grads)


def test_attn_implementation_reaches_the_model(paths, monkeypatch):
    model, _ = load_model(paths["model"], device="cpu", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert load_model(paths["model"], device="cpu")[0].config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="training.attn_implementation: must be one of"):
        config(paths, "bad", "sft", attn_implementation="flash")
    real = importlib.util.find_spec  # flash-attn absent, as on this CPU machine
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ConfigError, match=r"training\.attn_implementation: flash_attention_2 needs the flash-attn "
                                          r"package.*pip install flash-attn --no-build-isolation"):
        load_model(paths["model"], device="cpu", attn_implementation="flash_attention_2")


# -- FSDP2 on 2 gloo ranks ------------------------------------------------------------------------
def _two_rank_worker(rank, paths, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    out = {}
    for ac in (False, True):
        grads, row, calls = step_gradients(config(paths, f"fsdp-{ac}", "rpo-paired", fsdp=True, gradient_accumulation_steps=1,
                                              activation_checkpointing=ac))
        out[ac] = (grads, row["loss"], calls)
    base = dict(max_steps=2, epochs=2, save_every=10, fsdp=True, activation_checkpointing=True)
    assert Trainer(config(paths, "fsdp-run", "rpo-paired", stop_after_steps=1, **base)).fit() is None
    Trainer(config(paths, "fsdp-run", "rpo-paired", **base)).fit()  # resumes from the sharded checkpoint
    if rank == 0:
        torch.save(out, Path(results) / "grads.pt")


def test_fsdp_checkpointing_keeps_gradients_and_saves_plain_names(paths):
    results = Path(paths["root"]) / "results"
    results.mkdir()
    start_two_ranks(_two_rank_worker, __name__, (paths, free_port(), str(results)))
    out = torch.load(results / "grads.pt")
    assert max_diff(out[False][0], out[True][0]) < TOLERANCE
    assert abs(out[False][1] - out[True][1]) < TOLERANCE
    assert (out[False][2], out[True][2]) == (1, 2)  # the block recomputed in backward under FSDP2
    final = Path(paths["root"]) / "fsdp-run"
    assert load_file(final / "model.safetensors").keys() == load_file(Path(paths["model"]) / "model.safetensors").keys()
    assert AutoModelForCausalLM.from_pretrained(final).num_parameters() > 0
