#!/usr/bin/env bash
# Fresh machine -> environment -> test suite. Extra arguments go to pytest (e.g. -k checkpoint).
# Slow tests on the real SmolLM2 model are opt-in: NEMO_MINITRON_SLOW=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-} HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
start=$(date +%s)
set +e
"$PY" -m pytest -q "$@"
rc=$?
set -e
echo "[test.sh] pytest exit code $rc after $(( $(date +%s) - start )) s"
exit $rc
