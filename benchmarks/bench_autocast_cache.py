"""Peak memory of one training step with fp32 master weights + bf16 autocast (training.fp32_master_weights:
true), autocast's weight cache on (torch's default, our code before issue 22) vs off (rpo.precision), with
and without activation checkpointing (rpo.memory), on this CPU.

    .venv/bin/python benchmarks/bench_autocast_cache.py [--layers 8] [--d-model 512] [--seqs 8] [--seq-len 128]
    .venv/bin/python benchmarks/bench_autocast_cache.py --fsdp        # FSDP2 on 2 gloo ranks (rank 0's figures)

Model: a Llama from a config (random init, fp32 weights, untied head, Llama-2's 32,000-token vocabulary),
train mode. Batch: `--seqs` sequences of `--seq-len` tokens, the second half of each scored, packed into
one row by rpo.scoring (the trainer's scorer: LM head on response positions only). Step: forward under
autocast, summed log-probs' mean as the loss, backward, clip, RMSprop step (the trainer's defaults).

Each variant runs in a fresh process (python's allocator never returns all of a freed peak). A thread samples
the resident set every 2 ms (peak_memory.PeakSampler); "fwd" = peak from just before the forward to its end
(still inside autocast, where the cache holds its copies) minus the resident set just before it; "fwd+bwd" the
same to the end of backward; "step" through the optimizer step (which adds RMSprop's state, the same in every
variant). Also reported: ru_maxrss of the process, and the seconds. --fsdp: each block and the root sharded
with FSDP2 over 2 gloo ranks (torchrun), as rpo.distributed.wrap_model does.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peak_memory import PeakSampler  # noqa: E402  (one home for the RSS sampler)


def child(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rpo.scoring import score

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = args.d_model
    config = LlamaConfig(vocab_size=32000, hidden_size=d, intermediate_size=args.d_ff or 4 * d,
                         num_hidden_layers=args.layers, num_attention_heads=d // 64, num_key_value_heads=d // 64,
                         max_position_embeddings=args.seq_len, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    from rpo.distributed import init_distributed, wrap_model

    env = init_distributed("cpu")  # a DistEnv of one process without torchrun
    model = wrap_model(model, env, fsdp=True, activation_checkpointing=args.ac)
    model.train()
    half = args.seq_len // 2
    examples = [{"input_ids": ids, "labels": [-100] * half + ids[half:]}
                for ids in torch.randint(0, 32000, (args.seqs, args.seq_len)).tolist()]
    optimizer = torch.optim.RMSprop(model.parameters(), lr=5e-7)
    with PeakSampler() as whole:
        started = time.perf_counter()
        with PeakSampler() as fwd_bwd:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=args.cache):
                with PeakSampler() as fwd:
                    loss = -score(model, examples, 0).sums.mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())  # FSDP: DTensors give the global sizes
    if env.active:
        torch.distributed.destroy_process_group()
    return {"fwd": fwd.peak - fwd.before, "fwd_bwd": fwd_bwd.peak - fwd_bwd.before, "step": whole.peak - whole.before,
            "before": whole.before,
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds,
            "loss": float(loss), "params": n_params}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=None, help="default 4 x d-model")
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 over 2 gloo ranks (torchrun); rank 0 reports")
    parser.add_argument("--child", nargs=2, type=int, metavar=("AC", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.ac, args.cache = map(bool, args.child)
        result = child(args)
        if os.environ.get("RANK", "0") == "0":
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    base = list(argv if argv is not None else sys.argv[1:])
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", "2"] if args.fsdp else [])
    mb = 2 ** 20
    print(f"Llama {args.layers} layers, d_model {args.d_model}, batch {args.seqs} x {args.seq_len} tokens packed, "
          f"fp32 weights + bf16 autocast, RMSprop, {args.threads} thread(s) per rank"
          + (", FSDP2 on 2 gloo ranks (rank 0)" if args.fsdp else ", one process"))
    print("| activation checkpointing | autocast weight cache | fwd peak | fwd+bwd peak | step peak | ru_maxrss | s/step "
          "| loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ac, cache in itertools.product((0, 1), (1, 0)):
        out = subprocess.run([*launcher, __file__, *base, "--child", str(ac), str(cache)], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
        print(f"| {'on' if ac else 'off'} | {'on (torch default)' if cache else 'off (rpo.precision)'} "
              f"| {r['fwd'] / mb:.0f} MiB | {r['fwd_bwd'] / mb:.0f} MiB | {r['step'] / mb:.0f} MiB "
              f"| {r['maxrss'] / mb:.0f} MiB "
              f"| {r['seconds']:.2f} | {r['loss']:.6f} |", flush=True)
    print(f"({r['params']:,} parameters: fp32 {r['params'] * 4 / mb:.0f} MiB, "
          f"a bf16 copy {r['params'] * 2 / mb:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
