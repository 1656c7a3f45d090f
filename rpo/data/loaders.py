"""Loaders of the paper's data sources into PreferenceRecord / EvalPrompt lists.

Each loader takes a hub id (paper scale) or a local copy in the hub's exact raw format: a single
data file (read as that split), or a folder laid out like the hub repository (README.md configs or
{split}.jsonl files, resolved by `datasets` exactly as for the hub).
Row numbers in messages are 1-based positions within the loaded split.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from rpo.data.records import (EvalPrompt, PreferenceRecord, _rows_with_lines, format_turns,
                              read_eval_prompts, validate_record)
from rpo.errors import ConfigError, DataError

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


# ---- opening a split -------------------------------------------------------------------------

def _looks_local(path_or_id: str) -> bool:
    """A missing path that cannot be a hub id ("owner/name") is reported as a missing file."""
    if path_or_id.startswith(("/", "./", "../", "~")) or path_or_id.count("/") > 1:
        return True
    return bool(re.search(r"\.(jsonl?|parquet|gz|bz2|zst|xz)$", path_or_id))


def _file_split(split: str) -> str:
    # A single file is the requested split; keep any slice ("test[:100]") on datasets' "train".
    return "train" + split[split.index("["):] if "[" in split else "train"


def _folder_config(folder: Path, config):
    """A local folder without named configs is read as the requested config."""
    if config is None:
        return None
    names = datasets.get_dataset_config_names(str(folder))
    return None if names == ["default"] and config not in names else config


def open_split(path_or_id: str, split: str, config=None, cache_dir=None) -> tuple[datasets.Dataset, str]:
    """Load one split as a `datasets.Dataset`; returns it with the name errors should use.

    A local file or folder is read afresh every time: datasets' cache keys a folder whose README
    declares its configs (as the hub repositories do) by that declaration, not by the files' bytes,
    so a raw file rewritten in place would otherwise load as its old rows (the rehearsal found this).
    """
    path = Path(path_or_id).expanduser()
    try:
        if path.is_file() or path.is_dir():
            with tempfile.TemporaryDirectory(prefix="rpo-datasets-") as private:
                local = {"cache_dir": private, "keep_in_memory": True}
                if path.is_file():
                    builder = "parquet" if path.name.endswith(".parquet") else "json"
                    return datasets.load_dataset(builder, data_files=str(path), split=_file_split(split),
                                                 **local), str(path)
                return datasets.load_dataset(str(path), name=_folder_config(path, config), split=split,
                                             **local), f"{path} (split {split!r})"
        if _looks_local(path_or_id):
            raise DataError(f"{path_or_id}: no such file or folder")
        where = f"{path_or_id} (split {split!r})"
        return datasets.load_dataset(path_or_id, name=config, split=split, cache_dir=cache_dir), where
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFound, Value, Connection, ...)
        raise DataError(f"{path_or_id}: cannot load split {split!r}: {type(exc).__name__}: {exc}") from exc


def _require_columns(dataset, columns, where) -> None:
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {dataset.column_names}")


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
    if isinstance(choice, bool) or choice not in (0, 1):
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
    return validate_record(row, where, number)


def _numbered(dataset):
    return ((index + 1, row) for index, row in enumerate(dataset))


def _collect(numbered_rows, make, report: LoadReport, where: str, on_error: str) -> list:
    """Run `make(row_number, row)` on every (1-based number, row); a bad row raises or is skipped."""
    out = []
    for number, row in numbered_rows:
        report.n_rows += 1
        try:
            out.append(make(number, row))
        except (RowProblem, DataError) as problem:
            if on_error == "raise":
                if isinstance(problem, DataError):
                    raise
                raise DataError(f"{where}, row {number}: {problem}") from None
            kind = problem.kind if isinstance(problem, RowProblem) else "invalid record"
            report.skipped.append(SkippedRow(number, kind, str(problem)))
            logger.debug("%s, row %d skipped: %s", where, number, problem)
    report.n_loaded = len(out)
    if report.skipped:
        logger.warning("%s: skipped %d of %d rows %s", where, report.n_skipped, report.n_rows,
                       report.reason_counts())
    logger.info("%s: loaded %d rows", where, report.n_loaded)
    return out


def _local_file(path_or_id: str, split: str, suffix: str) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        path = path / f"{split}{suffix}"
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path


def _records_from_jsonl(path: Path, report: LoadReport, on_error: str) -> list[PreferenceRecord]:
    seen: set[str] = set()

    def make(line, row):
        record = validate_record(row, path, line)
        if record.id in seen:
            raise DataError(f"{path}, row {line}: duplicate id {record.id!r}")
        seen.add(record.id)
        return record

    return _collect(_rows_with_lines(path), make, report, str(path), on_error)


def _records_from_parquet(path: Path, report: LoadReport, on_error: str, cache_dir) -> list[PreferenceRecord]:
    dataset, where = open_split(str(path), "train", cache_dir=cache_dir)
    seen: set[str] = set()

    def make(number, row):
        if isinstance(row.get("metadata"), str):  # metadata may be stored as JSON text
            try:
                row = {**row, "metadata": json.loads(row["metadata"])}
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}, row {number}: metadata is not valid JSON: {exc.msg}") from exc
        record = validate_record(row, where, number)
        if record.id in seen:
            raise DataError(f"{where}, row {number}: duplicate id {record.id!r}")
        seen.add(record.id)
        return record

    return _collect(_numbered(dataset), make, report, where, on_error)


def load_preference_data(source: str, path_or_id: str | None, split: str, on_error: str = "raise",
                         config=_DEFAULT, cache_dir=None) -> tuple[list[PreferenceRecord], LoadReport]:
    """Load one split of a preference source; returns the records and a LoadReport.

    source: "hh", "tldr", "ultrafeedback" (raw hub schema; `path_or_id` None means the paper's hub
    id), "jsonl" or "parquet" (our record schema; a folder means `{folder}/{split}.jsonl`).
    on_error: "raise" (first bad row raises DataError) or "skip" (bad rows counted in the report).
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
    if source == "jsonl":
        return _records_from_jsonl(_local_file(path_or_id, split, ".jsonl"), report, on_error), report
    if source == "parquet":
        path = _local_file(path_or_id, split, ".parquet")
        return _records_from_parquet(path, report, on_error, cache_dir), report
    parse_row, columns = _RAW_SOURCES[source]
    config = DEFAULT_CONFIGS.get(source) if config is _DEFAULT else config
    dataset, where = open_split(path_or_id, split, config, cache_dir)
    _require_columns(dataset, columns, where)

    def make(number, row):
        return _build_record(source, split, number, where, parse_row(row))

    return _collect(_numbered(dataset), make, report, where, on_error), report


