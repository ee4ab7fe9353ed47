#!/usr/bin/env bash
# Run HERE (with network to PyPI and ../shared), before a GPU session: stage what the bare GPU
# machine lacks into two git-ignored folders that the device tool carries (`carry: [".whl", ".carry"]`).
#
#   bash bench/beauty/carry.sh          # then, on the device: bash bench/beauty/device_setup.sh
#
# .whl/    wheels of the packages p5x needs that the GPU image does not hold (datasets and its two
#          pure-Python needs; fsspec, since datasets caps its version and the image's may be newer;
#          pyarrow, installed there only when the image's own is older than datasets asks for).
#          Versions are the ones installed here, where the tests pass.
# .carry/  the raw Beauty files (../shared does not travel to the GPU machine; 7 MB).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
BEAUTY="${BEAUTY:-$REPO/../shared/data/beauty}"
PY="${PYTHON:-python3}"
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

mkdir -p .whl .carry
rm -f .whl/*.whl
for pkg in datasets dill multiprocess fsspec pyarrow; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$(ver "$pkg")"
done
rm -rf .carry/beauty && cp -r "$BEAUTY" .carry/beauty && chmod -R u+w .carry/beauty
du -sh .whl .carry
echo "carry: [\".whl\", \".carry\"]; on the device: bash bench/beauty/device_setup.sh && BEAUTY=.carry/beauty ..."
