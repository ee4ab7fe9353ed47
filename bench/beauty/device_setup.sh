#!/usr/bin/env bash
# Run ON the GPU machine (sourced or as the first command): install the carried wheels (.whl, made
# by bench/beauty/carry.sh) into /tmp/site, without touching the image's own packages.
# pyarrow is installed only where the image's is older than the carried datasets needs.
#
#   source bench/beauty/device_setup.sh     # exports PYTHONPATH=/tmp/site:REPO
# Also exports P5X_COMMAND_START (epoch seconds, now, unless already set): oneshot.py counts its
# budget from it, so the time spent here is inside the command's limit.
set -eo pipefail
export P5X_COMMAND_START="${P5X_COMMAND_START:-$(date +%s.%N)}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
for pkg in datasets dill multiprocess fsspec pyarrow; do
  ls "$REPO"/.whl/"$pkg"-*.whl >/dev/null 2>&1 || { echo "device_setup: no $pkg wheel in $REPO/.whl (run bench/beauty/carry.sh here and carry .whl)" >&2; return 2 2>/dev/null || exit 2; }
done
wheels=$(ls "$REPO"/.whl/*.whl | grep -v '/pyarrow-')
# the pyarrow major version the carried datasets asks for (read with Python: the image has no unzip)
need=$("$PY" - "$REPO"/.whl/datasets-*.whl <<'PY'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
m = re.search(r"^Requires-Dist: pyarrow>=(\d+)", meta, re.M)
print(m.group(1) if m else 0)
PY
)
have=$("$PY" -c "import pyarrow; print(pyarrow.__version__.split('.')[0])" 2>/dev/null || echo 0)
if [ "$have" -lt "${need:-0}" ]; then wheels="$wheels $(ls "$REPO"/.whl/pyarrow-*.whl)"; fi
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels
export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PY'
import importlib.metadata as m
def version(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "MISSING"
print("device_setup:", ", ".join(f"{p} {version(p)}" for p in
      ("torch", "transformers", "datasets", "fsspec", "pyarrow", "sentencepiece", "protobuf", "safetensors",
       "accelerate")))
try:
    import torch
    print("device_setup: cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    pass
PY
