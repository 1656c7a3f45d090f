"""Loaders of the paper's data sources into PreferenceRecord / EvalPrompt lists.

Each loader takes a hub id (paper scale) or a local copy in the hub's exact raw format: a single
data file (read as that split), or a folder laid out like the hub repository (README.md configs or
{split}.jsonl files, whose files `datasets` resolves exactly as for the hub; rpo.data.raw reads them).
Row numbers in messages are 1-based positions within the loaded split. Under on_error "skip" a bad row
(a line that is not JSON, a field of the wrong type, a duplicate id, ...) is counted by its kind in the
LoadReport (load_report.json) and the log; a file that cannot be read as a whole raises under both.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rpo.data.raw import Split, open_split
from rpo.data.records import EvalPrompt, PreferenceRecord, format_turns, read_eval_prompts, validate_record
from rpo.errors import ConfigError, DataError
from rpo.io import BadLine

logger = logging.getLogger(__name__)

HUB_IDS = {
    "hh": "Anthropic/hh-rlhf",
    "tldr": "openai/summarize_from_feedback",
    "ultrafeedback": "HuggingFaceH4/ultrafeedback_binarized",
    "alpaca_eval": "tatsu-lab/alpaca_eval",
}
DEFAULT_CONFIGS = {"tldr": "comparisons", "alpaca_eval": "alpaca_eval"}
DIALOGUE = {"task": "dialogue", "truncation": "keep_end"}
SUMMARIZATION = {"task": "summarization", "truncation": "keep_start"}
ON_ERROR = ("raise", "skip")
_DEFAULT = object()


class RowProblem(Exception):
    """One raw row cannot become a record; `kind` is a short label the skip report counts by."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class SkippedRow:
    row: int          # 1-based position in the split
    kind: str
    detail: str
    location: str = ""  # the file and line (or row) it came from


@dataclass
class LoadReport:
    source: str
    path_or_id: str
    split: str
    n_rows: int = 0
    n_loaded: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(skip.kind for skip in self.skipped))

    def to_dict(self) -> dict:
        """JSON-ready summary, e.g. for a pipeline's data report."""
        return {**asdict(self), "n_skipped": self.n_skipped, "reason_counts": self.reason_counts()}


def _require_columns(split: Split, columns) -> None:
    """A field no row has: the file is of another schema, an error under every on_error policy."""
    missing = [name for name in columns if name not in split.columns]
    if missing:
        raise DataError(f"{split.where}: missing column(s) {missing}; found {sorted(split.columns)}")


def _require_fields(row: dict, columns) -> None:
    missing = [name for name in columns if name not in row]
    if missing:
        raise RowProblem("missing field", f"no field {missing[0]!r}")


# ---- per-source row parsers: raw row -> (prompt, chosen, rejected, metadata) -----------------

_HH_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text, which: str) -> list[tuple[str, str]]:
    """"\\n\\nHuman: ...\\n\\nAssistant: ..." -> [(role, text)], alternating, ending with the assistant."""
    if not isinstance(text, str):
        raise RowProblem("not a string", f"{which} is {type(text).__name__}")
    parts = _HH_MARKER.split(text)
    if len(parts) < 3:
        raise RowProblem("unparseable transcript", f"{which} has no 'Human:'/'Assistant:' turns")
    if parts[0].strip():
        raise RowProblem("unparseable transcript", f"{which} has text before the first turn")
    turns = [(_HH_ROLES[role], body.strip()) for role, body in zip(parts[1::2], parts[2::2])]
    for position, (role, _) in enumerate(turns, start=1):
        expected = "user" if position % 2 else "assistant"
        if role != expected:
            raise RowProblem("wrong turn order", f"{which} turn {position} is {role}, expected {expected}")
    if turns[-1][0] != "assistant":
        raise RowProblem("missing final assistant turn", f"{which} ends with a user turn")
    return turns


def hh_transcript(turns) -> str:
    """The inverse of parse_hh_transcript: [(role, text)] -> "\\n\\nHuman: ...\\n\\nAssistant: ..."."""
    names = {role: name for name, role in _HH_ROLES.items()}
    return "".join(f"\n\n{names[role]}: {text}" for role, text in turns)


