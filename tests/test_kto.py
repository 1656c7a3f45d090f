"""KTO batched as the public code batches it: UnpairedPreferenceDataLoader items, each global batch
sliced over ranks (slice_and_move_batch_for_device), KL pairs = the next item of the global batch
(wrap-around), z0 = the mean over ranks of each rank's clamped estimate, 0 at step 0."""
import json
import os
from pathlib import Path

import pytest
from conftest import free_port
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from rpo import kto
from rpo.data.batching import item_batches, micro_batch_plan, sides
from rpo.data.records import PreferenceRecord
from rpo.data.tokenize import tokenize_element
from rpo.distributed import DistEnv, local_micro_batches
from rpo.losses import kto_z0
from rpo.train import Trainer, resolve_config

TOPICS = ["jam", "ponds", "vans", "chalk", "wool", "ink"]


def make_records(n=24):
    # every third prompt repeats an earlier one: a prompt with several pairs, as in TL;DR
    return [PreferenceRecord(
        id=f"k{i}", prompt=f"\n<|user|>\nsay something on {TOPICS[i % 6]} {i - i % 3}\n<|assistant|>\n",
        chosen=f"{TOPICS[i % 6]} is fine, try {i % 4}.", rejected=f"not {TOPICS[i % 6]}.",
        metadata={"truncation": "keep_end"}) for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, build_tiny_world):
    records = make_records()
    return {"records": records, **build_tiny_world(tmp_path_factory.mktemp("kto"), records, max_position=128)}


def config(world, out, **kw):
    return resolve_config({"model": str(world["model"]), "data": str(world["data"]), "out": str(out), "method": "kto",
                           "reference_cache": str(world["cache"]), "batch_size": 4, "lr": 1e-3, "optimizer": "adamw",
                           "warmup_steps": 1, "max_length": 64, "max_prompt_length": 32, "seed": 3, "threads": 1,
                           **kw})


def public_slice(batch, rank, world_size):
    """utils.slice_and_move_batch_for_device of the public code, on a list."""
    chunk = len(batch) // world_size
    return batch[chunk * rank:chunk * (rank + 1)]


