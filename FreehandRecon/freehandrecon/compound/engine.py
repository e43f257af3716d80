"""Which compounding engine runs: torch (CPU/CUDA, PLUS arithmetic, stick filling) or numpy (no PyTorch).

A stock 3D Slicer has numpy but not torch (torch comes with the PyTorch extension), so tracked
reconstruction must not need it. ``engine="auto"`` takes torch when it can be imported, numpy otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import InputError, ResourceError
from .masks import PixelSelection

INSTALL_TORCH = "install the 'PyTorch' extension (Extensions Manager) and restart Slicer"


def torch_available() -> bool:
    """Whether torch looks importable, without importing it (importing takes seconds)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _import_torch() -> bool:
    try:
        import torch  # noqa: F401
    except (ImportError, OSError):  # OSError: a torch whose native libraries fail to load
        return False
    return True


def planned_engine(options: Any) -> str:
    """The engine ``options`` will run on, as far as can be told without importing torch (for estimates)."""
    if options.engine != "auto":
        return options.engine
    return "torch" if torch_available() else "numpy"


def require_engine(options: Any) -> str:
    """The engine :func:`~.compounder.compound` runs ``options`` on, or the error saying what is missing."""
    engine = options.engine
    if engine == "auto":
        engine = "torch" if _import_torch() else "numpy"
    elif engine == "torch" and not _import_torch():
        raise ResourceError("The torch compounding engine was requested but PyTorch is not installed.",
                            f"To use it, {INSTALL_TORCH}; or choose engine 'numpy' or 'auto'.")
    if engine == "torch":
        return engine
    asked = options.engine == "numpy"  # numpy chosen explicitly, not for want of torch
    if str(options.device).startswith("cuda"):
        if asked:
            raise InputError(f"The numpy compounding engine runs on the CPU only, but device '{options.device}' "
                             "was requested.", "Use device 'cpu', or engine 'torch' or 'auto' (needs PyTorch).")
        raise ResourceError(f"Compounding on device '{options.device}' needs PyTorch, which is not installed.",
                            f"Use device 'cpu' (the numpy engine), or {INSTALL_TORCH}.")
    if options.plus_arithmetic:
        if asked:
            raise InputError("PLUS-compatible integer arithmetic (plus_arithmetic) is only implemented by the "
                             "torch compounding engine.", "Use engine 'torch' or 'auto' (needs PyTorch), or turn "
                             "plus_arithmetic off.")
        raise ResourceError("PLUS-compatible integer arithmetic (plus_arithmetic) needs PyTorch, which is not "
                            "installed.", f"Turn plus_arithmetic off, or {INSTALL_TORCH}.")
    if options.hole_filling.method == "stick" and not _import_torch():
        raise ResourceError("Stick hole filling needs PyTorch, which is not installed.",
                            f"Use normalized hole filling, or {INSTALL_TORCH}.")
    return engine


@dataclass
class PasteJob:
    """Everything an engine needs to paste a sweep's frames into the flat voxel accumulators."""

    frames: np.ndarray  # [N, H, W], any real dtype
    fixed: np.ndarray  # [N, 3, 3] raw fixed-point pixel->voxel columns
    selection: PixelSelection
    options: Any  # CompoundOptions with a concrete engine
    dims: tuple[int, int, int]
    step: int  # frames per chunk
    workers: int
    progress: Callable[[int, int], None] | None
    should_cancel: Callable[[], bool] | None
