#!/usr/bin/env bash
# Creates .venv-stock: a stand-in for a stock 3D Slicer's Python (numpy, VTK and Slicer's MRML, nothing else:
# no torch, numba, h5py, tqdm, safetensors or pytorch-msssim), for the tests under Testing/stock_slicer/.
# FreehandRecon is NOT installed into it: the tests put FreehandRecon/ on sys.path, as Slicer does.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-stock/bin/python ] || "$PYTHON" -m venv .venv-stock
.venv-stock/bin/python -m pip install -q "slicer-core==5.13.31053.0" numpy pytest
# A stock Slicer has none of these; fail loudly if slicer-core (or anything else) ever pulls one in.
.venv-stock/bin/python - <<'PY'
import importlib.util
import sys

present = [name for name in ("torch", "numba", "h5py", "tqdm", "safetensors", "pytorch_msssim")
           if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f".venv-stock is not a stock Slicer environment: it has {', '.join(present)}")
print(".venv-stock ready: slicer-core, numpy, pytest; no torch, numba, h5py, tqdm, safetensors or pytorch-msssim")
PY
