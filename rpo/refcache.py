"""Reference log-probs, computed once over the whole training set and stored.

The preference trainer reads this file instead of holding a second model: one forward pass per
sequence for the whole run instead of one per step. The file records what it was computed from
(data hash, model fingerprint, tokenisation settings, precision) and `load_reference_cache` refuses a
stale one or one of another precision than the trainer's. Besides the summed log-probs of each side
it holds the per-token log-probs of the chosen and rejected responses (ppo's "old" log-probs), a
by-product of the same forward: `token_logps[side]` all response tokens in record order,
`token_counts[side]` each record's count; loading splits them into `tokens[side][record]`.

    python -m rpo.refcache --model results/dialogue/models/sft_seed1 \
        --records results/dialogue/data/train.jsonl --out results/dialogue/refcache/sft_seed1.pt

Under `torchrun --nproc_per_node N` each rank computes a share of the batches (whole batches, balanced
by padded length) on its own GPU and rank 0 writes the file. The batches are the ones a single
process forms, so the file is the same as one process's (bit for bit on the same kind of device).

Resumable in chunks: the batches of every `chunk_records` records (rounded up to whole batches) are
computed together and rank 0 writes them atomically to `<out>.chunks/chunk_<c>.pt`, beside a
settings.json of what they were computed from. A rerun after a kill computes only the chunks not yet
there (13B on HH: hours of forward passes), then assembles the cache and removes the folder. Chunks of
other settings (data, model, tokenisation, precision, layout, batch or chunk size) are discarded with a
message, never mixed in. The batches do not depend on the chunking, so neither does the file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from rpo.data.records import read_records
from rpo.data.tokenize import TOKENIZATION, default_truncation, tokenize_records
from rpo.distributed import (DistEnv, balanced_shards, barrier, gather_in_order, gather_objects, init_distributed,
                             rank_device, set_rank_threads, shutdown_distributed)
from rpo.errors import CacheMismatchError, ConfigError, run_cli
from rpo.io import atomic_path, atomic_write_text, sha256_file, sha256_json
from rpo.models import ATTN_IMPLEMENTATIONS, load_model, model_fingerprint, tokenizer_fingerprint
from rpo.precision import DTYPES, Precision, describe, resolve_precision
from rpo.scoring import score

SIDES = ("chosen", "rejected")  # KTO's KL sequences depend on the run's plan: the trainer scores them (rpo.kto)
TOKEN_SIDES = ("chosen", "rejected")  # per-token log-probs are kept for these (ppo's episodes)
# Records per resumable chunk (config training.reference_chunk_records): at 13B on 8 GPUs a few minutes of
# work, the most a kill loses; each chunk file holds its records' per-token log-probs (a few MB).
CHUNK_RECORDS = 4096


@torch.no_grad()
def batch_logps(model, examples: list[dict], pad_token_id: int, precision: Precision | None = None,
                packing: bool = True) -> torch.Tensor:
    """Summed response log-probs of one batch, as float32 on the CPU, under `precision`'s autocast
    (None: the rule's for dtype auto on the model's device)."""
    return batch_token_logps(model, examples, pad_token_id, precision, packing)[0]


@torch.no_grad()
def batch_token_logps(model, examples: list[dict], pad_token_id: int, precision: Precision | None = None,
                      packing: bool = True):
    """(summed log-probs, every response token's log-prob row by row, response token counts) of one
    batch, float32 on the CPU; the sums are the row sums of the same per-token values."""
    device = next(model.parameters()).device
    precision = precision or resolve_precision("auto", device)
    with precision.autocast(device):
        scores = score(model, examples, pad_token_id, packing=packing)
    return scores.sums.float().cpu(), scores.token_logps.float().cpu(), scores.counts.cpu()


def batch_plan(sequences: dict[str, list[dict]], batch_size: int) -> list[tuple[str, int]]:
    """(side, first index) of every batch, in the order one process computes them."""
    return [(side, start) for side in SIDES for start in range(0, len(sequences[side]), batch_size)]


def _computed(model, sequences, pad_token_id, batch_size, plan, indices, env, precision, packing) -> dict:
    """{plan index: (sums, token log-probs, counts)} of the batches `indices`, each rank computing a share;
    the whole result on every rank.

    Whole batches are shared out (not examples), so each batch has the composition and padding it has
    in one process and yields the same numbers. Cost of a batch: the tokens its forward computes on.
    """
    lengths = [[len(e["input_ids"]) for e in sequences[plan[k][0]][plan[k][1]:plan[k][1] + batch_size]]
               for k in indices]
    costs = [sum(n) if packing else len(n) * max(n) for n in lengths]
    mine = [indices[i] for i in balanced_shards(costs, env.world_size)[env.rank]]
    local = {}
    for k in tqdm(mine, desc="reference log-probs", disable=not env.is_main, leave=False):
        side, start = plan[k]
        local[k] = batch_token_logps(model, sequences[side][start:start + batch_size], pad_token_id, precision,
                                     packing)
        if side not in TOKEN_SIDES:  # nothing reads them: keep the file small
            local[k] = local[k][0], torch.zeros(0), torch.zeros(0, dtype=torch.long)
    order = {k: i for i, k in enumerate(indices)}
    results = gather_in_order({order[k]: r for k, r in local.items()}, len(indices), env)
    return dict(zip(indices, results))


def assemble(plan: list[tuple[str, int]], results: dict) -> dict:
    """The cache's tensors from every batch's (sums, token log-probs, counts), in record order."""
    def side_cat(side, part, empty):
        return torch.cat([results[k][part] for k, (s, _) in enumerate(plan) if s == side] or [empty])

    cache = {side: side_cat(side, 0, torch.zeros(0)) for side in SIDES}
    cache["token_logps"] = {side: side_cat(side, 1, torch.zeros(0)) for side in TOKEN_SIDES}
    cache["token_counts"] = {side: side_cat(side, 2, torch.zeros(0, dtype=torch.long)) for side in TOKEN_SIDES}
    return cache


def sharded_logps(model, sequences: dict[str, list[dict]], pad_token_id: int, batch_size: int,
                  env: DistEnv, precision: Precision | None = None, packing: bool = True) -> dict:
    """Every side's log-probs (and TOKEN_SIDES' per-token ones) in one go, each rank computing a share of
    the batches; the whole result on every rank."""
    plan = batch_plan(sequences, batch_size)
    return assemble(plan, _computed(model, sequences, pad_token_id, batch_size, plan, list(range(len(plan))), env,
                                    precision, packing))


def chunk_plan(plan: list[tuple[str, int]], batch_size: int, chunk_records: int) -> list[list[int]]:
    """The plan's batch indices chunk by chunk: chunk c holds both sides' batches of the records
    [c*R, (c+1)*R), R = chunk_records rounded up to whole batches (a batch is never split)."""
    per = -(-chunk_records // batch_size) * batch_size
    chunks: dict[int, list[int]] = {}
    for k, (_, start) in enumerate(plan):
        chunks.setdefault(start // per, []).append(k)
    return [chunks[c] for c in sorted(chunks)]


class ChunkFolder:
    """`<out>.chunks/`: settings.json and one chunk_<c>.pt per finished chunk. Rank 0's view only."""

    def __init__(self, out_path, settings: dict):
        self.path = Path(f"{out_path}.chunks")
        self.settings, self.sha = settings, sha256_json(settings)

    def file(self, c: int) -> Path:
        return self.path / f"chunk_{c:05d}.pt"

    def open(self) -> None:
        """Keep the folder if it holds chunks of these settings; discard it (saying why) otherwise."""
        manifest = self.path / "settings.json"
        if self.path.exists():
            try:
                theirs = json.loads(manifest.read_text())
            except (OSError, ValueError):
                theirs = None
            if theirs != self.settings:
                diff = "no readable settings.json" if not isinstance(theirs, dict) else "; ".join(
                    f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in self.settings.items() if theirs.get(k) != v)
                print(f"refcache: discarding {self.path} ({len(list(self.path.glob('chunk_*.pt')))} chunks computed "
                      f"for other settings: {diff})", flush=True)
                shutil.rmtree(self.path)
        if not manifest.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(manifest, json.dumps(self.settings, indent=1, sort_keys=True))

    def load(self, c: int, indices: list[int]) -> dict | None:
        """Chunk c's batch results, or None when it is missing or not what these settings need."""
        try:
            stored = torch.load(self.file(c), weights_only=True)
        except Exception:  # missing (the usual case) or unreadable: computed afresh
            return None
        ok = isinstance(stored, dict) and stored.get("settings_sha256") == self.sha and sorted(
            stored.get("batches", {})) == indices
        return stored["batches"] if ok else None

    def save(self, c: int, batches: dict) -> None:
        with atomic_path(self.file(c)) as tmp:
            torch.save({"settings_sha256": self.sha, "chunk": c, "batches": batches}, tmp)


