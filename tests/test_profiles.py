"""The SLURM profile (workflow/profiles/slurm): it plans the paper's matrix, and the sbatch calls it
makes give each GPU rule its GPUs, partition, memory and time limit. The one-GPU profile
(workflow/one-gpu.yaml): it plans Table 1 and the tau grid on one GPU at the paper's global batch.

No cluster here: stand-in sbatch/sinfo/... scripts on PATH record each sbatch call and refuse it, so
snakemake stops after submitting and the recorded arguments are exactly what a cluster would get."""
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from rpo.distributed import rank_threads
from rpo.pipeline import TABLE1_METHODS, experiment_runs

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "workflow/profiles/slurm"
PAPER = ROOT / "workflow/paper.yaml"
ONE_GPU = ROOT / "workflow/one-gpu.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(PROFILE),
             "--configfile", str(PAPER)]
GPU_RULES = {"sft": 8, "preference": 8, "refcache": 8, "generate": 1, "generate_instructions": 1, "embeddings_gpu": 1}
TORCHRUN_RULES = ("sft", "preference", "refcache")  # one process per GPU of the node: `gpus` of paper.yaml

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
    # 3 models x (26 preference runs on HH, where the paper ran its ablations, + 6 on TL;DR, + the
    # matched-beta DPO control on each) + 1 SFT each
    assert counts["preference"] == n_models * sum(r.method != "sft" for r in runs) == 3 * (26 + 6 + 2)
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
    paper = yaml.safe_load(PAPER.read_text())
    assert all(rules[rule]["gpu"] == paper["gpus"] for rule in TORCHRUN_RULES)
    # all of a job's GPUs on one node: a --standalone torchrun sees only its own node's
    assert {rule: rules[rule].get("nodes") for rule in GPU_RULES} == {rule: 1 for rule in GPU_RULES}
    # the CPUs booked are the job's threads, shared by its ranks: each rank gets the config's threads
    threads = profile["set-threads"]
    assert {rule: rank_threads(threads[rule], gpus) for rule, gpus in GPU_RULES.items()} == {
        rule: paper["threads"] for rule in GPU_RULES}
    assert not [rule for rule, res in rules.items() if "cpus_per_gpu" in res or "cpus_per_task" in res]


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
               "judge": f"{r}/mistral-7b/dialogue/judgments/sft_seed1.jsonl",
               "embeddings_gpu": f"{r}/llama2-7b/embeddings/dialogue/t5large.pt",
               "embeddings": f"{r}/llama2-7b/embeddings/dialogue/random.pt"}
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
        cpus = f"--cpus-per-task={8 * GPU_RULES[rule] if rule in GPU_RULES else (8 if 'embeddings' in rule else 1)}"
        assert "--requeue" in args and cpus in args, (rule, args)
        assert ("--nodes=1" in args) is (rule in GPU_RULES), (rule, args)
    assert calls["preference"][calls["preference"].index("--mem") + 1] == "480000"
    assert calls["preference"][calls["preference"].index("-t") + 1] == "720"
    assert calls["judge"][calls["judge"].index("--mem") + 1] == "2000"


def _trainer_args(command):
    """key -> value of one planned `python -m rpo.train` command (values as JSON where they parse)."""
    args = {}
    for word in shlex.split(command.split(" > ")[0]):
        key, sep, value = word.partition("=")
        if sep:
            try:
                args[key] = json.loads(value)
            except json.JSONDecodeError:
                args[key] = value
    return args


