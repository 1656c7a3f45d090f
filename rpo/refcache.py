"""Reference log-probs, computed once over the whole training set and stored.

The preference trainer reads this file instead of holding a second model: one forward pass per
sequence for the whole run instead of one per step. The file records what it was computed from
(data hash, model fingerprint, tokenisation settings) and `load_reference_cache` refuses a stale one.

    python -m rpo.refcache --model results/dialogue/models/sft_seed1 \
        --records results/dialogue/data/train.jsonl --out results/dialogue/refcache/sft_seed1.pt

Under `torchrun --nproc_per_node N` each rank computes a share of the batches (whole batches, balanced
by padded length) on its own GPU and rank 0 writes the file. The batches are the ones a single
process forms, so the file is the same as one process's (bit for bit on the same kind of device).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from rpo.data.records import PreferenceRecord, read_records
from rpo.data.tokenize import collate, tokenize_example
from rpo.distributed import (DistEnv, balanced_shards, barrier, gather_in_order, init_distributed, rank_device,
                             shutdown_distributed)
from rpo.errors import CacheMismatchError
from rpo.io import atomic_path, sha256_file
from rpo.models import load_model, model_fingerprint, response_logps

SIDES = ("chosen", "rejected", "kl")


def default_truncation(records: list[PreferenceRecord]) -> str:
    return records[0].metadata.get("truncation", "keep_end") if records else "keep_end"


def kl_partner(index: int, n: int) -> int:
    """The record whose chosen response is paired with prompt `index` for KTO's KL estimate."""
    return (index + 1) % n


def tokenize_records(records, tokenizer, max_length, max_prompt_length, truncation) -> dict[str, list[dict]]:
    """Tokenise every record's chosen, rejected and mismatched (KL) sequence once."""
    def tok(prompt, response):
        return tokenize_example(tokenizer, prompt, response, max_length, max_prompt_length, truncation)

    n = len(records)
    return {
        "chosen": [tok(r.prompt, r.chosen) for r in records],
        "rejected": [tok(r.prompt, r.rejected) for r in records],
        "kl": [tok(r.prompt, records[kl_partner(i, n)].chosen) for i, r in enumerate(records)],
    }


@torch.no_grad()
def batch_logps(model, examples: list[dict], pad_token_id: int) -> torch.Tensor:
    """Summed response log-probs of one batch, as float32 on the CPU."""
    device = next(model.parameters()).device
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    batch = {k: v.to(device) for k, v in collate(examples, pad_token_id).items()}
    # The same precision as the trainer's forward: fp32 weights, bf16 autocast on capable GPUs.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logps, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return logps.float().cpu()


def batch_plan(sequences: dict[str, list[dict]], batch_size: int) -> list[tuple[str, int]]:
    """(side, first index) of every batch, in the order one process computes them."""
    return [(side, start) for side in SIDES for start in range(0, len(sequences[side]), batch_size)]


def sharded_logps(model, sequences: dict[str, list[dict]], pad_token_id: int, batch_size: int,
                  env: DistEnv) -> dict[str, torch.Tensor]:
    """Every side's log-probs, each rank computing a share of the batches; the whole result on every rank.

    Whole batches are shared out (not examples), so each batch has the composition and padding it has
    in one process and yields the same numbers. Cost of a batch: its padded token count.
    """
    plan = batch_plan(sequences, batch_size)
    costs = [len(batch) * max(len(e["input_ids"]) for e in batch)
             for batch in (sequences[side][start:start + batch_size] for side, start in plan)]
    mine = balanced_shards(costs, env.world_size)[env.rank]
    local = {}
    for k in tqdm(mine, desc="reference log-probs", disable=not env.is_main, leave=False):
        side, start = plan[k]
        local[k] = batch_logps(model, sequences[side][start:start + batch_size], pad_token_id)
    results = gather_in_order(local, len(plan), env)
    return {side: torch.cat([r for (s, _), r in zip(plan, results) if s == side] or [torch.zeros(0)])
            for side in SIDES}


def cache_meta(records_path, model_path, max_length, max_prompt_length, truncation) -> dict:
    return {
        "data_sha256": sha256_file(records_path),
        "model_fingerprint": model_fingerprint(model_path),
        # Log-probs depend on the tokenisation too, which the model fingerprint does not cover.
        "tokenizer_sha256": sha256_file(Path(model_path) / "tokenizer.json")
        if (Path(model_path) / "tokenizer.json").exists() else None,
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "truncation": truncation,
    }


def compute_reference_cache(model_path, records_path, out_path, *, max_length=512, max_prompt_length=256,
                            truncation=None, batch_size=16, device=None, env: DistEnv | None = None) -> Path:
    """Compute and write the cache. Collective when `env` (default: the launcher's, see
    rpo.distributed.init_distributed) has several ranks: all call it, rank 0 writes, all return the path."""
    env = init_distributed(device) if env is None else env
    records = read_records(records_path)
    truncation = truncation or default_truncation(records)
    model, tokenizer = load_model(model_path, dtype="float32", device=rank_device(device, env.local_rank))
    model.eval()
    sequences = tokenize_records(records, tokenizer, max_length, max_prompt_length, truncation)
    cache = sharded_logps(model, sequences, tokenizer.pad_token_id, batch_size, env)
    if env.is_main:
        cache["meta"] = cache_meta(records_path, model_path, max_length, max_prompt_length, truncation)
        cache["meta"]["n"] = len(records)
        with atomic_path(out_path) as tmp:
            torch.save(cache, tmp)
    barrier(env)  # no rank reports the file before it exists
    return Path(out_path)


def load_reference_cache(path, records_path, model_path, *, max_length, max_prompt_length, truncation) -> dict:
    """Load the cache and refuse it unless it was computed from exactly this data, model and tokenisation."""
    try:
        cache = torch.load(path, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CacheMismatchError(f"{path}: cannot read the reference log-prob cache: {exc}") from exc
    expected = cache_meta(records_path, model_path, max_length, max_prompt_length, truncation)
    stored = cache.get("meta", {})
    wrong = [f"{key}: cache has {stored.get(key)!r}, run has {value!r}" for key, value in expected.items()
             if stored.get(key) != value]
    if wrong:
        raise CacheMismatchError(
            f"{path} was computed for other data or another reference model ({'; '.join(wrong)}); "
            "recompute it with `python -m rpo.refcache`"
        )
    return cache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rpo.refcache", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="reference model folder (the SFT model)")
    parser.add_argument("--records", required=True, help="training records (JSONL)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--truncation", choices=["keep_end", "keep_start"], default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = init_distributed()
    try:
        compute_reference_cache(args.model, args.records, args.out, max_length=args.max_length,
                                max_prompt_length=args.max_prompt_length, truncation=args.truncation,
                                batch_size=args.batch_size, env=env)
    finally:
        shutdown_distributed(env)


if __name__ == "__main__":
    main()