def chunked_logps(model, sequences, pad_token_id, batch_size, env, precision, packing, folder: ChunkFolder,
                  chunk_records: int = CHUNK_RECORDS, stop_after_chunks: int | None = None) -> dict | None:
    """sharded_logps, resumable: chunks already in `folder` are read, the others computed and written by
    rank 0 one by one. The assembled cache on rank 0 (None on the others). `stop_after_chunks`: stop this
    process hard (os._exit, as a kill would) once it has written that many chunks: resume tests and drills."""
    plan = batch_plan(sequences, batch_size)
    chunks = chunk_plan(plan, batch_size, chunk_records)
    done = {}
    if env.is_main:
        folder.open()
        done = {c: batches for c, indices in enumerate(chunks) if (batches := folder.load(c, indices)) is not None}
        print(f"refcache: {len(chunks)} chunks of {chunk_records} records in {folder.path}; {len(done)} done by an "
              f"earlier run, {len(chunks) - len(done)} to compute", flush=True)
    finished = set(gather_objects(sorted(done), env)[0])  # rank 0's view, for every rank
    todo = [c for c in range(len(chunks)) if c not in finished]
    for n, c in enumerate(todo, 1):
        done[c] = _computed(model, sequences, pad_token_id, batch_size, plan, chunks[c], env, precision, packing)
        if env.is_main:
            folder.save(c, done[c])
            print(f"refcache: chunk {c + 1}/{len(chunks)} computed", flush=True)
        else:
            done.pop(c)  # only rank 0 assembles
        if stop_after_chunks and n >= stop_after_chunks and n < len(todo):
            sys.stdout.flush()
            os._exit(3)
    if not env.is_main:
        return None
    return assemble(plan, {k: r for batches in done.values() for k, r in batches.items()})


