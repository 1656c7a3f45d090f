"""Generation with rpo.generate.FastNucleus vs HF's own top-p warper, ratios measured in one run.

    .venv/bin/python benchmarks/bench_generate.py --model results/small/dialogue/models/dpo_bs8_seed1 \
        [--records results/data/dialogue/test.jsonl] [--config config.yaml] [--repeats 2] [--threads 1]

A trained model of the embedded run (any run folder) on its task's test prompts, with config.yaml's
generation settings exactly (n_prompts, max_new_tokens, top_k, top_p, temperature, batch_size, training's
prompt cut). Each repeat generates every prompt once with each sampler, alternating (A B, then B A) so
load drift hits both alike; the figure is the median wall time, the ratio HF / ours (> 1: ours faster).
It also says whether the two wrote the same samples (they should: the same mask, HF's multinomial).
Also timed once: scoring each test prompt's chosen response (--score-chosen), what the regime table needs.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from rpo.config import validate_config
from rpo.generate import generate, read_prompt_records, select_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained run folder of the embedded run")
    parser.add_argument("--records", type=Path, default=Path("results/data/dialogue/test.jsonl"))
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rules use config threads: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(args.config.read_text()))
    gen, training = config["generation"], config["training"]
    prompts = select_prompts(read_prompt_records(args.records), gen["n_prompts"], config["seeds"][0])
    settings = dict(max_new_tokens=gen["max_new_tokens"], max_length=gen["max_length"], top_p=gen["top_p"],
                    top_k=gen["top_k"], temperature=gen["temperature"], batch_size=gen["batch_size"], seed=config["seeds"][0],
                    max_prompt_length=training["max_prompt_length"], train_max_length=training["max_length"],
                    dtype=training["dtype"], progress=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    samples: dict[bool, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for fast in ((True, False) if repeat % 2 == 0 else (False, True)):
                started = time.perf_counter()
                rows = generate(args.model, prompts, Path(tmp) / f"{fast}.jsonl", fast_nucleus=fast, **settings)
                times[fast].append(time.perf_counter() - started)
                samples[fast] = [row["response"] for row in rows]
        started = time.perf_counter()
        generate(args.model, prompts, Path(tmp) / "scored.jsonl", score_chosen=True, **settings)
        scored = time.perf_counter() - started
    ours, theirs = statistics.median(times[True]), statistics.median(times[False])
    same = sum(a == b for a, b in zip(samples[True], samples[False]))
    print(f"{len(prompts)} prompts, batch {gen['batch_size']}, max_new_tokens {gen['max_new_tokens']}, "
          f"top_k {gen['top_k']}, top_p {gen['top_p']}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"HF TopPLogitsWarper  {theirs:7.2f} s")
    print(f"FastNucleus          {ours:7.2f} s   ratio {theirs / ours:.2f}x")
    print(f"with --score-chosen  {scored:7.2f} s   (+{scored - ours:.2f} s)")
    print(f"identical samples    {same} / {len(prompts)}")


if __name__ == "__main__":
    main()
