"""Preference-step throughput on this CPU: our trainer against TRL's DPOTrainer, ratios measured in one run.

    .venv/bin/pip install trl==1.16.0      # benchmark-only dependency: not in envs/requirements.txt
    .venv/bin/python benchmarks/bench_trl.py [--steps 16] [--warmup 2] [--batch-size 8] [--threads 2]

Four trainers, one DPO step each = one micro-batch of 8 pairs, one optimizer step:
  ours              rpo.train.Trainer, reference log-probs read from the cache (rpo.refcache), packed
                    micro-batches (training.packing, the default; rpo.scoring)
  ours padded       the same with training.packing: false (right-padded), for the packing ratio
  TRL default       trl.DPOTrainer, a reference model forward every step
  TRL precomputed   trl.DPOTrainer with precompute_ref_log_probs=True
  ours/TRL-default goal >= 1.6, ours/TRL-precomputed goal >= 1.25 (throughput ratios).

Same for all: the model (llama 4 layers x 256, rpo.models.build_model), data (the embedded default's
dialogue training records: config.yaml's world, so its length spread; the padding share of each
trainer's padded batches is printed), batch, max_length 256 (no sequence reaches it: checked, so nothing
is cut on either side),
fp32, AdamW at lr 5e-7, weight decay 0, gradient clipping at 10, linear schedule. TRL's defaults are
kept except gradient_checkpointing and bf16 (TRL turns both on; our trainer uses neither on CPU, and
recomputing activations would charge TRL for a memory saving we do not make).

Timing: TRL runs its own loop, trainer.train(), for warmup + steps optimizer steps. A TrainerCallback
takes the time between consecutive on_step_end events (the whole step: batch collation, forward,
reference forward, backward, clipping, optimizer, scheduler, TRL's logging); set-up (tokenisation,
TRL's reference precompute) and the warm-up steps are left out. Inside the same callback one step of
each of our trainers runs (their order alternating), timed on its own and kept out of TRL's interval, so
they alternate step by step and drift in machine load hits all alike. Throughput of a step = its non-pad tokens (prompt and
response, chosen and rejected: the attention mask's sum, as each trainer collated it) / its time.
Printed per trainer: the median over timed steps (the figure the goals refer to); the best step (on
a machine shared with other jobs, load only ever slows a step down, so the fastest step is the least
disturbed); and the median by CPU time of this process (all threads) instead of wall time, which
other processes disturb less. Token counts per pair are checked equal in both tokenisations first.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

import yaml

from bench_packing import padding_share  # run as a script: benchmarks/ is on sys.path
from rpo.data.records import write_records
from rpo.models import build_model, load_model
from rpo.refcache import compute_reference_cache
from rpo.train import Trainer, resolve_config
from rpo.world import generate_world

try:
    import trl
    from trl import DPOConfig, DPOTrainer
except ImportError as error:  # benchmark-only dependency
    raise SystemExit(f"bench_trl.py needs TRL: .venv/bin/pip install trl==1.16.0 ({error})")

MAX_LENGTH, MAX_PROMPT_LENGTH, LR, MAX_GRAD_NORM, BETA = 256, 128, 5e-7, 10.0, 0.1


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


class InterleavedStepTimer(TrainerCallback):
    """Times TRL's optimizer steps; runs and times one step of each of our trainers between two of them."""

    def __init__(self, ours: dict[str, Trainer], token_log: list[int], warmup: int):
        self.ours, self.token_log, self.warmup = ours, token_log, warmup
        self.trl_steps: list[tuple[int, float, float]] = []   # (tokens, wall s, CPU s) per timed step
        self.our_steps: dict[str, list[tuple[int, float, float]]] = {name: [] for name in ours}
        self.resumed = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.resumed is None:
            self.resumed = clocks()

    def on_step_end(self, args, state, control, **kwargs):
        now = clocks()
        tokens = self.token_log.pop(0)[0]
        if state.global_step > self.warmup:
            self.trl_steps.append((tokens, now[0] - self.resumed[0], now[1] - self.resumed[1]))
        if state.global_step >= self.warmup:  # our warm-up step runs alongside TRL's last one
            names = list(self.ours) if state.global_step % 2 else list(self.ours)[::-1]
            for name in names:
                step = self._our_step(self.ours[name])
                if state.global_step > self.warmup:
                    self.our_steps[name].append(step)
        self.resumed = clocks()

    @staticmethod
    def _our_step(trainer: Trainer) -> tuple[int, float, float]:
        chosen, rejected = trainer.plan[trainer.step]  # one micro-batch per step, one process
        tokens = sum(len(e["input_ids"]) for e in trainer.examples(chosen, rejected))
        start = clocks()
        trainer.train_step()
        end = clocks()
        return tokens, end[0] - start[0], end[1] - start[1]