def cache_meta(records_path, model_path, max_length, max_prompt_length, truncation) -> dict:
    return {
        "data_sha256": sha256_file(records_path),
        "model_fingerprint": model_fingerprint(model_path),
        "tokenizer_sha256": tokenizer_fingerprint(model_path),
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "truncation": truncation,
        "tokenization": TOKENIZATION,  # a cache of an earlier tokenisation scores other sequences
    }


def compute_reference_cache(model_path, records_path, out_path, *, max_length=512, max_prompt_length=256,
                            truncation=None, batch_size=16, device=None, dtype="auto", packing=True,
                            env: DistEnv | None = None, fp32_master_weights=False, attn_implementation="sdpa",
                            chunk_records=CHUNK_RECORDS, stop_after_chunks=None) -> Path:
    """Compute and write the cache in the precision `dtype` and `fp32_master_weights` give on this device
    (rpo.precision: the trainer's rule, so pass the run's training keys) and the layout `packing` (rpo.scoring;
    the run's training.packing), in resumable chunks of `chunk_records` records (chunked_logps).
    Collective when `env` (default: the launcher's, see
    rpo.distributed.init_distributed) has several ranks: all call it, rank 0 writes, all return the path."""
    if isinstance(chunk_records, bool) or not isinstance(chunk_records, int) or chunk_records < 1:
        raise ConfigError(f"training.reference_chunk_records (--chunk-records): must be a positive number of "
                          f"records, got {chunk_records!r}")
    env = init_distributed(device) if env is None else env
    records = read_records(records_path)
    truncation = truncation or default_truncation(records)
    model, tokenizer = load_model(model_path, dtype=dtype, device=rank_device(device, env.local_rank),
                                  fp32_master_weights=fp32_master_weights, attn_implementation=attn_implementation,
                                  inference=True)
    model.eval()
    precision = resolve_precision(dtype, next(model.parameters()).device, fp32_master_weights)
    sequences = tokenize_records(records, tokenizer, max_length, max_prompt_length, truncation)
    meta = {**cache_meta(records_path, model_path, max_length, max_prompt_length, truncation), "n": len(records),
            "precision": precision.as_dict(), "packing": packing}
    folder = ChunkFolder(out_path, {**meta, "batch_size": batch_size, "chunk_records": chunk_records})
    cache = chunked_logps(model, sequences, tokenizer.pad_token_id, batch_size, env, precision, packing, folder,
                          chunk_records, stop_after_chunks)
    if env.is_main:
        cache["meta"] = meta
        with atomic_path(out_path) as tmp:
            torch.save(cache, tmp)
        shutil.rmtree(folder.path, ignore_errors=True)  # the cache holds it all now
    barrier(env)  # no rank reports the file before it exists
    return Path(out_path)


