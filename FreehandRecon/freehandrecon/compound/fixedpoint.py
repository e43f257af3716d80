"""IGSIO's 14-bit fixed-point pixel positions, shared by the torch and numpy engines (numpy only).

Voxel coordinates are affine in the pixel (column i, row j), so the coordinates of a block of pixels are
one broadcast sum of a per-row and a per-column term, both exact integers in raw fixed point.
"""

from __future__ import annotations

import numpy as np

FRAC_BITS = 14
ONE = 1 << FRAC_BITS
HALF = ONE >> 1
MIN_WEIGHT_RAW = ONE // 8  # IGSIO: linear max/latest only touch corners with trilinear weight >= 1/8


def fixed_matrices(pixel_to_voxel: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` pixel->voxel matrices -> int64 ``[N, 3, 3]`` raw fixed-point columns (i, j, origin)."""
    cols = pixel_to_voxel[:, :3, [0, 1, 3]]
    return np.rint(cols * ONE).astype(np.int64)


def coordinate_terms(fixed: np.ndarray, rect: tuple[int, int, int, int], nearest: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``[n, 3, Hc]`` and per-column ``[n, 3, Wc]`` int64 terms of the raw coordinates of the pixels
    in ``rect`` (x0, y0, x1, y1 inclusive); nearest folds the rounding offset into the row term."""
    x0, y0, x1, y1 = rect
    cols = np.arange(x0, x1 + 1, dtype=np.int64)
    rows = np.arange(y0, y1 + 1, dtype=np.int64)
    a, b, o = fixed[:, :, 0], fixed[:, :, 1], fixed[:, :, 2]
    if nearest:
        o = o + HALF
    return o[:, :, None] + b[:, :, None] * rows[None, None, :], a[:, :, None] * cols[None, None, :]


def term_bounds(row_term: np.ndarray, col_term: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest raw coordinate ``[n, 3]`` over each frame's rectangle (an affine map's extremes
    are at the corners)."""
    lo = row_term[:, :, [0, -1]].min(axis=2) + col_term[:, :, [0, -1]].min(axis=2)
    hi = row_term[:, :, [0, -1]].max(axis=2) + col_term[:, :, [0, -1]].max(axis=2)
    return lo, hi


def all_inside(lo: np.ndarray, hi: np.ndarray, dims: tuple[int, int, int], nearest: bool) -> bool:
    """Whether every pixel with raw coordinates within ``[lo, hi]`` lands inside the grid (for linear:
    with all 8 corners), so per-pixel bounds checks can be skipped."""
    limit = (np.asarray(dims, dtype=np.int64) - 1) * ONE
    if nearest:
        return bool((lo >= 0).all() and ((hi >> FRAC_BITS) <= limit >> FRAC_BITS).all())
    return bool((lo >= 0).all() and (hi <= limit).all())


def classify_tiles(row_term: np.ndarray, col_term: np.ndarray, rows_per_tile: int, dims: tuple[int, int, int],
                   nearest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each frame's rows into tiles of ``rows_per_tile``: tile ``starts``/``ends`` (row offsets) and,
    per frame and tile ``[n, T]``, whether it lies wholly outside the grid (skip it) or wholly inside
    (no bounds checks)."""
    cmin, cmax = col_term[:, :, [0, -1]].min(axis=2), col_term[:, :, [0, -1]].max(axis=2)  # [n, 3]
    hc = row_term.shape[2]
    starts = np.arange(0, hc, rows_per_tile)
    ends = np.minimum(starts + rows_per_tile, hc)
    rf, rl = row_term[:, :, starts], row_term[:, :, ends - 1]  # rows at both ends of each tile [n, 3, T]
    lo = np.minimum(rf, rl) + cmin[:, :, None]
    hi = np.maximum(rf, rl) + cmax[:, :, None]
    size = np.asarray(dims, dtype=np.int64)[None, :, None]
    if nearest:
        lo_v, hi_v = lo >> FRAC_BITS, hi >> FRAC_BITS
        outside = ((hi_v < 0) | (lo_v > size - 1)).any(axis=1)
        inside = ((lo_v >= 0) & (hi_v <= size - 1)).all(axis=1)
    else:
        outside = ((hi < 0) | (lo > (size - 1) * ONE)).any(axis=1)
        inside = ((lo >= 0) & (hi <= (size - 1) * ONE)).all(axis=1)
    return starts, ends, outside, inside