def test_one_gpu_dry_run_plans_table1_and_the_tau_grid_on_one_gpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--configfile", str(ONE_GPU), "--directory", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    one_gpu, paper = yaml.safe_load(ONE_GPU.read_text()), yaml.safe_load(PAPER.read_text())
    tasks = one_gpu["data"]["tasks"]
    assert tasks == ["dialogue", "summarization"] and len(one_gpu["models"]) == 1 and one_gpu["gpus"] == 1
    # Table 1's 6 preference methods + 2 more taus of RPO-paired (Table 3's grid), on each task
    runs = [run for task in tasks for run in experiment_runs(one_gpu, task)]
    assert counts["preference"] == sum(r.method != "sft" for r in runs) == 2 * (6 + 2)
    assert counts["sft"] == counts["refcache"] == len(tasks)
    assert counts["judge"] == counts["generate"] == len(runs) == 18
    assert counts["alpacaeval"] == len(one_gpu["alpacaeval"]["runs"]) == 3

    trains = [_trainer_args(line) for line in out.splitlines()
              if line.startswith("Shell command: python -m rpo.train ")]
    assert len(trains) == counts["sft"] + counts["preference"]
    assert "torchrun" not in out  # one GPU: one plain process per job
    for args in trains:  # the paper's global batch 64 as micro-batch 8 x accumulation 8 on one GPU
        assert (args["batch_size"], args["gradient_accumulation_steps"], args["fsdp"]) == (8, 8, False), args
        assert args["method"] == "sft" or args["contrast_scope"] == "micro", args
        assert (args["lr"], args["optimizer"], args["max_length"], args["max_prompt_length"]) == (
            5e-7, "rmsprop", 512, 256)
    gpu_resources = re.findall(r"rule (?:sft|preference):(?:\n .*)*?\n    resources: (.*)", out)
    assert len(gpu_resources) == len(trains) and all("gpu=1," in r for r in gpu_resources)

    for task in tasks:
        planned = [a for a in trains if a["data"].endswith(f"/data/{task}/train.jsonl")]
        assert {a["method"] for a in planned} == set(TABLE1_METHODS), task  # no weighting ablation runs
        taus = sorted(a["tau"] for a in planned if a["method"] == "rpo-paired")
        assert taus == sorted(paper["rpo"]["taus"]) == [0.25, 0.5, 0.75], task  # paper.yaml's tau grid
        assert {a["embedder"] for a in planned if "embedder" in a} == {paper["rpo"]["default_embedder"]}


def test_judge_retries_are_a_switch_the_public_codes_single_attempt_reachable_from_the_config(tmp_path):
    """Retries are a named deviation: judge.max_attempts 1 + judge.failed_as_no_winner true + timeout 10
    give compare.py's one attempt with a 10 s alarm, a failed item counted as no winner."""
    config = yaml.safe_load(ONE_GPU.read_text())
    config["judge"].update(max_attempts=1, failed_as_no_winner=True, timeout=10)
    path = tmp_path / "public-judge.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--configfile", str(path), "--directory", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    judges = [line for line in result.stdout.splitlines() if "python -m rpo.judge --samples" in line]
    assert judges and all("--timeout 10 --max-attempts 1 --failed-as-no-winner" in line for line in judges)


def test_paper_sampling_is_the_public_codes_per_model(tmp_path):
    """Each generate command of paper.yaml samples as the public code's generate call: top_k 50, top_p 0.95,
    512 tokens over batches of 32; no --temperature where the model's generation config decides (Llama-2),
    1.0 where Mistral-7B-v0.1's sets none (transformers' default there)."""
    from rpo.generate import build_parser

    r = "results"
    targets = []
    for model in ("mistral-7b", "llama2-7b"):
        for path in (f"{r}/data/dialogue/test.jsonl", f"{r}/{model}/dialogue/models/dpo_bs8_seed1/config.json"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).touch()
        targets.append(f"{r}/{model}/dialogue/samples/dpo_bs8_seed1.jsonl")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--configfile", str(PAPER), "--directory", str(tmp_path), "--allowed-rules", "generate",
                             "--", *targets], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = {}
    for line in (result.stdout + result.stderr).splitlines():
        if " -m rpo.generate " in line:
            words = shlex.split(line.split(" > ")[0].split("Shell command:")[-1])
            args = build_parser().parse_args(words[words.index("rpo.generate") + 1:])
            commands[args.model.parts[1]] = args
    assert set(commands) == {"mistral-7b", "llama2-7b"}
    for args in commands.values():
        assert (args.top_k, args.top_p, args.max_length, args.batch_size, args.n) == (50, 0.95, 512, 32, 256)
    assert commands["mistral-7b"].temperature == 1.0 and commands["llama2-7b"].temperature is None
