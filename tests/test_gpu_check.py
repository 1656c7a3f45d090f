"""scripts/gpu_check.sh on a machine without a GPU: the dry run lists every step, the real run refuses in one
line naming the CUDA wheel; the runner (benchmarks/gpu_check.py) isolates failing, hanging and missing steps
and writes its report; one real step (nccl, as gloo) end to end on CPU."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import PLAN, TOTAL_LIMIT_S, Step, run_checks  # noqa: E402

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_script(*args, timeout=120):
    env = {**os.environ, "RPO_PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_lists_every_step_with_its_limit_and_command(tmp_path):
    done = run_script("--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    for number, name, limit, _, _ in PLAN:
        assert f"{number}. {name} (limit {limit} s)" in done.stdout
    commands = [line for line in done.stdout.splitlines() if line.strip().startswith("$ ")]
    assert len(commands) == len(PLAN) == 8
    assert "torch.distributed.run --standalone --nproc_per_node 1" in commands[1]
    assert "benchmarks/memory_budget.py --measure --device cuda --out " in commands[7]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_the_limits_add_up_to_at_most_nine_minutes():
    assert sum(limit for _, _, limit, _, _ in PLAN) <= TOTAL_LIMIT_S == 9 * 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines whose torch finds no GPU")
def test_without_cuda_the_check_stops_at_once_with_one_line_naming_the_wheel(tmp_path):
    done = run_script("--out", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and not done.stdout, done.stderr
    assert lines[0].startswith("gpu_check: needs a CUDA GPU: device cuda: ")
    assert "pip install torch==" in lines[0] and "download.pytorch.org/whl/cu" in lines[0]
    assert not (tmp_path / "out").exists()


def fake_step(number, name, code: str, tmp_path, limit=30.0) -> Step:
    figures = tmp_path / f"{name}.json"
    return Step(number, name, limit, [sys.executable, "-c", code, str(figures)], f"fake {name}", figures)


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_failing_or_hanging_step_does_not_stop_the_others(tmp_path):
    child = tmp_path / "child.pid"
    steps = [
        fake_step(1, "writes", "import json, sys; json.dump({'summary': 'ok', 'x': 1}, open(sys.argv[1], 'w'))", tmp_path),
        fake_step(2, "raises", "import json, sys; json.dump({'error': 'RuntimeError: first line'}, open(sys.argv[1], "
                               "'w')); print('some output'); raise SystemExit('boom: the GPU caught fire')", tmp_path),
        # a hang whose child process must die with it (torchrun's workers)
        fake_step(3, "hangs", f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                              f"'import time; time.sleep(60)']); open({str(child)!r}, 'w').write(str(p.pid)); "
                              "time.sleep(60)", tmp_path, limit=3),
        fake_step(4, "after", "import json, sys; json.dump({'summary': 'still ran'}, open(sys.argv[1], 'w'))", tmp_path),
    ]
    start = time.monotonic()
    report = run_checks(steps, tmp_path / "out", {"command": "test", "device": "none"})
    assert time.monotonic() - start < 25
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status == {"writes": "passed", "raises": "failed", "hangs": "timed out", "after": "passed"}
    by_name = {s["name"]: s for s in report["steps"]}
    assert by_name["writes"]["figures"] == {"summary": "ok", "x": 1} and "error_tail" not in by_name["writes"]
    assert "boom: the GPU caught fire" in by_name["raises"]["error_tail"]
    assert by_name["raises"]["error_tail"].startswith("error: RuntimeError: first line\n")
    assert "some output" in by_name["raises"]["error_tail"]
    assert "killed at its 3 s limit" in by_name["hangs"]["error_tail"]
    assert not running(int(child.read_text()))  # the hung step's child went with its process group
    assert json.loads((tmp_path / "out" / "report.json").read_text())["steps"] == report["steps"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# GPU check: 2 of 4 steps passed")
    assert "| 1 | writes | passed |" in md and "| 4 | after | passed |" in md and "boom: the GPU caught fire" in md


def test_a_missing_script_fails_its_step_with_a_clear_message_without_running_it(tmp_path):
    step = Step(8, "memory_probes", 10, [sys.executable, str(tmp_path / "memory_budget.py"), "--measure"], "",
                tmp_path / "probes.json", requires=tmp_path / "memory_budget.py")
    (result,) = run_checks([step], tmp_path / "out", {"command": "test"})["steps"]
    assert result["status"] == "failed" and result["wall_s"] == 0.0
    assert f"{tmp_path / 'memory_budget.py'} does not exist" in result["error_tail"]
    assert "--only 8" in result["error_tail"]


def test_the_total_budget_bounds_the_run_and_leaves_later_steps_not_run(tmp_path):
    steps = [fake_step(1, "slow", "import time; time.sleep(30)", tmp_path, limit=20),
             fake_step(2, "never", "pass", tmp_path)]
    start = time.monotonic()
    report = run_checks(steps, tmp_path / "out", {"command": "test"}, total_s=2)
    assert time.monotonic() - start < 15
    assert [s["status"] for s in report["steps"]] == ["timed out", "not run"]


def test_a_figures_file_left_by_an_earlier_run_does_not_pass_for_this_one(tmp_path):
    step = fake_step(1, "fails", "raise SystemExit(3)", tmp_path)
    step.figures_file.write_text(json.dumps({"summary": "stale"}))
    (result,) = run_checks([step], tmp_path / "out", {"command": "test"})["steps"]
    assert result["status"] == "failed" and result["figures"] == {} and result["returncode"] == 3


def test_state_differences_finds_any_entry_that_is_not_bit_equal():
    from gpu_check_fsdp import state_differences

    saved = {"model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "lr": 1e-6,
                                                          "param_groups": [{"params": [0], "t": torch.zeros(2)}]}}
    same = {"model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "lr": 1e-6,
                                                         "param_groups": [{"params": [0], "t": torch.zeros(2)}]}}
    assert state_differences(saved, same) == []
    other_group = {**same["optimizer"], "param_groups": [{"params": [0], "t": torch.ones(2)}]}
    assert state_differences(saved, {**same, "optimizer": other_group}) == ["/optimizer/param_groups/0/t"]
    nudged = {**same, "model": {"w": torch.tensor([1.0, 1.0, 1.0 + 2 ** -20])}}
    assert state_differences(saved, nudged) == ["/model/w"]
    assert state_differences(saved, {**same, "model": {"w": torch.ones(3, dtype=torch.float64)}}) == ["/model/w"]
    assert state_differences(saved, {**same, "optimizer": {**same["optimizer"], "lr": 2e-6}}) == ["/optimizer/lr"]
    assert state_differences(saved, {"model": saved["model"]})[0].startswith(": keys")


def test_the_nccl_step_runs_end_to_end_on_cpu_as_gloo(tmp_path):
    """The wrapper, torchrun, the step body and the report together (--device cpu: gloo, no GPU facts)."""
    done = run_script("--device", "cpu", "--only", "nccl", "--out", str(tmp_path / "out"), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (step,) = report["steps"]
    assert step["status"] == "passed" and step["figures"]["backend"] == "gloo" and step["figures"]["world_size"] == 1
    assert gpu_check.CPU_LIMIT_FACTOR * 30 == step["limit_s"]


def test_rerunning_some_steps_keeps_the_others_of_the_last_report_made_on_the_same_device(tmp_path):
    out = tmp_path / "out"
    run_checks([fake_step(1, "one", "pass", tmp_path), fake_step(2, "two", "raise SystemExit(1)", tmp_path)], out,
               {"command": "first", "device": "GPU A"})
    rerun = [fake_step(2, "two", "pass", tmp_path)]
    kept = gpu_check.earlier_results(out, "GPU A", rerun)
    report = run_checks(rerun, out, {"command": "second", "device": "GPU A"}, kept=kept)
    assert [(s["number"], s["status"]) for s in report["steps"]] == [(1, "passed"), (2, "passed")]
    assert json.loads((out / "report.json").read_text())["command"] == "second"
    assert gpu_check.earlier_results(out, "GPU B", rerun) == []  # never mixed across devices
