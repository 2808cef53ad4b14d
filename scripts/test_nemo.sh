#!/usr/bin/env bash
# The NeMo tier: tests/nemo/ against real NeMo 2.7.3 (megatron-core 0.15.3, transformers 4.57) on CPU, in
# .venv-nemo (created by scripts/setup_nemo_env.sh on first use, 4-10 minutes). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_nemo_env.sh)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=
start=$(date +%s)
"$PY" -c "import nemo.collections.llm, nemo_run" || { echo "[test_nemo] NeMo is not importable in $PY" >&2; exit 1; }
"$PY" -m pytest -q -p no:cacheprovider tests/nemo -m nemo "$@"
echo "[test_nemo] NeMo tier passed in $(( $(date +%s) - start )) s" >&2
