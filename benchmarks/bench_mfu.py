"""Tokens/s and model FLOPs utilisation (MFU) of our preference step on one GPU.

    .venv/bin/python benchmarks/bench_mfu.py                       # ~1.1B Llama, bf16 autocast, cuda
    .venv/bin/python benchmarks/bench_mfu.py --device cpu --tiny   # end-to-end check of the script

What is timed: `rpo.train.Trainer.train_step` with method rpo-paired (by default), AdamW, reference
log-probs from the cache (no reference model in the step), fp32 master weights with bf16 autocast on
GPUs that support it -- the trainer's own code path, unchanged. The model is a Llama built from a
config with TinyLlama-1.1B's shape (22 layers, hidden 2048, 32 heads, 4 KV heads, MLP 5632, vocab
32000, untied head). It is built with transformers directly, not rpo.models.build_model: that spec has
no key for KV heads, always ties the head to the embeddings, and sizes the vocabulary by what its BPE
learns from the corpus. The tokenizer is rpo.models' byte-level BPE trained on the synthetic texts;
the model's 32000-row head is computed whatever ids come in, so the cost is the real model's.

Data: synthetic records long enough that the trainer's own truncation cuts every sequence to exactly
`--prompt-len` prompt + `--response-len` response tokens (checked), so no step has padding.

Model FLOPs of one step (forward + backward, PaLM appendix B's convention), summed over its sequences:
    per real token:        6 * N  +  12 * n_layers * d_model * T
    per LM-head position:  6 * vocab * d_model
N = non-embedding parameters: all of them except the input embedding table and the LM head; T = the
sequence's real (non-pad) length; the attention term counts the full T x T scores (causal kernels skip
about half; convention). The LM head is counted only at the positions our step sends through it:
rpo.scoring runs it on the positions that predict a response token, R per sequence of response R.
Counting it at every token would credit work the step does not do. MFU = model FLOPs per step / step time / peak dense bf16 FLOP/s.

Step time: torch.cuda.synchronize() before and after each step; warm-up steps excluded; medians of
the timed steps. Prints results only; paste them into benchmarks/RESULTS.md with the device named.
Single process only (not under torchrun).
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bench_step import synthetic_records  # run as a script: benchmarks/ is on sys.path
from rpo.data.records import write_records
from rpo.distributed import local_micro_batches
from rpo.embed import embed_prompts
from rpo.models import save_model, train_bpe_tokenizer
from rpo.refcache import compute_reference_cache
from rpo.train import Trainer, resolve_config

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s. First substring of
# torch.cuda.get_device_name() that matches wins, so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835.5e12),
    ("H200 NVL", 835.5e12),
    ("H100", 989.4e12),  # SXM
    ("H200", 989.4e12),  # SXM; also matches GH200, whose GPU has the same peak
    ("A100", 312e12),
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("L4", 121e12),
    ("RTX 4090", 165.2e12),
)
# TinyLlama-1.1B's shape; --tiny swaps in a model that a CPU steps through in milliseconds.
FULL = {"layers": 22, "d_model": 2048, "heads": 32, "kv_heads": 4, "intermediate": 5632, "vocab": 32000,
        "prompt_len": 256, "response_len": 256}
TINY = {"layers": 2, "d_model": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 512,
        "prompt_len": 16, "response_len": 16}
PAIRED_METHODS = ("rpo-paired", "dpo", "ipo", "rpo-diagonal", "rpo-uniform")  # same forward/backward work
TOKENIZER_VOCAB = 1024  # every word of bench_step.WORDS becomes one token well below this


# ----------------------------------------------------------------------------- model FLOPs
def non_embedding_params(model) -> int:
    """Parameters except the input embedding table and the LM head (counted once if tied)."""
    excluded = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Forward + backward matmul FLOPs of one token in a sequence of seq_len real tokens, LM head aside."""
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def head_positions(examples: list[dict]) -> list[int]:
    """Positions of each sequence that go through the LM head (rpo.scoring): one per response token."""
    return [sum(label != -100 for label in e["labels"][1:]) for e in examples]


def batch_flops(examples: list[dict], n_params: int, n_layers: int, d_model: int, head_params: int) -> int:
    """Model FLOPs of forward + backward over one micro-batch (one forward pass of all its sequences)."""
    total = sum(len(e["input_ids"]) * flops_per_token(n_params, n_layers, d_model, len(e["input_ids"]))
                for e in examples)
    return total + 6 * head_params * sum(head_positions(examples))