def _shared_history(chosen_turns, rejected_turns):
    history = chosen_turns[:-1]
    if history != rejected_turns[:-1]:
        differ = next((i for i, (a, b) in enumerate(zip(history, rejected_turns[:-1]), 1) if a != b),
                      min(len(history), len(rejected_turns) - 1) + 1)
        raise RowProblem("histories differ", f"chosen and rejected differ before the final reply (turn {differ})")
    return history


def _hh_row(row: dict):
    chosen_turns = parse_hh_transcript(row["chosen"], "chosen")
    rejected_turns = parse_hh_transcript(row["rejected"], "rejected")
    history = _shared_history(chosen_turns, rejected_turns)
    prompt = format_turns(history)
    return prompt, chosen_turns[-1][1], rejected_turns[-1][1], {**DIALOGUE, "n_turns": len(history)}


def tldr_prompt_text(info: dict) -> str:
    """The post as the OpenAI summarisation papers show it, ending with "TL;DR:".

    Lines: "SUBREDDIT: r/<name>", "TITLE: <title>", "POST: <post>" (or "ARTICLE: <article>" for the
    CNN/DM items, whose post is null), "TL;DR:". Subreddit and title lines are left out when null.
    """
    if not isinstance(info, dict):
        raise RowProblem("bad info", f"info is {type(info).__name__}, expected an object")
    post, article = info.get("post"), info.get("article")
    for name, value in (("post", post), ("article", article)):
        if value is not None and not isinstance(value, str):
            raise RowProblem("bad info", f"info.{name} is {type(value).__name__}, expected a string")
    if isinstance(post, str) and post.strip():
        body = f"POST: {post.strip()}"
    elif isinstance(article, str) and article.strip():
        body = f"ARTICLE: {article.strip()}"
    else:
        raise RowProblem("missing post", "info has neither a post nor an article")
    lines = []
    if info.get("subreddit"):
        lines.append(f"SUBREDDIT: r/{info['subreddit']}")
    if info.get("title"):
        lines.append(f"TITLE: {str(info['title']).strip()}")
    return "\n".join(lines + [body, "TL;DR:"])


def _tldr_row(row: dict):
    prompt = format_turns([("user", tldr_prompt_text(row["info"]))])
    summaries, choice = row["summaries"], row["choice"]
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise RowProblem("bad summaries", "expected a list of exactly two summaries")
    texts = []
    for position, summary in enumerate(summaries):
        if not isinstance(summary, dict) or not isinstance(summary.get("text"), str):
            raise RowProblem("bad summaries", f"summaries[{position}] has no text string")
        texts.append(summary["text"].strip())
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
        raise RowProblem("bad choice", f"choice must be 0 or 1, got {choice!r}")
    info, extra = row["info"], row.get("extra") or {}
    metadata = {
        **SUMMARIZATION,
        "post_id": info.get("id"),
        "subreddit": info.get("subreddit"),
        "site": info.get("site"),
        "chosen_policy": summaries[choice].get("policy"),
        "rejected_policy": summaries[1 - choice].get("policy"),
        "comparison_split": row.get("split"),
        "confidence": extra.get("confidence") if isinstance(extra, dict) else None,
    }
    return prompt, texts[choice], texts[1 - choice], metadata


