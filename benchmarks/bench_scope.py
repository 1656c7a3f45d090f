"""Cost of the global contrast scope on this CPU, as ratios measured in one run (issue 5, section 4).

Same model, data and global batch (micro-batch B x accumulation A, one process):
  step time   global / micro scope     goal <= 1.4   (global adds one no-grad forward per micro-batch)
  peak memory global / micro scope     goal <= 1.1   (global keeps the graph of one micro-batch only)
For scale, the last line shows micro scope with the whole global batch as ONE micro-batch: the other
way to get one B*A x B*A matrix, and what the global scope saves.

    .venv/bin/python benchmarks/bench_scope.py [--steps 6] [--batch-size 8] [--accumulation 4] [--threads 2]

Time: steps of the trainers are interleaved (A, B, C, A, B, C, ...), figure = ratio of medians, both
of wall time and of this process's CPU time (on a shared machine the CPU time is the steadier one:
other jobs stretch wall time but not the work done).
Memory: peak bytes held by torch's CPU allocator during one optimizer step, above what was held when
the step began (weights and optimizer state), from the allocation events of torch.profiler
(profile_memory=True): every tensor allocation and free in order, running sum, maximum. Profiled
steps are separate from timed ones (the profiler slows steps down) and interleaved too. Peak RSS is
not used: glibc keeps freed pages, so RSS deltas of later steps in one process understate peaks.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from bench_step import synthetic_records  # run as a script: benchmarks/ is on sys.path
from rpo.data.records import write_records
from rpo.embed import embed_prompts
from rpo.models import build_model
from rpo.refcache import compute_reference_cache
from rpo.train import Trainer, resolve_config


def allocator_peak_bytes(step) -> int:
    """Peak of (bytes allocated - bytes freed) by torch on CPU while `step()` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    return max(itertools.accumulate(size for _, size in sorted(events)), default=0)


def time_interleaved(trainers: dict, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per optimizer step of each trainer, steps taken in turn."""
    times = {name: {"wall": [], "cpu": []} for name in trainers}
    for i in range(warmup + steps):
        for name, trainer in trainers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_step()
            if i >= warmup:
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--method", default="rpo-paired")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="rpo-bench-scope-"))
    global_batch = args.batch_size * args.accumulation
    warmup = 1
    records = synthetic_records(global_batch * (warmup + args.steps + args.memory_steps + 1))
    data = root / "train.jsonl"
    write_records(data, records)
    spec = {"kind": "small", "arch": "llama", "n_layers": args.layers, "d_model": args.d_model, "n_heads": 4,
            "vocab_size": 8000, "max_position": 256}
    model = build_model(spec, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records])
    cache = compute_reference_cache(model, data, root / "ref.pt", max_length=256, max_prompt_length=128)
    emb = root / "emb.pt"
    embed_prompts(data, "tfidf-svd", emb, model_path=model, max_length=256, max_prompt_length=128)

    def trainer(name, scope, batch_size, accumulation):
        return Trainer(resolve_config({
            "model": str(model), "data": str(data), "out": str(root / name), "method": args.method,
            "reference_cache": str(cache), "embeddings": str(emb), "embedder": "tfidf-svd", "max_length": 256,
            "max_prompt_length": 128, "threads": args.threads, "contrast_scope": scope,
            "batch_size": batch_size, "gradient_accumulation_steps": accumulation}))

    trainers = {"micro": trainer("micro", "micro", args.batch_size, args.accumulation),
                "global": trainer("global", "global", args.batch_size, args.accumulation),
                "one big micro-batch": trainer("big", "micro", global_batch, 1)}
    tokens = sum(len(s["input_ids"]) for s in trainers["micro"].sequences["chosen"][:global_batch]) * 2
    print(f"model: llama {args.layers} layers x {args.d_model}, {args.method}, global batch {global_batch} = "
          f"micro-batch {args.batch_size} x accumulation {args.accumulation} (~{tokens} tokens/step), "
          f"{args.threads} threads, {args.steps} timed + {args.memory_steps} profiled steps each")
    times = time_interleaved(trainers, args.steps, warmup=warmup)
    peaks = {name: [] for name in trainers}
    for _ in range(args.memory_steps):
        for name, t in trainers.items():
            peaks[name].append(allocator_peak_bytes(t.train_step))
    peak = {name: statistics.median(p) for name, p in peaks.items()}
    for name in trainers:
        print(f"  {name:20s} step {times[name]['wall']:7.2f} s wall {times[name]['cpu']:7.2f} s CPU   "
              f"peak {peak[name] / 2**20:8.1f} MiB")
    for kind in ("wall", "cpu"):
        print(f"step time   global / micro = {times['global'][kind] / times['micro'][kind]:.3f} ({kind})"
              f"   (goal <= 1.4)")
    print(f"peak memory global / micro = {peak['global'] / peak['micro']:.3f}   (goal <= 1.1)")
    print(f"peak memory one big micro-batch / global = {peak['one big micro-batch'] / peak['global']:.2f}")


if __name__ == "__main__":
    main()
