"""Sample responses to evaluation prompts (paper: 256 test prompts in its loader's order, top_k 50 then
top_p 0.95, the temperature of the model's generation config, batches of 32).

    prompts = select_prompts(read_records("test.jsonl"), n=256, seed=1)   # same prompts for every model
    generate("results/hh/models/dpo_bs8_seed1", prompts, "samples.jsonl", max_length=512, seed=1)

Prompts are tokenised as the public code's SFT test loader tokenises them (rpo.data.tokenize.tokenize_element
of the prompt with its chosen response: cut to max_prompt_length on the side the record's
metadata["truncation"] names only when the two exceed training's max_length, decoded, and re-tokenised
with the tokenizer's special tokens), left-padded, and decoded with the KV cache in the trainer's precision. Each batch
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
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from rpo.data.tokenize import tokenize_element, tokenize_prompt
from rpo.distributed import (DistEnv, barrier, gather_in_order, init_distributed, rank_device, set_rank_threads,
                             shutdown_distributed)
from rpo.errors import ConfigError, run_cli
from rpo.io import read_jsonl, write_jsonl
from rpo.precision import DTYPES, resolve_precision


def _as_row(record) -> dict:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def select_prompts(records: Sequence, n: int, seed: int) -> list[dict]:
    """The public code's test prompts: its SFT loader's first n, as rows {id, prompt, chosen, rejected, metadata}.

    As eval.py's sample mode draws them (dataloader.py, SFTDataLoader.__iter__, after BasicTrainer.__init__'s
    `random.seed(seed)`): the unique prompts in the order they first occur, shuffled, then the list of their
    examples shuffled again with the same generator; the first n. `records` are PreferenceRecords /
    EvalPrompts or their dict rows; the reference is `chosen` or `reference`. A prompt that occurs in several
    pairs (TL;DR has many per post) is kept once, with its first pair's chosen response (the loader's
    sft_index 0). Fewer than n unique prompts: all of them (the public loader would start a second epoch).
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
                "rejected": record.get("rejected"),
                "metadata": dict(record.get("metadata") or {}),
            }
    rng = random.Random(seed)  # the global generator after random.seed(seed), as the public code uses it
    prompts = list(unique)
    rng.shuffle(prompts)  # the unique prompts, before the loader builds its flat list
    rows = [unique[prompt] for prompt in prompts]
    rng.shuffle(rows)  # the epoch's shuffle of the flat data
    return rows[:n]


def resolve_temperature(model, model_path, temperature: float | None) -> float:
    """`temperature`, or (None) the model's generation config's, as the public code samples: it passes no
    temperature to generate. A config without one would sample at transformers' default 1.0 there; here
    that silent default is refused, so a profile states it (generation.temperature_by_model)."""
    if temperature is None:
        temperature = getattr(getattr(model, "generation_config", None), "temperature", None)
        if temperature is None:
            raise ConfigError(f"generation.temperature: the generation config of {model_path} sets no temperature; "
                              f"set generation.temperature_by_model.<model> (or generation.temperature), e.g. 1.0, "
                              f"transformers' default (--temperature by hand)")
    if not temperature > 0:
        raise ConfigError(f"generation.temperature: must be > 0, got {temperature} (model {model_path})")
    return float(temperature)


def _prompt_element(tokenizer, row: dict, max_prompt_length, train_max_length):
    """The test loader's element of the row: its prompt with its chosen response (the public code's SFT
    loader on the test split); with no training max_length or no chosen text, the prompt alone, cut
    whenever longer than max_prompt_length. Its prompt_ids are the generation input, its prompt_text
    the prompt as cut."""
    truncation = (row.get("metadata") or {}).get("truncation", "keep_end")
    if train_max_length is None or max_prompt_length is None or not row.get("chosen"):
        return tokenize_prompt(tokenizer, row["prompt"], max_prompt_length=max_prompt_length, truncation=truncation)
    return tokenize_element(tokenizer, row["prompt"], row["chosen"], max_length=train_max_length,
                            max_prompt_length=max_prompt_length, truncation=truncation)


