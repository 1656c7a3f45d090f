"""Steps 3 and 4 of scripts/gpu_check.sh: rpo.train.Trainer on SmolLM2-135M under FSDP2 with activation checkpointing
in both numerics, and a sharded checkpoint's save and resume (rpo.checkpoint, torch.distributed.checkpoint).

FSDP2 on one GPU: rpo.train shards (and rpo.checkpoint writes sharded checkpoints) only on more than one rank,
and NCCL refuses two ranks on one GPU. So these steps run the real Trainer on a torchrun process group of one
rank that the trainer is told is a multi-rank one (`one_rank_group`): fully_shard, the NCCL collectives, the
full-state gather of the final save and torch.distributed.checkpoint all run.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from gpu_check_steps import SIZES, attention, free_memory, gib, smollm2, work_dir
from rpo.distributed import DistEnv, check_device, full_state_dicts


def training_world(args, work: Path, n_pairs: int, model: Path) -> dict:
    """Records of fixed lengths, their tfidf-svd prompt embeddings, and the cut (rpo.train keys)."""
    from bench_step import synthetic_records
    from rpo.data.records import write_records
    from rpo.embed import embed_prompts

    s = SIZES[args.device]
    data = work / "train.jsonl"
    write_records(data, synthetic_records(n_pairs, prompt_words=s["prompt_words"], chosen_words=s["response_words"],
                                          rejected_words=s["response_words"] - 2))
    cut = {"max_length": s["max_length"], "max_prompt_length": s["max_prompt_length"]}
    emb = embed_prompts(data, "tfidf-svd", work / "emb.pt", model_path=model, **cut)
    return {"model": str(model), "data": str(data), "embeddings": str(emb), "embedder": "tfidf-svd", **cut}


def trainer_config(args, world: dict, work: Path, name: str, fp32_master: bool, max_steps: int, **extra) -> dict:
    """rpo-paired through the paper profile's training keys: bf16 numerics, FSDP2, activation checkpointing,
    RMSprop at lr 5e-7; its reference cache computed here in the same precision."""
    from rpo.refcache import compute_reference_cache
    from rpo.train_config import resolve_config

    attn = attention(args.device)
    cache = work / f"ref_{'fp32_master' if fp32_master else 'pure_bf16'}.pt"
    if not cache.exists():
        compute_reference_cache(world["model"], world["data"], cache, max_length=world["max_length"],
                                max_prompt_length=world["max_prompt_length"], batch_size=2 * SIZES[args.device]["pairs"],
                                device=args.device, dtype="bfloat16", fp32_master_weights=fp32_master,
                                attn_implementation=attn, env=DistEnv())
    return resolve_config({**world, "out": str(work / name), "method": "rpo-paired", "reference_cache": str(cache),
                           "batch_size": SIZES[args.device]["pairs"], "device": args.device, "dtype": "bfloat16",
                           "fp32_master_weights": fp32_master, "fsdp": True, "activation_checkpointing": True,
                           "attn_implementation": attn, "optimizer": "rmsprop", "lr": 5e-7, "max_steps": max_steps,
                           "save_every": 1000, "threads": 2 if args.device == "cpu" else None, **extra})


@dataclasses.dataclass(frozen=True)
class OneRankGroup(DistEnv):
    """A process group of one rank that rpo.train treats as multi-rank (FSDP2, sharded checkpoints)."""

    @property
    def active(self) -> bool:
        return True


@contextmanager
def one_rank_group(device: str):
    """Within: rpo.train.Trainer joins this torchrun process group of one rank (nccl on CUDA) as OneRankGroup."""
    import torch.distributed as dist

    from rpo import train

    check_device(device)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if dist.get_world_size() != 1:
        raise RuntimeError(f"run this step under torchrun --nproc_per_node 1 (world size {dist.get_world_size()})")
    try:
        with mock.patch.object(train, "init_distributed", lambda device, timeout_minutes=None: OneRankGroup()):
            yield
    finally:
        dist.destroy_process_group()


def step_fsdp_train(args) -> dict:
    import bench_mfu
    from torch.distributed.fsdp import FSDPModule

    from rpo.memory import checkpointed_blocks
    from rpo.train import Trainer

    s, figures = SIZES[args.device], {"attention": attention(args.device)}
    with tempfile.TemporaryDirectory(dir=work_dir(args)) as tmp, one_rank_group(args.device):
        work, model = Path(tmp), smollm2(args)
        world = training_world(args, work, s["pairs"] * (s["steps"] + s["warmup"]), model)
        for name, master in (("pure_bf16", False), ("fp32_master", True)):
            trainer = Trainer(trainer_config(args, world, work, name, master, s["steps"] + s["warmup"]))
            weights = next(trainer.model.parameters())
            layers = trainer.model.config.num_hidden_layers
            if not isinstance(trainer.model, FSDPModule) or type(weights).__name__ != "DTensor":
                raise RuntimeError("the trainer did not shard the model with FSDP2")
            if checkpointed_blocks(trainer.model) != layers:
                raise RuntimeError(f"{checkpointed_blocks(trainer.model)} of {layers} blocks checkpointed")
            if weights.dtype != (torch.float32 if master else torch.bfloat16):
                raise RuntimeError(f"{name}: weights are {weights.dtype}")
            trainer.model.train()
            n_params = bench_mfu.non_embedding_params(trainer.model)
            head, hidden = trainer.model.get_output_embeddings().weight.numel(), trainer.model.config.hidden_size
            result = bench_mfu.measure(trainer, s["steps"], s["warmup"], lambda batch: bench_mfu.batch_flops(
                batch, n_params, layers, hidden, head))
            trainer.fit()  # every step done: only the final save (FSDP2's full-state gather, save_pretrained)
            if not (Path(trainer.cfg["out"]) / "config.json").is_file():
                raise RuntimeError(f"{name}: no final model written")
            peak, _ = bench_mfu.peak_flops(bench_mfu.device_name(args.device), None)
            figures[name] = {"precision": trainer.precision.name, "step_time_s": round(result["step_time_s"], 4),
                             "tokens_per_step": result["tokens_per_step"], "tokens_per_s": round(result["tokens_per_s"]),
                             "mfu": round(result["flops_per_s"] / peak, 4) if peak else None,
                             "max_memory_allocated_gib": gib(result["peak_memory_bytes"])}
            del trainer, weights
            free_memory()
    figures["summary"] = "; ".join(f"{k}: {v['step_time_s']:.3g} s/step, {v['tokens_per_s']:,} tokens/s, "
                                   f"{v['max_memory_allocated_gib']} GiB peak" for k, v in figures.items()
                                   if isinstance(v, dict))
    return figures


def state_differences(saved, loaded, where="") -> list[str]:
    """Where two nested state dicts differ (keys, values; tensors bit for bit)."""
    if isinstance(saved, dict) and isinstance(loaded, dict):
        if set(saved) != set(loaded):
            return [f"{where}: keys {sorted(map(str, set(saved) ^ set(loaded)))[:5]}"]
        return [d for key in saved for d in state_differences(saved[key], loaded[key], f"{where}/{key}")]
    if isinstance(saved, (list, tuple)) and isinstance(loaded, (list, tuple)):
        if len(saved) != len(loaded):
            return [f"{where}: {len(saved)} vs {len(loaded)} items"]
        return [d for i, (a, b) in enumerate(zip(saved, loaded)) for d in state_differences(a, b, f"{where}/{i}")]
    if isinstance(saved, torch.Tensor) and isinstance(loaded, torch.Tensor):
        same = saved.shape == loaded.shape and saved.dtype == loaded.dtype and torch.equal(saved, loaded)
        return [] if same else [where]
    return [] if saved == loaded else [where]


def step_checkpoint(args) -> dict:
    from safetensors.torch import load_file

    from rpo.checkpoint import DCP_METADATA, META, latest
    from rpo.train import Trainer

    s, total = SIZES[args.device], 4
    with tempfile.TemporaryDirectory(dir=work_dir(args)) as tmp, one_rank_group(args.device):
        work, model = Path(tmp), smollm2(args)
        world = training_world(args, work, s["pairs"] * total, model)
        Trainer(trainer_config(args, world, work, "straight", False, total)).fit()
        cfg = trainer_config(args, world, work, "resumed", False, total)
        first = Trainer(cfg)
        first.model.train()
        for _ in range(total // 2):
            first.train_step()
        start = time.perf_counter()
        first.save_checkpoint()  # sharded: torch.distributed.checkpoint, rpo.checkpoint
        save_s = time.perf_counter() - start
        folder = latest(Path(cfg["checkpoint_dir"]))
        if folder is None or folder.name != f"step-{total // 2}" or not all(
                (folder / name).is_file() for name in (META, DCP_METADATA)):
            raise RuntimeError(f"no complete sharded checkpoint step-{total // 2} in {cfg['checkpoint_dir']}")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        saved = full_state_dicts(first.model, first.optimizer)
        del first
        free_memory()
        second = Trainer(cfg)
        start = time.perf_counter()
        if not second.maybe_resume() or second.step != total // 2:
            raise RuntimeError(f"resume did not find the step-{total // 2} checkpoint")
        load_s = time.perf_counter() - start
        differ = state_differences(saved, full_state_dicts(second.model, second.optimizer))
        if differ:
            raise RuntimeError(f"the resumed state differs from the saved one at {len(differ)} entries: {differ[:5]}")
        second.fit()  # resumes again and finishes
        straight = load_file(work / "straight" / "model.safetensors")
        resumed = load_file(work / "resumed" / "model.safetensors")
        diff = max((straight[k].float() - resumed[k].float()).abs().max().item() for k in straight)
    return {"checkpoint_bytes": size, "save_s": round(save_s, 2), "load_s": round(load_s, 2),
            "resumed_state_equals_saved": True, "final_weights_max_abs_diff_resumed_vs_straight": diff,
            "summary": f"sharded save {save_s:.1f} s ({size / 2 ** 20:.0f} MiB), load {load_s:.1f} s, state equal; "
                       f"resumed vs uninterrupted final weights max |diff| {diff:.3g}"}
