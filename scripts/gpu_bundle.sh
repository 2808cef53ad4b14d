#!/usr/bin/env bash
# Build the offline wheelhouse that scripts/gpu_check.sh installs on a bare GPU machine (CPython 3.12,
# linux x86_64, a CUDA torch already installed, no network): megatron-core, hydra-core, omegaconf and the
# rest of what the GPU check imports, at the versions of the tested newest stack (.venv-mcore-newest), plus
# this package's wheel. Never torch or anything torch brings (the GPU machine's own CUDA build is used).
#   bash scripts/gpu_bundle.sh            -> .gpu_bundle/ (git-ignored; < 60 MB; MANIFEST.txt lists sha256s)
# Run it here (it needs PyPI), then carry .gpu_bundle/ with the checkout to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-.gpu_bundle}
LIMIT_MB=${LIMIT_MB:-60}
PY=$(STACK=newest bash scripts/setup_env.sh)
tmp="$BUNDLE.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
# the requirement closure of what the GPU check imports, minus torch's own closure, at installed versions
"$PY" - "$tmp/requirements.txt" <<'PYEOF'
import re, sys
from importlib import metadata

ROOTS = ["megatron-core", "hydra-core", "omegaconf", "pyyaml", "psutil", "safetensors", "tqdm", "numpy", "packaging"]
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
def deps(name):
    out = []
    for req in metadata.requires(name) or []:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        if ";" in req:  # environment markers: evaluate for this interpreter
            from packaging.markers import Marker
            if not Marker(req.split(";", 1)[1]).evaluate():
                continue
        out.append(norm(re.match(r"[A-Za-z0-9_.\-]+", req).group(0)))
    return out
def closure(roots):
    seen, todo = set(), [norm(r) for r in roots]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        try:
            metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
        seen.add(n)
        todo += deps(n)
    return seen
torch_side = closure(["torch"])
need = sorted(closure(ROOTS) - torch_side - {"torch"})
with open(sys.argv[1], "w") as f:
    for n in need:
        f.write(f"{n}=={metadata.version(n)}\n")
print("[gpu_bundle] requirements:", ", ".join(need), file=sys.stderr)
PYEOF
"$PY" -m pip download -q --disable-pip-version-check --no-deps --prefer-binary -d "$tmp" -r "$tmp/requirements.txt" >&2
# sdists (e.g. antlr4-python3-runtime) become wheels here, so the GPU machine needs no build step
for sd in "$tmp"/*.tar.gz "$tmp"/*.zip; do
  [ -e "$sd" ] || continue
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp" "$sd" >&2 && rm -f "$sd"
done
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$tmp" . >&2
( cd "$tmp" && for w in *.whl; do echo "$(sha256sum "$w" | cut -c1-64)  $w"; done ) > "$tmp/MANIFEST.txt"
size_mb=$(( $(du -sk "$tmp" | cut -f1) / 1024 ))
if [ "$size_mb" -ge "$LIMIT_MB" ]; then
  echo "[gpu_bundle] $tmp is $size_mb MB (limit $LIMIT_MB MB)" >&2; exit 1
fi
rm -rf "$BUNDLE"; mv "$tmp" "$BUNDLE"
echo "[gpu_bundle] $BUNDLE: $(ls "$BUNDLE"/*.whl | wc -l) wheels, $size_mb MB" >&2
echo "$BUNDLE"
