"""Preference records (prompt, chosen, rejected) and the views the trainers need.

A record's `prompt` is already formatted: turns marked with USER / ASSISTANT, ending with
ASSISTANT, so that every later stage (tokenisation, embedding, generation) sees the same text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from rpo.errors import DataError
from rpo.io import read_jsonl_numbered, write_jsonl

# The tasks, named here only: two preference tasks (trained on, judged pairwise against the chosen
# response) and the AlpacaEval instructions (evaluation only: a prompt and a reference output).
PREFERENCE_TASKS = ("dialogue", "summarization")
INSTRUCTIONS = "instructions"
TASKS = (*PREFERENCE_TASKS, INSTRUCTIONS)

USER = "\n<|user|>\n"
ASSISTANT = "\n<|assistant|>\n"
_MARKERS = {"user": USER, "assistant": ASSISTANT}


@dataclass(frozen=True)
class PreferenceRecord:
    id: str
    prompt: str
    chosen: str
    rejected: str
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalPrompt:
    """An evaluation-only prompt (AlpacaEval): no pair, only a reference output to compare with."""

    id: str
    prompt: str
    reference: str
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class UnpairedItem:
    record_index: int
    prompt: str
    response: str
    desirable: bool


def format_turns(turns: Sequence[tuple[str, str]]) -> str:
    """Render a dialogue history as a prompt that ends with the assistant marker.

    `turns` is [(role, text), ...] with role "user" or "assistant"; the last turn must be the
    user's, because the model's reply is what follows the returned text.
    """
    if not turns:
        raise ValueError("format_turns: need at least one turn")
    parts = []
    for position, (role, text) in enumerate(turns, start=1):
        if role not in _MARKERS:
            raise ValueError(f"format_turns: turn {position} has role {role!r}; expected 'user' or 'assistant'")
        if not isinstance(text, str):
            raise ValueError(f"format_turns: turn {position} text is {type(text).__name__}, not str")
        parts.append(_MARKERS[role] + text)
    if turns[-1][0] != "user":
        raise ValueError("format_turns: the last turn must be a user turn (the assistant replies next)")
    return "".join(parts) + ASSISTANT


def _where(source, line) -> str:
    return source if line is None else f"{source}, row {line}"  # line None: `source` is the whole location


def _require_str(row: dict, name: str, where: str, *, non_blank: bool) -> str:
    if name not in row:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if non_blank and not value.strip():
        raise DataError(f"{where}: field {name!r} is empty or whitespace only")
    return value


def _require_metadata(row: dict, where: str) -> dict:
    metadata = row.get("metadata", {})
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: field 'metadata' must be an object, got {type(metadata).__name__}")
    return metadata


def validate_record(row, source, line) -> PreferenceRecord:
    """Check one raw row and build its record; `source` (file) and `line` (1-based) go in errors.

    `metadata` is optional (defaults to {}); unknown extra fields are ignored.
    """
    where = _where(source, line)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    record_id = _require_str(row, "id", where, non_blank=True)
    prompt = _require_str(row, "prompt", where, non_blank=True)
    # Empty or identical responses are allowed: the paper's data holds such pairs and its public code
    # trains on them (rpo.data.loaders counts them in load_report.json).
    chosen = _require_str(row, "chosen", where, non_blank=False)
    rejected = _require_str(row, "rejected", where, non_blank=False)
    return PreferenceRecord(record_id, prompt, chosen, rejected, dict(_require_metadata(row, where)))


def validate_eval_prompt(row, source, line) -> EvalPrompt:
    where = _where(source, line)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    return EvalPrompt(
        _require_str(row, "id", where, non_blank=True),
        _require_str(row, "prompt", where, non_blank=True),
        _require_str(row, "reference", where, non_blank=False),
        dict(_require_metadata(row, where)),
    )


def _rows_with_lines(path) -> list[tuple[int, dict]]:
    """Each row with its real 1-based line number (read_jsonl skips blank lines)."""
    return read_jsonl_numbered(path)


def _check_unique_ids(items, path, lines) -> None:
    seen: dict[str, int] = {}
    for item, line in zip(items, lines):
        if item.id in seen:
            raise DataError(f"{path}, row {line}: duplicate id {item.id!r} (first at row {seen[item.id]})")
        seen[item.id] = line


def read_records(path) -> list[PreferenceRecord]:
    numbered = _rows_with_lines(path)
    records = [validate_record(row, path, line) for line, row in numbered]
    _check_unique_ids(records, path, [line for line, _ in numbered])
    return records


def write_records(path, records: Iterable[PreferenceRecord]) -> None:
    write_jsonl(path, (record.to_dict() for record in records))


def read_eval_prompts(path) -> list[EvalPrompt]:
    numbered = _rows_with_lines(path)
    prompts = [validate_eval_prompt(row, path, line) for line, row in numbered]
    _check_unique_ids(prompts, path, [line for line, _ in numbered])
    return prompts


def write_eval_prompts(path, prompts: Iterable[EvalPrompt]) -> None:
    write_jsonl(path, (prompt.to_dict() for prompt in prompts))


def sft_examples(records: Sequence[PreferenceRecord]) -> list[tuple[int, str, str]]:
    """(record_index, prompt, chosen) of the first pair of each unique prompt, in first-seen order."""
    seen: set[str] = set()
    examples = []
    for index, record in enumerate(records):
        if record.prompt not in seen:
            seen.add(record.prompt)
            examples.append((index, record.prompt, record.chosen))
    return examples
