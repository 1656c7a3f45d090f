"""What every judge shares: the judged item, the judgment, the Judge interface, the tasks it judges.

A judge compares two responses shown as "A" and "B" (first and second). What it is sent and how its
answer is read is its protocol's (rpo.judge.protocols); judging a samples file against its chosen
responses is rpo.judge.samples.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Sequence

from rpo.data.records import PREFERENCE_TASKS as TASKS  # the judged tasks
from rpo.errors import ConfigError

VERDICTS = ("A", "B", "tie", "unparseable")
OUTCOMES = ("model_win", "chosen_win", "tie", "unparseable")


class JudgeAPIError(RuntimeError):
    """Some judge calls failed after every retry; the answers that did arrive are in the cache."""


@dataclass(frozen=True)
class JudgeItem:
    id: str
    task: str
    prompt: str
    response_a: str
    response_b: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Judgment:
    verdict: str  # one of VERDICTS, about the responses as presented (A / B)
    raw: str  # the judge's full answer
    cached: bool = False  # answered from the annotation cache, no call made
    retries: int = 0  # failed attempts before the answer (compare.py makes one attempt: any retry = no winner there)
    failed: bool = False  # no answer (refused, or every attempt failed), counted as no winner
    error: str = ""  # why a failed call failed, e.g. "HTTP 400: ... maximum context length ..."


class Judge(abc.ABC):
    """Anything that turns presented pairs into verdicts: an API model, a ground-truth oracle, ..."""

    backend: str = "abstract"
    model: str = ""
    protocol: str = "rationale"  # rpo.judge.protocols.PROTOCOLS: decides the presentation order

    @abc.abstractmethod
    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        """One Judgment per item, in order."""

    def usage(self) -> dict:
        """Calls, tokens and estimated cost of this judge's work so far (empty when not applicable)."""
        return {}


def scrub_api_key(text: str) -> str:
    """`text` with the value of OPENAI_API_KEY masked, for anything that may reach a log or a file."""
    api_key = os.environ.get("OPENAI_API_KEY")
    return text.replace(api_key, "[OPENAI_API_KEY]") if api_key else text


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"task: unknown judging task {task!r}; expected one of {', '.join(TASKS)}")
    return task
