"""Packed vs padded batches (training.packing, rpo.scoring) on this CPU, ratios measured in one run.

    .venv/bin/python benchmarks/bench_packing.py [--steps 12] [--threads 2] [--config config.yaml]

The embedded default exactly: config.yaml's model (models.small, its tokenizer trained on both tasks'
training text as the pipeline's rule does), its generated world, and each stage's settings as the
pipeline passes them (rpo.pipeline.train_settings), per task:
  SFT step              one optimizer step of sft at sft.batch_size
  preference step       one optimizer step of dpo at preference.batch_size pairs
  reference cache       rpo.refcache's batches (training.reference_batch_size) of the chosen side, tokens/s
  dense-mask packing    the preference step packed but with transformers' own sdpa packing (one dense
                        block-diagonal [N, N] mask built from position_ids) instead of rpo.scoring's
                        per-sequence attention: why rpo.scoring does not use it on CPU
The padding share is 1 - real tokens / padded positions of the padded micro-batches (whole epoch plan).
Steps of the compared trainers alternate (A B B A ...) so load drift hits both alike; figures are
medians over timed steps after 2 warm-up steps, ratio = padded time / packed time (> 1: packing faster).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

import rpo.scoring
from bench_step import time_interleaved  # run as a script: benchmarks/ is on sys.path
from rpo.config import validate_config
from rpo.data.records import write_records
from rpo.models import build_model, load_model
from rpo.pipeline import experiment_runs, train_settings
from rpo.refcache import batch_token_logps, compute_reference_cache
from rpo.train import Trainer, resolve_config
from rpo.world import generate_world


class DenseMaskTrainer(Trainer):
    """Packed rows, attention through transformers' sdpa with the dense packed mask it builds itself."""

    def score(self, examples, model=None, with_values=False):
        original = rpo.scoring._segment_attention
        rpo.scoring._segment_attention = lambda model, packing: contextlib.nullcontext()
        try:
            return super().score(examples, model, with_values)
        finally:
            rpo.scoring._segment_attention = original


def padding_share(trainer: Trainer) -> float:
    real = padded = 0
    for chosen, rejected in trainer.plan:
        lengths = [len(e["input_ids"]) for e in trainer.examples(chosen, rejected)]
        real, padded = real + sum(lengths), padded + len(lengths) * max(lengths)
    return 1 - real / padded


def refcache_throughput(model_path, sequences: list[dict], batch_size: int, rounds: int) -> dict:
    """tokens/s of the reference cache's batches, packed and padded alternating batch by batch."""
    model, tokenizer = load_model(model_path, device="cpu")
    pad_token_id = tokenizer.pad_token_id
    model.eval()
    times = {True: [], False: []}
    batches = [sequences[s:s + batch_size] for s in range(0, len(sequences), batch_size)][:rounds]
    for i, batch in enumerate(batches):
        for packing in ((True, False) if i % 2 == 0 else (False, True)):
            start = time.perf_counter()
            batch_token_logps(model, batch, pad_token_id, packing=packing)
            times[packing].append(time.perf_counter() - start)
    tokens = statistics.mean(sum(len(e["input_ids"]) for e in b) for b in batches)
    return {packing: tokens / statistics.median(t[1:]) for packing, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    config["threads"] = args.threads
    root = Path(tempfile.mkdtemp(prefix="rpo-bench-packing-"))
    world = generate_world(config["data"]["world"])
    corpus = []
    for task in config["data"]["tasks"]:
        records = world.splits[task]["train"]
        write_records(root / task / "train.jsonl", records)
        corpus += [r.prompt + r.chosen + r.rejected for r in records]
    model = build_model(config["models"]["small"], root / "model", corpus=corpus)
    print(f"model: {config['models']['small']}, {args.threads} threads, {args.steps} timed steps after 2 warm-up")
    print(f"{'task':<14} {'stage':<22} {'padding':>8} {'packed ms':>10} {'padded ms':>10} {'padded/packed':>14}")
    for task in config["data"]["tasks"]:
        data, training = root / task / "train.jsonl", config["training"]
        cache = {packing: compute_reference_cache(model, data, root / task / f"ref-{packing}.pt",
                                                  max_length=training["max_length"],
                                                  max_prompt_length=training["max_prompt_length"],
                                                  batch_size=training["reference_batch_size"], packing=packing)
                 for packing in (True, False)}
        runs = {run.method: run for run in experiment_runs(config, task) if run.method in ("sft", "dpo")}

        def trainer(method, packing, cls=Trainer):
            settings = train_settings(config, runs[method])
            settings.update(model=str(model), data=str(data), out=str(root / task / f"{method}-{packing}"),
                            reference_cache=str(cache[packing]), packing=packing, device="cpu")
            t = cls(resolve_config(settings))
            t.model.train()
            return t

        for stage, method in (("SFT step", "sft"), ("preference step", "dpo")):
            packed, padded = trainer(method, True), trainer(method, False)
            t = time_interleaved({"packed": packed, "padded": padded}, args.steps)
            print(f"{task:<14} {stage:<22} {padding_share(padded):8.1%} {1e3 * t['packed']:10.1f} "
                  f"{1e3 * t['padded']:10.1f} {t['padded'] / t['packed']:14.2f}")
        t = time_interleaved({"segments": trainer("dpo", True), "dense": trainer("dpo", True, DenseMaskTrainer)},
                             args.steps)
        print(f"{task:<14} {'dense-mask packing':<22} {'':>8} {1e3 * t['segments']:10.1f} {1e3 * t['dense']:10.1f} "
              f"{t['dense'] / t['segments']:14.2f}   (dense-mask / per-sequence attention)")
        sequences = trainer("dpo", True).sequences["chosen"]
        rate = refcache_throughput(model, sequences, training["reference_batch_size"], 2 * args.steps)
        print(f"{task:<14} {'reference cache tok/s':<22} {'':>8} {rate[True]:10.0f} {rate[False]:10.0f} "
              f"{rate[True] / rate[False]:14.2f}   (packed/padded throughput)")


if __name__ == "__main__":
    main()
