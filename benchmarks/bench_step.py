"""Preference-step cost on this CPU, as ratios measured in one run (issue 2, section 6).

(a) RPO-paired step time / DPO step time at the same micro-batch     goal <= 1.03
(b) step with a reference model forward / step with cached ref logps goal >= 1.3

    .venv/bin/python benchmarks/bench_step.py [--steps 12] [--batch-size 8] [--threads 2]

Steps of the compared trainers are interleaved (A, B, B, A, A, B, ...) so drift in machine load and
the slot order hit both sides alike; the figure is the ratio of medians.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rpo.data.records import ASSISTANT, USER, PreferenceRecord, write_records
from rpo.embed import embed_prompts
from rpo.models import build_model, load_model
from rpo.refcache import batch_logps, compute_reference_cache
from rpo.train import Trainer, resolve_config

WORDS = ("bread oven flour water salt yeast dough bake crust knead rise warm cold slow fast garden soil seed "
         "plant water sun shade grow leaf root bike chain wheel brake gear tire pump ride road hill").split()


def synthetic_records(n: int, seed: int = 0, prompt_words: int = 40, chosen_words: int = 40,
                      rejected_words: int = 38) -> list[PreferenceRecord]:
    """Seeded preference records of random WORDS, of the given word counts (each word at least one token)."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [PreferenceRecord(f"b{i}", f"{USER}{text(prompt_words)}?{ASSISTANT}", text(chosen_words) + ".",
                             text(rejected_words) + ".", {"truncation": "keep_end"}) for i in range(n)]


class ModelReferenceTrainer(Trainer):
    """The baseline: a trainer that runs a reference model forward every step (as TRL does by default)."""

    def __init__(self, cfg, reference_path):
        super().__init__(cfg)
        self.reference_model, _ = load_model(reference_path)
        self.reference_model.eval()

    def reference_logps(self, side, indices):
        examples = [self.sequences[side][i] for i in indices]
        return batch_logps(self.reference_model, examples, self.tokenizer.pad_token_id)


def time_interleaved(trainers: dict[str, Trainer], steps: int, warmup: int = 2) -> dict[str, float]:
    times = {name: [] for name in trainers}
    order = list(trainers.items())
    for i in range(warmup + steps):
        # Alternate who goes first: an A/A run (two DPO trainers) measured the second slot 1% slower.
        for name, trainer in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            trainer.train_step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="rpo-bench-"))
    records = synthetic_records(args.batch_size * (args.steps + 4))
    data = root / "train.jsonl"
    write_records(data, records)
    spec = {"kind": "small", "arch": "llama", "n_layers": args.layers, "d_model": args.d_model, "n_heads": 4,
            "vocab_size": 8000, "max_position": 256}
    model = build_model(spec, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records])
    cache = compute_reference_cache(model, data, root / "ref.pt", max_length=256, max_prompt_length=128)
    emb = root / "emb.pt"
    embed_prompts(data, "tfidf-svd", emb, model_path=model, max_length=256, max_prompt_length=128)

    def cfg(method):
        return resolve_config({"model": str(model), "data": str(data), "out": str(root / method), "method": method,
                               "reference_cache": str(cache), "embeddings": str(emb), "embedder": "tfidf-svd",
                               "batch_size": args.batch_size, "max_length": 256, "max_prompt_length": 128,
                               "threads": args.threads})

    tokens = sum(len(s["input_ids"]) for s in Trainer(cfg("dpo")).sequences["chosen"][:args.batch_size]) * 2
    print(f"model: llama {args.layers} layers x {args.d_model}, micro-batch {args.batch_size} pairs "
          f"(~{tokens} tokens/step), {args.threads} threads, {args.steps} timed steps each")
    t = time_interleaved({"dpo": Trainer(cfg("dpo")), "rpo-paired": Trainer(cfg("rpo-paired"))}, args.steps)
    print(f"(a) step time  dpo {t['dpo'] * 1e3:.1f} ms   rpo-paired {t['rpo-paired'] * 1e3:.1f} ms   "
          f"ratio rpo/dpo = {t['rpo-paired'] / t['dpo']:.3f}   (goal <= 1.03)")
    t = time_interleaved({"cached": Trainer(cfg("dpo")),
                          "reference model": ModelReferenceTrainer(cfg("dpo"), model)}, args.steps)
    print(f"(b) step time  cached ref {t['cached'] * 1e3:.1f} ms   ref-model forward {t['reference model'] * 1e3:.1f} ms"
          f"   speed-up = {t['reference model'] / t['cached']:.2f}x   (goal >= 1.3)")


if __name__ == "__main__":
    main()
