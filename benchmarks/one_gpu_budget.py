"""GPU hours and GPT-4 cost of workflow/one-gpu.yaml, by arithmetic: nothing is trained or timed.

    .venv/bin/python benchmarks/one_gpu_budget.py [--configfile workflow/one-gpu.yaml]

Exact: the run matrix (rpo.pipeline, as `snakemake -n` plans it), steps per run (the trainer's
micro-batch plan rule on the dataset sizes below), the model's shape, the model FLOPs per token
(bench_mfu.flops_per_token, its docstring's formula), the device peaks (bench_mfu.PEAK_BF16_FLOPS),
the judge calls, the fixed characters of both judge prompts and the answer caps. ASSUMED (named
constants below): the sequence lengths, the MFU, the decode step time and the text lengths that
the judges read. Replace them with measured figures (bench_mfu.py on the GPU; the judge summaries'
input_tokens) when there are some.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from pathlib import Path

import yaml

from bench_mfu import PEAK_BF16_FLOPS, flops_per_token  # run as a script: benchmarks/ is on sys.path
from rpo.config import validate_config
from rpo.data.records import ASSISTANT
from rpo.judge.openai_backend import PRICES_PER_MILLION
from rpo.judge.protocols import PAPER_REQUEST, render_messages
from rpo.losses import get_loss
from rpo.pipeline import alpacaeval_runs, experiment_runs
from rpo.train_config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
# -- exact figures ----------------------------------------------------------------------------------
TRAIN_PAIRS = {"dialogue": 160_800,       # Anthropic/hh-rlhf, split train, all subsets (no data_dir)
               "summarization": 92_858}   # openai/summarize_from_feedback, config comparisons, train
N_PARAMS, VOCAB, LAYERS, D_MODEL = 1_100_048_384, 32_000, 22, 2048  # TinyLlama v1.1 (untied head)
NON_EMBEDDING = N_PARAMS - 2 * VOCAB * D_MODEL                       # 968,976,384: bench_mfu's N
DEVICES = ("A100", "H100")                # bench_mfu's table: A100 312, H100 SXM 989.4 dense bf16 TFLOP/s
OPENAI_MESSAGE_TOKENS, OPENAI_REPLY_TOKENS = 3, 3  # OpenAI's counting rule for gpt-4-0613 chat messages
# -- assumptions ------------------------------------------------------------------------------------
PROMPT_TOKENS, RESPONSE_TOKENS = 256, 256  # every sequence at the paper's max_length 512: an UPPER bound
# SFT trains on the first pair of each unique prompt: TRAIN_PAIRS is an upper bound of its examples.
ASSUMED_MFU = 0.40                        # bench_mfu.py's goal; not measured on any GPU yet
ASSUMED_DECODE_STEP_S = 0.025             # one HF generate() step, batch 16, 1.1B, KV cache: bound by kernel
#                                           launches (reading 2.2 GB of bf16 weights takes ~1 ms), not measured
CHARS_PER_TOKEN = 4                       # tiktoken's cl100k_base file is not reachable offline
JUDGE_TEXT_TOKENS = 512 + 256             # prompt + sample (generation.max_length) + chosen (cut at 256),
#                                           Llama tokens taken 1:1 as GPT-4 tokens; whole prompts can be longer
ALPACA_TEXT_TOKENS = 512 + 512             # instruction + sample (generation.max_length), + an ASSUMED
#                                           512 for the GPT-4 Turbo reference output (not on this machine)


def peak(device: str) -> float:
    return dict(PEAK_BF16_FLOPS)[device]


def sequence_flops() -> int:
    """Forward + backward of one sequence at PROMPT + RESPONSE tokens (bench_mfu's convention)."""
    t = PROMPT_TOKENS + RESPONSE_TOKENS
    return t * flops_per_token(NON_EMBEDDING, LAYERS, D_MODEL, t) + 6 * VOCAB * D_MODEL * (RESPONSE_TOKENS + 1)


def run_steps(config: dict, method: str, pairs: int) -> tuple[int, int]:
    """(optimizer steps, sequences through forward + backward) of one run: rpo.train.micro_batch_plan."""
    stage = {**DEFAULTS, **config["sft" if method == "sft" else "preference"]}  # the trainer's defaults
    bs, accum, gpus = stage["batch_size"], stage["gradient_accumulation_steps"], max(config["gpus"], 1)
    batching = get_loss(method).batching
    if batching == "items":  # kto, ppo: 2 items a pair, one global batch of bs x accum x gpus items a step
        steps = 2 * pairs // (bs * accum * gpus) * stage["epochs"]
    else:
        per_micro = bs // 2 if batching == "unpaired" else bs  # unpaired: bs/2 chosen + bs/2 rejected items
        steps = (pairs // per_micro * stage["epochs"]) // (accum * gpus)  # incomplete batches dropped
    sequences = steps * accum * gpus * {"paired": 2 * bs, "unpaired": bs, "items": bs, "sft": bs}[batching]
    return steps, sequences


def template_chars(protocol_task: str) -> int:
    """Characters of the rpo-paper judge messages with empty prompt and responses."""
    messages = render_messages("rpo-paper", protocol_task, ASSISTANT, "", "")
    return sum(len(m["content"]) for m in messages)


def alpaca_template(annotator: str) -> tuple[int, str, int, int]:
    """(fixed characters incl. the function schema, judge model, max_tokens, messages) of the annotator."""
    folder = Path(importlib.util.find_spec("alpaca_eval").origin).parent / "evaluators_configs" / annotator
    spec = yaml.safe_load((folder / "configs.yaml").read_text())[annotator]
    text = (folder.parent / spec["prompt_template"]).read_text()
    n_messages = text.count("<|im_start|>")
    text = re.sub(r"<\|im_start\|>\w+\n|<\|im_end\|>|\{instruction\}|\{output_1\}|\{output_2\}", "", text)
    kwargs = spec["completions_kwargs"]
    tools = json.dumps(kwargs.get("tools", []))
    return len(text) + len(tools), kwargs["model_name"], kwargs["max_tokens"], n_messages


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default=str(ROOT / "workflow/one-gpu.yaml"))
    path = Path(parser.parse_args(argv).configfile)
    config = validate_config(yaml.safe_load(path.read_text()))
    tasks, gen, seq = config["data"]["tasks"], config["generation"], sequence_flops()
    print(f"{path.name}: {len(config['models'])} model(s), gpus {config['gpus']}, "
          + ", ".join(f"{t} {TRAIN_PAIRS[t]:,} pairs" for t in tasks))
    print(f"FLOPs of one {PROMPT_TOKENS}+{RESPONSE_TOKENS}-token sequence, forward+backward: {seq:.4g} "
          f"(N non-embedding {NON_EMBEDDING:,})")
    rows: dict[str, list] = {}  # item -> [runs, steps a run on each task, FLOPs or None, seconds or None]

    def add(item, n, steps, flops=None, seconds=None):
        row = rows.setdefault(item, [0, [], None, None])
        row[0] += n
        row[1].append(f"{steps:,}" if steps else "-")
        row[2] = None if flops is None else (row[2] or 0) + flops
        row[3] = None if seconds is None else (row[3] or 0) + seconds

    n_judged = 0
    for task in tasks:
        runs = experiment_runs(config, task)
        n_judged += len(runs)
        for method in dict.fromkeys(r.method for r in runs):
            n = sum(r.method == method for r in runs)
            steps, sequences = run_steps(config, method, TRAIN_PAIRS[task])
            # KTO: one KL sequence an item, forward without grad each step and once more before step 1
            # (the initial weights' reference log-probs, rpo.kto): a third of forward+backward each
            extra = 2 * (sequences // 3) if "kl" in get_loss(method).needs else 0
            add(method, n, steps, n * (sequences + extra) * seq)
        # chosen and rejected sequence of every pair, forward only (a third of seq)
        add("reference cache", 1, None, 2 * TRAIN_PAIRS[task] * (seq // 3))
        decode = math.ceil(gen["n_prompts"] / gen["batch_size"]) * gen["max_length"]  # decode steps, a bound
        add(f"generate {gen['n_prompts']} test prompts", len(runs), decode, seconds=len(runs) * decode
            * ASSUMED_DECODE_STEP_S)
    alpaca, n_alpaca = alpacaeval_runs(config), config["alpacaeval"]["n_prompts"]
    decode = math.ceil(n_alpaca / gen["batch_size"]) * gen["max_length"]
    add(f"generate AlpacaEval {n_alpaca}", len(alpaca), decode, seconds=len(alpaca) * decode * ASSUMED_DECODE_STEP_S)

    print(f"GPU hours at an ASSUMED {ASSUMED_MFU:.0%} MFU (training, reference cache) and an ASSUMED "
          f"{ASSUMED_DECODE_STEP_S * 1e3:g} ms\nper decode step (generation; steps: decode steps a run), "
          f"summed over {' + '.join(tasks)}:")
    print(f"  {'item':<26} {'runs':>4} {'steps/run':>12} {'PFLOP':>6} " + " ".join(f"{d + ' h':>7}" for d in DEVICES))
    totals = dict.fromkeys(DEVICES, 0.0)
    for item, (n, steps, flops, seconds) in rows.items():
        hours = {d: (flops / (ASSUMED_MFU * peak(d)) if flops is not None else seconds) / 3600 for d in DEVICES}
        totals = {d: totals[d] + hours[d] for d in DEVICES}
        pf = f"{flops / 1e15:.0f}" if flops else "-"
        print(f"  {item:<26} {n:>4} {'/'.join(steps):>12} {pf:>6} " + " ".join(f"{hours[d]:7.1f}" for d in DEVICES))
    print(f"  {'total, upper bound at 512 tokens a sequence':<51} " + " ".join(f"{totals[d]:7.1f}" for d in DEVICES))

    # -- GPT-4 ----------------------------------------------------------------------------------------
    judge = config["judge"]
    price_in, price_out = PRICES_PER_MILLION[judge["model"]]
    out_cap = PAPER_REQUEST["max_tokens"] if judge["protocol"] == "rpo-paper" else judge["max_tokens"]
    framing = 2 * OPENAI_MESSAGE_TOKENS + OPENAI_REPLY_TOKENS  # rpo-paper: two user messages
    print(f"Judge {judge['model']} ({judge['protocol']}, ${price_in:g}/${price_out:g} per 1M in/out tokens), "
          f"{gen['n_prompts']} calls a run; text {JUDGE_TEXT_TOKENS} tokens (assumed):")
    cost = 0.0
    for task in tasks:
        chars = template_chars(task)
        tokens_in = chars / CHARS_PER_TOKEN + framing + JUDGE_TEXT_TOKENS
        calls = gen["n_prompts"] * len(experiment_runs(config, task))
        cost += (task_cost := calls * (tokens_in * price_in + out_cap * price_out) / 1e6)
        print(f"  {task}: template {chars} chars + framing {framing} + text = ~{tokens_in:.0f} in, "
              f"<= {out_cap} out; {calls:,} calls: ${task_cost:.2f}")
    chars, model, a_cap, n_messages = alpaca_template(config["alpacaeval"]["annotators_config"])
    a_in, a_out = PRICES_PER_MILLION[model]
    a_tokens = chars / CHARS_PER_TOKEN + n_messages * OPENAI_MESSAGE_TOKENS + OPENAI_REPLY_TOKENS + ALPACA_TEXT_TOKENS
    a_calls = n_alpaca * len(alpaca)
    a_cost = a_calls * (a_tokens * a_in + a_cap * a_out) / 1e6
    print(f"AlpacaEval {config['alpacaeval']['annotators_config']} ({model}, ${a_in:g}/${a_out:g}): template and "
          f"function {chars} chars\n  + text {ALPACA_TEXT_TOKENS} (assumed) = ~{a_tokens:.0f} in, <= {a_cap} out; "
          f"{a_calls:,} calls: ${a_cost:.2f}")
    print(f"GPT-4 total: ${cost + a_cost:.2f} (pairwise ${cost:.2f} + AlpacaEval ${a_cost:.2f}); "
          f"CHARS_PER_TOKEN {CHARS_PER_TOKEN}")


if __name__ == "__main__":
    main()
