"""The curvilinear fan of a sector probe's frames: its geometry, its pixels, and finding it in the frames.

All geometry here is in pixel units (column i, row j), as PLUS defines it for its unit-spaced frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

_FLOOR_TOL = 7.62939453125e-06  # PLUS/VTK rounding tolerance, kept so fan edges match IGSIO pixel for pixel


def _floor(x: np.ndarray) -> np.ndarray:
    return np.floor(x + _FLOOR_TOL)


def _ceil(x: np.ndarray) -> np.ndarray:
    return -_floor(-x)


@dataclass(frozen=True)
class FanMask:
    """Curvilinear (sector) field of view in pixels.

    ``origin_px`` is the fan apex (column, row); ``angles_deg`` the left and right edge angles measured
    from the +row (axial) direction, positive towards +column; pixels between ``radius_start_px`` and
    ``radius_stop_px`` from the apex are kept.
    """

    origin_px: tuple[float, float]
    angles_deg: tuple[float, float]
    radius_start_px: float
    radius_stop_px: float

    def validate(self) -> None:
        a0, a1 = (float(a) for a in self.angles_deg)
        r0, r1 = float(self.radius_start_px), float(self.radius_stop_px)
        if not all(np.isfinite([a0, a1, r0, r1, *self.origin_px])):
            raise InputError("Fan parameters must be finite numbers.", "Check FanOriginPixel, FanAnglesDeg and radii.")
        if not (-90 < a0 < 90 and -90 < a1 < 90):
            raise InputError(f"Fan angles must lie strictly between -90 and 90 degrees, got ({a0}, {a1}).",
                             "Give the left and right edge angles from the axial direction, e.g. -45 45.")
        if r0 < 0 or r1 <= r0:
            raise InputError(f"Fan radii must satisfy 0 <= start < stop, got start {r0}, stop {r1} pixels.",
                             "Give FanRadiusStartPixel smaller than FanRadiusStopPixel.")


def _fan_tangents(fan: FanMask) -> tuple[float, float]:
    t0, t1 = (math.tan(math.radians(float(a))) for a in fan.angles_deg)
    return (t0, t1) if t0 <= t1 else (t1, t0)


def fan_mask(fan: FanMask, width: int, height: int) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the pixels inside the fan (IGSIO's per-row rule, 1-pixel inner margin)."""
    fan.validate()
    ox, oy = (float(v) for v in fan.origin_px)
    tl, tr = _fan_tangents(fan)
    y = np.arange(height, dtype=np.float64) - oy
    x = np.arange(width, dtype=np.float64)[None, :]
    left = _ceil(tl * y + ox + 1.0)
    right = _floor(tr * y + ox - 1.0)
    y2 = y * y
    stop2 = float(fan.radius_stop_px) ** 2
    start2 = float(fan.radius_start_px) ** 2
    dx_stop = np.sqrt(np.maximum(stop2 - y2, 0.0))
    left = np.maximum(left, _ceil(ox - dx_stop + 1.0))
    right = np.minimum(right, _floor(ox + dx_stop - 1.0))
    row_ok = stop2 - y2 >= 0
    mask = (x >= left[:, None]) & (x <= right[:, None]) & row_ok[:, None]
    inner = start2 - y2 > 0
    dx_start = np.sqrt(np.maximum(start2 - y2, 0.0))
    s0 = _ceil(ox - dx_start + 1.0)
    s1 = _floor(ox + dx_start - 1.0)
    mask &= ~(inner[:, None] & (x >= s0[:, None]) & (x <= s1[:, None]))
    return mask


def fan_bounds(fan: FanMask, width: int, height: int) -> tuple[int, int, int, int]:
    """Inclusive bounding rectangle (x0, y0, x1, y1) of :func:`fan_mask` (empty -> x1 < x0)."""
    m = fan_mask(fan, width, height)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return 0, 0, -1, -1
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def detect_fan(frames: np.ndarray, threshold: float | None = None) -> FanMask | None:
    """Find a curvilinear fan from the frames, or None when the image is not sector-shaped.

    The field of view is where any frame is brighter than ``threshold`` (default: 2 % of the maximum).
    Its left and right edges, row by row, are fitted with straight lines whose crossing is the apex;
    the radii are robust percentiles of the pixel distances from the apex.
    """
    f = np.asarray(frames)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise InputError(f"detect_fan expects frames [N, H, W], got shape {f.shape}.", "Pass the sweep frames.")
    peak = f.max(axis=0).astype(np.float32)
    thr = 0.02 * float(peak.max()) if threshold is None else float(threshold)
    on = peak > thr
    h, w = on.shape
    rows = np.flatnonzero(on.sum(axis=1) >= 3)
    if rows.size < max(10, h // 10) or on.mean() > 0.97:
        return None
    cols = np.arange(w)
    first = np.where(on[rows], cols[None, :], w).min(axis=1).astype(np.float64)
    last = np.where(on[rows], cols[None, :], -1).max(axis=1).astype(np.float64)
    # The straight edges are the upper part of the field of view; the bottom is the arc.
    r0, r1 = rows[0], rows[-1]
    use = (rows >= r0 + 0.05 * (r1 - r0)) & (rows <= r0 + 0.5 * (r1 - r0))
    if use.sum() < 5:
        return None
    yl = rows[use].astype(np.float64)
    sl, il = np.polyfit(yl, first[use], 1)
    sr, ir = np.polyfit(yl, last[use], 1)
    if sr - sl < math.tan(math.radians(5.0)):  # edges (nearly) parallel: a linear probe
        return None
    oy = (il - ir) / (sr - sl)
    ox = sl * oy + il
    jj, ii = np.nonzero(on)
    dist = np.hypot(ii - ox, jj - oy)
    r_start = float(np.percentile(dist, 0.5))
    r_stop = float(np.percentile(dist, 99.5))
    # Edge pixels sit just inside the edge lines; IGSIO keeps pixels 1 px inside, so widen by one pixel.
    return FanMask((float(ox), float(oy)), (float(math.degrees(math.atan(sl))), float(math.degrees(math.atan(sr)))),
                   max(r_start - 1.0, 0.0), r_stop + 1.0)
