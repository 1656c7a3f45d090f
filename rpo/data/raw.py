"""Raw data files as located rows: a local copy of a hub dataset (one file, or a folder laid out like the
hub repository: README.md configs or {split}.jsonl files, resolved by `datasets` as for the hub), or the hub.

What makes a file unreadable as a whole is a DataError under every on_error policy: no such file or split,
an empty file or split, compressed data under a plain name, bytes that are not UTF-8, a JSON array where
JSON lines were expected, a file that is not Parquet. A line that is not a JSON object (invalid JSON, a last
line cut off, another JSON value) is one bad row, an rpo.io.BadLine, which the loader raises or skips by its
policy. Rows are numbered from 1 within the split; a row's location names its file and line.

Local files are parsed here rather than by `datasets`: its JSON reader reports neither the file nor the line
of a bad one and cannot skip it, and its cache keys a folder whose README declares its configs by that
declaration, not the files' bytes, so a file rewritten in place loaded as its old rows (the rehearsal found
this). `datasets` still says which files make up a folder's split.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import datasets

from rpo.errors import DataError
from rpo.io import BadLine, compression_of, decode_text, parse_jsonl

DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}


@dataclass
class Split:
    where: str  # how messages name the split: the file, or "folder (split 'train')"
    rows: Iterable[tuple[str, dict | BadLine]]  # (location, the row or why it is not one), in order
    columns: set[str]  # every field any row has


def looks_local(path_or_id: str) -> bool:
    """A missing path that cannot be a hub id ("owner/name") is reported as a missing file."""
    if path_or_id.startswith(("/", "./", "../", "~")) or path_or_id.count("/") > 1:
        return True
    return bool(re.search(r"\.(jsonl?|parquet|gz|bz2|zst|xz)$", path_or_id))


def open_split(path_or_id: str, split: str, config=None, cache_dir=None) -> Split:
    """One split of a local file (read as that split; a slice such as "test[:100]" applies), a local folder or
    a hub id (through `datasets`, cached in `cache_dir`)."""
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return _local_split(str(path), [path], split)
    if path.is_dir():
        return _local_split(f"{path} (split {split!r})", _folder_files(path, split, config), split)
    if looks_local(path_or_id):
        raise DataError(f"{path_or_id}: no such file or folder")
    return _hub_split(path_or_id, split, config, cache_dir)


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _hub_split(hub_id: str, split: str, config, cache_dir) -> Split:
    try:
        dataset = datasets.load_dataset(hub_id, name=config, split=split, cache_dir=cache_dir)
    except Exception as exc:  # datasets raises many types (FileNotFound, Value, Connection, ...)
        raise DataError(f"{hub_id}: cannot load split {split!r}: {_first_line(exc)}; check the id and split, or "
                        "point the config's path at a local copy") from exc
    where = f"{hub_id} (split {split!r})"
    if len(dataset) == 0:
        raise DataError(f"{where}: empty split, no rows to load; check the split name")
    return Split(where, ((f"{where}, row {n}", row) for n, row in enumerate(dataset, start=1)),
                 set(dataset.column_names))


def hub_file(repo_id: str, filename: str, cache_dir=None) -> Path:
    """One raw file of a hub dataset repository, downloaded (or found in the HF cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", cache_dir=cache_dir))
    except Exception as exc:  # offline, unknown repo or file, HTTP errors: many types
        raise DataError(f"{repo_id}: cannot fetch {filename}: {_first_line(exc)}; check the id and config, or point "
                        "the config's path at a local copy") from exc


def _folder_config(folder: Path, config):
    """A local folder without named configs is read as the requested config."""
    if config is None:
        return None
    names = datasets.get_dataset_config_names(str(folder))
    return None if names == ["default"] and config not in names else config


def _folder_files(folder: Path, split: str, config) -> list[Path]:
    """The files `datasets` reads for `split` of a hub-layout folder, in its order."""
    name = split.split("[", 1)[0]
    try:
        with tempfile.TemporaryDirectory(prefix="rpo-datasets-") as private:
            builder = datasets.load_dataset_builder(str(folder), name=_folder_config(folder, config),
                                                    cache_dir=private)
    except Exception as exc:  # a README whose configs do not parse, an unknown config, ...
        raise DataError(f"{folder}: cannot load split {split!r}: {_first_line(exc)}") from exc
    found = builder.config.data_files or {}
    if name not in found:
        raise DataError(f"{folder}: cannot load split {split!r}: no such split (found: "
                        f"{', '.join(sorted(map(str, found))) or 'none'}); check the split name")
    return [Path(file) for file in found[name]]


def _local_split(where: str, files: list[Path], split: str) -> Split:
    rows = _sliced([row for file in files for row in _file_rows(file)], split, where)
    if not rows:
        raise DataError(f"{where}: empty split, no rows to load; check the slice in {split!r}")
    located = []
    for number, (file, unit, position, value) in enumerate(rows, start=1):
        # "row N" alone where the file's own count agrees; else also where in the file it is
        where_row = f"{file}, row {number}" if position == number else f"{file}, {unit} {position} (row {number})"
        located.append((where_row, value))
    columns = set().union(*(value for _, value in located if isinstance(value, dict)))
    return Split(where, located, columns)


def _sliced(rows: list, split: str, where: str) -> list:
    if "[" not in split:
        return rows
    name = split.split("[", 1)[0]
    try:
        spans = datasets.ReadInstruction.from_spec(split).to_absolute({name: len(rows)})
    except (ValueError, KeyError, AssertionError) as exc:
        raise DataError(f"{where}: cannot read split {split!r}: {_first_line(exc)}") from exc
    return [row for span in spans for row in rows[span.from_:span.to]]


def _empty(file: Path) -> DataError:
    return DataError(f"{file}: empty file, no rows to load; restore the complete file (an empty file is an "
                     "error under on_error: skip too)")


def _file_rows(file: Path) -> list[tuple[Path, str, int, dict | BadLine]]:
    """(file, "line" or "row", its position in the file, the row or a BadLine) of every row of one file."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"{file}: cannot read file: {exc.strerror or exc}") from exc
    name = file.name
    for suffix, decompress in DECOMPRESS.items():
        if name.endswith(suffix):
            try:
                data = decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
                raise DataError(f"{file}: cannot decompress it ({exc}); it is truncated or not {suffix} data: "
                                "restore the complete file") from exc
            name = name[: -len(suffix)]
            break
    if name.endswith(".parquet"):
        return _parquet_rows(file, data)
    if not data.strip():
        raise _empty(file)
    text = decode_text(file, data)
    if name.endswith(".json") and text.lstrip().startswith(("[", "{")):
        whole = _json_document(file, text)
        if whole is not None:
            return whole
    rows, bad = parse_jsonl(file, text)
    if bad and not rows:  # not one line is an object: the file is in another format (a CSV named .jsonl, ...)
        first = bad[0]
        raise DataError(f"{file}, line {first.line}: {first.detail.split(';')[0]}; no line of the file is a JSON "
                        "object, so it is not JSON lines: check the file's format")
    numbered = sorted([(line, row) for line, row in rows] + [(line.line, line) for line in bad],
                      key=lambda item: item[0])
    return [(file, "line", line, value) for line, value in numbered]


def _cut_off(exc: json.JSONDecodeError, text: str) -> bool:
    """The parser ran out of input: the file ends inside a value."""
    return exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated")


def _json_document(file: Path, text: str):
    """The rows of a .json file holding one JSON array (AlpacaEval's layout); None for JSON lines in a .json."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.lstrip().startswith("["):
            return None  # JSON lines: each line its own object
        if _cut_off(exc, text):
            raise DataError(f"{file}: truncated: the file ends before its JSON array is closed; restore the "
                            "complete file") from None
        raise DataError(f"{file}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); the file is "
                        "one JSON array, so none of its rows can be read: fix this line") from None
    if isinstance(value, dict):
        if "\n" not in text.strip():
            return None  # one line, one row
        raise DataError(f"{file}: holds one JSON object; expected a JSON array of rows or one object per line")
    if not value:
        raise _empty(file)
    return [(file, "row", index, item if isinstance(item, dict) else
             BadLine(index, "not an object", f"expected a JSON object, got {type(item).__name__}"))
            for index, item in enumerate(value, start=1)]


def _parquet_rows(file: Path, data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    compressed = compression_of(data)
    if compressed:
        raise DataError(f"{file}: holds {compressed[0]}-compressed data, not Parquet; decompress it")
    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file}: not a readable Parquet file ({_first_line(exc)}); restore the complete "
                        "file") from exc
    if not rows:
        raise _empty(file)
    return [(file, "row", index, row) for index, row in enumerate(rows, start=1)]
