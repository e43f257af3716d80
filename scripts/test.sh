#!/usr/bin/env bash
# Test command of the README: the whole suite (core, MRML, offscreen rendering, module contract).
set -euo pipefail
cd "$(dirname "$0")/.."
export VTK_DEFAULT_OPENGL_WINDOW=${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}
exec .venv/bin/python -m pytest -ra "$@"
