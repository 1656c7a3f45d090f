"""Peak memory of one DPO step of SmolLM2-135M-Instruct on this CPU: our trainer against TRL's DPOTrainer
with precomputed reference log-probs, measured in one run.

    .venv/bin/pip install trl==1.16.0            # benchmark-only dependency, as for bench_trl.py
    .venv/bin/python benchmarks/bench_memory.py [--pairs 8] [--prompt-len 256] [--response-len 256]
    .venv/bin/python benchmarks/bench_memory.py --checkpointing compare --steps 3 --rounds 2

Data: `--pairs` preference pairs of exact token counts (EOS included; checked in both tokenisations).
  --spread none      every sequence prompt-len + response-len tokens, so no batch has padding: packing cannot
                     save anything and what differs is how each trainer computes the log-probs (rpo.scoring:
                     the LM head on response positions only, in chunks; TRL: logits at every position)
  --spread dialogue  the embedded dialogue task's lengths (config.yaml's world, first pairs) scaled so the
                     longest sequence is prompt-len + response-len: padding as that task has it.
Same model (fp32 weights, as on CPU), batch (all pairs in one micro-batch), AdamW, gradient clipping.
  --checkpointing off      (default) ours packed, ours padded and TRL, no checkpointing in either
  --checkpointing compare  ours (packed) and TRL, each with per-block checkpointing off and on (ours: training
                           key activation_checkpointing, rpo.memory; TRL: gradient_checkpointing=True, the same
                           transformers mechanism), `--rounds` rounds interleaved; adds each one's step time
                           with checkpointing on / off. A run whose step checkpoints no block when it should
                           (or some when it should not) stops the benchmark.

Each trainer x setting runs in a fresh process (`--steps` steps). A thread samples the process's resident set
(/proc/self/statm) every 2 ms through the first optimizer step; the figure is the peak minus the resident set
just before the step: what the step needs on top of the loaded model (activations, logits, gradients and
AdamW's state, the last two the same for both). Goal: ours <= 0.6 x TRL precomputed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakSampler  # one home for the RSS sampler (run as a script: benchmarks/ is on sys.path)

WORDS = ("the and of to in is that for it as with was on be at by this had not are but from or have an they "
         "which one you were all we her she there would their will when who him been has more if no out do so "
         "can what up said about other into than its time only could new them man some these then two first "
         "may any like now my such make over our even most me state after also made many did must before back "
         "see through way where get much go well your know should down work year because come people just say")


def exact_records(tokenizer, shapes: list[tuple[int, int, int]]) -> list[dict]:
    """One record per (prompt, chosen, rejected) token count (" " + EOS included in the responses: ours appends
    them as text, rpo.data.tokenize), texts of single-token words, checked."""
    import random

    words = [w for w in WORDS.split() if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
             and len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
    rng = random.Random(0)

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    # Responses start with a space, so prompt + response tokenise alike joined or apart (TRL joins them).
    records = [{"id": f"m{i}", "prompt": text(p), "chosen": " " + text(c - 2), "rejected": " " + text(r - 2)}
               for i, (p, c, r) in enumerate(shapes)]
    for r, shape in zip(records, shapes):
        for key, want in zip(("prompt", "chosen", "rejected"), (shape[0], shape[1] - 2, shape[2] - 2)):
            got = len(tokenizer(r[key], add_special_tokens=False)["input_ids"])
            if got != want:
                raise SystemExit(f"record {r['id']} {key}: {got} tokens, expected {want}")
    return records


def dialogue_shapes(tokenizer, pairs: int, longest: int) -> list[tuple[int, int, int]]:
    """The first `pairs` dialogue records of config.yaml's world in this tokenizer, every length scaled so
    the longest sequence is `longest` tokens: the embedded dialogue task's spread at the paper's length."""
    import yaml

    from rpo.world import generate_world

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    records = generate_world(config["data"]["world"]).splits["dialogue"]["train"][:pairs]

    def n(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    raw = [(n(r.prompt), n(r.chosen) + 1, n(r.rejected) + 1) for r in records]
    scale = longest / max(p + max(c, r) for p, c, r in raw)
    shapes = [tuple(max(2, int(x * scale)) for x in shape) for shape in raw]
    return shapes


def ours_trainer(args):
    """Our Trainer as the benchmark runs it: all pairs in one micro-batch, `args.steps` steps (one epoch each)."""
    import torch
    from rpo.train import Trainer, resolve_config

    torch.set_num_threads(args.threads)
    return Trainer(resolve_config({
        "model": args.model, "data": args.data, "out": str(Path(args.root) / "ours"), "method": "dpo",
        "reference_cache": args.cache, "batch_size": args.pairs, "max_length": args.prompt_len + args.response_len,
        "max_prompt_length": args.prompt_len, "optimizer": "adamw", "lr": 5e-7, "weight_decay": 0.0,
        "max_grad_norm": 10.0, "dtype": "float32", "device": "cpu", "threads": args.threads,
        "packing": args.packing == "packed", "epochs": args.steps,
        "activation_checkpointing": args.checkpointing == "on"}))


def trl_trainer(args):
    """TRL's DPOTrainer with precomputed reference log-probs (computed here, in its constructor), the same
    batch, optimizer and clipping; its gradient checkpointing (transformers' per-block, non-reentrant, as
    ours) on or off."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rpo.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    # Ours appends " " + EOS to each response as text (the public code's rule), TRL the EOS id: with the space
    # in the text both score the same token ids (checked: `ids` below).
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"] + " ", "rejected": r["rejected"] + " "}
                                 for r in rows])
    config = DPOConfig(output_dir=str(Path(args.root) / "trl"), per_device_train_batch_size=args.pairs,
                       max_steps=args.steps, learning_rate=5e-7, optim="adamw_torch", weight_decay=0.0,
                       max_grad_norm=10.0, beta=0.1, max_length=args.prompt_len + args.response_len,
                       precompute_ref_log_probs=True, gradient_checkpointing=args.checkpointing == "on",
                       bf16=False, use_cpu=True, dataloader_num_workers=0, report_to="none", save_strategy="no",
                       disable_tqdm=True, seed=1)
    return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


