#!/usr/bin/env bash
# Set-up command of the README: creates .venv (pinned torch 2.13.0 CPU and slicer-core) and .venv-stock (a
# stock Slicer's Python, for the stock-Slicer tests), installs
# FreehandRecon, reconstructs the bundled PLUS/IGSIO spine sweep into demo/, then simulates an untracked
# sweep (a training site, an unseen seed) and reconstructs it with learned (sensorless) poses into
# demo/sensorless/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e ".[test]"
# .venv-stock: a stock Slicer's Python (slicer-core, numpy; no torch, h5py, ...) for Testing/stock_slicer.
PYTHON="$PYTHON" bash scripts/make_stock_slicer_env.sh
export VTK_DEFAULT_OPENGL_WINDOW=${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}
.venv/bin/freehandrecon reconstruct Testing/Data/igsio/SpinePhantomFreehand.igs.mha \
    --plus-config Testing/Data/igsio/Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml \
    --out demo --force
.venv/bin/freehandrecon simulate --site site-b --seed 20001 --frames 100 --trajectory linear \
    --out demo/simulated_sweep.npz --force
.venv/bin/freehandrecon reconstruct demo/simulated_sweep.npz --poses learned --spacing 0.4 \
    --out demo/sensorless --force
.venv/bin/freehandrecon reconstruct Testing/Data/paus/paus_sample.npz --spacing 0.3 --out demo/paus --force
echo "Demo outputs in $(pwd)/demo: volume.nrrd coverage.nrrd scene.mrb render.png report.json"
echo "Photoacoustic + Doppler demo in $(pwd)/demo/paus (render_fused.png)"
echo "Sensorless demo in $(pwd)/demo/sensorless (report.json has the errors against the simulator's true poses)"