def load_reference_cache(path, records_path, model_path, *, max_length, max_prompt_length, truncation,
                         precision: Precision, packing: bool = True) -> dict:
    """Load the cache and refuse it unless it was computed from exactly this data, model and tokenisation,
    and in the trainer's `precision` and layout `packing` (reference and policy log-probs must share their
    numerics)."""
    recompute = "delete it and recompute it with `python -m rpo.refcache` (Snakemake: its refcache rule)"
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as exc:  # missing, truncated (zip), not a torch file (unpickling), ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CacheMismatchError(f"{path}: cannot read the reference log-prob cache ({reason}); {recompute}") from exc
    if not isinstance(cache, dict) or not isinstance(cache.get("meta"), dict) or any(
            side not in cache for side in SIDES):
        raise CacheMismatchError(f"{path}: not a reference log-prob cache (expected the keys meta and "
                                 f"{', '.join(SIDES)}); {recompute}")
    expected = cache_meta(records_path, model_path, max_length, max_prompt_length, truncation)
    stored = cache["meta"]
    wrong = [f"{key}: cache has {stored.get(key)!r}, run has {value!r}" for key, value in expected.items()
             if stored.get(key) != value]
    if wrong:
        raise CacheMismatchError(
            f"{path} was computed for other data or another reference model ({'; '.join(wrong)}); "
            "recompute it with `python -m rpo.refcache`"
        )
    if stored.get("precision") != precision.as_dict():
        raise CacheMismatchError(
            f"{path} holds reference log-probs computed in {describe(stored.get('precision'))}, but the trainer "
            f"runs in {precision.name}; recompute it with `python -m rpo.refcache --dtype <training.dtype>` on the "
            "kind of device the training uses, or train with the training.dtype the cache was computed with"
        )
    if stored.get("packing", False) != packing:  # caches from before rpo.scoring were padded
        layouts = {True: "packed", False: "padded"}
        raise CacheMismatchError(
            f"{path} holds reference log-probs of {layouts[stored.get('packing', False)]} batches, but the trainer "
            f"scores {layouts[packing]} ones (training.packing: {str(packing).lower()}); recompute it with "
            f"`python -m rpo.refcache{'' if packing else ' --no-packing'}`")
    short = [side for side in SIDES if len(cache[side]) != stored.get("n", len(cache[side]))]
    if short:  # the meta matches but the values do not cover every record: a damaged file
        raise CacheMismatchError(f"{path}: holds {len(cache[short[0]])} {short[0]} log-probs for {stored['n']} "
                                 f"records; {recompute}")
    if "token_logps" in cache:  # per record, for lookups by record index (rpo.ppo)
        cache["tokens"] = {side: torch.split(cache["token_logps"][side], cache["token_counts"][side].tolist())
                           for side in TOKEN_SIDES}
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
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the run's training.dtype: compute in the trainer's precision (rpo.precision)")
    parser.add_argument("--fp32-master-weights", action="store_true",
                        help="the run's training.fp32_master_weights: with --dtype bfloat16, fp32 weights + bf16 "
                             "autocast instead of pure bf16 (rpo.precision)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa",
                        help="the run's training.attn_implementation: transformers' attention kernel (rpo.models)")
    parser.add_argument("--no-packing", dest="packing", action="store_false",
                        help="right-padded batches (the run's training.packing: false); default packed (rpo.scoring)")
    parser.add_argument("--chunk-records", type=int, default=CHUNK_RECORDS,
                        help="records per resumable chunk (rounded up to whole batches); written to <out>.chunks/")
    parser.add_argument("--stop-after-chunks", type=int, default=None,
                        help="exit hard after writing this many chunks (resume tests and drills)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu; cuda without a "
                                                        "usable GPU is refused")
    parser.add_argument("--dist-timeout-minutes", type=float, default=None,
                        help="the run's training.dist_timeout_minutes (rpo.distributed.init_distributed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the job's torch threads, shared by its ranks (rpo.distributed.set_rank_threads)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    set_rank_threads(args.threads)
    env = init_distributed(args.device, args.dist_timeout_minutes)
    try:
        compute_reference_cache(args.model, args.records, args.out, max_length=args.max_length,
                                max_prompt_length=args.max_prompt_length, truncation=args.truncation,
                                batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                packing=args.packing, env=env, fp32_master_weights=args.fp32_master_weights,
                                attn_implementation=args.attn_implementation,
                                chunk_records=args.chunk_records, stop_after_chunks=args.stop_after_chunks)
    finally:
        shutdown_distributed(env)


if __name__ == "__main__":
    sys.exit(run_cli(main))