def counting_collator(collator, *logs: list):
    """TRL's collator, logging each batch's non-pad token count (the attention mask's sum) and positions."""
    def collate(examples):
        batch = collator(examples)
        for log in logs:
            log.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch
    return collate


def throughput(steps, clock: int, pick=statistics.median) -> float:
    """tokens/s of each step by the wall (clock=1) or CPU (clock=2) time, then `pick` over the steps."""
    return pick(step[0] / step[clock] for step in steps)


def run_trl(name, model_path, dataset, ours: dict[str, Trainer], args, root: Path, precompute: bool) -> dict:
    model, tokenizer = load_model(model_path, dtype="float32", device="cpu")
    config = DPOConfig(
        output_dir=str(root / name), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=LR, optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="linear", warmup_steps=ours["ours"].cfg["warmup_steps"],
        beta=BETA, max_length=MAX_LENGTH, precompute_ref_log_probs=precompute,
        gradient_checkpointing=False, bf16=False, use_cpu=True, dataloader_num_workers=0,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=1)
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    setup_s = time.perf_counter() - started
    token_log, log = [], []  # the timer pops token_log; log keeps every batch, for the padding share
    trainer.data_collator = counting_collator(trainer.data_collator, token_log, log)
    timer = InterleavedStepTimer(ours, token_log, args.warmup)
    trainer.add_callback(timer)
    trainer.train()
    padding = 1 - sum(real for real, _ in log) / sum(positions for _, positions in log)
    return {"trl": timer.trl_steps, "ours": timer.our_steps, "setup_s": setup_s, "padding": padding,
            "ref_model": trainer.ref_model is not None, "pair_tokens": _trl_pair_tokens(trainer.train_dataset)}


