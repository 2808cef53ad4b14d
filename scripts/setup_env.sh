#!/usr/bin/env bash
# Create (or update) a project virtualenv for one tested stack; prints the venv's python path.
#   STACK=primary (default)  megatron-core 0.16.1, Python 3.11, torch 2.13.0            -> .venv
#   STACK=mcore015           megatron-core 0.15.3, Python 3.11, torch 2.13.0, transformers 4.57.x
#                            (the NeMo 25.11 / 26.02 generation)                          -> .venv-mcore015
#   STACK=newest             megatron-core 0.19.2, Python 3.12, torch 2.13.0 (CUDA build from PyPI, ~4.8 GB,
#                            runs on CPU too)                                             -> .venv-mcore-newest
#   VENV=... overrides the folder, EXTRAS=... the extras (hf,test,eval on primary, hf,test elsewhere), PYTHON=... the interpreter.
# The stack's torch / megatron-core / transformers are installed first; the package itself is then installed
# under a constraints file holding exactly those versions, so installing nemo_minitron never moves them
# (the same way the Dockerfile installs into the NeMo container).
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${STACK:-primary}
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python3.12}
case "$STACK" in
  primary)
    default_venv=.venv; default_python=$(command -v python3.11 || command -v python3); default_extras=hf,test,eval
    pins=("torch==2.13.0" "megatron-core==0.16.1") ;;
  mcore015)
    default_venv=.venv-mcore015; default_python=$(command -v python3.11 || command -v python3); default_extras=hf,test
    pins=("torch==2.13.0" "megatron-core==0.15.3" "transformers==4.57.6") ;;
  newest)
    default_venv=.venv-mcore-newest; default_extras=hf,test
    default_python=$( [ -x "$PY312" ] && echo "$PY312" || command -v python3.12 || true)
    pins=("torch==2.13.0" "megatron-core==0.19.2") ;;
  *) echo "setup_env.sh: unknown STACK=$STACK (primary, mcore015 or newest)" >&2; exit 2 ;;
esac
VENV=${VENV:-$default_venv}
EXTRAS=${EXTRAS:-$default_extras}
PYTHON=${PYTHON:-$default_python}
if [ -z "$PYTHON" ]; then
  echo "setup_env.sh: STACK=$STACK needs Python 3.12 (set PYTHON=/path/to/python3.12)" >&2; exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" >&2
fi
stamp="$VENV/.nemo_minitron-installed"
want="$(cat pyproject.toml setup.py scripts/setup_env.sh | sha256sum | cut -c1-16)-$STACK-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$(date +%s)
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  # torch alone first: on these machines pip then takes the CPU wheel from the local wheel store.
  "${pip[@]}" "${pins[0]}" >&2
  "${pip[@]}" "${pins[@]}" >&2
  constraints="$VENV/stack-constraints.txt"
  "$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null \
    | grep -i -E '^(torch|megatron[-_]core|transformers)==' > "$constraints"
  "${pip[@]}" -c "$constraints" -e ".[$EXTRAS]" >&2
  echo "$want" > "$stamp"
  echo "[setup_env] $STACK stack installed in $VENV in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
