"""Output voxel grids: fitted to the frame corners (PLUS-compatible or sweep-aligned) or from an ROI box."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import geometry
from ..errors import InputError
from ..sweep import Sweep


def as_spacing(spacing: float | Sequence[float]) -> np.ndarray:
    """Validate an output spacing (one value or three, mm) and return it as a (3,) array."""
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, 3)
    if sp.size != 3:
        raise InputError(f"Output spacing must be one value or three values in mm, got {sp.size} values.",
                         "Give e.g. --spacing 0.5 or --spacing 0.5 0.5 1.0.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"Output spacing must be positive, got {sp.tolist()} mm.",
                         "Give a spacing greater than zero, e.g. 0.5 mm (about the size of a few pixels).")
    return sp


@dataclass
class OutputGrid:
    """A voxel lattice: voxel (i, j, k) sits at ``origin + direction @ (spacing * (i, j, k))`` in world mm.

    ``dims`` is ``(nx, ny, nz)``; volumes as numpy are ``[nz, ny, nx]``. ``direction`` columns are the
    world directions of the i, j and k axes (orthonormal).
    """

    origin: np.ndarray
    spacing: np.ndarray
    dims: tuple[int, int, int]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = as_spacing(self.spacing)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        dims = tuple(int(d) for d in self.dims)
        if len(dims) != 3 or min(dims) < 1:
            raise InputError(f"Grid dimensions must be three positive integers, got {self.dims}.",
                             "Give (nx, ny, nz) with each at least 1.")
        self.dims = dims  # type: ignore[assignment]
        if not np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-6):
            raise InputError("The grid direction matrix is not orthonormal.",
                             "Pass a rotation matrix (columns = unit axis directions) as the orientation.")

    @property
    def num_voxels(self) -> int:
        return int(self.dims[0]) * int(self.dims[1]) * int(self.dims[2])

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Numpy shape ``(nz, ny, nx)`` of volumes on this grid."""
        return int(self.dims[2]), int(self.dims[1]), int(self.dims[0])

    def ijk_to_world(self) -> np.ndarray:
        """4x4 matrix mapping voxel (i, j, k, 1) to world mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def world_to_ijk(self) -> np.ndarray:
        """4x4 matrix mapping world mm to continuous voxel indices."""
        m = np.eye(4)
        m[:3, :3] = (self.direction / self.spacing[None, :]).T
        m[:3, 3] = -m[:3, :3] @ self.origin
        return m

    def with_spacing(self, spacing: float | Sequence[float]) -> "OutputGrid":
        """Same box (origin, extent, orientation) sampled at another spacing."""
        sp = as_spacing(spacing)
        extent = (np.asarray(self.dims) - 1) * self.spacing
        dims = tuple(int(v) for v in np.floor(extent / sp + 1e-9).astype(int) + 1)
        return OutputGrid(self.origin.copy(), sp, dims, self.direction.copy())


def _pixel_rect(width: int, height: int, clip: tuple[int, int, int, int] | None, fan) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle (x0, y0, x1, y1) the frames contribute from."""
    from ..fan import fan_bounds
    from .masks import clip_bounds

    x0, y0, x1, y1 = clip_bounds(width, height, clip)
    if fan is not None:
        fx0, fy0, fx1, fy1 = fan_bounds(fan, width, height)
        x0, y0, x1, y1 = max(x0, fx0), max(y0, fy0), min(x1, fx1), min(y1, fy1)
    if x1 < x0 or y1 < y0:
        raise InputError("The clip rectangle / fan leaves no pixel of the frames.",
                         "Check ClipRectangleOrigin/Size and the fan parameters against the frame size "
                         f"({width}x{height} pixels).")
    return x0, y0, x1, y1


def _world_corners(sweep: Sweep, rect: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rect
    corners = geometry.frame_corners_pixels(0, 0, (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
    pts = geometry.transform_points(sweep.pixel_to_world(), corners)
    return pts.reshape(-1, 3)


def sweep_axes(sweep: Sweep) -> np.ndarray:
    """Right-handed orthonormal 3x3 (columns): mean lateral, mean axial and elevational directions."""
    rot = sweep.image_to_world[:, :3, :3] if sweep.image_to_world is not None else None
    if rot is None:
        sweep.pixel_to_world()  # raises the explanatory error
    u = rot[:, :, 0].mean(axis=0)
    v = rot[:, :, 1].mean(axis=0)
    u /= np.linalg.norm(u)
    v = v - (v @ u) * u
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def fit_grid(sweep: Sweep, spacing: float | Sequence[float], clip_rectangle: tuple[int, int, int, int] | None = None,
             fan=None, oriented: bool = False, margin_mm: float = 0.0, plus_compatible: bool = False) -> OutputGrid:
    """Grid holding every frame corner (inside the clip rectangle, and the fan's bounding box).

    Axis-aligned (default) the arithmetic is PLUS's: origin at the minimum corner, ``round(extent / spacing) + 1``
    voxels per axis. ``plus_compatible=True`` gives PLUS's grid exactly: IGSIO fits the box to the clip
    rectangle's corners only (the fan does not shrink it), so ``fan`` is ignored and ``oriented`` must be off.
    ``oriented=True`` aligns the box with the mean frame axes, which is much smaller for oblique sweeps.
    ``margin_mm`` pads every side.
    """
    sp = as_spacing(spacing)
    if margin_mm < 0 or not np.isfinite(margin_mm):
        raise InputError(f"Grid margin must be >= 0 mm, got {margin_mm}.", "Give a non-negative margin.")
    if plus_compatible:
        if oriented:
            raise InputError("A PLUS-compatible grid is aligned with the reference axes; it cannot be oriented "
                             "along the sweep.", "Leave out --oriented, or --plus-compatible.")
        fan = None  # vtkIGSIOVolumeReconstructor fits the output extent to the clip rectangle alone
    h, w = sweep.frame_shape
    pts = _world_corners(sweep, _pixel_rect(w, h, clip_rectangle, fan))
    direction = sweep_axes(sweep) if oriented else np.eye(3)
    local = pts @ direction
    lo = local.min(axis=0) - margin_mm
    hi = local.max(axis=0) + margin_mm
    dims = tuple(int(v) for v in np.round((hi - lo) / sp).astype(np.int64) + 1)
    return OutputGrid(direction @ lo, sp, dims, direction)


def grid_from_roi(center: Sequence[float], size_mm: Sequence[float], spacing: float | Sequence[float],
                  orientation: np.ndarray | None = None) -> OutputGrid:
    """Grid filling a box like a Slicer markups ROI: centre and full size in mm, optional 3x3 orientation
    (columns = box axes in world). Voxel centres are placed symmetrically about ``center``."""
    sp = as_spacing(spacing)
    size = np.asarray(size_mm, dtype=np.float64).reshape(-1)
    if size.size != 3 or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise InputError(f"ROI size must be three positive lengths in mm, got {size.tolist()}.",
                         "Give the full box size along each axis, e.g. (60, 40, 80).")
    c = np.asarray(center, dtype=np.float64).reshape(3)
    direction = np.eye(3) if orientation is None else np.asarray(orientation, dtype=np.float64).reshape(3, 3)
    dims = np.maximum(np.round(size / sp).astype(np.int64), 1)
    origin = c - direction @ ((dims - 1) * sp / 2.0)
    return OutputGrid(origin, sp, tuple(int(d) for d in dims), direction)
