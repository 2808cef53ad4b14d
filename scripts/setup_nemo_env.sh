#!/usr/bin/env bash
# Create (or update) .venv-nemo: the NeMo CI tier's environment (nemo-toolkit 2.7.3, its megatron-core 0.15.3,
# transformers 4.57) with this package installed editable; prints the venv's python path. Takes 4-10 minutes.
#   VENV=.venv-nemo (default)
# Order matters: NeMo's llm extra resolves against megatron-core 0.16.1, then 0.15.3 replaces it because
# nemo/utils/callbacks/dist_ckpt_io.py imports dist_checkpointing.strategies.tensorstore (removed in 0.16).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-nemo}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" >&2
fi
stamp="$VENV/.nemo_minitron-nemo-installed"
want="$(sha256sum < scripts/setup_nemo_env.sh | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$(date +%s)
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" torch==2.13.0 >&2
  "${pip[@]}" torch==2.13.0 megatron-core==0.16.1 "nemo-toolkit[llm]==2.7.3" >&2
  "${pip[@]}" "pyarrow<22" nemo_run >&2
  "${pip[@]}" "leptonai==0.27.3" "protobuf~=5.29.5" "packaging<25" >&2
  "${pip[@]}" megatron-core==0.15.3 "transformers~=4.57.0" >&2
  "${pip[@]}" "pytest>=8" "pytest-timeout>=2.3" "hydra-core>=1.3" "safetensors>=0.4" "psutil>=5.9" >&2
  echo "$want" > "$stamp"
  echo "[setup_nemo_env] installed in $(( $(date +%s) - start )) s" >&2
fi
# this package, editable and without dependencies (NeMo's pins stay); redone when its metadata changes
pkg_stamp="$VENV/.nemo_minitron-package"
pkg_want="$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$pkg_stamp" ] || [ "$(cat "$pkg_stamp")" != "$pkg_want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . >&2
  echo "$pkg_want" > "$pkg_stamp"
fi
echo "$VENV/bin/python"
