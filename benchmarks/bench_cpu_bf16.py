"""Is bf16 autocast worth it on this CPU? One training step (forward + backward) of a pretrained
model in fp32 and under CPU bf16 autocast, side by side in one run, and how far bf16 moves the
summed response log-probs the losses see.

    .venv/bin/python benchmarks/bench_cpu_bf16.py --model results/rehearsal/pretrained/SmolLM2-135M-Instruct

rpo.precision runs training.dtype bfloat16 with fp32_master_weights under CPU bf16 autocast (the
rehearsal's path); this script is the measurement behind that choice (docs/rehearsal.md).
"""
import argparse
import statistics
import time

import torch


def step_seconds(model, ids, autocast: bool, repeats: int) -> tuple[float, torch.Tensor]:
    times, logps = [], None
    for _ in range(repeats + 1):  # the first is a warm-up
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        token_logps = torch.log_softmax(logits.float()[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        token_logps.sum().backward()
        times.append(time.perf_counter() - start)
        logps = token_logps.detach().sum(-1)
    return statistics.median(times[1:]), logps


def main() -> None:
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a save_pretrained folder")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length))
    fp32, logps32 = step_seconds(model, ids, autocast=False, repeats=args.repeats)
    bf16, logps16 = step_seconds(model, ids, autocast=True, repeats=args.repeats)
    tokens = args.batch * args.length
    print(f"model {args.model}, batch {args.batch} x {args.length} tokens, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"fp32:          {fp32:.3f} s/step  {tokens / fp32:.0f} tokens/s")
    print(f"bf16 autocast: {bf16:.3f} s/step  {tokens / bf16:.0f} tokens/s  (fp32 time / bf16 time {fp32 / bf16:.2f})")
    print(f"summed log-prob per sequence, bf16 - fp32: max |diff| {(logps16 - logps32).abs().max().item():.3f} nats")


if __name__ == "__main__":
    main()
