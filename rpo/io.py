"""Small I/O helpers: JSON and JSONL read with file:line errors, atomic writes, content hashes."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from rpo.errors import USER_ERRORS, DataError, WriteError

# Leading bytes of compressed data (format, the suffix that names it): under a plain name such a file
# would otherwise reach the JSON parser and fail as "not UTF-8" or "invalid JSON" at line 1.
COMPRESSED_MAGIC = {b"\x1f\x8b": ("gzip", ".gz"), b"BZh": ("bzip2", ".bz2"), b"\xfd7zXZ\x00": ("xz", ".xz"),
                    b"\x28\xb5\x2f\xfd": ("zstd", ".zst"), b"PK\x03\x04": ("zip", ".zip")}
# A write that failed for want of space or rights: reported as one WriteError line, never a traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
# torch and safetensors wrap the OS error in their own exception; their messages keep these words.
_WRITE_FAILURE_TEXTS = (*(os.strerror(code) for code in WRITE_ERRNOS), "file write failed")


class BadLine(NamedTuple):
    """A line of a JSON-lines file that is not a JSON object; `kind` is what a skip report counts by."""
    line: int
    kind: str
    detail: str


def compression_of(data: bytes) -> tuple[str, str] | None:
    """(format, suffix) when `data` starts like compressed data, else None."""
    return next((found for magic, found in COMPRESSED_MAGIC.items() if data.startswith(magic)), None)


def decode_text(path, data: bytes) -> str:
    """`data`, the bytes of `path`, as UTF-8 text (a leading BOM dropped); DataError naming the file, and for
    bytes that are not UTF-8 the line and column of the first, when it cannot be read as text."""
    compressed = compression_of(data)
    if compressed:
        kind, suffix = compressed
        raise DataError(f"{path}: holds {kind}-compressed data under a plain name; decompress it, or name it "
                        f"{Path(path).name}{suffix} where a compressed file is accepted")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_text(path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    return decode_text(path, data)


def parse_jsonl(path, text: str) -> tuple[list[tuple[int, dict]], list[BadLine]]:
    """(1-based line number, object) of every non-blank line of `text` (the content of `path`), and the
    lines that are not a JSON object. A JSON array where JSON lines were expected is a DataError: the
    whole file is in another format, no one line is at fault."""
    if text.lstrip().startswith("["):
        raise DataError(f"{path}: holds a JSON array, but JSON lines (one object per line) were expected; "
                        "write one object per line (e.g. jq -c '.[]')")
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 or U+0085 unescaped
    last = max((number for number, line in enumerate(lines, start=1) if line.strip()), default=0)
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            # The parser ran out of input on the file's unterminated last line: the file was cut off.
            cut = number == last and not text.endswith("\n") and (
                exc.pos >= len(line.rstrip()) or exc.msg.startswith("Unterminated"))
            if cut:
                bad.append(BadLine(number, "truncated line", "truncated: the file ends in the middle of this "
                                   "row; restore the complete file"))
            else:
                bad.append(BadLine(number, "invalid JSON", f"invalid JSON ({exc.msg} at column {exc.colno}); "
                                   "fix or remove this line"))
            continue
        if not isinstance(row, dict):
            bad.append(BadLine(number, "not an object", f"expected a JSON object, got {type(row).__name__}"))
            continue
        rows.append((number, row))
    return rows, bad


def read_jsonl_numbered(path) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; the first bad line is a DataError naming it."""
    rows, bad = parse_jsonl(path, read_text(path))
    if bad:
        raise DataError(f"{path}, line {bad[0].line}: {bad[0].detail}")
    return rows


def read_jsonl(path) -> list[dict]:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_once(path, missing: str) -> tuple[dict, ...]:
    """read_jsonl, read once per process and file version (path, mtime, size): the report reads each
    judgments and samples file for several checks and cells. The rows are shared: do not change them.
    A file that is not there is a DataError ending in `missing` (what to do)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror}; {missing}") from exc
    return _read_jsonl_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _read_jsonl_version(path: str, *_version) -> tuple[dict, ...]:
    return tuple(read_jsonl(path))


def read_json_object(path) -> dict:
    """One JSON object from a file; DataError naming the file (and line) when it is not one."""
    path = Path(path)
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _umask() -> int:
    try:  # Linux states it; setting and resetting it (below) would race with other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(root: Path) -> None:
    """Give `root` and all below it the modes open() and mkdir() give under the umask (0o666 / 0o777 less
    it): some writers create files 0600 (safetensors' model.safetensors), unreadable to a lab-mate."""
    mask = _umask()
    if not root.is_dir():
        os.chmod(root, 0o666 & ~mask)
        return
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for names, mode in ((dirs, 0o777 & ~mask), (files, 0o666 & ~mask)):
            for name in names:
                if not os.path.islink(os.path.join(folder, name)):  # chmod would change the link's target
                    os.chmod(os.path.join(folder, name), mode)


def _write_failure(path: Path, exc: BaseException) -> WriteError | None:
    """The WriteError to raise for `exc`, when it is a failed write of `path` (no space, no permission), else
    None: an input that could not be read, or a problem the block itself names, is left as it is."""
    if isinstance(exc, WriteError):
        reason = exc.reason
    elif isinstance(exc, OSError):
        where = Path(exc.filename).resolve() if exc.filename else None
        if exc.errno not in WRITE_ERRNOS or (where is not None and not where.is_relative_to(path.parent.resolve())):
            return None
        reason = exc.strerror or str(exc)
    elif not isinstance(exc, USER_ERRORS) and any(text in str(exc) for text in _WRITE_FAILURE_TEXTS):
        reason = next(text for text in _WRITE_FAILURE_TEXTS if text in str(exc))
    else:
        return None
    return WriteError(f"{path}: cannot write it ({reason}); nothing was left under this name: free disk space "
                      "or fix the folder's permissions, then rerun (only this output is redone)", reason)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and folders, so a crash, a full disk or a denied permission never leaves a half-written
    output under the final name (a failed write is a WriteError naming `path`). What is renamed into place
    follows the umask, whatever mode its writer gave it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise _write_failure(path, exc) or exc
    tmp = staging / "out"
    try:
        yield tmp
        _follow_umask(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except Exception as exc:
        failure = _write_failure(path, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        _write_bytes(tmp, text.encode("utf-8"))


def write_jsonl(path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(path, text)


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
