#!/usr/bin/env bash
# Create (or update) the project virtualenv with the pinned CI stack; prints the venv's python path.
#   VENV=.venv (default)  EXTRAS=hf,test (default)
# torch 2.13.0 is installed first and on its own: on these machines pip takes the CPU wheel from the
# local wheel store; elsewhere PyPI serves the (larger) CUDA build, which also runs on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-hf,test}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" >&2
fi
stamp="$VENV/.nemo_minitron-installed"
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$(date +%s)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check megatron-core==0.16.1 -e ".[$EXTRAS]" >&2
  echo "$want" > "$stamp"
  echo "[setup_env] installed in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
