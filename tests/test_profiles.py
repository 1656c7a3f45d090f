"""The SLURM profile (workflow/profiles/slurm): it plans the paper's matrix, and the sbatch calls it
makes give each GPU rule its GPUs, partition, memory and time limit.

No cluster here: stand-in sbatch/sinfo/... scripts on PATH record each sbatch call and refuse it, so
snakemake stops after submitting and the recorded arguments are exactly what a cluster would get."""
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from rpo.pipeline import experiment_runs

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "workflow/profiles/slurm"
PAPER = ROOT / "workflow/paper.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(PROFILE),
             "--configfile", str(PAPER)]
GPU_RULES = {"sft": 8, "preference": 8, "refcache": 1, "generate": 1, "generate_instructions": 1}
TORCHRUN_RULES = ("sft", "preference")  # one process per GPU in the config: `gpus` of paper.yaml

FAKE_SBATCH = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SBATCH_LOG"
echo "sbatch: error: no cluster in tests" >&2
exit 1
"""


def run(workdir, *args, extra_env=None, timeout=180):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(extra_env or {})}
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_profile_dry_run_plans_the_papers_matrix(tmp_path):
    result = run(tmp_path, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "Using profile" in out and str(PROFILE) in out
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    paper = yaml.safe_load(PAPER.read_text())
    n_models, tasks = len(paper["models"]), paper["data"]["tasks"]
    runs = [run for task in tasks for run in experiment_runs(paper, task)]
    # 3 models x (34 preference runs on HH, where the paper ran its ablations, + 6 on TL;DR) + 1 SFT each
    assert counts["preference"] == n_models * sum(r.method != "sft" for r in runs) == 3 * (34 + 6)
    assert counts["sft"] == counts["refcache"] == n_models * len(tasks)
    assert counts["judge"] == counts["generate"] == n_models * len(runs)
    # set-resources reach the jobs: a preference job asks for 8 GPUs, a judge job for none
    assert re.search(r"resources: .*mem_mb=480000.*gpu=8", out)
    judge_resources = re.findall(r"rule judge:(?:\n .*)*?\n    resources: (.*)", out)
    assert judge_resources and not any("gpu" in line for line in judge_resources)


def test_profile_asks_for_gpus_on_every_gpu_rule_only():
    profile = yaml.safe_load(PROFILE.joinpath("config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["rerun-incomplete"] is True
    rules = profile["set-resources"]
    assert {rule: rules[rule]["gpu"] for rule in GPU_RULES} == GPU_RULES
    assert not [rule for rule, res in rules.items() if rule not in GPU_RULES and "gpu" in res]
    # torchrun starts one rank per GPU of the config; fewer GPUs than ranks would fail at start-up
    gpus = yaml.safe_load(PAPER.read_text())["gpus"]
    assert all(rules[rule]["gpu"] == gpus for rule in TORCHRUN_RULES)


def _fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH, **{tool: "#!/bin/sh\nexit 0\n" for tool in
                                         ("sinfo", "squeue", "sacct", "scontrol", "sacctmgr")}}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return bin_dir


def _touch(workdir, *paths):
    for path in paths:
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def test_sbatch_calls_carry_each_rules_gpus_partition_memory_and_time(tmp_path):
    work = tmp_path / "work"
    r = "results"
    # Inputs of one job per rule exist; --allowed-rules keeps snakemake from rebuilding them.
    _touch(work, f"{r}/data/dialogue/train.jsonl", f"{r}/data/dialogue/test.jsonl",
           f"{r}/data/instructions/eval.jsonl", f"{r}/llama2-7b/base/config.json",
           f"{r}/mistral-7b/dialogue/models/sft_seed1/config.json",
           f"{r}/mistral-7b/dialogue/models/dpo_bs8_seed1/config.json",
           f"{r}/mistral-7b/dialogue/refcache/sft_seed1.pt",
           f"{r}/mistral-7b/dialogue/samples/sft_seed1.jsonl")
    targets = {"sft": f"{r}/llama2-7b/dialogue/models/sft_seed1",
               "refcache": f"{r}/mistral-7b/dialogue/refcache/sft_seed2.pt",
               "preference": f"{r}/mistral-7b/dialogue/models/ipo_bs8_seed1",
               "generate": f"{r}/mistral-7b/dialogue/samples/dpo_bs8_seed1.jsonl",
               "generate_instructions": f"{r}/mistral-7b/instructions/samples/dpo_bs8_seed1.jsonl",
               "judge": f"{r}/mistral-7b/dialogue/judgments/sft_seed1.jsonl"}
    _touch(work, f"{r}/mistral-7b/dialogue/models/sft_seed2/config.json")
    log = tmp_path / "sbatch.log"
    result = run(work, "--allowed-rules", *targets, "--retries", "0", "--slurm-init-seconds-before-status-checks",
                 "1", *targets.values(),
                 extra_env={"PATH": f"{_fake_slurm(tmp_path)}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                            "FAKE_SBATCH_LOG": str(log), "RPO_SLURM_PARTITION": "cpuq",
                            "RPO_SLURM_GPU_PARTITION": "gpuq"})
    assert result.returncode != 0 and "SLURM sbatch failed" in result.stdout + result.stderr
    calls = {}
    for line in log.read_text().splitlines():
        args = shlex.split(line.split(" --wrap=")[0])
        calls[args[args.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")] = args
    assert set(calls) == set(targets), result.stderr[-3000:]
    for rule, args in calls.items():
        gpus = [a for a in args if a.startswith("--gpus=")]
        assert gpus == ([f"--gpus={GPU_RULES[rule]}"] if rule in GPU_RULES else []), (rule, args)
        assert args[args.index("-p") + 1] == ("gpuq" if rule in GPU_RULES else "cpuq"), (rule, args)
        cpus = "--cpus-per-gpu=8" if rule in TORCHRUN_RULES else f"--cpus-per-task={8 if rule in GPU_RULES else 1}"
        assert "--requeue" in args and cpus in args, (rule, args)
    assert calls["preference"][calls["preference"].index("--mem") + 1] == "480000"
    assert calls["preference"][calls["preference"].index("-t") + 1] == "720"
    assert calls["judge"][calls["judge"].index("--mem") + 1] == "2000"
