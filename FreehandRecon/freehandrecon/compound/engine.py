"""Which compounding engine runs: numba (compiled CPU kernels), torch (CPU/CUDA) or numpy (no extra package).

A stock 3D Slicer has numpy but neither numba nor torch (the module installs numba with its requirements;
torch comes with the PyTorch extension), so tracked reconstruction must need neither. ``engine="auto"`` takes
numba when it can be imported (found without importing torch), else torch, else numpy; a CUDA device takes
torch. An offline job that is too small for numba's start-up to pay off, in a process that has not loaded numba
yet (a command line run), runs on numpy instead (:func:`numba_pays_off`).
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
INSTALL_NUMBA = "install numba (the module installs it with its other requirements; or pip install numba)"


def _found(name: str) -> bool:
    """Whether ``name`` looks importable, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torch_available() -> bool:
    """Whether torch looks importable, without importing it (importing takes seconds)."""
    return _found("torch")


def numba_available() -> bool:
    """Whether numba looks importable, without importing it."""
    return _found("numba")


def _import_torch() -> bool:
    try:
        import torch  # noqa: F401
    except (ImportError, OSError):  # OSError: a torch whose native libraries fail to load
        return False
    return True


def _import_numba() -> bool:
    try:
        import numba  # noqa: F401
    except (ImportError, OSError, AttributeError):  # a numba built for another numpy fails on import
        return False
    return True


def _cuda(options: Any) -> bool:
    return str(options.device).startswith("cuda")


def planned_engine(options: Any) -> str:
    """The engine ``options`` will run on, as far as can be told without importing anything (for estimates)."""
    if options.engine != "auto":
        return options.engine
    if _cuda(options):
        return "torch"
    return "numba" if numba_available() else "torch" if torch_available() else "numpy"


def reconstructor_engine(options: Any) -> str:
    """The engine a :class:`~.reconstructor.Reconstructor` pastes with: numba where it can be imported, else
    numpy; torch only on CUDA or when asked for (it keeps the frames and recompounds them)."""
    if options.engine == "auto" and not _cuda(options):
        if _import_numba():
            return "numba"
        if options.plus_arithmetic and _import_torch():
            return "torch"
        options = _with_engine(options, "numpy")
    return require_engine(options)


# What numba costs and saves, measured on the development machine (2-core AMD EPYC VM, 2026-12-06; README,
# Performance); only used to decide whether starting numba pays off for one offline job.
NUMBA_START_SECONDS = 0.6  # importing numba and loading its cached kernels in a fresh process
PASTE_SAVING_SECONDS = {"nearest": 4.8e-9, "linear": 29e-9}  # numpy minus numba (1 thread), per pixel pasted
STICK_SAVING_SECONDS = 50e-9  # numpy minus numba stick filling, per grid voxel


def numba_loaded() -> bool:
    """Whether this process has imported numba already (its start-up is paid)."""
    return sys.modules.get("numba") is not None


def numba_pays_off(options: Any, pixels: int, voxels: int) -> bool:
    """Whether pasting ``pixels`` into ``voxels`` with ``options`` saves more with numba than starting it costs
    (always true once numba is loaded). The numpy engine gives the same volumes within float rounding and the
    same stick filling bit for bit."""
    if numba_loaded():
        return True
    saving = pixels * PASTE_SAVING_SECONDS.get(options.interpolation, PASTE_SAVING_SECONDS["linear"])
    if options.hole_filling.method == "stick":
        saving += voxels * STICK_SAVING_SECONDS
    return saving >= NUMBA_START_SECONDS


def _small_job(options: Any, pixels: int, voxels: int) -> bool:
    """"auto" on the CPU, numba installed but not worth starting (PLUS arithmetic needs numba or torch: kept)."""
    return (options.engine == "auto" and not _cuda(options) and not options.plus_arithmetic and numba_available()
            and not numba_pays_off(options, pixels, voxels))


def planned_offline_engine(options: Any, pixels: int, voxels: int) -> str:
    """:func:`planned_engine` for one offline :func:`~.compounder.compound` of ``pixels`` into ``voxels`` (what
    :func:`offline_engine` will pick), without importing anything."""
    return "numpy" if _small_job(options, pixels, voxels) else planned_engine(options)


def offline_engine(options: Any, pixels: int, voxels: int) -> str:
    """The engine an offline :func:`~.compounder.compound` of ``pixels`` into ``voxels`` runs on: as
    :func:`require_engine`, except that "auto" takes numpy over a numba not loaded yet where numba would not pay
    off (PLUS arithmetic needs numba or torch, so it keeps numba)."""
    if _small_job(options, pixels, voxels):
        return require_engine(_with_engine(options, "numpy"))
    return require_engine(options)


def _with_engine(options: Any, engine: str) -> Any:
    import dataclasses

    return dataclasses.replace(options, engine=engine)


def require_engine(options: Any) -> str:
    """The engine :func:`~.compounder.compound` runs ``options`` on, or the error saying what is missing."""
    engine = options.engine
    cuda = _cuda(options)
    if engine == "auto":
        if cuda and _import_torch():
            engine = "torch"
        elif not cuda and _import_numba():
            engine = "numba"
        else:
            engine = "torch" if _import_torch() else "numpy"
    elif engine == "torch" and not _import_torch():
        raise ResourceError("The torch compounding engine was requested but PyTorch is not installed.",
                            f"To use it, {INSTALL_TORCH}; or choose engine 'numba', 'numpy' or 'auto'.")
    elif engine == "numba" and not _import_numba():
        raise ResourceError("The numba compounding engine was requested but numba is not installed.",
                            f"To use it, {INSTALL_NUMBA}; or choose engine 'numpy' or 'auto'.")
    if engine == "torch":
        return engine
    asked = options.engine != "auto"  # numpy/numba chosen explicitly, not for want of torch
    if cuda:
        if asked:
            raise InputError(f"The {engine} compounding engine runs on the CPU only, but device '{options.device}' "
                             "was requested.", "Use device 'cpu', or engine 'torch' or 'auto' (needs PyTorch).")
        raise ResourceError(f"Compounding on device '{options.device}' needs PyTorch, which is not installed.",
                            f"Use device 'cpu' (the numba or numpy engine), or {INSTALL_TORCH}.")
    if options.plus_arithmetic and engine == "numpy":
        if asked:
            raise InputError("PLUS-compatible integer arithmetic (plus_arithmetic) is only implemented by the "
                             "numba and torch compounding engines.", "Use engine 'numba', 'torch' or 'auto', or "
                             "turn plus_arithmetic off.")
        raise ResourceError("PLUS-compatible integer arithmetic (plus_arithmetic) needs numba or PyTorch, neither "
                            "of which is installed.", f"Turn plus_arithmetic off, or {INSTALL_NUMBA}, or "
                            f"{INSTALL_TORCH}.")
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
