"""scripts/compare_results.py: the before/after check of a refactor (issue 24) finds every difference."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree(root: Path, cached: bool = False, weights: bytes = b"w", extra: bool = False) -> Path:
    (root / "small/dialogue/models/dpo_bs8_seed1").mkdir(parents=True)
    (root / "small/dialogue/models/dpo_bs8_seed1/model.safetensors").write_bytes(weights)
    for folder in ("samples", "judgments"):
        (root / f"small/dialogue/{folder}").mkdir(parents=True)
    (root / "small/dialogue/samples/dpo_bs8_seed1.jsonl").write_text('{"id": "a", "response": "x"}\n')
    verdict = {"id": "a", "verdict": "chosen_win", "cached": cached}
    (root / "small/dialogue/judgments/dpo_bs8_seed1.jsonl").write_text(json.dumps(verdict) + "\n")
    (root / "tables/small").mkdir(parents=True)
    (root / "tables/small/table1.csv").write_text("method,dialogue\nDPO,62.0\n")
    if extra:
        (root / "tables/small/table2.csv").write_text("method\n")
    return root


def compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts/compare_results.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_identical_trees_match_and_every_difference_is_named(tmp_path):
    before = tree(tmp_path / "before")
    same = compare(before, tree(tmp_path / "same"))
    assert same.returncode == 0 and same.stdout.startswith("identical")
    assert '{"judgments": 1, "model.safetensors": 1, "samples": 1, "tables": 1}' in same.stdout
    other = compare(before, tree(tmp_path / "other", weights=b"v", extra=True))
    assert other.returncode == 1
    assert "differs: small/dialogue/models/dpo_bs8_seed1/model.safetensors" in other.stdout
    assert f"only in {tmp_path / 'other'}: tables/small/table2.csv" in other.stdout


def test_bookkeeping_keys_are_ignored_only_when_asked_and_counted_apart(tmp_path):
    before, after = tree(tmp_path / "before"), tree(tmp_path / "after", cached=True)
    assert compare(before, after).returncode == 1
    ignored = compare(before, after, "--ignore-key", "cached")
    assert ignored.returncode == 0, ignored.stdout
    assert '"judgments without keys": 1' in ignored.stdout and '"samples": 1' in ignored.stdout
