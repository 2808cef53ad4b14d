#!/usr/bin/env bash
# Fresh machine -> environments -> tests. Extra arguments go to the primary stack's pytest (e.g. -k checkpoint).
#   1. primary stack (megatron-core 0.16.1, Python 3.11): the full suite;
#   2. each stack in COMPAT_STACKS (default: mcore015 = megatron-core 0.15.3 + transformers 4.57, Python 3.11;
#      newest = megatron-core 0.19.2, Python 3.12): the `compat` subset (build, TP/PP logits, dist-ckpt reshard,
#      prune, KD steps, resume, HF interop, install check), each in its own venv made by scripts/setup_env.sh;
#   0. (GPU_BUNDLE=1, default) scripts/gpu_bundle.sh builds .gpu_bundle/, which tests/packaging/test_gpu_bundle.py installs
#      offline into a bare Python 3.12 + torch venv and runs `scripts/gpu_check.sh --dry-run` against;
#   3. each script in TIERS (e.g. TIERS="scripts/test_nemo.sh"), run with bash; its exit code counts.
# COMPAT_STACKS="" runs the primary stack only. Slow tests on the real SmolLM2 model: NEMO_MINITRON_SLOW=1.
# A summary table with the time of every stage is printed at the end; the exit code is non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPAT_STACKS=${COMPAT_STACKS-mcore015 newest}
TIERS=${TIERS-}
GPU_BUNDLE=${GPU_BUNDLE-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-} HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
summary=()
failed=0
stage() {  # stage NAME COMMAND...: run, time, record
  local name=$1; shift
  local start rc
  start=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  summary+=("$(printf '%-28s exit %-3s %5s s' "$name" "$rc" "$(( $(date +%s) - start ))")")
  echo "[test.sh] $name: exit code $rc after $(( $(date +%s) - start )) s"
  [ "$rc" = 0 ] || failed=1
}
run_stack() {  # run_stack STACK PYTEST_ARGS...: set up the stack's venv, then pytest in it
  local stack=$1; shift
  local py
  py=$(STACK=$stack bash scripts/setup_env.sh) || return 3
  "$py" -c "import megatron.core, torch, sys; from nemo_minitron.mcore_compat import mcore_version; \
print(f'[test.sh] stack: python {sys.version.split()[0]}, torch {torch.__version__}, megatron-core {mcore_version()}')"
  "$py" -m pytest -q "$@"
}
[ "$GPU_BUNDLE" = 1 ] && stage "gpu bundle (build)" bash scripts/gpu_bundle.sh
stage "primary (full suite)" run_stack primary "$@"
for s in $COMPAT_STACKS; do
  stage "$s (compat subset)" run_stack "$s" -m compat
done
for t in $TIERS; do
  stage "tier $t" bash "$t"
done
echo "[test.sh] summary:"
printf '  %s\n' "${summary[@]}"
exit $failed
