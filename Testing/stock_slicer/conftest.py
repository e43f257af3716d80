"""Load FreehandRecon the way 3D Slicer loads a scripted module: its folder on sys.path, no pip install.

Run inside .venv-stock only (slicer-core, numpy, pytest; no torch, h5py, tqdm, safetensors, pytorch-msssim):
``.venv-stock/bin/python -m pytest Testing/stock_slicer``.
"""

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "FreehandRecon"
sys.path.insert(0, str(MODULE_DIR))  # what Slicer does with a scripted module's folder

ABSENT_IN_STOCK_SLICER = ("torch", "numba", "h5py", "tqdm", "safetensors", "pytorch_msssim")


@pytest.fixture
def scene(monkeypatch):
    """A fresh slicer-core scene installed as slicer.mrmlScene (as in Slicer)."""
    import slicer

    from freehandrecon.io.slicer_scene import new_scene

    s = new_scene()
    monkeypatch.setattr(slicer, "mrmlScene", s, raising=False)
    return s
