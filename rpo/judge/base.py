"""Pairwise judging: the rationale protocol's template and parsing, samples I/O, judge_samples.

A judge compares two responses shown as "A" and "B" (first and second). For win rates the pair is
always (model response, dataset's chosen response); which of the two is shown first is decided by the
judge's protocol (rpo.judge.protocols: rpo-paper replays compare.py's seeded shuffle, rationale hashes
(seed, item id)), so the order is random but reproducible, and undone after judging:

    rows = judge_samples(read_samples("samples.jsonl"), "dialogue", judge, seed=1)
    rows[0]["verdict"]  # "model_win" | "chosen_win" | "tie" | "unparseable"
"""
from __future__ import annotations

import abc
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from rpo.data.records import _rows_with_lines  # (line number, row) pairs; read_jsonl drops blank lines
from rpo.errors import ConfigError, DataError

TEMPLATE_DIR = Path(__file__).parent / "templates"
TASKS = ("dialogue", "summarization")
# The label of the final answer line each template asks for.
ANSWER_LABELS = {"dialogue": "More helpful", "summarization": "Preferred"}
VERDICTS = ("A", "B", "tie", "unparseable")
OUTCOMES = ("model_win", "chosen_win", "tie", "unparseable")
_PLACEHOLDER = re.compile(r"\{(prompt|response_a|response_b)\}")
# Last line of the form "More helpful: A" / "Preferred: B" (markdown and "Response"/"Summary" tolerated).
# The letters are case-sensitive so "Preferred: a longer summary" is not read as A.
_VERDICT_LINE = re.compile(
    r"^[\s*_#>`\"']*(?i:more\s+helpful|preferred)[\s*_`]*:[\s*_`\"'(\[]*"
    r"(?:(?i:response|summary)\s+)?([AB]|(?i:tie|neither|equal|both))\b",
    re.MULTILINE,
)


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


@lru_cache(maxsize=None)
def load_template(task: str) -> str:
    return (TEMPLATE_DIR / f"{check_task(task)}.txt").read_text(encoding="utf-8")


def template_sha256(task: str) -> str:
    return hashlib.sha256(load_template(task).encode("utf-8")).hexdigest()


def render_prompt(task: str, prompt: str, response_a: str, response_b: str) -> str:
    """Fill the task's template in one pass, so braces inside the texts are never re-substituted."""
    values = {"prompt": prompt.strip(), "response_a": response_a, "response_b": response_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], load_template(task))


@lru_cache(maxsize=None)
def _rendered_pattern(task: str) -> re.Pattern:
    parts = _PLACEHOLDER.split(load_template(task))  # literal, name, literal, name, ...
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*?)" for i, p in enumerate(parts))
    return re.compile(pattern, re.DOTALL)


def split_rendered(task: str, text: str) -> dict | None:
    """Inverse of render_prompt: {"prompt", "response_a", "response_b"}, or None if `text` is not one.

    Lets a local judge server (an oracle, a test double) recover what it is asked to compare.
    """
    match = _rendered_pattern(task).fullmatch(text)
    return match.groupdict() if match else None


def parse_verdict(text: str | None) -> str:
    """"A", "B" or "tie" from the judge's last answer line; "unparseable" when there is none."""
    matches = _VERDICT_LINE.findall(text or "")
    if not matches:
        return "unparseable"
    answer = matches[-1]
    return answer if answer in ("A", "B") else "tie"


def answer_line(task: str, verdict: str) -> str:
    """The final line a well-behaved judge writes for `verdict` ("A" or "B")."""
    return f"{ANSWER_LABELS[check_task(task)]}: {verdict}"


def model_shown_first(seed: int, item_id: str) -> bool:
    """Seeded, per-item coin: True when the model response is presented as A."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}".encode("utf-8")).digest()
    return digest[0] % 2 == 0


def outcome(verdict: str, model_first: bool) -> str:
    """Undo the presentation order: a verdict about A/B becomes one about the model vs chosen."""
    if verdict in ("tie", "unparseable"):
        return verdict
    model_letter = "A" if model_first else "B"
    return "model_win" if verdict == model_letter else "chosen_win"


SAMPLE_FIELDS = ("id", "prompt", "response", "chosen")


def read_samples(path, required: Sequence[str] = SAMPLE_FIELDS, metadata_fields: Sequence[str] = ()) -> list[dict]:
    """Rows of a samples JSONL file (rpo.generate's output), checked for the (string) fields needed."""
    numbered = _rows_with_lines(path)
    if not numbered:  # judged, it would give a summary of n = 0 that looks like a finished run
        raise DataError(f"{path}: no samples; regenerate it (delete it and rerun the generate step)")
    for line, row in numbered:
        problem = _row_problem(row, required) or _row_problem(row.get("metadata") or {}, metadata_fields, "metadata.")
        if problem:
            raise DataError(f"{path}, line {line}: {problem}; regenerate the samples (delete the file and rerun "
                            "the generate step)")
    return [row for _, row in numbered]


def _row_problem(row: dict, required: Sequence[str], prefix: str = "") -> str | None:
    for name in required:
        if name not in row or row[name] is None:
            return f"missing field '{prefix}{name}'"
        if not isinstance(row[name], str):
            return f"field '{prefix}{name}' must be a string, got {type(row[name]).__name__}"
    if not isinstance(row.get("metadata", {}), dict):
        return "field 'metadata' must be an object"
    return None


def judge_samples(samples: Sequence[dict], task: str, judge: Judge, seed: int) -> list[dict]:
    """Judge every model response against its chosen response; one result row per sample."""
    check_task(task)
    ids = [str(s["id"]) for s in samples]
    duplicated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicated:
        raise DataError(f"samples: duplicate ids {duplicated[:5]}; every judged prompt needs its own id")
    from rpo.judge.protocols import presentation_orders  # here: protocols builds on this module

    # Computed before any call from the samples alone (rpo-paper: file positions; rationale: ids), so
    # concurrency and cache hits cannot change them and a rerun sends the same requests.
    orders = presentation_orders(judge.protocol, ids, seed)
    # The judged texts are the public code's (rpo.generate records them): the prompt as the model was fed
    # it, the chosen as training tokenised it; samples files from before they were recorded: the raw texts.
    items = [
        JudgeItem(
            id=item_id,
            task=task,
            prompt=s.get("prompt_text", s["prompt"]),
            response_a=s["response"] if first else s.get("chosen_text", s["chosen"]),
            response_b=s.get("chosen_text", s["chosen"]) if first else s["response"],
            metadata=s.get("metadata") or {},
        )
        for item_id, s, first in zip(ids, samples, orders)
    ]
    judgments = judge.judge(items)
    return [
        {
            "id": item_id,
            "task": task,
            "prompt": s["prompt"],
            "response": s["response"],
            "chosen": s["chosen"],
            "order": "model_first" if first else "chosen_first",
            "raw": j.raw,
            "judge_verdict": j.verdict,
            "verdict": outcome(j.verdict, first),
            "cached": j.cached,
            "retries": j.retries,
            "failed": j.failed,
            "error": j.error,
        }
        for item_id, s, first, j in zip(ids, samples, orders, judgments)
    ]