def _messages(value, which: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("bad messages", f"{which} must be a non-empty list of messages")
    turns = []
    for position, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowProblem("bad messages", f"{which} message {position} has no content string")
        if message.get("role") not in ("user", "assistant"):
            raise RowProblem("bad messages", f"{which} message {position} has role {message.get('role')!r}")
        turns.append((message["role"], message["content"].strip()))
    if turns[-1][0] != "assistant" or len(turns) < 2 or turns[-2][0] != "user":
        raise RowProblem("bad messages", f"{which} must end with a user message then the assistant reply")
    return turns


def _ultrafeedback_row(row: dict):
    chosen_turns = _messages(row["chosen"], "chosen")
    rejected_turns = _messages(row["rejected"], "rejected")
    history = _shared_history(chosen_turns, rejected_turns)
    metadata = {**DIALOGUE, "prompt_id": row.get("prompt_id"), "score_chosen": row.get("score_chosen"),
                "score_rejected": row.get("score_rejected")}
    return format_turns(history), chosen_turns[-1][1], rejected_turns[-1][1], metadata


_RAW_SOURCES = {
    "hh": (_hh_row, ("chosen", "rejected")),
    "tldr": (_tldr_row, ("info", "summaries", "choice")),
    "ultrafeedback": (_ultrafeedback_row, ("chosen", "rejected")),
}
KNOWN_SOURCES = (*_RAW_SOURCES, "jsonl", "parquet")


# ---- the loop shared by all sources ----------------------------------------------------------

def _build_record(source, split, number, where, parsed) -> PreferenceRecord:
    prompt, chosen, rejected, metadata = parsed
    if not chosen.strip() or not rejected.strip():
        raise RowProblem("empty response", "chosen or rejected reply is empty")
    if chosen == rejected:
        raise RowProblem("identical responses", "chosen and rejected replies are the same text")
    row = {"id": f"{source}-{split}-{number - 1}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
           "metadata": {"source": source, "split": split, **metadata}}
    return validate_record(row, where, None)


def _collect(split: Split, make, report: LoadReport, on_error: str) -> list:
    """Run `make(row_number, location, row)` on every row of the split; a bad row raises or is skipped."""
    out, where, skip = [], split.where, "set on_error: skip to skip such rows"
    for number, (location, row) in enumerate(split.rows, start=1):
        report.n_rows += 1
        if isinstance(row, BadLine):  # its detail already says what to do about it
            kind, detail, message = row.kind, row.detail, f"{location}: {row.detail} (or {skip})"
        else:
            try:
                out.append(make(number, location, row))
                continue
            except RowProblem as exc:
                kind, detail = exc.kind, str(exc)
            except DataError as exc:  # a record check, its location in the message
                kind, detail = "invalid record", str(exc)
            except (TypeError, AttributeError, IndexError, KeyError, ValueError) as exc:
                # a value of a type no parser check foresaw (the raw data is untrusted): still this row's fault
                kind, detail = "malformed row", f"malformed row: {type(exc).__name__}: {exc}"
            message = detail if kind == "invalid record" else f"{location}: {detail}; fix the row, or {skip}"
        if on_error == "raise":
            raise DataError(message) from None
        report.skipped.append(SkippedRow(number, kind, detail, location))
        logger.debug("%s skipped: %s", location, detail)
    report.n_loaded = len(out)
    if report.skipped:
        logger.warning("%s: skipped %d of %d rows %s", where, report.n_skipped, report.n_rows,
                       report.reason_counts())
        if not out:  # an empty output would only fail later, naming no input
            raise DataError(f"{where}: all {report.n_rows} rows are bad ({report.reason_counts()}), nothing to "
                            "load; check that this is the right file and source")
    logger.info("%s: loaded %d rows", where, report.n_loaded)
    return out


def _local_file(path_or_id: str, split: str, suffix: str) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        path = path / f"{split}{suffix}"
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path


def _own_records(split: Split, report: LoadReport, on_error: str) -> list[PreferenceRecord]:
    """Rows of our record schema (sources jsonl and parquet), each id once."""
    first_at: dict[str, str] = {}

    def make(number, location, row):
        if isinstance(row.get("metadata"), str):  # Parquet may store metadata as JSON text
            try:
                row = {**row, "metadata": json.loads(row["metadata"])}
            except json.JSONDecodeError as exc:
                raise RowProblem("bad metadata", f"metadata is not valid JSON: {exc.msg}") from None
        record = validate_record(row, location, None)
        if record.id in first_at:
            raise RowProblem("duplicate id", f"id {record.id!r} is already at {first_at[record.id]}")
        first_at[record.id] = location
        return record

    return _collect(split, make, report, on_error)


def load_preference_data(source: str, path_or_id: str | None, split: str, on_error: str = "raise",
                         config=_DEFAULT, cache_dir=None) -> tuple[list[PreferenceRecord], LoadReport]:
    """Load one split of a preference source; returns the records and a LoadReport.

    source: "hh", "tldr", "ultrafeedback" (raw hub schema; `path_or_id` None means the paper's hub
    id), "jsonl" or "parquet" (our record schema; a folder means `{folder}/{split}.jsonl`).
    on_error: "raise" (first bad row raises DataError) or "skip" (bad rows counted in the report by
    kind; a file that cannot be read as a whole, rpo.data.raw, raises under both).
    config: the hub config name (default "comparisons" for tldr, none otherwise).
    Record ids are f"{source}-{split}-{row_index}" (0-based index in the split), stable under skips.
    """
    if source not in KNOWN_SOURCES:
        raise ConfigError(f"source: unknown data source {source!r}; known: {', '.join(KNOWN_SOURCES)}")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error: must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if path_or_id is None:
        if source not in HUB_IDS:
            raise ConfigError(f"path: source {source!r} needs a file or folder")
        path_or_id = HUB_IDS[source]
    report = LoadReport(source, str(path_or_id), split)
    if source in ("jsonl", "parquet"):
        path = _local_file(path_or_id, split, f".{source}")
        return _own_records(open_split(str(path), "train"), report, on_error), report
    parse_row, columns = _RAW_SOURCES[source]
    config = DEFAULT_CONFIGS.get(source) if config is _DEFAULT else config
    opened = open_split(path_or_id, split, config, cache_dir)
    _require_columns(opened, columns)

    def make(number, location, row):
        _require_fields(row, columns)
        return _build_record(source, split, number, location, parse_row(row))

    return _collect(opened, make, report, on_error), report


def load_eval_prompts(source: str = "alpaca_eval", path_or_id: str | None = None, split: str = "eval",
                      config=_DEFAULT, cache_dir=None) -> list[EvalPrompt]:
    """AlpacaEval instructions as EvalPrompts (reference = the dataset's output); any bad row raises.

    source "alpaca_eval" reads the raw hub schema (instruction, output, generator, dataset);
    "jsonl" reads our EvalPrompt rows. metadata["instruction"] keeps the raw instruction verbatim,
    because AlpacaEval matches model outputs to its references by that exact text (so each occurs once).
    """
    if source == "jsonl":
        return read_eval_prompts(_local_file(path_or_id, split, ".jsonl"))
    if source != "alpaca_eval":
        raise ConfigError(f"source: unknown eval source {source!r}; known: alpaca_eval, jsonl")
    path_or_id = HUB_IDS[source] if path_or_id is None else path_or_id
    config = DEFAULT_CONFIGS[source] if config is _DEFAULT else config
    opened = open_split(path_or_id, split, config, cache_dir)
    _require_columns(opened, ("instruction", "output"))
    first_at: dict[str, str] = {}

    def make(number, location, row):
        _require_fields(row, ("instruction", "output"))
        instruction, output = row["instruction"], row["output"]
        if instruction is not None and not isinstance(instruction, str):
            raise RowProblem("bad instruction", f"instruction is {type(instruction).__name__}, expected a string")
        if not instruction or not instruction.strip():
            raise RowProblem("empty instruction", "instruction is missing or blank")
        if not isinstance(output, str):
            raise RowProblem("bad output", f"output is {type(output).__name__}, expected a string")
        if instruction in first_at:
            raise RowProblem("duplicate instruction", f"the same instruction is already at {first_at[instruction]}")
        first_at[instruction] = location
        metadata = {"source": source, "split": split, "task": "instruction", "truncation": "keep_end",
                    "instruction": instruction, "generator": row.get("generator"),
                    "dataset": row.get("dataset")}
        return EvalPrompt(f"{source}-{split}-{number - 1}", format_turns([("user", instruction.strip())]),
                          output, metadata)

    return _collect(opened, make, LoadReport(source, str(path_or_id), split), "raise")