def peak_flops(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from); (None, why) when neither the table nor an override knows."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops, f"table entry {key!r}, dense bf16"
    return None, f"no peak known for {device_name!r}; pass --peak-tflops"


# ----------------------------------------------------------------------------- set-up
def llama_config(sizes: dict, eos_id: int, pad_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=sizes["vocab"], hidden_size=sizes["d_model"], intermediate_size=sizes["intermediate"],
                       num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                       num_key_value_heads=sizes["kv_heads"],
                       max_position_embeddings=sizes["prompt_len"] + sizes["response_len"],
                       tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def write_model(folder: Path, sizes: dict, corpus: list[str], device: str) -> None:
    """Random-init Llama of `sizes` plus a BPE tokenizer, saved in bf16 (the trainer loads fp32 masters)."""
    from transformers import AutoModelForCausalLM

    tokenizer = train_bpe_tokenizer(corpus, min(TOKENIZER_VOCAB, sizes["vocab"]), max_length=1 << 20)
    if len(tokenizer) > sizes["vocab"]:
        raise ValueError(f"--vocab {sizes['vocab']} is below the tokenizer's {len(tokenizer)} tokens")
    torch.manual_seed(0)
    config = llama_config(sizes, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.device(device):  # initialising 1.1B parameters on a CPU takes long; on the GPU it does not
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    save_model(model, tokenizer, folder)  # bf16 halves the file that the caches hash


def check_lengths(trainer: Trainer, prompt_len: int, response_len: int) -> None:
    for side in ("chosen", "rejected"):
        for i, seq in enumerate(trainer.sequences[side]):
            scored = sum(label != -100 for label in seq["labels"])
            if len(seq["input_ids"]) != prompt_len + response_len or scored != response_len:
                raise RuntimeError(f"record {i} {side}: {len(seq['input_ids'])} tokens ({scored} response), "
                                   f"expected {prompt_len} + {response_len}; the synthetic texts are too short")


def build_trainer(root: Path, sizes: dict, args) -> Trainer:
    records = synthetic_records(args.pairs * (args.warmup + args.steps), prompt_words=sizes["prompt_len"],
                                chosen_words=sizes["response_len"], rejected_words=sizes["response_len"])
    data, model, cache, emb = root / "train.jsonl", root / "model", root / "ref.pt", root / "emb.pt"
    write_records(data, records)
    write_model(model, sizes, [r.prompt + r.chosen + r.rejected for r in records], args.device)
    # The public tokenisation appends " " + EOS as text after the response cut (rpo.data.tokenize.tokenize_element),
    # so a sequence is max_length plus those tokens: cut that much earlier to keep prompt_len + response_len.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    eos_tail = len(tokenizer(" " + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    max_length, max_prompt = sizes["prompt_len"] + sizes["response_len"] - eos_tail, sizes["prompt_len"]
    compute_reference_cache(model, data, cache, max_length=max_length, max_prompt_length=max_prompt,
                            batch_size=2 * args.pairs, device=args.device)
    embed_prompts(data, "tfidf-svd", emb, model_path=model, max_length=max_length, max_prompt_length=max_prompt)
    trainer = Trainer(resolve_config({
        "model": str(model), "data": str(data), "out": str(root / "run"), "method": args.method,
        "reference_cache": str(cache), "embeddings": str(emb), "embedder": "tfidf-svd", "optimizer": "adamw",
        "batch_size": args.pairs, "max_length": max_length, "max_prompt_length": max_prompt,
        "device": args.device, "threads": args.threads if args.device == "cpu" else None}))
    check_lengths(trainer, sizes["prompt_len"], sizes["response_len"])
    trainer.model.train()  # as Trainer.fit does
    return trainer


# ----------------------------------------------------------------------------- measurement
def next_step_examples(trainer: Trainer) -> list[list[dict]]:
    """The micro-batches (each: chosen then rejected sequences) that the trainer's next step runs."""
    batches = local_micro_batches(trainer.plan, trainer.step, trainer.cfg["gradient_accumulation_steps"], trainer.env)
    return [trainer.examples(chosen, rejected) for chosen, rejected in batches]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def measure(trainer: Trainer, steps: int, warmup: int, flops_of) -> dict:
    """Median step time, tokens/s and model FLOP/s over `steps` timed steps after `warmup` untimed ones."""
    cuda = trainer.device.type == "cuda"
    if cuda:
        gc.collect()  # the set-up's models (init, reference cache) must not count in the peak
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(trainer.device)
    times, tokens, flops = [], [], []
    for i in range(warmup + steps):
        batches = next_step_examples(trainer)
        if cuda:
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        trainer.train_step()
        if cuda:
            torch.cuda.synchronize(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            tokens.append(sum(len(e["input_ids"]) for batch in batches for e in batch))
            flops.append(sum(flops_of(batch) for batch in batches))
    return {"step_time_s": statistics.median(times), "step_time_min_s": min(times), "step_time_max_s": max(times),
            "tokens_per_step": statistics.median_low(tokens), "flops_per_step": statistics.median_low(flops),
            "tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times)),
            "flops_per_s": statistics.median(f / t for f, t in zip(flops, times)),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(trainer.device) if cuda else None}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help=f"tiny model and lengths for a CPU check: {TINY}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--pairs", type=int, default=8, help="preference pairs per step (2x sequences)")
    parser.add_argument("--method", default="rpo-paired", choices=PAIRED_METHODS)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s of the device, in 1e12")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on --device cpu")
    parser.add_argument("--workdir", default=None, help="folder for the temporary model, data and caches")
    for key in FULL:
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {FULL[key]}")
    args = parser.parse_args(argv)
    for key in ("steps", "pairs", "threads", *FULL):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch; use --device cpu (with --tiny)")
    return args


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    preset = TINY if args.tiny else FULL
    sizes = {key: getattr(args, key) or preset[key] for key in FULL}
    name = device_name(args.device)
    peak, peak_source = peak_flops(name, args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="rpo-bench-mfu-", dir=args.workdir) as tmp:
        trainer = build_trainer(Path(tmp), sizes, args)
        model = trainer.model
        n_params = non_embedding_params(model)
        head_params = model.get_output_embeddings().weight.numel()

        def flops_of(batch):
            return batch_flops(batch, n_params, sizes["layers"], sizes["d_model"], head_params)

        result = measure(trainer, args.steps, args.warmup, flops_of)
        attention = model.config._attn_implementation
        precision = "bf16 autocast on fp32 master weights" if trainer.precision.autocast_dtype else "fp32"
        total_params = sum(p.numel() for p in model.parameters())
    mfu = result["flops_per_s"] / peak if peak else None
    result.update(device=name, torch=torch.__version__, params=total_params, non_embedding_params=n_params,
                  mfu=mfu, peak_flops=peak, argv=argv)

    seq = sizes["prompt_len"] + sizes["response_len"]
    print(f"bench_mfu: {args.method} step of rpo.train.Trainer.train_step")
    print(f"arguments: {' '.join(argv) or '(defaults)'}")
    print(f"device: {name} ({args.device}) | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"attention {attention} | {precision}")
    print(f"model: Llama {sizes['layers']} layers x {sizes['d_model']} ({sizes['heads']} heads, {sizes['kv_heads']} KV "
          f"heads, MLP {sizes['intermediate']}, vocab {sizes['vocab']}, untied head): {total_params:,} parameters, "
          f"{n_params:,} non-embedding")
    print(f"step: {args.pairs} pairs = {2 * args.pairs} sequences x ({sizes['prompt_len']} prompt + "
          f"{sizes['response_len']} response) = {result['tokens_per_step']:,} tokens, AdamW, cached reference "
          f"log-probs; {args.warmup} warm-up + {args.steps} timed steps")
    print(f"model FLOPs per step: {result['flops_per_step']:.4g} (per token 6N + 12*L*d*T with T={seq}; "
          f"LM head 6*V*d on {sizes['response_len'] + 1} positions per sequence)")
    print(f"step time: median {result['step_time_s'] * 1e3:.1f} ms (min {result['step_time_min_s'] * 1e3:.1f}, "
          f"max {result['step_time_max_s'] * 1e3:.1f})")
    print(f"tokens/s: {result['tokens_per_s']:,.0f}")
    print(f"model FLOP/s: {result['flops_per_s'] / 1e12:.3f} TFLOP/s")
    if mfu is None:
        print(f"MFU: unknown ({peak_source})")
    else:
        print(f"MFU: {100 * mfu:.1f}% of {peak / 1e12:.1f} TFLOP/s peak ({peak_source})   (goal >= 40% on a GPU)")
    memory = result["peak_memory_bytes"]
    print(f"peak GPU memory: {memory / 2**30:.2f} GiB (torch.cuda.max_memory_allocated, warm-up and timed steps)"
          if memory is not None else "peak GPU memory: n/a (not a CUDA device)")
    if not all(math.isfinite(result[k]) and result[k] > 0 for k in ("step_time_s", "tokens_per_s", "flops_per_s")):
        raise RuntimeError(f"non-positive or non-finite measurement: {result}")
    return result


if __name__ == "__main__":
    main()
