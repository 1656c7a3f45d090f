"""The reference cache resumes in chunks: a process killed mid-cache (os._exit after k chunks, as a kill)
leaves its finished chunks beside the output; a rerun computes only the others and writes the cache an
uninterrupted run writes, bit for bit; chunks of other settings are discarded, never mixed in."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpo import refcache
from rpo.data.records import PreferenceRecord, write_records
from rpo.errors import ConfigError
from rpo.models import build_model

ROOT = Path(__file__).resolve().parent.parent
# 13 records in batches of 2, chunks of 4 records: 4 chunks (the last of one record), 7 batches a side
N_RECORDS, BATCH, CHUNK = 13, 2, 4
N_CHUNKS = -(-N_RECORDS // CHUNK)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcache_resume")
    records = [PreferenceRecord(id=f"r{i}", prompt=f"\n<|user|>\n{'so ' * (i % 3)}what about item {i}?\n<|assistant|>\n",
                                chosen=f"item {i} is {'quite ' * (i % 4)}fine.", rejected=f"no {i}.",
                                metadata={"truncation": "keep_end"}) for i in range(N_RECORDS)]
    write_records(root / "train.jsonl", records)
    spec = {"kind": "small", "arch": "gpt2", "n_layers": 1, "d_model": 32, "n_heads": 2, "vocab_size": 300,
            "max_position": 96}
    build_model(spec, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records], seed=0)
    return root


def run_cli(world, out, *extra):
    """`python -m rpo.refcache` in its own process (one thread: the same kernels in every run)."""
    argv = [sys.executable, "-m", "rpo.refcache", "--model", str(world / "model"), "--records",
            str(world / "train.jsonl"), "--out", str(out), "--max-length", "48", "--max-prompt-length", "24",
            "--batch-size", str(BATCH), "--threads", "1", "--device", "cpu", *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "RPO_FORK_SERVER": "0", "OMP_NUM_THREADS": "1"})


def computed(result) -> int:
    return sum(line.startswith("refcache: chunk ") and line.endswith(" computed") for line in result.stdout.splitlines())


def test_killed_cache_resumes_only_the_unfinished_chunks_and_equals_an_uninterrupted_run(world, tmp_path):
    whole = run_cli(world, tmp_path / "whole.pt", "--chunk-records", str(CHUNK))
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert computed(whole) == N_CHUNKS and not Path(f"{tmp_path / 'whole.pt'}.chunks").exists()

    out = tmp_path / "resumed.pt"
    killed = run_cli(world, out, "--chunk-records", str(CHUNK), "--stop-after-chunks", "2")
    assert killed.returncode == 3 and computed(killed) == 2, killed.stderr[-2000:]
    assert not out.exists()
    chunks = Path(f"{out}.chunks")
    assert sorted(p.name for p in chunks.glob("chunk_*.pt")) == ["chunk_00000.pt", "chunk_00001.pt"]

    resumed = run_cli(world, out, "--chunk-records", str(CHUNK))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"2 done by an earlier run, {N_CHUNKS - 2} to compute" in resumed.stdout
    assert computed(resumed) == N_CHUNKS - 2
    assert out.read_bytes() == (tmp_path / "whole.pt").read_bytes()  # bit for bit, metadata included
    assert not chunks.exists()  # assembled: the chunks are gone

    # One chunk of the whole file: the chunking does not change the batches, so not the cache either
    single = run_cli(world, tmp_path / "single.pt", "--chunk-records", "1000")
    assert single.returncode == 0 and computed(single) == 1, single.stderr[-2000:]
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "single.pt", out))
    assert all(torch.equal(a[side], b[side]) for side in refcache.SIDES) and a["meta"] == b["meta"]
    cache = refcache.load_reference_cache(out, world / "train.jsonl", world / "model", max_length=48,
                                          max_prompt_length=24, truncation="keep_end",
                                          precision=refcache.resolve_precision("auto", torch.device("cpu")))
    assert cache["chosen"].shape == (N_RECORDS,) and len(cache["tokens"]["rejected"]) == N_RECORDS


def test_chunks_of_other_settings_are_discarded_never_mixed(world, tmp_path):
    out = tmp_path / "ref.pt"
    killed = run_cli(world, out, "--chunk-records", str(CHUNK), "--stop-after-chunks", "1", "--max-length", "40")
    assert killed.returncode == 3 and computed(killed) == 1
    rerun = run_cli(world, out, "--chunk-records", str(CHUNK))  # max_length 48 now: the chunk scored other sequences
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "discarding" in rerun.stdout and "max_length: 40 there, 48 now" in rerun.stdout
    assert computed(rerun) == N_CHUNKS  # nothing reused

    # a chunk file of the right name but written under other settings is recomputed, not read
    folder = refcache.ChunkFolder(out, {"n": N_RECORDS})
    folder.path.mkdir()
    (folder.path / "settings.json").write_text('{"n": 13}')
    folder.save(0, {0: (torch.zeros(2), torch.zeros(0), torch.zeros(0, dtype=torch.long))})
    other = refcache.ChunkFolder(out, {"n": N_RECORDS, "batch_size": 3})
    assert folder.load(0, [0]) is not None and other.load(0, [0]) is None and folder.load(0, [0, 7]) is None


def test_chunks_hold_whole_batches_of_both_sides():
    plan = [("chosen", s) for s in range(0, 13, 2)] + [("rejected", s) for s in range(0, 13, 2)]
    chunks = refcache.chunk_plan(plan, batch_size=2, chunk_records=3)  # 3 rounds up to 4 records: 2 batches
    assert [[plan[k] for k in c] for c in chunks][0] == [("chosen", 0), ("chosen", 2), ("rejected", 0), ("rejected", 2)]
    assert sorted(k for c in chunks for k in c) == list(range(len(plan))) and len(chunks) == 4
    with pytest.raises(ConfigError, match="reference_chunk_records"):
        refcache.compute_reference_cache("m", "r", "o", chunk_records=0)