def _trl_pair_tokens(dataset) -> list[int]:
    return [2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in dataset]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--config", default="config.yaml", help="the profile whose world's dialogue records to use")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="rpo-bench-trl-"))
    # Our trainers step once per TRL step in each of the two TRL runs: enough records for both.
    world = generate_world(yaml.safe_load(Path(args.config).read_text())["data"]["world"])
    records = world.splits["dialogue"]["train"][:args.batch_size * (2 * (args.warmup + args.steps) + 2)]
    data = root / "train.jsonl"
    write_records(data, records)
    spec = {"kind": "small", "arch": "llama", "n_layers": args.layers, "d_model": args.d_model, "n_heads": 4,
            "vocab_size": 8000, "max_position": MAX_LENGTH}
    model = build_model(spec, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records])
    caches, cache_s = {}, {}
    for packing in (True, False):
        started = time.perf_counter()
        caches[packing] = compute_reference_cache(model, data, root / f"ref-{packing}.pt", max_length=MAX_LENGTH,
                                                  max_prompt_length=MAX_PROMPT_LENGTH, packing=packing)
        cache_s[packing] = time.perf_counter() - started
    ours = {name: Trainer(resolve_config({
        "model": str(model), "data": str(data), "out": str(root / name), "method": "dpo",
        "reference_cache": str(caches[packing]), "batch_size": args.batch_size, "max_length": MAX_LENGTH,
        "max_prompt_length": MAX_PROMPT_LENGTH, "optimizer": "adamw", "lr": LR, "weight_decay": 0.0,
        "max_grad_norm": MAX_GRAD_NORM, "beta": BETA, "scheduler": "linear", "threads": args.threads,
        "dtype": "float32", "device": "cpu", "packing": packing})) for name, packing in (("ours", True),
                                                                                       ("ours padded", False))}
    for trainer in ours.values():
        trainer.model.train()
    sequences = ours["ours"].sequences
    our_pair_tokens = [len(c["input_ids"]) + len(r["input_ids"]) for c, r in zip(sequences["chosen"],
                                                                                   sequences["rejected"])]
    longest = max(len(s["input_ids"]) for side in ("chosen", "rejected") for s in sequences[side])
    if longest >= MAX_LENGTH:
        raise SystemExit(f"a sequence reaches max_length {MAX_LENGTH}: the trainers would cut it differently")
    our_padding = padding_share(ours["ours padded"])
    dataset = Dataset.from_list([{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in records])

    default = run_trl("trl-default", model, dataset, ours, args, root, precompute=False)
    precomputed = run_trl("trl-precomputed", model, dataset, ours, args, root, precompute=True)
    if default["pair_tokens"] != our_pair_tokens:
        diff = sum(default["pair_tokens"]) - sum(our_pair_tokens)
        raise SystemExit(f"TRL and our trainer tokenise the pairs differently ({diff:+d} tokens over the set)")
    assert default["ref_model"] and not precomputed["ref_model"]

    runs = {"ours (vs default)": default["ours"]["ours"], "ours padded (vs default)": default["ours"]["ours padded"],
            "TRL default": default["trl"], "ours (vs precomputed)": precomputed["ours"]["ours"],
            "ours padded (vs precomp.)": precomputed["ours"]["ours padded"], "TRL precomputed": precomputed["trl"]}
    print(f"trl {trl.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads")
    print(f"model: llama {args.layers} layers x {args.d_model}, {args.batch_size} pairs/step, "
          f"{statistics.mean(our_pair_tokens) * args.batch_size:.0f} non-pad tokens/step (same in both "
          f"tokenisations), {args.steps} timed steps after {args.warmup} warm-up")
    print(f"padding share of padded batches: ours padded {our_padding:.1%} (chosen and rejected padded together, "
          f"all micro-batches), TRL {default['padding']:.1%} (its timed and warm-up batches)")
    print(f"  {'tokens/s':<26} {'median':>8} {'best':>8} {'CPU-time':>9}   median step")
    for name, steps in runs.items():
        print(f"  {name:<26} {throughput(steps, 1):8.0f} {throughput(steps, 1, max):8.0f} "
              f"{throughput(steps, 2):9.0f}   {1e3 * statistics.median(s[1] for s in steps):7.1f} ms")
    print(f"set-up: our reference cache {cache_s[True]:.1f} s packed, {cache_s[False]:.1f} s padded (chosen, "
          f"rejected and KTO's mismatched pairs; once per SFT model, shared by all its runs); TRL trainer "
          f"construction {default['setup_s']:.1f} s default, {precomputed['setup_s']:.1f} s with precompute (every run)")
    for label, ours_steps, trl_steps, goal in (
            ("ours/TRL-default", default["ours"]["ours"], default["trl"], 1.6),
            ("ours/TRL-precomputed", precomputed["ours"]["ours"], precomputed["trl"], 1.25),
            ("ours packed/padded", default["ours"]["ours"] + precomputed["ours"]["ours"],
             default["ours"]["ours padded"] + precomputed["ours"]["ours padded"], None)):
        ratio = throughput(ours_steps, 1) / throughput(trl_steps, 1)
        verdict = f"(goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})" if goal else ""
        print(f"ratio {label:<21} = {ratio:.2f} {verdict:<22} "
              f"best-step {throughput(ours_steps, 1, max) / throughput(trl_steps, 1, max):.2f}   "
              f"CPU-time {throughput(ours_steps, 2) / throughput(trl_steps, 2):.2f}")


if __name__ == "__main__":
    main()
