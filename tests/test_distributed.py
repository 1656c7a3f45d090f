"""Distributed training on this CPU (gloo, float64): 2 ranks x 2 micro-batches x 4 pairs in the global
contrast scope give the gradient of one process with the same 16 pairs in one micro-batch; micro scope
on 2 ranks trains and resumes bit-exactly; FSDP2 matches too.

All two-rank work runs in ONE spawn of two processes (module fixture `two_ranks`); the tests then
compare what the ranks saved with single-process runs here.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import float64_config, float64_world_with_embeddings, free_port, start_two_ranks
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import rpo.scoring
from rpo.data.records import PreferenceRecord
from rpo.distributed import DistEnv, as_local_tensor, gather_varlen, local_micro_batches, unwrap
from rpo.embed import embed_prompts
from rpo.errors import ConfigError
from rpo.train import Trainer, main, resolve_config

THEMES = ["soup", "kites", "clocks", "moss", "boats", "lamps", "owls", "salt"]
GLOBAL_METHODS = ("rpo-paired", "rpo-unpaired", "dpo", "kto")
TOLERANCE = 1e-10
LONG_FSDP = dict(fsdp=True, contrast_scope="global", epochs=10, save_every=100)


def make_records(n=32):
    return [PreferenceRecord(
        id=f"d{i}", prompt=f"\n<|user|>\ntell me about {THEMES[i % 8]}, case {i}\n<|assistant|>\n",
        chosen=f"{THEMES[i % 8]} are worth a look; start with case {i % 5}.",
        rejected=f"no idea about {THEMES[i % 8]}.",
        metadata={"truncation": "keep_end"}) for i in range(n)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, build_tiny_world):
    return float64_world_with_embeddings(build_tiny_world, tmp_path_factory.mktemp("dist"), make_records(), cache_batch_size=16)


config = float64_config


def grads(trainer) -> dict:
    # full_tensor() of FSDP's sharded grads is collective: every rank walks the same names
    return {n: as_local_tensor(p.grad).detach().clone() for n, p in unwrap(trainer.model).named_parameters()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def _two_rank_worker(rank, paths, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    results = Path(results)

    def save(name, obj):
        if rank == 0:
            torch.save(obj, results / f"{name}.pt")

    for method, scope, fsdp in [*((m, "global", False) for m in GLOBAL_METHODS), ("dpo", "micro", False),
                                ("rpo-paired", "micro", False), ("rpo-paired", "global", True)]:
        trainer = Trainer(config(paths, f"g-{method}-{scope}", method, contrast_scope=scope, fsdp=fsdp))
        row = trainer.accumulate_gradients()
        save(f"{method}-{scope}{'-fsdp' * fsdp}", {"grads": grads(trainer), "row": row})
    # FSDP with the LM head one position per chunk: each chunk checkpointed and recomputed in backward,
    # outside the forward in which FSDP unsharded the root's parameters (the head among them)
    chunk, rpo.scoring.HEAD_CHUNK_ELEMENTS = rpo.scoring.HEAD_CHUNK_ELEMENTS, 1
    trainer = Trainer(config(paths, "g-chunked", "rpo-paired", contrast_scope="global", fsdp=True))
    row = trainer.accumulate_gradients()
    save("rpo-paired-global-fsdp-chunked", {"grads": grads(trainer), "row": row})
    rpo.scoring.HEAD_CHUNK_ELEMENTS = chunk
    env = DistEnv(rank, 2)  # unequal lengths on the two ranks come back in rank order
    save("gather", gather_varlen(torch.arange(rank * 10, rank * 10 + 1 + 2 * rank, dtype=torch.float64), [1, 3], env))
    # micro scope trains and resumes; FSDP checkpoints and saves through the same path
    # fsdp-bf16: pure bf16 (the paper profile's numerics) through FSDP2: bf16 shards, grads and RMSprop state
    for tag, method, kw in (("ddp", "rpo-paired", {}), ("fsdp", "rpo-paired", {"fsdp": True, "contrast_scope": "global"}),
                            ("fsdp-bf16", "sft", {"fsdp": True, "dtype": "bfloat16", "optimizer": "rmsprop",
                                                  "scheduler": "linear_warmup_constant", "lr": 1e-2})):
        base = dict(max_steps=3, epochs=2, save_every=10, **kw)
        Trainer(config(paths, f"full-{tag}", method, **base)).fit()
        assert Trainer(config(paths, f"split-{tag}", method, stop_after_steps=1, **base)).fit() is None
        ckpt = Path(paths["root"]) / f"split-{tag}.ckpt"
        save(f"ckpt-{tag}", sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*")))
        if rank == 0 and tag == "fsdp":  # what a save killed mid-way leaves behind: never to be read
            (ckpt / "step-2.tmp").mkdir()
            (ckpt / "step-2.tmp" / "meta.pt").write_bytes(b"half a file")
        dist.barrier()
        Trainer(config(paths, f"split-{tag}", method, **base)).fit()
    # the uninterrupted twin of the run a test kills under torchrun (20 steps; save_every is resume-free)
    Trainer(config(paths, "long-fsdp", "rpo-paired", **LONG_FSDP)).fit()
    # the command line as torchrun runs it (process group from the environment, torn down at the end),
    # leaving a two-rank checkpoint behind for the world-size check
    left = config(paths, "left", "dpo", stop_after_steps=1, epochs=2)
    main([f"{k}={json.dumps(v)}" for k, v in left.items() if v is not None])
    assert not dist.is_initialized()


@pytest.fixture(scope="module")
def two_ranks(paths):
    results = Path(paths["root"]) / "results"
    results.mkdir()
    start_two_ranks(_two_rank_worker, __name__, (paths, free_port(), str(results)))
    return results


@pytest.fixture(scope="module")
def one_batch_of_16(paths):
    """The single-process reference: micro scope, the 16 pairs (items) of step 1 in one micro-batch."""
    out = {}
    for method in GLOBAL_METHODS:
        trainer = Trainer(config(paths, f"ref-{method}", method, batch_size=16, gradient_accumulation_steps=1))
        row = trainer.accumulate_gradients()
        out[method] = {"grads": grads(trainer), "row": row}
    return out


@pytest.mark.parametrize("method", GLOBAL_METHODS)
def test_two_ranks_global_scope_equals_one_batch_of_16(two_ranks, one_batch_of_16, method):
    got, want = torch.load(two_ranks / f"{method}-global.pt"), one_batch_of_16[method]
    assert max_diff(got["grads"], want["grads"]) < TOLERANCE
    assert got["row"]["loss"] == pytest.approx(want["row"]["loss"], abs=1e-12)
    assert got["row"]["rewards/margins"] == pytest.approx(want["row"]["rewards/margins"], abs=1e-12)
    assert got["row"]["tokens"] == want["row"]["tokens"]  # every sequence counted once, on some rank


def test_scope_changes_the_rpo_gradient_but_not_dpo(two_ranks, one_batch_of_16):
    """Micro scope: 4 matrices of 4 x 4. Same as one 16 x 16 matrix for DPO (a mean of pair terms), not for RPO."""
    assert max_diff(torch.load(two_ranks / "dpo-micro.pt")["grads"], one_batch_of_16["dpo"]["grads"]) < TOLERANCE
    micro = torch.load(two_ranks / "rpo-paired-micro.pt")
    assert max_diff(micro["grads"], one_batch_of_16["rpo-paired"]["grads"]) > 1e-6


@pytest.mark.parametrize("run", ["rpo-paired-global-fsdp", "rpo-paired-global-fsdp-chunked"])
def test_fsdp_global_scope_equals_one_batch_of_16(two_ranks, one_batch_of_16, run):
    got = torch.load(two_ranks / f"{run}.pt")
    assert max_diff(got["grads"], one_batch_of_16["rpo-paired"]["grads"]) < TOLERANCE


def test_gather_keeps_rank_order_with_unequal_lengths(two_ranks):
    assert torch.load(two_ranks / "gather.pt").tolist() == [0.0, 10.0, 11.0, 12.0]


@pytest.mark.parametrize("tag", ["ddp", "fsdp", "fsdp-bf16"])
def test_two_ranks_train_and_resume_bit_exactly(two_ranks, paths, tag):
    root = Path(paths["root"])
    full, split = weights(root / f"full-{tag}"), weights(root / f"split-{tag}")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert {v.dtype for v in full.values()} == {torch.bfloat16 if tag == "fsdp-bf16" else torch.float64}
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(full[key], weights(paths["model"])[key])  # it trained
    rows = [json.loads(line) for line in (root / f"split-{tag}" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    run = json.loads((root / f"split-{tag}" / "run.json").read_text())
    assert (run["world_size"], run["global_batch_size"], run["resumed"]) == (2, 16, True)
    assert run["contrast_scope"] == ("global" if tag == "fsdp" else "micro")
    if tag == "fsdp-bf16":
        assert [r["lr"] for r in rows] == pytest.approx([1e-2 / 2, 1e-2, 1e-2])  # warm-up 1: lr/2, then lr


def test_fsdp_checkpoints_are_sharded(two_ranks):
    """After step 1 of 3: a DCP folder with each rank's shards and the run state, no gathered state.pt."""
    listing = torch.load(two_ranks / "ckpt-fsdp.pt")
    assert "state.pt" not in listing and "step-1/.metadata" in listing and "step-1/meta.pt" in listing
    assert {f"step-1/__{r}_0.distcp" for r in (0, 1)} <= set(listing)  # both ranks wrote shards
    assert not any(name.endswith(".tmp") for name in listing)
    assert "state.pt" in torch.load(two_ranks / "ckpt-ddp.pt")  # DDP keeps the unsharded format


