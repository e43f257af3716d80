"""Compounding options (per channel too), hole-filling settings and the result container."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from ..channels import CHANNEL_COMPOUNDING
from ..errors import InputError
from ..fan import FanMask
from .grid import OutputGrid

INTERPOLATIONS = ("nearest", "linear")
COMPOUNDINGS = ("mean", "max", "latest", "importance")
HOLE_METHODS = ("none", "normalized", "stick")
ENGINES = ("auto", "numba", "torch", "numpy")


@dataclass(frozen=True)
class HoleFilling:
    """Hole filling after compounding; only voxels no pixel reached (coverage 0) are changed.

    ``normalized``: normalised convolution of sum and weight with a ``size``^3 box kernel.
    ``stick``: IGSIO's stick kernel, 13 line directions searched up to ``size`` voxels for filled voxels
    on both sides, the ``sticks`` best (shortest) lines interpolated.
    """

    method: str = "none"
    size: int = 3
    sticks: int = 1

    def validate(self) -> None:
        if self.method not in HOLE_METHODS:
            raise InputError(f"Unknown hole filling method '{self.method}'.", f"Use one of {', '.join(HOLE_METHODS)}.")
        if self.method != "none" and int(self.size) < (2 if self.method == "stick" else 1):
            raise InputError(f"Hole filling size must be at least {2 if self.method == 'stick' else 1}, got {self.size}.",
                             "Give a kernel size (normalized) or stick length (stick) of a few voxels, e.g. 3 or 9.")
        if self.method == "stick" and not 1 <= int(self.sticks) <= 13:
            raise InputError(f"Number of sticks must be 1..13, got {self.sticks}.", "Use 1 (PLUS default) to 13.")


@dataclass
class CompoundOptions:
    """How pixels are pasted into the grid.

    ``clip_rectangle`` is ``(x0, y0, width, height)`` pixels (pixels x0..x0+width-1 are kept);
    ``pixel_threshold`` drops pixels darker than it (PLUS PixelRejectionThreshold); ``importance_mask`` is
    ``[H, W]`` weights 0..1 or 0..255. ``plus_arithmetic`` reproduces IGSIO's integer arithmetic
    (14-bit fixed-point positions, per-insertion rounding of the running mean, truncating stick filling)
    for bit-level comparisons with PLUS; it is slower and only changes the mean modes and hole filling.
    ``engine``: "numba" (CPU, compiled, deterministic on any number of threads; needs numba), "torch" (CPU or
    CUDA; needs PyTorch), "numpy" (CPU; no extra package, no ``plus_arithmetic``) or "auto" (numba when it can
    be imported, else torch, else numpy; torch on CUDA; numpy for an offline job too small for numba's start-up
    to pay off in a process that has not loaded numba yet: see :func:`.engine.numba_pays_off`).
    """

    interpolation: str = "nearest"
    compounding: str = "mean"
    clip_rectangle: tuple[int, int, int, int] | None = None
    fan: FanMask | None = None
    pixel_threshold: float | None = None
    importance_mask: np.ndarray | None = None
    hole_filling: HoleFilling = field(default_factory=HoleFilling)
    chunk_frames: int | None = None
    device: str = "cpu"
    max_memory_bytes: int | None = None
    plus_arithmetic: bool = False
    engine: str = "auto"

    def validate(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"Unknown interpolation '{self.interpolation}'.",
                             f"Use one of {', '.join(INTERPOLATIONS)}.")
        if self.compounding not in COMPOUNDINGS:
            raise InputError(f"Unknown compounding mode '{self.compounding}'.",
                             f"Use one of {', '.join(COMPOUNDINGS)}.")
        if self.compounding == "importance" and self.importance_mask is None:
            raise InputError("Compounding 'importance' needs an importance mask.",
                             "Pass importance_mask=[H, W] weights (PLUS: ImportanceMaskFilename), or use 'mean'.")
        if self.pixel_threshold is not None and not np.isfinite(float(self.pixel_threshold)):
            raise InputError("The pixel rejection threshold must be a finite number.", "Give e.g. 5, or leave it unset.")
        if self.chunk_frames is not None and int(self.chunk_frames) < 1:
            raise InputError(f"chunk_frames must be >= 1, got {self.chunk_frames}.", "Leave it unset for automatic.")
        if self.fan is not None:
            self.fan.validate()
        self.hole_filling.validate()
        if not (self.device == "cpu" or str(self.device).startswith("cuda")):
            raise InputError(f"Unknown device '{self.device}'.", "Use 'cpu' or 'cuda'.")
        if self.engine not in ENGINES:
            raise InputError(f"Unknown compounding engine '{self.engine}'.", f"Use one of {', '.join(ENGINES)}.")


@dataclass
class CompoundResult:
    """Compounded intensity and coverage volumes ``[nz, ny, nx]`` float32 on ``grid``.

    ``coverage`` is the accumulated weight (pixel count for nearest, summed trilinear weights for linear,
    importance-weighted for importance); 0 means no pixel reached the voxel.
    """

    volume: np.ndarray
    coverage: np.ndarray
    grid: OutputGrid
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.stats.get("seconds", 0.0))

    def volume_as(self, dtype: Any) -> np.ndarray:
        """The intensity volume rounded and clipped to ``dtype`` (e.g. ``np.uint8``)."""
        dt = np.dtype(dtype)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            return np.clip(np.rint(self.volume), info.min, info.max).astype(dt)
        return self.volume.astype(dt)


# --- per-channel options ---------------------------------------------------------------------------

def channel_options(base: CompoundOptions, name: str,
                    overrides: Mapping[str, CompoundOptions | str] | None = None) -> CompoundOptions:
    """Compounding options of channel ``name``: an override (full options, or just a mode name),
    else ``base`` with the channel's default mode (:data:`CHANNEL_COMPOUNDING`)."""
    given = (overrides or {}).get(name)
    if isinstance(given, CompoundOptions):
        return given
    mode = given if given is not None else CHANNEL_COMPOUNDING.get(name, base.compounding)
    if mode not in COMPOUNDINGS:
        raise InputError(f"Unknown compounding mode '{mode}' for channel '{name}'.",
                         f"Use one of {', '.join(COMPOUNDINGS)}, e.g. --channel-compounding {name}=max.")
    if mode == "importance" and base.importance_mask is None:
        raise InputError(f"Channel '{name}': compounding 'importance' needs an importance mask.",
                         "Give --importance-mask, or use max/mean for the channel.")
    return replace(base, compounding=mode)


def parse_channel_compounding(items: list[str] | None) -> dict[str, str]:
    """``["photoacoustic=max", "doppler=mean"]`` (the command-line form) -> ``{name: mode}``."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, mode = item.partition("=")
        if not sep or not name or mode not in COMPOUNDINGS:
            raise InputError(f"--channel-compounding '{item}' is not CHANNEL=MODE with a known mode.",
                             f"Use e.g. --channel-compounding doppler=mean (modes: {', '.join(COMPOUNDINGS)}).")
        out[name] = mode
    return out
