#!/usr/bin/env bash
# One command on a GPU machine: install the offline bundle if needed, then run the GPU check table.
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--budget-s 420]
# Works on a bare machine with CPython 3.12 + a CUDA torch and no network: megatron-core, hydra-core, ...
# come from .gpu_bundle/ (built here with scripts/gpu_bundle.sh). Only what the interpreter lacks is installed,
# into .gpu_site/ (git-ignored, put first on PYTHONPATH); torch and anything already installed stay untouched.
# Inside the NeMo container nothing needs installing. --dry-run checks the bundle (sha256), installs it, imports
# every module the rows need and prints the plan without running anything on a GPU. Finishes in < 8 min on one
# H100/H200; every row is guarded and the table is always printed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3)}
BUNDLE=${BUNDLE:-.gpu_bundle}
SITE=${SITE:-.gpu_site}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[gpu_check] $PYTHON has no torch: install a CUDA build of torch first (or set PYTHON=...)" >&2; exit 2
fi
missing=$("$PYTHON" - "$BUNDLE" <<'PYEOF'
import re, sys
from importlib import metadata
from pathlib import Path
bundle = Path(sys.argv[1])
reqs = bundle / "requirements.txt"
names = [l.split("==")[0] for l in reqs.read_text().split()] if reqs.exists() else ["megatron-core", "hydra-core", "omegaconf"]
names.append("nemo-minitron")
out = []
for n in names:
    try:
        metadata.version(n)
    except metadata.PackageNotFoundError:
        out.append(n)
print(" ".join(out))
PYEOF
)
stamp=""
[ -f "$BUNDLE/MANIFEST.txt" ] && stamp="$(sha256sum "$BUNDLE/MANIFEST.txt" | cut -c1-16) $missing"
if [ -n "$missing" ] && { [ ! -f "$SITE/.stamp" ] || [ "$(cat "$SITE/.stamp")" != "$stamp" ]; }; then
  if [ ! -f "$BUNDLE/MANIFEST.txt" ]; then
    echo "[gpu_check] missing: $missing; and no $BUNDLE/ (run bash scripts/gpu_bundle.sh where PyPI is reachable)" >&2
    exit 2
  fi
  ( cd "$BUNDLE" && sha256sum --quiet -c MANIFEST.txt ) || { echo "[gpu_check] $BUNDLE: checksum mismatch" >&2; exit 2; }
  wheels=()
  for n in $missing; do
    pat=$(echo "$n" | tr '-' '_')
    w=$(ls "$BUNDLE"/*.whl | grep -i -E "/${pat}-[0-9]" | head -1)
    [ -n "$w" ] || { echo "[gpu_check] $BUNDLE has no wheel for $n" >&2; exit 2; }
    wheels+=("$w")
  done
  rm -rf "$SITE.tmp"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE.tmp" "${wheels[@]}" \
    || { echo "[gpu_check] offline install of the bundle failed" >&2; exit 2; }
  echo "$stamp" > "$SITE.tmp/.stamp"
  rm -rf "$SITE"; mv "$SITE.tmp" "$SITE"
  echo "[gpu_check] installed from $BUNDLE into $SITE: $missing" >&2
fi
[ -n "$missing" ] && export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUDA_DEVICE_MAX_CONNECTIONS=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
exec "$PYTHON" -m tests.gpu.check "$@"
