"""Stick hole filling compiled with numba: the same results as :func:`.holes.fill_sticks`, bit for bit.

Import this module only where numba is installed (it imports numba at the top). One parallel pass over the
z-planes; per plane, for each of the 13 directions, the steps to the nearest filled voxel forwards and
backwards (vectorised over the plane, on the flat padded mask of :mod:`.holes`: a line leaving the volume
sideways runs through unfilled padding, one leaving through the first or last plane past the ends), packed
per voxel as ``steps between the ends << shift | forward steps``; then per hole the shortest sticks (ties
included), interpolated and averaged in IGSIO's direction order and float64 arithmetic. Each voxel's value
depends only on the input, so any number of threads gives the same volume.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .holes_numpy import CLASS_STARTS, SQUARED_LENGTHS, STICKS, stick_weights

_OFFSETS3 = np.array(STICKS, dtype=np.int64)  # (dx, dy, dz) per direction
_SQ = np.array(SQUARED_LENGTHS, dtype=np.int64)
_CLASS = _SQ - 1  # 0: axes, 1, 2: face and space diagonals
_CLASS_START = np.array(CLASS_STARTS, dtype=np.int64)  # STICKS is grouped by class


@numba.njit(cache=True, parallel=True)
def _pad_filled(filled: np.ndarray, pad: int, ext: int) -> np.ndarray:
    """``filled`` as uint8 ``[nz, ny + pad, nx + pad]`` flat after ``ext`` unfilled voxels and before as
    many, padding unfilled."""
    nz, ny, nx = filled.shape
    py, px = ny + pad, nx + pad
    out = np.zeros(nz * py * px + 2 * ext, dtype=np.uint8)
    for z in numba.prange(nz):
        for y in range(ny):
            b = ext + (z * py + y) * px
            for x in range(nx):
                out[b + x] = filled[z, y, x]
    return out


@numba.njit(cache=True, nogil=True)
def _plane_distances(fl: np.ndarray, start: int, off: int, reach: int, kmax: int, out: np.ndarray) -> None:
    """``out[j]``: steps ``k`` (1 <= k <= kmax < reach) from the flat voxel ``start + j`` to the first set
    ``fl[start + j + k * off]``, else ``reach``; ``fl`` is extended with unset voxels wide enough for every
    read."""
    m = out.size
    rt = out.dtype.type(reach)
    for j in range(m):
        out[j] = rt
    k = kmax
    while k >= 1:  # descending, four steps per pass (the last repeated): the nearest one is written last
        k1, k2, k3 = max(k - 1, 1), max(k - 2, 1), max(k - 3, 1)
        s0, s1, s2, s3 = start + k * off, start + k1 * off, start + k2 * off, start + k3 * off
        a0, a1, a2, a3 = fl[s0:s0 + m], fl[s1:s1 + m], fl[s2:s2 + m], fl[s3:s3 + m]
        v0, v1, v2, v3 = out.dtype.type(k), out.dtype.type(k1), out.dtype.type(k2), out.dtype.type(k3)
        for j in range(m):
            v = out[j]
            v = v0 if a0[j] else v
            v = v1 if a1[j] else v
            v = v2 if a2[j] else v
            out[j] = v3 if a3[j] else v
        k -= 4


@numba.njit(cache=True, parallel=True)
def _fill(volume: np.ndarray, filled: np.ndarray, fl: np.ndarray, ext: int, pad: int, reach: int, shift: int,
          invalid: int, sticks: int, dirs: np.ndarray, offs: np.ndarray, sq: np.ndarray, w_table: np.ndarray,
          truncate: bool, code_type: np.ndarray) -> tuple[np.ndarray, int]:
    """The filled volume and count, row by row (rows in parallel over z-planes).

    Per row and direction, ``code = (fwd + bwd) << shift | fwd`` (steps to the nearest filled voxel
    forwards / backwards along the padded flat volume ``fl``) where the stick is at most ``reach`` steps long,
    else ``invalid``; codes of one class compare as their sticks' lengths.
    """
    nz, ny, nx = volume.shape
    py, px = ny + pad, nx + pad
    nd = sq.size
    mask = (1 << shift) - 1
    out = np.empty_like(volume)
    vf = volume.ravel()
    counts = np.zeros(nz, dtype=np.int64)
    big = np.iinfo(np.int64).max
    m = ny * px  # one plane's rows (with their padding columns) in the flat padded volume
    for z in numba.prange(nz):
        codes = np.empty((nd, m), dtype=code_type.dtype)
        fw = np.empty(m, dtype=code_type.dtype)
        bw = np.empty(m, dtype=code_type.dtype)
        cmin = np.empty((3, m), dtype=code_type.dtype)
        score = np.empty(nd, dtype=np.int64)
        srt = np.empty(nd, dtype=np.int64)
        cnt = 0
        b0 = z * py * px
        for d in range(nd):
            kmax = reach - 1 if dirs[d, 2] == 0 else min(reach - 1, nz + 1)  # past the ends: unfilled
            _plane_distances(fl, ext + b0, offs[d], reach, kmax, fw)
            _plane_distances(fl, ext + b0, -offs[d], reach, kmax, bw)
            cd = codes[d]
            c = _CLASS[d]
            cm = cmin[c]
            first = d == _CLASS_START[c]
            for j in range(m):
                f = fw[j]
                t = f + bw[j]
                v = (t << shift | f) if t <= reach else invalid
                cd[j] = v
                cm[j] = v if first else min(cm[j], v)  # per class the shortest stick (its code)
        for y in range(ny):
            for x in range(nx):
                out[z, y, x] = volume[z, y, x]
            for x in range(nx):
                if filled[z, y, x]:
                    continue
                i = y * px + x
                base = (z * ny + y) * nx + x
                best = big
                d0, d1 = 0, nd
                for c in range(3):
                    mc = cmin[c, i]
                    if mc != invalid:
                        t1 = (mc >> shift) + 1
                        sc = t1 * t1 * (c + 1)
                        if sc < best:  # classes never tie (sqrt 2, sqrt 3 are irrational)
                            best = sc
                            d0, d1 = _CLASS_START[c], _CLASS_START[c + 1]
                if best == big:
                    continue
                kth = best
                if sticks > 1:  # the sticks-th smallest score, ties included (IGSIO takes whole tie groups)
                    for d in range(nd):
                        c = codes[d, i]
                        t1 = (c >> shift) + 1
                        score[d] = big if c == invalid else t1 * t1 * sq[d]
                        srt[d] = score[d]
                    srt.sort()
                    kth = srt[min(sticks, nd) - 1]
                    d0, d1 = 0, nd
                num = 0.0
                den = 0.0
                for d in range(d0, d1):
                    c = codes[d, i]
                    if c == invalid:
                        continue
                    t = c >> shift
                    if (t + 1) * (t + 1) * sq[d] > kth:
                        continue
                    f = c & mask
                    r = t - f
                    o = dirs[d, 0] + dirs[d, 1] * nx + dirs[d, 2] * nx * ny  # both ends are in the volume
                    fv = np.float64(vf[base + f * o])
                    rv = np.float64(vf[base - r * o])
                    w = w_table[d, t]
                    # the float64 operations (and their order) of holes._interpolate
                    num += (rv * f + fv * (r + 1)) * w / (t + 1)
                    den += w
                res = num / den
                if truncate:
                    res = math.trunc(res)
                out[z, y, x] = np.float32(res)
                cnt += 1
        counts[z] = cnt
    return out, counts.sum()


def fill_sticks(volume: np.ndarray, filled: np.ndarray, length: int = 9, sticks: int = 1,
                truncate: bool = False) -> tuple[np.ndarray, int]:
    """IGSIO's stick hole filling (as :func:`.holes.fill_sticks`, bit for bit) with numba kernels.

    ``volume`` ``[nz, ny, nx]`` float32, ``filled`` bool of the same shape. For each hole and each of 13
    directions, the nearest filled voxels forwards and backwards make a stick of at most ``length`` voxels;
    the ``sticks`` shortest (ties included) are interpolated and averaged, weighted by 1 / length.
    ``truncate`` casts like IGSIO's integer output. Returns the filled volume and the number of voxels filled.
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    filled = np.ascontiguousarray(filled, dtype=np.bool_)
    reach = int(length) - 1
    steps = reach - 1
    if steps < 1 or volume.size == 0:
        return volume.copy(), 0
    nz, ny, nx = volume.shape
    pad = steps
    px, py = nx + pad, ny + pad
    offs = np.array([dx + dy * px + dz * px * py for dx, dy, dz in STICKS], dtype=np.int64)
    # reads reach at most reach - 1 steps, and past the first or last plane only by one plane
    ext = max(min(reach - 1, nz + 1) * int(np.abs(offs).max()), (reach - 1) * (px + 1)) + 1
    fl = _pad_filled(filled, pad, ext)
    if reach <= 15:
        cdt, shift = np.uint8, 4
    elif reach <= 255:
        cdt, shift = np.uint16, 8
    else:
        cdt, shift = np.int32, 16
    invalid = int(np.iinfo(cdt).max)
    w_table = stick_weights(reach)
    out, count = _fill(volume, filled, fl, ext, pad, reach, shift, invalid, int(sticks), _OFFSETS3, offs, _SQ, w_table,
                       bool(truncate), np.zeros(1, dtype=cdt))
    return out, int(count)