def _judged_texts(tokenizer, row: dict, element) -> dict:
    """{"prompt_text", "chosen_text"}: the judge's inputs as the public code builds them (compare.py is fed
    the test loader's prompt_text, and its chosen = the chosen's target_text as tokenised for training,
    everything from the EOS text on removed, the space before it kept). Without a training element (no
    chosen, or no training max_length) the chosen is the record's text."""
    texts = {"prompt_text": element.prompt_text}
    if row.get("chosen") is not None:
        tokenised = bool(element.response_text)  # tokenize_prompt's element holds no response
        texts["chosen_text"] = element.response_without_eos(tokenizer.eos_token) if tokenised else row["chosen"]
    return texts


class FastNucleus(LogitsProcessor):
    """HF's sampling warpers in HF's order: TemperatureLogitsWarper, TopKLogitsWarper (top_k > 0), then
    TopPLogitsWarper (keep the top tokens until the mass above a token reaches top_p; at least one), the
    nucleus found by a partial sort.

    Why our own: HF's top-p warper sorts the whole vocabulary at every decoding step; on CPU at the embedded
    scale that sort is ~45% of a step (benchmarks/bench_generate.py). Here a top-`candidates` partial
    sort finds the nucleus whenever it lies within those tokens (always, when top_k <= candidates); rows
    where it does not (flat distributions) go to HF's warper itself, except rows already past their EOS,
    whose next token generate replaces with padding whatever is drawn. The mask is HF's but for float
    rounding of a mass that lands exactly on top_p, and HF's multinomial then draws from it: the same
    samples (tests/test_generate.py checks both)."""

    def __init__(self, top_p: float, temperature: float = 1.0, eos_token_id: int | None = None, candidates: int = 256,
                 top_k: int = 0):
        if not 0.0 < top_p <= 1.0 or temperature <= 0 or top_k < 0:
            raise ConfigError(f"generation: top_p must be in (0, 1], temperature > 0 and top_k >= 0, got {top_p}, "
                              f"{temperature}, {top_k}")
        self.top_p, self.temperature, self.candidates, self.eos_token_id = top_p, temperature, candidates, eos_token_id
        self.temperature_warper = TemperatureLogitsWarper(temperature) if temperature != 1.0 else None
        self.top_k_warper = TopKLogitsWarper(top_k) if top_k else None  # a top-k pick, no full sort
        self.full_sort = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.prompt_width = None  # one processor per generate call: the first call's input is the prompt

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature_warper is not None:
            scores = self.temperature_warper(input_ids, scores)
        if self.top_k_warper is not None:
            scores = self.top_k_warper(input_ids, scores)
        if self.full_sort is None:
            return scores
        top, index = scores.softmax(dim=-1).topk(min(self.candidates, scores.shape[-1]), dim=-1)
        keep = (top.cumsum(dim=-1) - top) < self.top_p  # the mass strictly above each candidate
        keep[:, 0] = True
        out = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).scatter(1, index, ~keep), -float("inf"))
        wide = top.sum(dim=-1) < self.top_p  # rows whose nucleus reaches past the candidates: HF's full sort
        if input_ids is not None and self.eos_token_id is not None:
            # A row past its EOS: generate replaces its token with padding, so its mask cannot matter.
            self.prompt_width = input_ids.shape[1] if self.prompt_width is None else self.prompt_width
            wide &= ~(input_ids[:, self.prompt_width:] == self.eos_token_id).any(dim=1)
        if bool(wide.any()):
            out[wide] = self.full_sort(None if input_ids is None else input_ids[wide], scores[wide])
        return out


