"""Are two results/ trees the same run? sha256 of every model, samples file, verdicts file and table CSV.

    .venv/bin/python scripts/compare_results.py BEFORE/results AFTER/results [--ignore-key cached ...]

A refactor that claims to change no number checks itself with this: run the embedded DAG at the old and
the new commit from empty results/ folders on one machine, then compare. Compared, by path relative to
each tree: every `model.safetensors`, every `samples/*.jsonl` and `judgments/*.jsonl`, and every table
`*.csv`. Files match when their bytes do; with `--ignore-key K`, a JSONL file whose bytes differ
still matches when its rows do once key K is dropped (bookkeeping a commit moved out of the verdicts,
such as the judge's `cached` flag), and is counted apart as "without keys". Exit 0 only if both trees hold the same files and
every pair matches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rpo.io import read_jsonl, sha256_file, sha256_json

PATTERNS = ("**/model.safetensors", "**/samples/*.jsonl", "**/judgments/*.jsonl", "tables/**/*.csv")


def artefacts(root: Path) -> dict[str, Path]:
    """The compared files under `root`, by their path relative to it."""
    return {str(path.relative_to(root)): path for pattern in PATTERNS for path in root.glob(pattern)}


def rows_without(path: Path, ignore: set[str]) -> str:
    return sha256_json([{k: v for k, v in row.items() if k not in ignore} for row in read_jsonl(path)])


def compare(before: Path, after: Path, ignore: set[str]) -> tuple[list[str], dict[str, int]]:
    """Lines describing every difference, and counts of the matching files: by kind when their bytes
    match, as "<kind> without keys" when only their rows without the ignored keys do."""
    old, new = artefacts(before), artefacts(after)
    problems = [f"only in {before}: {name}" for name in sorted(old.keys() - new.keys())]
    problems += [f"only in {after}: {name}" for name in sorted(new.keys() - old.keys())]
    counts: dict[str, int] = {}
    for name in sorted(old.keys() & new.keys()):
        kind = next(k for k in ("model.safetensors", "samples", "judgments", "tables") if k in name)
        if sha256_file(old[name]) != sha256_file(new[name]):
            if not (ignore and name.endswith(".jsonl") and rows_without(old[name], ignore) == rows_without(new[name], ignore)):
                problems.append(f"differs: {name}")
                continue
            kind += " without keys"
        counts[kind] = counts.get(kind, 0) + 1
    return problems, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore-key", action="append", default=[], help="drop this key from JSONL rows")
    args = parser.parse_args(argv)
    for root in (args.before, args.after):
        if not root.is_dir():
            print(f"error: {root}: not a folder; give two results/ folders", file=sys.stderr)
            return 1
    problems, counts = compare(args.before, args.after, set(args.ignore_key))
    for line in problems:
        print(line)
    keys = f"; 'without keys': rows equal once {sorted(args.ignore_key)} are dropped" if args.ignore_key else ""
    print(f"{'DIFFERENT' if problems else 'identical'}: files matching by sha256 {json.dumps(counts)}{keys}; "
          f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
