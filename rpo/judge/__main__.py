"""Judge a samples file against its chosen responses and write judgments + win-rate summary.

    python -m rpo.judge --samples results/hh/samples/dpo_bs8_seed1.jsonl --task dialogue \
        --backend openai --model gpt-4-0613 --cache results/hh/judge_cache.sqlite --seed 1 \
        --out results/hh/judgments/dpo_bs8_seed1.jsonl \
        --summary results/hh/judgments/dpo_bs8_seed1.winrate.json \
        --usage results/hh/judgments/dpo_bs8_seed1.usage.json

--protocol chooses the judging protocol (rpo.judge.protocols): rpo-paper (default, the public code's
compare.py: fixed temperature 0, max_tokens 10 and seed 0, its own seeded order; --max-tokens is not
used) or rationale (the project's one-sentence template; --max-tokens and --seed's order apply). With
the oracle backend the protocol sets only the presentation order: it reads rewards, not prompts. The
summary records the protocol, its template hash, and how many items needed retries or finally failed.
What the calls cost (api_calls, answers served by the cache and which, tokens, estimated_cost_usd) goes to
--usage and the log, not into the judgments or the summary: it depends on what the shared cache held.

The OpenAI backend reads OPENAI_API_KEY from the environment (never from a flag, so it stays out of
shell history and process lists). The oracle backend takes `--reward module:function`, a callable
reward(task, prompt, response, metadata) -> float. Outputs are written only when every item was
judged; on failure, answers already received stay in the cache and a rerun pays only for the rest.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from rpo.errors import USER_ERRORS, ConfigError
from rpo.io import write_json, write_jsonl
from rpo.judge.base import TASKS, Judge, JudgeAPIError
from rpo.judge.cache import JudgeCache
from rpo.judge.protocols import DEFAULT_PROTOCOL, PROTOCOLS, protocol_sha256
from rpo.judge.samples import judge_samples, read_samples
from rpo.judge.winrate import attempt_counts, summarize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rpo.judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", required=True, type=Path, help="samples JSONL (rpo.generate output)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
                        help="judging protocol: rpo-paper (the public code's) or rationale (see rpo.judge.protocols)")
    parser.add_argument("--backend", default="openai", choices=("openai", "oracle"))
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: the client's)")
    parser.add_argument("--model", default="gpt-4-0613")
    parser.add_argument("--reward", default=None, help="oracle backend: module:function computing the reward")
    parser.add_argument("--cache", type=Path, default=None, help="SQLite annotation cache (openai backend)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seeds the bootstrap, and the order under rationale (rpo-paper's order: seed 0)")
    parser.add_argument("--out", required=True, type=Path, help="judgments JSONL")
    parser.add_argument("--summary", required=True, type=Path, help="win-rate summary JSON")
    parser.add_argument("--usage", type=Path, default=None,
                        help="JSON of the calls made: api_calls, cached answers (and which), tokens, estimated cost")
    parser.add_argument("--run", default=None, help="run name in the summary (default: the samples file stem)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256, help="rationale only: rpo-paper fixes 10")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per API call")
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay in seconds")
    parser.add_argument("--failed-as-no-winner", action="store_true",
                        help="count items that fail every attempt as no winner (the public code's reading) "
                             "instead of failing the run")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def load_reward(spec: str | None):
    if not spec or ":" not in spec:
        raise ConfigError(f"--reward: expected module:function for the oracle backend, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        reward = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--reward: cannot load {spec!r}: {exc}") from exc
    if not callable(reward):
        raise ConfigError(f"--reward: {spec!r} is not callable")
    return reward


def make_judge(args, cache: JudgeCache | None) -> Judge:
    if args.backend == "oracle":
        from rpo.judge.oracle_backend import OracleJudge

        judge = OracleJudge(load_reward(args.reward))
        judge.protocol = args.protocol
        return judge
    from rpo.judge.openai_backend import OpenAIJudge

    return OpenAIJudge(
        args.model, base_url=args.base_url, cache=cache, max_tokens=args.max_tokens, timeout=args.timeout,
        max_attempts=args.max_attempts, backoff_base=args.backoff_base, concurrency=args.concurrency,
        progress=not args.no_progress, protocol=args.protocol, failed_as_no_winner=args.failed_as_no_winner,
    )


def run(args) -> dict:
    samples = read_samples(args.samples)
    cache = JudgeCache(args.cache) if args.cache is not None and args.backend == "openai" else None
    try:
        judge = make_judge(args, cache)
        rows = judge_samples(samples, args.task, judge, seed=args.seed)
    finally:
        if cache is not None:
            cache.close()
    summary = {"run": args.run or args.samples.stem, "task": args.task, **summarize(rows, seed=args.seed)}
    summary.update(
        seed=args.seed,
        judge_backend=judge.backend,
        judge_model=judge.model,
        protocol=args.protocol,
        template_sha256=protocol_sha256(args.protocol, args.task),
        **attempt_counts(rows),
    )
    # What the calls cost depends on which answers the shared cache already held, i.e. on the order jobs ran
    # in: kept apart, so the verdicts and the summary are the same bytes however the DAG was scheduled.
    usage = {"run": summary["run"], **judge.usage(), "cached_ids": [r["id"] for r in rows if r["cached"]]}
    write_jsonl(args.out, [{k: v for k, v in r.items() if k != "cached"} for r in rows])
    write_json(args.summary, summary)
    if args.usage is not None:
        write_json(args.usage, usage)
    print(json.dumps({k: v for k, v in usage.items() if k != "cached_ids"}))
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (JudgeAPIError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rate = "n/a" if summary["win_rate"] is None else f"{100 * summary['win_rate']:.2f}%"
    print(f"{summary['run']}: win rate {rate} over {summary['n']} prompts "
          f"({summary['wins']} wins, {summary['ties']} ties, {summary['losses']} losses, "
          f"{summary['unparseable']} unparseable answers, {summary['failed_items']} failed calls)")
    for failure in summary["failures"]:
        print(f"failed: item {failure['id']}: {failure['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