def _chosen_logps(model, tokenizer, batch: list[dict], elements, max_prompt_length, train_max_length,
                  precision) -> list:
    """Summed log-prob of each row's chosen response under `model`, tokenized as training tokenizes it: the
    row's test-loader element (`_prompt_element`, tokenize_element of its prompt and chosen), scored packed
    as the trainer scores (rpo.scoring)."""
    from rpo.scoring import score

    if train_max_length is None or max_prompt_length is None:
        raise ConfigError("score_chosen: needs train_max_length and max_prompt_length (training's cut)")
    examples = []
    for row, element in zip(batch, elements):
        if not row.get("chosen") or not row.get("rejected"):
            raise ConfigError(f"score_chosen: prompt {row['id']!r} has no chosen/rejected pair to score "
                              "(an instruction set has none; generate without scoring)")
        examples.append(element.example)
    with torch.no_grad(), precision.autocast(model.device):
        return score(model, examples, tokenizer.pad_token_id).sums.double().tolist()


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
    temperature: float | None = None,
    batch_size: int = 8,
    seed: int = 1,
    do_sample: bool = True,
    max_prompt_length: int | None = 256,
    train_max_length: int | None = None,
    dtype="auto",
    device=None,
    progress: bool = True,
    env: DistEnv | None = None,
    score_chosen: bool = False,
    fast_nucleus: bool = True,
    top_k: int = 50,
    fp32_master_weights: bool = False,
    attn_implementation: str = "sdpa",
) -> list[dict]:
    """Sample one response per prompt row (from select_prompts) and write the samples JSONL.

    Collective when `env` (default: the launcher's, see rpo.distributed.init_distributed) has several
    ranks: all call it with the same prompts, rank 0 writes, all return every row. `dtype` and
    `fp32_master_weights` are the training keys: generation runs in the trainer's precision (rpo.precision), with
    its attention kernel `attn_implementation` (rpo.models).
    `max_length` (prompt + response tokens, the batch's padded width counting) replaces `max_new_tokens` when given.
    `train_max_length` (training.max_length): a prompt is cut to max_prompt_length only when it and its
    chosen response exceed it, as the test loader cuts it (rpo.data.tokenize.tokenize_element); None: whenever
    it is longer than max_prompt_length.
    `score_chosen`: each row also gets `chosen_logp`, the model's summed log-prob of the prompt's chosen
    response as training tokenizes the pair (so a run's mean log-ratio to SFT on test data is a difference
    of two samples files: rpo.report.regime). `fast_nucleus` False: HF's own sampling warpers (the same
    samples, slower on CPU: benchmarks/bench_generate.py).
    Sampling as the public code's generate call: top_p, top_k (its 50 is transformers' default, which it
    leaves in place; 0 = none) and `temperature`, None = the model's generation config's (resolve_temperature).
    """
    from rpo.models import load_model

    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch_size and max_new_tokens: must be positive, got {batch_size}, {max_new_tokens}")
    if top_k < 0:
        raise ConfigError(f"generation.top_k: must be >= 0 (0: no top-k), got {top_k}")
    if max_length is not None and (max_length < 1 or (max_prompt_length or 0) >= max_length):
        raise ConfigError(f"generation.max_length: {max_length} leaves no room for a response after "
                          f"max_prompt_length {max_prompt_length}")
    env = init_distributed(device) if env is None else env
    model, tokenizer = load_model(model_path, dtype=dtype, device=rank_device(device, env.local_rank),
                                  fp32_master_weights=fp32_master_weights, attn_implementation=attn_implementation,
                                  inference=True)
    precision = resolve_precision(dtype, model.device, fp32_master_weights)
    sampling = {"do_sample": do_sample, "max_new_tokens": None if max_length else max_new_tokens,
                "max_length": max_length, "max_prompt_length": max_prompt_length, "train_max_length": train_max_length,
                "seed": seed, "batch_size": batch_size}
    # eos_token_id: the tokenizer's EOS is the only stop (a generation_config may list more, e.g. chat ends).
    options = {"do_sample": do_sample, "use_cache": True, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    if do_sample:
        temperature = resolve_temperature(model, model_path, temperature)
        sampling.update(top_p=top_p, top_k=top_k, temperature=temperature)
        # Explicit values, so nothing else of the model's generation config warps (top_k=0: HF's "none").
        options.update(**({"top_k": 0, "top_p": 1.0, "temperature": 1.0} if fast_nucleus else
                          {"top_k": top_k, "top_p": top_p, "temperature": temperature}))
    starts = range(0, len(prompts), batch_size)
    mine = range(env.rank, len(starts), env.world_size)  # whole batches, round-robin: same seeds for any N
    local = {}
    for batch_index in tqdm(mine, desc="generating", disable=not (progress and env.is_main)):
        batch = prompts[starts[batch_index]:starts[batch_index] + batch_size]
        elements = [_prompt_element(tokenizer, p, max_prompt_length, train_max_length) for p in batch]
        ids = [e.prompt_ids for e in elements]
        # a cut prompt is recorded as the model saw it (the public code's prompt_text)
        cut = [e.prompt_text if e.prompt_cut else None for e in elements]
        # What the public code judges (compare.py's inputs): the prompt as fed, the chosen as training tokenised it
        judged = [_judged_texts(tokenizer, p, e) for p, e in zip(batch, elements)]
        input_ids, attention_mask = _left_pad(ids, tokenizer.pad_token_id)
        budget = max_length - input_ids.shape[1] if max_length else max_new_tokens
        if budget < 1:  # only without max_prompt_length: a prompt as long as the whole budget
            raise ConfigError(f"generation.max_length: {max_length} tokens, but batch {batch_index}'s prompts are "
                              f"{input_ids.shape[1]} tokens wide; set max_prompt_length")
        torch.manual_seed(seed + batch_index)
        if do_sample and fast_nucleus:  # HF's temperature, top-k and top-p warpers, the nucleus by a partial sort
            options["logits_processor"] = LogitsProcessorList([FastNucleus(top_p, temperature, tokenizer.eos_token_id,
                                                                           top_k=top_k)])
        with torch.no_grad(), precision.autocast(model.device):
            output = model.generate(input_ids=input_ids.to(model.device), max_new_tokens=budget,
                                    attention_mask=attention_mask.to(model.device), **options)
        # Left padding puts every prompt's end at the same column: new tokens start there.
        new_tokens = output[:, input_ids.shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        # where each response stopped: its first EOS (generate pads after it), or the budget
        at_eos = new_tokens == tokenizer.eos_token_id
        lengths = [int(row.nonzero()[0, 0]) if row.any() else budget for row in at_eos]
        chosen_logps = (_chosen_logps(model, tokenizer, batch, elements, max_prompt_length, train_max_length,
                                      precision) if score_chosen else [None] * len(batch))
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
            **texts_judged,
            **({"chosen_logp": logp} if logp is not None else {}),
        } for prompt, text, length, stopped, shown, logp, texts_judged
            in zip(batch, texts, lengths, at_eos, cut, chosen_logps, judged)]
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
    from rpo.models import ATTN_IMPLEMENTATIONS

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
                        help="training max_length: cut a prompt only when it and its chosen response exceed it, "
                             "as the test loader does (default: cut whenever longer than --max-prompt-length)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=50,
                        help="top-k before top-p (the public code: transformers' default 50); 0 = none")
    parser.add_argument("--temperature", type=float, default=None,
                        help="default: the model's generation config's (the public code); an error if it sets none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of nucleus sampling")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the run's training.dtype: generate in the trainer's precision (rpo.precision)")
    parser.add_argument("--fp32-master-weights", action="store_true",
                        help="the run's training.fp32_master_weights: with --dtype bfloat16, fp32 weights + bf16 "
                             "autocast instead of pure bf16 (rpo.precision)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa",
                        help="the run's training.attn_implementation: transformers' attention kernel (rpo.models)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--score-chosen", action="store_true",
                        help="record each row's chosen_logp: the model's log-prob of the chosen response")
    parser.add_argument("--threads", type=int, default=None,
                        help="the job's torch threads, shared by its ranks (rpo.distributed.set_rank_threads)")
    parser.add_argument("--dist-timeout-minutes", type=float, default=None,
                        help="the run's training.dist_timeout_minutes (rpo.distributed.init_distributed)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prompt_seed = args.seed if args.prompt_seed is None else args.prompt_seed
    # Every rank selects the same prompts (a seeded shuffle of the same file) before any sharding.
    prompts = select_prompts(read_prompt_records(args.records), args.n, prompt_seed)
    set_rank_threads(args.threads)
    env = init_distributed(args.device, args.dist_timeout_minutes)
    try:
        rows = generate(args.model, prompts, args.out, max_new_tokens=args.max_new_tokens,
                        max_length=args.max_length, top_p=args.top_p, top_k=args.top_k,
                        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                        do_sample=not args.greedy, max_prompt_length=args.max_prompt_length,
                        train_max_length=args.train_max_length, dtype=args.dtype,
                        device=args.device, env=env, score_chosen=args.score_chosen,
                        fp32_master_weights=args.fp32_master_weights, attn_implementation=args.attn_implementation)
    finally:
        shutdown_distributed(env)
    if env.is_main:
        print(f"wrote {len(rows)} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