def sequence_digest(sequences: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(sequences).encode()).hexdigest()


def step_ours(args) -> dict:
    from rpo.memory import checkpointed_blocks

    trainer = ours_trainer(args)
    trainer.model.train()
    tokens = [len(c["input_ids"]) for c in trainer.sequences["chosen"]]
    ids = sequence_digest([c["input_ids"] for c in trainer.sequences["chosen"] + trainer.sequences["rejected"]])
    # Read every weight once: from_pretrained maps the file, and pages first touched inside the step would
    # count as the step's (TRL's precompute has read them before its step).
    sum(float(p.detach().sum()) for p in trainer.model.parameters())
    seconds, cpu = [], []
    for step in range(args.steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        if step == 0:
            with PeakSampler() as sampler:
                trainer.train_step()
        else:
            trainer.train_step()
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {"before": sampler.before, "peak": sampler.peak, "tokens": tokens, "ids": ids, "step_s": seconds,
            "cpu_s": cpu,
            "blocks": checkpointed_blocks(trainer.model)}


def step_trl(args) -> dict:
    from transformers import TrainerCallback

    from rpo.memory import checkpointed_blocks

    trainer = trl_trainer(args)
    tokens = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset]
    rows = list(trainer.train_dataset)
    ids = sequence_digest([r["prompt_ids"] + r[key] for key in ("chosen_ids", "rejected_ids") for r in rows])
    result = {"step_s": [], "cpu_s": []}

    class Sample(TrainerCallback):  # the first step's peak; every step's time (collation is outside it)
        def on_step_begin(self, *a, **k):
            if not result["step_s"]:
                result["sampler"] = PeakSampler().__enter__()
            result["started"], result["cpu_started"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            result["step_s"].append(time.perf_counter() - result["started"])
            result["cpu_s"].append(time.process_time() - result["cpu_started"])
            if len(result["step_s"]) == 1:
                result["sampler"].__exit__()
                result["blocks"] = checkpointed_blocks(trainer.model)  # what the step ran with

    trainer.add_callback(Sample())
    trainer.train()
    return {"before": result["sampler"].before, "peak": result["sampler"].peak, "tokens": tokens, "ids": ids,
            "step_s": result["step_s"], "cpu_s": result["cpu_s"], "blocks": result["blocks"]}


def child(argv) -> None:
    parser = argparse.ArgumentParser()
    for key in ("trainer", "packing", "model", "data", "cache", "root", "checkpointing"):
        parser.add_argument(f"--{key}")
    for key in ("pairs", "prompt-len", "response-len", "threads", "steps"):
        parser.add_argument(f"--{key}", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(step_trl(args) if args.trainer == "trl" else step_ours(args)))


def run_child(name: str, args, common: list[str], extra: list[str], loads: list[float]) -> dict:
    """One trainer x setting in a fresh process; the 1-minute load average before and after it into `loads`."""
    loads.append(os.getloadavg()[0])
    out = subprocess.run([sys.executable, __file__, "--child", *common, *extra], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    loads.append(os.getloadavg()[0])
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def compare_checkpointing(args, common: list[str], ours: list[str], loads: list[float]) -> dict:
    """Ours and TRL, checkpointing off and on, `args.rounds` rounds interleaved (each run a fresh process of
    `args.steps` steps). Peak: the first step's, median over rounds. Step time: the median of the steps after
    the first (the first allocates AdamW's state), or of the first when there is only one."""
    runs = {(trainer, setting): [] for setting in ("off", "on") for trainer in ("ours", "TRL precomputed")}
    for _ in range(args.rounds):
        for (trainer, setting), got in runs.items():
            extra = (ours if trainer == "ours" else ["--trainer", "trl"]) + ["--checkpointing", setting]
            r = run_child(f"{trainer}, checkpointing {setting}", args, common, extra, loads)
            if (r["blocks"] > 0) != (setting == "on"):
                raise SystemExit(f"{trainer}, checkpointing {setting}: the step ran with {r['blocks']} "
                                 "checkpointed blocks")
            got.append(r)
            print(f"  run: {trainer}, checkpointing {setting}: step needs {(r['peak'] - r['before']) / 2**30:.2f} GB, "
                  f"steps {', '.join(f'{x:.1f}' for x in r['step_s'])} s "
                  f"(CPU {', '.join(f'{x:.1f}' for x in r['cpu_s'])} s), load {loads[-2]:.1f}-{loads[-1]:.1f} "
                  f"({time.strftime('%H:%M:%S')})", flush=True)
    return {key: {"tokens": got[0]["tokens"], "ids": got[0]["ids"], "blocks": got[0]["blocks"],
                  "need": median([r["peak"] - r["before"] for r in got]),
                  "peak": median([r["peak"] for r in got]),
                  "step_s": median([s for r in got for s in (r["step_s"][1:] or r["step_s"])]),
                  "cpu_s": median([s for r in got for s in (r["cpu_s"][1:] or r["cpu_s"])]),
                  "timed": sum(len(r["step_s"][1:] or r["step_s"]) for r in got)} for key, got in runs.items()}


def print_checkpointing(results: dict) -> None:
    """One table: step needs (GB) off / on, wall and CPU seconds per step off / on, and on / off."""
    print(f"  {'':<16} {'step needs (GB)':>17} {'wall s per step':>25} {'CPU s per step':>25}")
    print(f"  {'trainer':<16} {'off':>8} {'on':>8} {'off':>8} {'on':>8} {'on/off':>7} {'off':>8} {'on':>8} "
          f"{'on/off':>7}   blocks on")
    for trainer in ("ours", "TRL precomputed"):
        off, on = results[(trainer, "off")], results[(trainer, "on")]
        print(f"  {trainer:<16} {off['need'] / 2**30:8.2f} {on['need'] / 2**30:8.2f} "
              f"{off['step_s']:8.1f} {on['step_s']:8.1f} {on['step_s'] / off['step_s']:7.2f} "
              f"{off['cpu_s']:8.1f} {on['cpu_s']:8.1f} {on['cpu_s'] / off['cpu_s']:7.2f}   {on['blocks']}")
    ratio = {s: results[("ours", s)]["need"] / results[("TRL precomputed", s)]["need"] for s in ("off", "on")}
    print(f"  {'ours / TRL':<16} {ratio['off']:8.2f} {ratio['on']:8.2f}")
    print(f"ratio ours/TRL-precomputed (step needs), checkpointing on = {ratio['on']:.2f} "
          f"(goal <= 0.6: {'met' if ratio['on'] <= 0.6 else 'NOT met'})   peak RSS ratio "
          f"{results[('ours', 'on')]['peak'] / results[('TRL precomputed', 'on')]['peak']:.2f}; "
          f"step times: medians of {results[('ours', 'on')]['timed']} steps each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spread", choices=["none", "dialogue"], default="none",
                        help="none: every sequence prompt-len + response-len tokens; dialogue: the embedded "
                             "dialogue task's lengths scaled so the longest is prompt-len + response-len")
    parser.add_argument("--checkpointing", choices=["off", "compare"], default="off",
                        help="off: ours (packed, padded) vs TRL, no checkpointing in either; compare: ours vs "
                             "TRL each with checkpointing off and on (ours: activation_checkpointing, TRL: "
                             "gradient_checkpointing), peak and step time")
    parser.add_argument("--steps", type=int, default=1, help="steps per run (the peak is the first step's)")
    parser.add_argument("--rounds", type=int, default=1, help="--checkpointing compare: interleaved rounds")
    args = parser.parse_args()
    from rpo.data.records import PreferenceRecord, write_records
    from rpo.models import build_model, load_model
    from rpo.refcache import compute_reference_cache

    root = Path(tempfile.mkdtemp(prefix="rpo-bench-memory-"))
    model = build_model({"kind": "smollm2-gguf"}, root / "smollm2")
    _, tokenizer = load_model(model, device="cpu")
    sequence = args.prompt_len + args.response_len
    shapes = ([(args.prompt_len, args.response_len, args.response_len)] * args.pairs if args.spread == "none"
              else dialogue_shapes(tokenizer, args.pairs, sequence))
    rows = exact_records(tokenizer, shapes)
    lengths = [p + c for p, c, _ in shapes] + [p + r for p, _, r in shapes]
    padding = 1 - sum(lengths) / (len(lengths) * max(lengths))
    data = root / "train.jsonl"
    write_records(data, [PreferenceRecord(r["id"], r["prompt"], r["chosen"], r["rejected"], {}) for r in rows])
    layouts = ("packed",) if args.checkpointing == "compare" else ("packed", "padded")
    caches = {layout: compute_reference_cache(model, data, root / f"ref-{layout}.pt",
                                              max_length=args.prompt_len + args.response_len,
                                              max_prompt_length=args.prompt_len, batch_size=args.pairs,
                                              packing=layout == "packed") for layout in layouts}
    common = ["--model", str(model), "--data", str(data), "--root", str(root), "--pairs", str(args.pairs),
              "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len),
              "--threads", str(args.threads), "--steps", str(args.steps)]
    ours = ["--trainer", "ours", "--packing", "packed", "--cache", str(caches["packed"])]
    loads: list[float] = []
    if args.checkpointing == "compare":
        results = compare_checkpointing(args, common, ours, loads)
    else:
        results = {name: run_child(name, args, common, extra + ["--checkpointing", "off"], loads)
                   for name, extra in (("ours", ours),
                                       ("ours padded", ["--trainer", "ours", "--packing", "padded",
                                                        "--cache", str(caches["padded"])]),
                                       ("TRL precomputed", ["--trainer", "trl"]))}
    for name, r in results.items():
        if r["tokens"] != [p + c for p, c, _ in shapes]:
            raise SystemExit(f"{name} tokenised other lengths than {shapes}: {r['tokens']}")
        if r["ids"] != next(iter(results.values()))["ids"]:
            raise SystemExit(f"{name} scores other token ids than {next(iter(results))}")
    print(f"SmolLM2-135M-Instruct, fp32, {args.pairs} pairs, longest sequence {max(lengths)} tokens, spread "
          f"{args.spread}: {sum(lengths)} real tokens, padding share of the padded batch {padding:.1%}; "
          f"{args.threads} threads; DPO steps, fresh process each; load average {min(loads):.1f}-{max(loads):.1f}")
    if args.checkpointing == "compare":
        print_checkpointing(results)
        return
    print(f"  {'trainer':<16} {'RSS before':>11} {'peak':>9} {'step needs':>11}")
    for name, r in results.items():
        print(f"  {name:<16} {r['before'] / 2**30:9.2f} GB {r['peak'] / 2**30:7.2f} GB "
              f"{(r['peak'] - r['before']) / 2**30:9.2f} GB")
    need = {name: r["peak"] - r["before"] for name, r in results.items()}
    ratio = need["ours"] / need["TRL precomputed"]
    print(f"ratio ours/TRL-precomputed (step needs) = {ratio:.2f} (goal <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})"
          f"   peak RSS ratio {results['ours']['peak'] / results['TRL precomputed']['peak']:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        child(sys.argv[2:])
    else:
        main()
