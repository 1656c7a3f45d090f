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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rpo.data.hub_rows import RAW_SOURCES, RowProblem
from rpo.data.raw import Split, hub_file, looks_local, open_split
from rpo.data.records import ASSISTANT, USER, EvalPrompt, PreferenceRecord, read_eval_prompts, validate_record
from rpo.errors import ConfigError, DataError
from rpo.io import BadLine

logger = logging.getLogger(__name__)

HUB_IDS = {
    "hh": "Anthropic/hh-rlhf",
    "tldr": "openai/summarize_from_feedback",
    "ultrafeedback": "HuggingFaceH4/ultrafeedback_binarized",
    "alpaca_eval": "tatsu-lab/alpaca_eval",
}
# alpaca_eval_gpt4_baseline: AlpacaEval 2.0's GPT-4 Turbo reference outputs, alpaca-eval's default reference
# (the paper's); the config "alpaca_eval" holds AlpacaEval 1.0's text-davinci-003 outputs.
DEFAULT_CONFIGS = {"tldr": "comparisons", "alpaca_eval": "alpaca_eval_gpt4_baseline"}
ALPACA_EVAL_COLUMNS = ("instruction", "output", "generator", "dataset")
ON_ERROR = ("raise", "skip")
_DEFAULT = object()


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
    # loaded rows of note, by kind: pairs the public code keeps although they carry no preference
    kept: dict[str, int] = field(default_factory=dict)

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


KNOWN_SOURCES = (*RAW_SOURCES, "jsonl", "parquet")




# ---- the loop shared by all sources ----------------------------------------------------------

def _build_record(source, split, number, where, parsed, report: LoadReport) -> PreferenceRecord:
    prompt, chosen, rejected, metadata = parsed
    # The public code trains on these pairs as they are; counted, so load_report.json shows how many.
    notes = {"identical responses": chosen == rejected,
             "empty response": not chosen.strip() or not rejected.strip(),
             "no post (CNN/DM article): the empty-post prompt": metadata.get("task") == "summarization"
                                                                and prompt == USER + ASSISTANT}
    report.kept.update({kind: report.kept.get(kind, 0) + 1 for kind, found in notes.items() if found})
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
    if report.kept:
        logger.warning("%s: kept, as the public code keeps them: %s", where, report.kept)
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
    parse_row, columns = RAW_SOURCES[source]
    config = DEFAULT_CONFIGS.get(source) if config is _DEFAULT else config
    opened = open_split(path_or_id, split, config, cache_dir)
    _require_columns(opened, columns)

    def make(number, location, row):
        _require_fields(row, columns)
        return _build_record(source, split, number, location, parse_row(row), report)

    return _collect(opened, make, report, on_error), report


def _alpaca_eval_file(path_or_id: str, config: str, cache_dir) -> str:
    """The file of one AlpacaEval config: the hub repository serves each as a JSON array at its root,
    f"{config}.json", through a loading script that `datasets` (4 and later) no longer runs, so the file is
    read directly. A local folder laid out like that repository holds the same file; a file is itself."""
    name = f"{config}.json"
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / name).is_file():
            raise DataError(f"{path}: no {name} (the file of AlpacaEval config {config!r}); point the path at "
                            "the file, or at a folder laid out like tatsu-lab/alpaca_eval")
        return str(path / name)
    if path.is_file() or looks_local(path_or_id):
        return path_or_id
    return str(hub_file(path_or_id, name, cache_dir))


def load_eval_prompts(source: str = "alpaca_eval", path_or_id: str | None = None, split: str = "eval",
                      config=_DEFAULT, cache_dir=None) -> list[EvalPrompt]:
    """AlpacaEval instructions as EvalPrompts (reference = the dataset's output); any bad row raises.

    source "alpaca_eval" reads the raw hub schema (instruction, output, generator, dataset) of `config`
    (default alpaca_eval_gpt4_baseline);
    "jsonl" reads our EvalPrompt rows. metadata["instruction"] keeps the raw instruction verbatim,
    because AlpacaEval matches model outputs to its references by that exact text (so each occurs once).
    """
    if source == "jsonl":
        return read_eval_prompts(_local_file(path_or_id, split, ".jsonl"))
    if source != "alpaca_eval":
        raise ConfigError(f"source: unknown eval source {source!r}; known: alpaca_eval, jsonl")
    path_or_id = HUB_IDS[source] if path_or_id is None else path_or_id
    config = DEFAULT_CONFIGS[source] if config is _DEFAULT else config
    opened = open_split(_alpaca_eval_file(path_or_id, config, cache_dir), split)
    _require_columns(opened, ALPACA_EVAL_COLUMNS)
    first_at: dict[str, str] = {}

    def make(number, location, row):
        _require_fields(row, ALPACA_EVAL_COLUMNS)
        instruction, output, generator = row["instruction"], row["output"], row["generator"]
        if instruction is not None and not isinstance(instruction, str):
            raise RowProblem("bad instruction", f"instruction is {type(instruction).__name__}, expected a string")
        if not instruction or not instruction.strip():
            raise RowProblem("empty instruction", "instruction is missing or blank")
        if not isinstance(output, str):
            raise RowProblem("bad output", f"output is {type(output).__name__}, expected a string")
        if not isinstance(generator, str) or not generator.strip():
            raise RowProblem("bad generator", f"generator must name the reference's model, got {generator!r}")
        if instruction in first_at:
            raise RowProblem("duplicate instruction", f"the same instruction is already at {first_at[instruction]}")
        first_at[instruction] = location
        metadata = {"source": source, "split": split, "task": "instruction", "truncation": "keep_end",
                    "instruction": instruction, "generator": row.get("generator"),
                    "dataset": row.get("dataset")}
        # The public code's prompt: the instruction as it is (not stripped, spaces not collapsed).
        return EvalPrompt(f"{source}-{split}-{number - 1}", USER + instruction + ASSISTANT, output, metadata)

    return _collect(opened, make, LoadReport(source, str(path_or_id), split), "raise")