def test_killed_fsdp_rank_resumes_from_the_sharded_checkpoint(two_ranks, paths):
    cfg = config(paths, "killed", "rpo-paired", **{**LONG_FSDP, "save_every": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def torchrun(**popen):
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "rpo.train",
                                 *(f"{k}={json.dumps(v)}" for k, v in cfg.items() if v is not None)], env=env,
                                stdout=subprocess.DEVNULL, **popen)

    victim, ckpt = torchrun(stderr=subprocess.DEVNULL), Path(cfg["checkpoint_dir"])
    deadline = time.time() + 180
    while not any(p.name[5:].isdigit() for p in ckpt.glob("step-*")) and time.time() < deadline \
            and victim.poll() is None:
        time.sleep(0.05)
    ranks = [int(pid) for pid in Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()]
    assert len(ranks) == 2 and victim.poll() is None, "no checkpoint while both ranks ran"
    os.kill(ranks[1], signal.SIGKILL)  # one rank dies, possibly mid-save; torchrun tears down the other
    assert victim.wait(timeout=120) != 0
    assert not (Path(cfg["out"]) / "model.safetensors").exists(), "run finished before it could be killed"
    rerun = torchrun(stderr=subprocess.PIPE)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-3000:]
    assert json.loads((Path(cfg["out"]) / "run.json").read_text())["resumed"] is True
    a, b = weights(Path(paths["root"]) / "long-fsdp"), weights(cfg["out"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_and_fsdp_train_to_the_same_weights(two_ranks, paths):
    """Both ran rpo-paired for 3 steps; FSDP in global scope, DDP in micro: compare against the right twin."""
    root = Path(paths["root"])
    single = Trainer(config(paths, "single-global", "rpo-paired", batch_size=8, gradient_accumulation_steps=2,
                            max_steps=3, epochs=2, save_every=10, contrast_scope="global")).fit()
    a, b = weights(root / "full-fsdp"), weights(single)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-9


def test_resume_with_another_world_size_is_refused(two_ranks, paths):
    assert (Path(paths["root"]) / "left.ckpt" / "state.pt").exists()
    with pytest.raises(ConfigError, match="written by 2 process"):
        Trainer(config(paths, "left", "dpo", stop_after_steps=1, epochs=2)).fit()


@pytest.mark.parametrize("method,accum", [("rpo-paired", 4), ("rpo-unpaired", 4), ("rpo-paired", 1)])
def test_one_process_global_scope_equals_one_batch_of_16(paths, one_batch_of_16, method, accum):
    """Accumulation A x 16/A in global scope = micro scope with batch 16: the gradient and one optimizer step."""
    acc = Trainer(config(paths, f"acc-{method}-{accum}", method, contrast_scope="global", batch_size=16 // accum,
                         gradient_accumulation_steps=accum))
    big = Trainer(config(paths, f"big-{method}-{accum}", method, batch_size=16, gradient_accumulation_steps=1))
    assert [i for c, _ in local_micro_batches(acc.plan, 0, accum, acc.env) for i in c] == big.plan[0][0]
    acc.accumulate_gradients()
    assert max_diff(grads(acc), one_batch_of_16[method]["grads"]) < TOLERANCE
    big.accumulate_gradients()
    acc.apply_gradients(), big.apply_gradients()
    a, b = unwrap(acc.model).state_dict(), unwrap(big.model).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE


def test_global_scope_config_errors(paths):
    with pytest.raises(ConfigError, match="'contrast_scope': global has no meaning for sft"):
        config(paths, "x", "sft", contrast_scope="global")
    with pytest.raises(ConfigError, match="'contrast_scope' must be micro or global"):
        config(paths, "x", "dpo", contrast_scope="rank")
    with pytest.raises(ConfigError, match="'dtype' must be one of"):
        config(paths, "x", "dpo", dtype="float8")
