"""benchmarks/bench_memory.py --checkpointing compare: the setting reaches both trainers it builds (ours through
the training key activation_checkpointing, TRL's DPOTrainer through gradient_checkpointing), on and off."""
import argparse
import sys
from pathlib import Path

import pytest

from rpo.data.records import PreferenceRecord
from rpo.memory import checkpointed_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_memory  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, build_tiny_world):
    records = [PreferenceRecord(f"m{i}", f"how do {w} grow, case {i}?", f" {w} grow slowly.", f" no {w}.", {})
               for i, w in enumerate(["moss", "kites", "clocks", "soup"])]
    return build_tiny_world(tmp_path_factory.mktemp("bench-memory"), records)


def child_args(world, trainer, checkpointing):
    # The tiny world's cache was computed at max_length 64, max_prompt_length 32 (conftest.build_tiny_world).
    return argparse.Namespace(trainer=trainer, packing="packed", model=str(world["model"]), data=str(world["data"]),
                              cache=str(world["cache"]), root=str(world["root"] / f"{trainer}-{checkpointing}"),
                              checkpointing=checkpointing, pairs=4, prompt_len=32, response_len=32, threads=1,
                              steps=2)


@pytest.mark.parametrize("trainer", ["ours", "trl"])
@pytest.mark.parametrize("checkpointing", ["off", "on"])
def test_checkpointing_setting_reaches_both_trainers_steps(world, checkpointing, trainer):
    """The children's own step functions, 2 steps each: the blocks each step ran with (TRL enables its
    checkpointing only inside train(), so its constructed model would show none). Ours always runs; TRL's
    only where the benchmark-only trl is installed (README: pip install trl==1.16.0)."""
    if trainer == "trl":
        pytest.importorskip("trl", reason="benchmark-only dependency (README: pip install trl==1.16.0)")
    blocks = 2 if checkpointing == "on" else 0  # the tiny GPT-2 has 2 decoder blocks
    step = bench_memory.step_ours if trainer == "ours" else bench_memory.step_trl
    result = step(child_args(world, trainer, checkpointing))
    assert result["blocks"] == blocks
    assert len(result["step_s"]) == 2 and result["peak"] >= result["before"] > 0
    assert len(result["tokens"]) == 4