def test_item_batches_are_the_public_unpaired_loader(world):
    records = world["records"]
    batches = item_batches(records, 8, epochs=2, seed=1)
    assert len(batches) == 2 * (48 // 8) and all(len(b) == 8 for b in batches)
    for epoch in (batches[:6], batches[6:]):  # every (record, status) item once an epoch
        assert sorted((i.record_index, i.desirable) for b in epoch for i in b) == \
               sorted((r, d) for r in range(24) for d in (True, False))
    assert any(sum(i.desirable for i in b) != 4 for b in batches)  # mixed as they fall, not balanced
    assert batches[:6] != batches[6:] and item_batches(records, 8, 2, seed=1) == batches
    assert all(i.response == (records[i.record_index].chosen if i.desirable else records[i.record_index].rejected)
               for b in batches for i in b)
    # batches of one status are skipped, as the public trainer skips them; the rest are kept in order
    small = item_batches(records, 2, epochs=3, seed=0)
    assert all(len({i.desirable for i in b}) == 2 for b in small) and len(small) < 3 * 24


@pytest.mark.parametrize("world_size,accum,batch", [(2, 1, 4), (4, 1, 2), (2, 2, 2)])
def test_rank_and_micro_batch_slices_equal_the_public_code(world, world_size, accum, batch):
    """Step s is the public global batch s (batch x accum x ranks items); rank r trains on the public
    slice r of it, split into its `accum` micro-batches in order."""
    records, global_batch = world["records"], batch * accum * world_size
    cfg = {"method": "kto", "batch_size": batch, "gradient_accumulation_steps": accum, "epochs": 1, "seed": 1}
    plan = micro_batch_plan(cfg, records, world_size)
    batches = item_batches(records, global_batch, 1, seed=1)
    assert len(plan) == len(batches) * accum * world_size
    for step, global_items in enumerate(batches):
        for rank in range(world_size):
            mine = local_micro_batches(plan, step, accum, DistEnv(rank, world_size))
            expected = public_slice(global_items, rank, world_size)
            assert mine == [sides(expected[k * batch:(k + 1) * batch]) for k in range(accum)]
    # the data order depends on the global batch only, not on how ranks and accumulation make it up
    single = micro_batch_plan({**cfg, "gradient_accumulation_steps": accum * world_size}, records, 1)
    assert single == plan


def test_kl_pairs_are_the_next_item_of_the_global_batch(world, tmp_path):
    trainer = Trainer(config(world, tmp_path / "run", gradient_accumulation_steps=2))  # global batch 8 on 1 rank
    tok, cfg = trainer.tokenizer, trainer.cfg
    batches = item_batches(world["records"], 8, 1, seed=cfg["seed"])
    assert len(trainer.kl_sequences) == 2 * trainer.total_steps
    for step in range(trainer.total_steps):
        items = batches[step]
        for k in range(2):
            for j in range(4):
                p = 4 * k + j
                partner = items[(p + 1) % 8]  # the last item's partner is the batch's first
                def element(prompt, response):
                    return tokenize_element(tok, prompt, response, max_length=64, max_prompt_length=32,
                                            truncation=trainer.truncation)
                # the public loader: the item's prompt_text with the partner's target_text (" " + EOS included)
                want = element(element(items[p].prompt, items[p].response).prompt_text,
                               element(partner.prompt, partner.response).response_text).example
                assert trainer.kl_sequences[2 * step + k][j] == want
        assert sides(items[:4]) == trainer.plan[2 * step] and sides(items[4:]) == trainer.plan[2 * step + 1]


def _mean_worker(rank, port, estimates, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = [kto_z0(torch.tensor(p, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)) for p, r in estimates[rank]]
        z0 = kto.mean_over_ranks(mine, DistEnv(rank, 2), "cpu")
        Path(out, f"{rank}.json").write_text(json.dumps(z0))
    finally:
        dist.destroy_process_group()


def test_z0_is_the_mean_over_ranks_of_clamped_estimates(tmp_path):
    """trainers.py KTOTrainer.loss: each rank's mean(policy - reference) clamped at 0, all_reduce SUM /
    world_size, clamped again. Rank 0's estimate is negative (clamped to 0), rank 1's is 0.6: z0 = 0.3
    on both ranks (clamping the plain mean, -0.2, would give 0)."""
    port = free_port()
    estimates = [[([-3.0, -2.0], [-2.0, -1.0])], [([-1.0, -1.2], [-1.6, -1.8])]]  # means -1.0 and +0.6
    mp.spawn(_mean_worker, args=(port, estimates, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert got == [pytest.approx(0.3, abs=1e-12)] * 2
    # one process with two micro-batches (accumulation standing in for ranks) gives the same z0
    one = [kto_z0(torch.tensor(p, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)) for rank in estimates for p, r in rank]
    assert kto.mean_over_ranks(one, DistEnv(0, 1), "cpu") == pytest.approx(0.3, abs=1e-12)


def test_z0_is_zero_at_step_0_and_a_resumed_run_is_bit_identical(world, tmp_path):
    full = Trainer(config(world, tmp_path / "a", max_steps=4, save_every=2, gradient_accumulation_steps=2)).fit()
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rewards/KL_estimate"] == 0.0  # policy == reference: the KL sequences' log-probs agree exactly
    cfg_b = config(world, tmp_path / "b", max_steps=4, save_every=2, gradient_accumulation_steps=2,
                   stop_after_steps=3)
    assert Trainer(cfg_b).fit() is None
    state = torch.load(Path(cfg_b["checkpoint_dir"]) / "state.pt", weights_only=False)
    assert len(state["reference_kl"]) == 8  # 4 steps x 2 micro-batches: the initial weights' KL log-probs
    resumed = Trainer({**cfg_b, "stop_after_steps": None}).fit()
    a, b = load_file(Path(full) / "model.safetensors"), load_file(Path(resumed) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["rewards/KL_estimate"] for r in again] == [r["rewards/KL_estimate"] for r in rows]
