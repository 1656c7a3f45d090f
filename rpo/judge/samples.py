"""Judging a samples file: its rows read and checked, each model response judged against its chosen
response, the presentation order undone.

    rows = judge_samples(read_samples("samples.jsonl"), "dialogue", judge, seed=1)
    rows[0]["verdict"]  # "model_win" | "chosen_win" | "tie" | "unparseable"

For win rates the pair is always (model response, dataset's chosen response); which of the two is shown
first is decided by the judge's protocol (rpo.judge.protocols: rpo-paper replays compare.py's seeded
shuffle, rationale hashes (seed, item id)), so the order is random but reproducible.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from rpo.data.records import _rows_with_lines  # (line number, row) pairs; read_jsonl drops blank lines
from rpo.errors import DataError
from rpo.judge.base import Judge, JudgeItem, check_task
from rpo.judge.protocols import presentation_orders

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


def outcome(verdict: str, model_first: bool) -> str:
    """Undo the presentation order: a verdict about A/B becomes one about the model vs chosen."""
    if verdict in ("tie", "unparseable"):
        return verdict
    model_letter = "A" if model_first else "B"
    return "model_win" if verdict == model_letter else "chosen_win"


def judge_samples(samples: Sequence[dict], task: str, judge: Judge, seed: int) -> list[dict]:
    """Judge every model response against its chosen response; one result row per sample."""
    check_task(task)
    ids = [str(s["id"]) for s in samples]
    duplicated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicated:
        raise DataError(f"samples: duplicate ids {duplicated[:5]}; every judged prompt needs its own id")
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
