"""Sample responses to evaluation prompts (paper: 256 test prompts, nucleus sampling, top_p 0.95).

    prompts = select_prompts(read_records("test.jsonl"), n=256, seed=1)   # same prompts for every model
    generate("results/hh/models/dpo_bs8_seed1", prompts, "samples.jsonl", max_length=512, seed=1)

Prompts are tokenised exactly as in training (rpo.data.tokenize.prompt_ids: no special tokens, cut to
max_prompt_length keeping the side the record's metadata["truncation"] names, a keep_start prompt still
ending with its assistant marker), left-padded, and decoded with the KV cache in the trainer's precision. Each batch
reseeds the RNG with seed + batch index, so a batch's samples do not depend on what earlier batches
drew. Output rows: id, prompt, response, chosen (the dataset's chosen response or reference), metadata,
model, sampling.

Length budget: `max_new_tokens` per response, or (the public code's) `max_length` tokens of prompt plus
response. The public code passes max_length to HF generate on a left-padded batch, which counts the
padded width, so a batch's responses get max_length minus its longest prompt (the budget each row's
sampling["new_token_budget"] records). Stopping is EOS only (the tokenizer's; no stop strings), the pad
token is EOS where the tokenizer has none (rpo.models), and decoding skips special tokens.

Under `torchrun --nproc_per_node N` the batches (formed over all prompts, as one process forms them)
go round-robin to the ranks, each on its own GPU; rank 0 writes the rows in prompt order. A batch's
prompts, padding and seed do not depend on N, so the file is the same as one process's (byte for
byte on the same kind of device).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from rpo.data.tokenize import pair_prompt_ids, prompt_ids
from rpo.distributed import (DistEnv, barrier, gather_in_order, init_distributed, rank_device, set_rank_threads,
                             shutdown_distributed)
from rpo.errors import ConfigError, run_cli
from rpo.io import read_jsonl, write_jsonl
from rpo.precision import DTYPES, resolve_precision


def _as_row(record) -> dict:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def select_prompts(records: Sequence, n: int, seed: int) -> list[dict]:
    """The first n unique prompts after a seeded shuffle, as rows {id, prompt, chosen, metadata}.

    `records` are PreferenceRecords / EvalPrompts or their dict rows; the reference is `chosen` or
    `reference`. A prompt that occurs in several pairs (TL;DR has many per post) is kept once, with its
    first pair's chosen response. Fewer than n unique prompts: all of them are returned.
    """
    if n < 1:
        raise ConfigError(f"n: must be a positive number of prompts, got {n}")
    unique: dict[str, dict] = {}
    for record in map(_as_row, records):
        if record["prompt"] not in unique:
            unique[record["prompt"]] = {
                "id": record["id"],
                "prompt": record["prompt"],
                "chosen": record.get("chosen", record.get("reference")),
                "rejected": record.get("rejected"),  # with chosen, decides the prompt cut as in training
                "metadata": dict(record.get("metadata") or {}),
            }
    rows = list(unique.values())
    random.Random(seed).shuffle(rows)
    return rows[:n]


def _prompt_as_trained(tokenizer, row: dict, max_prompt_length, train_max_length) -> list[int]:
    truncation = (row.get("metadata") or {}).get("truncation", "keep_end")
    responses = [r for r in (row.get("chosen"), row.get("rejected")) if r]
    if train_max_length is None or max_prompt_length is None or not responses:
        return prompt_ids(tokenizer, row["prompt"], max_prompt_length, truncation)
    return pair_prompt_ids(tokenizer, row["prompt"], responses, train_max_length, max_prompt_length, truncation)


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def generate(
    model_path,
    prompts: list[dict],
    out_path,
    max_new_tokens: int = 256,
    max_length: int | None = None,
    top_p: float = 0.95,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 1,
    do_sample: bool = True,
    max_prompt_length: int | None = 256,
    train_max_length: int | None = None,
    dtype="auto",
    device=None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> list[dict]:
    """Sample one response per prompt row (from select_prompts) and write the samples JSONL.

    Collective when `env` (default: the launcher's, see rpo.distributed.init_distributed) has several
    ranks: all call it with the same prompts, rank 0 writes, all return every row. `dtype` is a training.dtype
    name: generation runs in the trainer's precision (rpo.precision), fp32 weights + bf16 autocast on a bf16 GPU.
    `max_length` (prompt + response tokens, the batch's padded width counting) replaces `max_new_tokens` when given.
    `train_max_length` (training.max_length): a prompt is cut to max_prompt_length only when it and its
    pair's longer response exceed it, as training cuts it (rpo.data.tokenize.pair_prompt_ids); None: always.
    """
    from rpo.models import load_model

    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch_size and max_new_tokens: must be positive, got {batch_size}, {max_new_tokens}")
    if max_length is not None and (max_length < 1 or (max_prompt_length or 0) >= max_length):
        raise ConfigError(f"generation.max_length: {max_length} leaves no room for a response after "
                          f"max_prompt_length {max_prompt_length}")
    env = init_distributed(device) if env is None else env
    model, tokenizer = load_model(model_path, dtype=dtype, device=rank_device(device, env.local_rank))  # eval mode
    precision = resolve_precision(dtype, model.device)
    sampling = {"do_sample": do_sample, "max_new_tokens": None if max_length else max_new_tokens,
                "max_length": max_length, "max_prompt_length": max_prompt_length, "train_max_length": train_max_length,
                "seed": seed, "batch_size": batch_size}
    # eos_token_id: the tokenizer's EOS is the only stop (a generation_config may list more, e.g. chat ends).
    options = {"do_sample": do_sample, "use_cache": True, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    if do_sample:
        sampling.update(top_p=top_p, temperature=temperature)
        # top_k=0 turns off any top-k default a model's generation_config carries: pure nucleus sampling.
        options.update(top_p=top_p, temperature=temperature, top_k=0)
    starts = range(0, len(prompts), batch_size)
    mine = range(env.rank, len(starts), env.world_size)  # whole batches, round-robin: same seeds for any N
    local = {}
    for batch_index in tqdm(mine, desc="generating", disable=not (progress and env.is_main)):
        batch = prompts[starts[batch_index]:starts[batch_index] + batch_size]
        ids = [_prompt_as_trained(tokenizer, p, max_prompt_length, train_max_length) for p in batch]
        # a cut prompt is recorded as the model saw it (traceable; the keep_start cut keeps its marker)
        cut = [tokenizer.decode(i) if len(i) < len(prompt_ids(tokenizer, p["prompt"], None, "keep_end")) else None
               for i, p in zip(ids, batch)]
        input_ids, attention_mask = _left_pad(ids, tokenizer.pad_token_id)
        budget = max_length - input_ids.shape[1] if max_length else max_new_tokens
        if budget < 1:  # only without max_prompt_length: a prompt as long as the whole budget
            raise ConfigError(f"generation.max_length: {max_length} tokens, but batch {batch_index}'s prompts are "
                              f"{input_ids.shape[1]} tokens wide; set max_prompt_length")
        torch.manual_seed(seed + batch_index)
        with torch.no_grad(), precision.autocast(model.device):
            output = model.generate(input_ids=input_ids.to(model.device), max_new_tokens=budget,
                                    attention_mask=attention_mask.to(model.device), **options)
        # Left padding puts every prompt's end at the same column: new tokens start there.
        new_tokens = output[:, input_ids.shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        # where each response stopped: its first EOS (generate pads after it), or the budget
        at_eos = new_tokens == tokenizer.eos_token_id
        lengths = [int(row.nonzero()[0, 0]) if row.any() else budget for row in at_eos]
        local[batch_index] = [{
            "id": prompt["id"],
            "prompt": prompt["prompt"],
            "response": text.strip(),
            "chosen": prompt.get("chosen"),
            "metadata": prompt.get("metadata") or {},
            "model": str(model_path),
            "sampling": {**sampling, "new_token_budget": budget},
            "new_tokens": length,  # before EOS (not counting it)
            "stopped_at_eos": bool(stopped.any()),
            **({"cut_prompt": shown} if shown is not None else {}),
        } for prompt, text, length, stopped, shown in zip(batch, texts, lengths, at_eos, cut)]
    rows = [row for batch_rows in gather_in_order(local, len(starts), env) for row in batch_rows]
    if env.is_main:
        write_jsonl(out_path, rows)
    barrier(env)  # no rank reports the file before it exists
    return rows


def read_prompt_records(path) -> list:
    """PreferenceRecords, or EvalPrompts when the rows carry a `reference` instead of a pair."""
    from rpo.data.records import read_eval_prompts, read_records

    rows = read_jsonl(path)
    is_eval = bool(rows) and "reference" in rows[0] and "rejected" not in rows[0]
    return read_eval_prompts(path) if is_eval else read_records(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rpo.generate", description="Sample responses to test prompts.")
    parser.add_argument("--model", required=True, type=Path, help="save_pretrained folder")
    parser.add_argument("--records", required=True, type=Path, help="PreferenceRecord or EvalPrompt JSONL")
    parser.add_argument("--out", required=True, type=Path, help="samples JSONL")
    # --n alone is ambiguous to torchrun's own parser (--nnodes, --nproc-per-node, ...): say --n-prompts there.
    parser.add_argument("--n-prompts", "--n", dest="n", type=int, default=256,
                        help="number of test prompts (seeded shuffle)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompt-seed", type=int, default=None, help="seed of the prompt shuffle (default --seed)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=None,
                        help="prompt + response token budget (the public code's 512); replaces --max-new-tokens")
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--train-max-length", type=int, default=None,
                        help="training max_length: cut a prompt only when it and its pair's longer response exceed it, "
                             "as training does (default: always cut to --max-prompt-length)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of nucleus sampling")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the run's training.dtype: generate in the trainer's precision (rpo.precision)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="the job's torch threads, shared by its ranks (rpo.distributed.set_rank_threads)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prompt_seed = args.seed if args.prompt_seed is None else args.prompt_seed
    # Every rank selects the same prompts (a seeded shuffle of the same file) before any sharding.
    prompts = select_prompts(read_prompt_records(args.records), args.n, prompt_seed)
    set_rank_threads(args.threads)
    env = init_distributed(args.device)
    try:
        rows = generate(args.model, prompts, args.out, max_new_tokens=args.max_new_tokens,
                        max_length=args.max_length, top_p=args.top_p,
                        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                        do_sample=not args.greedy, max_prompt_length=args.max_prompt_length,
                        train_max_length=args.train_max_length, dtype=args.dtype,
                        device=args.device, env=env)
    finally:
        shutdown_distributed(env)
    if env.is_main:
        print(f"wrote {len(rows)} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