def load_eval_prompts(source: str = "alpaca_eval", path_or_id: str | None = None, split: str = "eval",
                      config=_DEFAULT, cache_dir=None) -> list[EvalPrompt]:
    """AlpacaEval instructions as EvalPrompts (reference = the dataset's output); any bad row raises.

    source "alpaca_eval" reads the raw hub schema (instruction, output, generator, dataset);
    "jsonl" reads our EvalPrompt rows. metadata["instruction"] keeps the raw instruction verbatim,
    because AlpacaEval matches model outputs to its references by that exact text.
    """
    if source == "jsonl":
        return read_eval_prompts(_local_file(path_or_id, split, ".jsonl"))
    if source != "alpaca_eval":
        raise ConfigError(f"source: unknown eval source {source!r}; known: alpaca_eval, jsonl")
    path_or_id = HUB_IDS[source] if path_or_id is None else path_or_id
    config = DEFAULT_CONFIGS[source] if config is _DEFAULT else config
    dataset, where = open_split(path_or_id, split, config, cache_dir)
    _require_columns(dataset, ("instruction", "output"), where)

    def make(number, row):
        instruction, output = row["instruction"], row["output"]
        if not isinstance(instruction, str) or not instruction.strip():
            raise RowProblem("empty instruction", "instruction is missing or blank")
        if not isinstance(output, str):
            raise RowProblem("bad output", f"output is {type(output).__name__}, expected a string")
        metadata = {"source": source, "split": split, "task": "instruction", "truncation": "keep_end",
                    "instruction": instruction, "generator": row.get("generator"),
                    "dataset": row.get("dataset")}
        return EvalPrompt(f"{source}-{split}-{number - 1}", format_turns([("user", instruction.strip())]),
                          output, metadata)

    return _collect(_numbered(dataset), make, LoadReport(source, str(path_or_id), split), where, "raise")
