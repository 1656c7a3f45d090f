"""Pairwise judging of model responses against the dataset's chosen responses (paper's GPT-4 protocol).

    from rpo.judge import JudgeCache, OpenAIJudge, judge_samples, read_samples, summarize
    with JudgeCache("judge_cache.sqlite") as cache:
        rows = judge_samples(read_samples("samples.jsonl"), "dialogue", OpenAIJudge(cache=cache), seed=1)
    print(summarize(rows))

The OpenAI backend is imported lazily so that the oracle path needs no `openai` import.
"""
from rpo.judge.base import OUTCOMES, TASKS, VERDICTS, Judge, JudgeAPIError, JudgeItem, Judgment
from rpo.judge.cache import JudgeCache, cache_key
from rpo.judge.oracle_backend import OracleJudge
from rpo.judge.protocols import answer_line, parse_verdict, render_prompt, split_rendered, template_sha256
from rpo.judge.samples import judge_samples, read_samples
from rpo.judge.winrate import summarize

__all__ = [
    "OUTCOMES", "TASKS", "VERDICTS", "Judge", "JudgeAPIError", "JudgeItem", "Judgment", "JudgeCache",
    "OpenAIJudge", "OracleJudge", "answer_line", "cache_key", "judge_samples", "parse_verdict",
    "read_samples", "render_prompt", "split_rendered", "summarize", "template_sha256",
]


def __getattr__(name):
    if name == "OpenAIJudge":
        from rpo.judge.openai_backend import OpenAIJudge

        return OpenAIJudge
    raise AttributeError(f"module 'rpo.judge' has no attribute {name!r}")
