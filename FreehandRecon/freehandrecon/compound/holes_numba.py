"""Stick hole filling compiled with numba: the same results as :func:`.holes.fill_sticks`, bit for bit.

Import this module only where numba is installed (it imports numba at the top). Two passes:

1. per stick direction (in parallel over the 13 directions), the steps to the nearest filled voxel forwards
   and backwards by a running recurrence over the flat, padded volume (the padding of :mod:`.holes`: a line
   leaving the volume sideways runs through unfilled padding, one leaving through the first or last plane
   past the array's ends), packed per voxel as ``steps between the ends << shift | forward steps``;
2. per hole (in parallel over z-planes), the shortest sticks (ties included) from those 13 codes,
   interpolated and averaged in IGSIO's direction order and float64 arithmetic.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# IGSIO's 13 stick directions (dx, dy, dz), as holes.STICKS (that module needs torch): axes, face and space
# diagonals; each is also searched backwards. Their order is the summation order.
STICKS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, -1, 0), (1, 0, -1), (0, 1, -1),
          (1, 1, 1), (-1, 1, 1), (1, -1, 1), (-1, -1, 1))
_OFFSETS3 = np.array(STICKS, dtype=np.int64)  # (dx, dy, dz) per direction
_SQ = np.array([dx * dx + dy * dy + dz * dz for dx, dy, dz in STICKS], dtype=np.int64)
_KLOOP = 32  # offsets shorter than this use the k-loop (the recurrence would not vectorise)
_BLOCK = 8192  # voxels per block of the k-loop (stays in L1)


@numba.njit(cache=True, nogil=True)
def _distance(fl: np.ndarray, out: np.ndarray, off: int, cap: int) -> None:
    """``out[i]``: steps ``k >= 1`` to the first ``fl[i + k * off]`` set, ``cap`` if none below ``cap``
    (reads past the array's ends count as unset)."""
    n = fl.size
    a = abs(off)
    if a < _KLOOP:
        for b0 in range(0, n, _BLOCK):
            b1 = min(b0 + _BLOCK, n)
            for i in range(b0, b1):
                out[i] = cap
            for k in range(cap - 1, 0, -1):
                s = k * off
                lo = max(b0, -s)
                hi = min(b1, n - s)
                for i in range(lo, hi):
                    if fl[i + s]:
                        out[i] = k
        return
    if off > 0:  # out[i] depends on out[i + off]: blocks of ``off`` voxels from the top down
        for i in range(max(n - off, 0), n):
            out[i] = cap
        e = n - off
        while e > 0:
            s0 = max(e - off, 0)
            for i in range(s0, e):
                v = out[i + off] + 1
                out[i] = 1 if fl[i + off] else min(v, cap)
            e = s0
    else:
        for i in range(0, min(a, n)):
            out[i] = cap
        s0 = a
        while s0 < n:
            e = min(s0 + a, n)
            for i in range(s0, e):
                v = out[i - a] + 1
                out[i] = 1 if fl[i - a] else min(v, cap)
            s0 = e


@numba.njit(cache=True, nogil=True)
def _codes_one(fl: np.ndarray, code: np.ndarray, scratch: np.ndarray, off: int, reach: int, shift: int,
               invalid: int) -> None:
    """``code[i]``: ``(fwd + bwd) << shift | fwd`` where the stick through ``i`` along ``off`` is at most
    ``reach`` steps long, else ``invalid`` (``code`` first holds the backward steps)."""
    _distance(fl, code, -off, reach)
    _distance(fl, scratch, off, reach)
    for i in range(fl.size):
        f = scratch[i]
        t = f + code[i]
        code[i] = (t << shift | f) if t <= reach else invalid


@numba.njit(cache=True, parallel=True)
def _codes(fl: np.ndarray, codes: np.ndarray, offs: np.ndarray, reach: int, shift: int, invalid: int) -> None:
    """:func:`_codes_one` for every direction, in parallel."""
    for d in numba.prange(offs.size):
        scratch = np.empty(fl.size, dtype=codes.dtype)
        _codes_one(fl, codes[d], scratch, offs[d], reach, shift, invalid)


@numba.njit(cache=True, parallel=True)
def _pad_filled(filled: np.ndarray, pad: int) -> np.ndarray:
    """``filled`` as uint8 ``[nz, ny + pad, nx + pad]`` flat, padding unfilled."""
    nz, ny, nx = filled.shape
    py, px = ny + pad, nx + pad
    out = np.zeros(nz * py * px, dtype=np.uint8)
    for z in numba.prange(nz):
        for y in range(ny):
            b = (z * py + y) * px
            for x in range(nx):
                out[b + x] = filled[z, y, x]
    return out


@numba.njit(cache=True, parallel=True)
def _fill(volume: np.ndarray, filled: np.ndarray, codes: np.ndarray, pad: int, reach: int, shift: int,
          invalid: int, sticks: int, dirs: np.ndarray, sq: np.ndarray, w_table: np.ndarray,
          truncate: bool) -> tuple[np.ndarray, int]:
    """The filled volume and count from the per-direction ``codes`` (see :func:`_codes_one`)."""
    nz, ny, nx = volume.shape
    py, px = ny + pad, nx + pad
    nd = sq.size
    mask = (1 << shift) - 1
    out = np.empty_like(volume)
    counts = np.zeros(nz, dtype=np.int64)
    big = np.iinfo(np.int64).max
    for z in numba.prange(nz):
        score = np.empty(nd, dtype=np.int64)
        srt = np.empty(nd, dtype=np.int64)
        cnt = 0
        for y in range(ny):
            b = (z * py + y) * px
            for x in range(nx):
                v = volume[z, y, x]
                out[z, y, x] = v
                if filled[z, y, x]:
                    continue
                i = b + x
                best = big
                for d in range(nd):
                    c = codes[d, i]
                    if c == invalid:
                        score[d] = big
                    else:
                        t1 = (c >> shift) + 1
                        score[d] = t1 * t1 * sq[d]
                        if score[d] < best:
                            best = score[d]
                if best == big:
                    continue
                kth = best
                if sticks > 1:  # the sticks-th smallest score, ties included (IGSIO takes whole tie groups)
                    for d in range(nd):
                        srt[d] = score[d]
                    srt.sort()
                    kth = srt[min(sticks, nd) - 1]
                num = 0.0
                den = 0.0
                for d in range(nd):
                    if score[d] > kth or score[d] == big:
                        continue
                    c = codes[d, i]
                    t = c >> shift
                    f = c & mask
                    r = t - f
                    dx, dy, dz = dirs[d, 0], dirs[d, 1], dirs[d, 2]
                    fv = np.float64(volume[z + f * dz, y + f * dy, x + f * dx])
                    rv = np.float64(volume[z - r * dz, y - r * dy, x - r * dx])
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
    fl = _pad_filled(filled, pad)
    n = fl.size
    if reach <= 15:
        cdt, shift = np.uint8, 4
    elif reach <= 255:
        cdt, shift = np.uint16, 8
    else:
        cdt, shift = np.int32, 16
    invalid = int(np.iinfo(cdt).max)
    offs = np.array([dx + dy * px + dz * px * py for dx, dy, dz in STICKS], dtype=np.int64)
    nd = offs.size
    codes = np.empty((nd, n), dtype=cdt)
    _codes(fl, codes, offs, reach, shift, invalid)
    lens = np.arange(1, reach + 2, dtype=np.float64)
    w_table = 1.0 / (lens[None, :] * np.sqrt(_SQ.astype(np.float64))[:, None])
    out, count = _fill(volume, filled, codes, pad, reach, shift, invalid, int(sticks), _OFFSETS3, _SQ, w_table,
                       bool(truncate))
    return out, int(count)
