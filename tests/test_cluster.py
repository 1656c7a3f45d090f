"""What a GPU cluster job needs from rpo.distributed: device cuda refused, in one line naming the CUDA
wheel, where torch finds no GPU (never silently on CPU); each rank's share of the CPUs the job booked;
a process-group timeout from the training key dist_timeout_minutes."""
from datetime import timedelta

import pytest
import torch

from rpo import distributed
from rpo.distributed import check_device, rank_device, rank_threads
from rpo.errors import ConfigError
from rpo.train_config import resolve_config
from test_refcache_resume import run_cli, world  # noqa: F401  (the fixture: a tiny model and records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines whose torch finds no GPU")
def test_device_cuda_without_a_gpu_stops_with_one_line_naming_the_wheel(world, tmp_path):
    for call in (lambda: check_device("cuda"), lambda: rank_device("cuda", 3)):
        with pytest.raises(ConfigError, match=r"device cuda: .*pip install torch==.*--index-url .*/whl/cu\d+"):
            call()
    check_device("cpu"), check_device(None)  # no refusal
    result = run_cli(world, tmp_path / "ref.pt", "--device", "cuda")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: device cuda: "), result.stderr
    assert "download.pytorch.org/whl/cu" in lines[0] and not (tmp_path / "ref.pt").exists()


@pytest.mark.parametrize("threads, ranks, each", [(64, 8, 8), (8, 8, 1), (8, 1, 8), (3, 2, 1), (1, 4, 1), (10, 4, 2)])
def test_each_rank_gets_its_share_of_the_booked_cpus(threads, ranks, each):
    assert rank_threads(threads, ranks) == each


def test_the_process_group_timeout_is_the_training_keys(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **kw: calls.append(kw))
    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("LOCAL_RANK", "1")
    env = distributed.init_distributed("cpu", timeout_minutes=60)
    assert (env.rank, env.world_size) == (1, 2) and calls[0]["timeout"] == timedelta(minutes=60)
    distributed.init_distributed("cpu")
    assert "timeout" not in calls[1]  # torch's own default
    base = {"model": "m", "data": "d", "out": "o", "method": "sft"}
    assert resolve_config({**base, "dist_timeout_minutes": 60})["dist_timeout_minutes"] == 60
    with pytest.raises(ConfigError, match="'dist_timeout_minutes' must be > 0"):
        resolve_config({**base, "dist_timeout_minutes": 0})
