"""Numba compounding engine: compiled kernels, deterministic on any number of threads, incremental.

Same 14-bit fixed-point pixel positions and validity rules as the numpy and torch engines
(:mod:`.fixedpoint`), the same float32 trilinear weights, and IGSIO's integer running mean for
``plus_arithmetic`` (one compiled pass in insertion order, not a Python loop per insertion depth).

Determinism: the voxels are split into contiguous ranges, one per thread (``bounds``). Every thread walks
all the frames' pixels in sweep order (frame, row, column, and for linear the 8 corners in order) and
applies only the samples that land in its own range, so each voxel receives its additions in sweep order
whatever the number of threads or the way the frames are split into calls: float sums, maxima, the latest
pixel and the PLUS running mean are identical to a one-thread run. (The float means add a run of
consecutive pixels of a row on the same voxel, summed in registers, as one term: runs never cross a row,
so this too is the same for every split.) A row whose voxel span (its voxel coordinates are affine along
the row, so their extremes are at its ends) misses a thread's range is skipped by that thread without
touching its pixels, so the duplicated walking is cheap. Each row's columns inside the grid are computed
once (an interval per axis), so pixels carry no bounds checks. The ranges are chosen from a sample of the
pixels' voxels so the threads get similar work (they only affect the speed).

Nothing of the size of the sweep is allocated: the kernels read the frames in place (any real dtype) and
write straight into the accumulators (float32: value and weight; PLUS mean on float frames: float64 values).
"""

from __future__ import annotations

import copy

import numba
import numpy as np
from numba import njit, prange

from .fixedpoint import FRAC_BITS, HALF, ONE
from .options import CompoundOptions

MEAN, MAX, LATEST, PLUS = 0, 1, 2, 3
MODE_CODES = {"mean": MEAN, "importance": MEAN, "max": MAX, "latest": LATEST}
MASK = ONE - 1
F_INV_ONE = np.float32(1.0 / ONE)
F_ONE = np.float32(1.0)
F_ZERO = np.float32(0.0)
F_MIN_WEIGHT = np.float32(0.125)  # linear max/latest only touch corners with trilinear weight >= 1/8 (IGSIO)
F_255 = np.float32(255.0)


@njit(cache=True)
def _plus_nearest(acc_v, acc_w, i, w, v, integer):
    """IGSIO's nearest-neighbour running mean (weights in 1/256 units, acc saturating at 65535)."""
    a = np.float64(acc_w[i])
    o = np.float64(acc_v[i])
    if a <= 65279.0:
        na = a + w
        m = (v * w + o * a) / na
        acc_w[i] = min(na, 65535.0)
    else:
        m = v / 256.0 + o * (255.0 / 256.0)
    if integer:
        m = np.trunc(m)
    acc_v[i] = m


@njit(cache=True, inline="always")
def _plus_linear(acc_v, acc_w, i, lo, hi, w, v, integer):
    """IGSIO's trilinear running mean for one corner (raw fixed-point weight ``w``)."""
    if w <= 0.0 or i < lo or i >= hi:
        return
    r = np.float64(acc_w[i]) * 64.0  # acc / 256 as raw fixed point
    a = w + r
    q = np.rint((w * v + r * np.float64(acc_v[i])) / a * 16384.0)
    if integer:
        acc_v[i] = np.floor((q + 8192.0) / 16384.0)
    else:
        acc_v[i] = q / 16384.0
    a256 = a * 256.0
    if a256 < 65535.0 * 16384.0:
        acc_w[i] = np.floor((a256 + 8192.0) / 16384.0)
    else:
        acc_w[i] = 65535.0


@njit(cache=True, inline="always")
def _corner(mode, acc_v, acc_w, i, lo, hi, w, m, use_imp, v, th):
    """One trilinear corner of a float mode: weight ``w`` (times importance ``m``); max/latest only let corners
    with ``w >= th`` win."""
    if w == 0.0 or i < lo or i >= hi:
        return
    wt = w * m if use_imp else w
    acc_w[i] += wt
    if mode == MEAN:
        acc_v[i] += wt * v
    elif w >= th:
        if mode == MAX:
            if v > acc_v[i]:
                acc_v[i] = v
        else:
            acc_v[i] = v


@njit(cache=True, inline="always")
def _flush(acc_v, acc_w, i, lo, hi, t, s):
    """Add a run's summed weight ``t`` and weighted values ``s`` to corner voxel ``i`` (a corner no pixel of the
    run weighs may lie past the grid's edge: skipped)."""
    if t != 0.0 and i >= lo and i < hi:
        acc_w[i] += t
        acc_v[i] += s


@njit(cache=True, inline="always")
def _flush_corners(acc_v, acc_w, cur, lo, hi, nx, nxny, t0, t1, t2, t3, t4, t5, t6, t7, s0, s1, s2, s3, s4, s5, s6,
                   s7):
    """:func:`_flush` of a run's 8 corner sums, base voxel ``cur`` (corner order 000, 100, 010, 110, 001, ...)."""
    _flush(acc_v, acc_w, cur, lo, hi, t0, s0)
    _flush(acc_v, acc_w, cur + 1, lo, hi, t1, s1)
    _flush(acc_v, acc_w, cur + nx, lo, hi, t2, s2)
    _flush(acc_v, acc_w, cur + nx + 1, lo, hi, t3, s3)
    _flush(acc_v, acc_w, cur + nxny, lo, hi, t4, s4)
    _flush(acc_v, acc_w, cur + nxny + 1, lo, hi, t5, s5)
    _flush(acc_v, acc_w, cur + nxny + nx, lo, hi, t6, s6)
    _flush(acc_v, acc_w, cur + nxny + nx + 1, lo, hi, t7, s7)


@njit(cache=True, inline="always")
def _trilinear(fx, fy, fz):
    """float32 trilinear weights of the 8 corners from raw fixed-point fractions (corner order as
    :func:`_flush_corners`)."""
    gx1, gy1, gz1 = np.float32(fx) * F_INV_ONE, np.float32(fy) * F_INV_ONE, np.float32(fz) * F_INV_ONE
    gx0, gy0, gz0 = F_ONE - gx1, F_ONE - gy1, F_ONE - gz1
    yz00, yz01, yz10, yz11 = gz0 * gy0, gz0 * gy1, gz1 * gy0, gz1 * gy1  # [z-side][y-side]
    return (yz00 * gx0, yz00 * gx1, yz01 * gx0, yz01 * gx1, yz10 * gx0, yz10 * gx1, yz11 * gx0, yz11 * gx1)


@njit(cache=True, inline="always")
def _pw(k, m, use_imp):
    """PLUS corner weight: the raw fixed-point weight, times the importance rounded as the torch engine does."""
    if use_imp:
        return np.rint(np.float64(np.float32(k) * m))
    return np.float64(k)


@njit(cache=True, inline="always")
def _fm(p, q):
    """IGSIO fixed::fast_multiply of two raw 14-bit values."""
    return (p * q + HALF) >> FRAC_BITS


@njit(cache=True, inline="always")
def _clip_columns(s, a, top, c0, c1):
    """Columns ``c`` in ``[c0, c1]`` with ``0 <= s + a c <= top`` (integers; ``c0 > c1`` when none)."""
    if a == 0:
        if s < 0 or s > top:
            return 1, 0
        return c0, c1
    if a > 0:  # -s / a <= c <= (top - s) / a
        lo = -(s // a)
        hi = (top - s) // a
    else:  # (s - top) / -a <= c <= s / -a
        lo = -((top - s) // -a)
        hi = s // -a
    return max(c0, lo), min(c1, hi)


@njit(cache=True, inline="always")
def _row_columns(sx, sy, sz, ax, ay, az, tx, ty, tz, wc):
    """The columns of a row whose raw coordinates lie within ``[0, t]`` on every axis: for nearest (``t`` =
    n ONE - 1) the pixels in the grid, for linear (``t`` = (n - 1) ONE) those whose 8 corners are."""
    c0, c1 = _clip_columns(sx, ax, tx, 0, wc - 1)
    c0, c1 = _clip_columns(sy, ay, ty, c0, c1)
    return _clip_columns(sz, az, tz, c0, c1)


@njit(cache=True, inline="always")
def _flat_span(sx, sy, sz, ax, ay, az, c0, c1, nx, nxny):
    """Lowest and highest flat voxel index (floor of the raw coordinates) of the columns ``c0..c1`` of a row:
    each axis is monotonic along the row, so its extremes are at the ends."""
    x0, x1 = (sx + ax * c0) >> FRAC_BITS, (sx + ax * c1) >> FRAC_BITS
    y0, y1 = (sy + ay * c0) >> FRAC_BITS, (sy + ay * c1) >> FRAC_BITS
    z0, z1 = (sz + az * c0) >> FRAC_BITS, (sz + az * c1) >> FRAC_BITS
    return (min(z0, z1) * nxny + min(y0, y1) * nx + min(x0, x1),
            max(z0, z1) * nxny + max(y0, y1) * nx + max(x0, x1))


@njit(cache=True, parallel=True, nogil=True)
def paste_nearest(frames, fixed, x0, y0, hc, wc, mask, use_mask, imp, use_imp, thr, use_thr, dims, mode, integer,
                  acc_v, acc_w, bounds, landed):
    """Paste ``frames`` [n, H, W] (pixel->voxel ``fixed`` [n, 3, 3] raw columns) into the flat accumulators,
    nearest neighbour; ``landed[t]``: pixels thread ``t`` applied."""
    nx, ny, nz = dims[0], dims[1], dims[2]
    nxny = nx * ny
    tx, ty, tz = nx * ONE - 1, ny * ONE - 1, nz * ONE - 1
    n = frames.shape[0]
    plain = mode == MEAN and not use_mask and not use_thr and not use_imp
    for t in prange(bounds.shape[0] - 1):
        lo, hi = bounds[t], bounds[t + 1]
        count = 0
        for f in range(n):
            ax, bx, ox = fixed[f, 0, 0], fixed[f, 0, 1], fixed[f, 0, 2] + HALF
            ay, by, oy = fixed[f, 1, 0], fixed[f, 1, 1], fixed[f, 1, 2] + HALF
            az, bz, oz = fixed[f, 2, 0], fixed[f, 2, 1], fixed[f, 2, 2] + HALF
            for r in range(hc):
                j = y0 + r
                sx, sy, sz = ox + bx * j + ax * x0, oy + by * j + ay * x0, oz + bz * j + az * x0
                c0, c1 = _row_columns(sx, sy, sz, ax, ay, az, tx, ty, tz, wc)
                if c0 > c1:
                    continue
                fmin, fmax = _flat_span(sx, sy, sz, ax, ay, az, c0, c1, nx, nxny)
                if fmax < lo or fmin >= hi:
                    continue
                check = fmin < lo or fmax >= hi  # the row straddles another thread's voxels
                rx, ry, rz = sx + ax * c0, sy + ay * c0, sz + az * c0
                cur, sv, sw = -1, F_ZERO, F_ZERO  # mean: the run of pixels on voxel cur, summed
                if plain and not check:
                    # the common case without per-pixel tests: the same sums in the same order, a tighter loop
                    row = frames[f, j]
                    for c in range(x0 + c0, x0 + c1 + 1):
                        i = (rz >> FRAC_BITS) * nxny + (ry >> FRAC_BITS) * nx + (rx >> FRAC_BITS)
                        rx += ax
                        ry += ay
                        rz += az
                        if i != cur:
                            if cur >= 0:
                                acc_v[cur] += sv
                                acc_w[cur] += sw
                            cur, sv, sw = i, F_ZERO, F_ZERO
                        sv += np.float32(row[c])
                        sw += F_ONE
                    acc_v[cur] += sv
                    acc_w[cur] += sw
                    count += c1 - c0 + 1
                    continue
                for c in range(c0, c1 + 1):
                    i = (rz >> FRAC_BITS) * nxny + (ry >> FRAC_BITS) * nx + (rx >> FRAC_BITS)
                    rx += ax
                    ry += ay
                    rz += az
                    if check and (i < lo or i >= hi):
                        continue
                    if use_mask and not mask[r, c]:
                        continue
                    v = np.float32(frames[f, j, x0 + c])
                    if use_thr and not v >= thr:
                        continue
                    count += 1
                    if mode == MEAN:
                        if i != cur:
                            if cur >= 0:
                                acc_v[cur] += sv
                                acc_w[cur] += sw
                            cur, sv, sw = i, F_ZERO, F_ZERO
                        if use_imp:
                            wt = imp[r, c]
                            sv += v * wt
                            sw += wt
                        else:
                            sv += v
                            sw += F_ONE
                    elif mode == PLUS:
                        w = np.float64(np.rint(imp[r, c] * F_255)) if use_imp else 256.0
                        if w > 0.0:
                            _plus_nearest(acc_v, acc_w, i, w, np.float64(v), integer)
                    else:
                        acc_w[i] += imp[r, c] if use_imp else F_ONE
                        if mode == MAX:
                            if v > acc_v[i]:
                                acc_v[i] = v
                        else:
                            acc_v[i] = v
                if cur >= 0:
                    acc_v[cur] += sv
                    acc_w[cur] += sw
        landed[t] = count


@njit(cache=True, parallel=True, nogil=True)
def paste_linear(frames, fixed, x0, y0, hc, wc, mask, use_mask, imp, use_imp, thr, use_thr, dims, mode, integer,
                 fixed_select, acc_v, acc_w, bounds, landed):
    """Trilinear version of :func:`paste_nearest`: a pixel is used only when all 8 corners are inside the grid
    (IGSIO's rule); ``fixed_select``: max/latest pick corners by IGSIO's fixed-point weight (PLUS arithmetic)."""
    nx, ny, nz = dims[0], dims[1], dims[2]
    nxny = nx * ny
    reach = nxny + nx + 1  # the farthest corner's flat offset
    tx, ty, tz = (nx - 1) * ONE, (ny - 1) * ONE, (nz - 1) * ONE
    n = frames.shape[0]
    plain = mode == MEAN and not use_mask and not use_thr and not use_imp
    for t in prange(bounds.shape[0] - 1):
        lo, hi = bounds[t], bounds[t + 1]
        count = 0
        for f in range(n):
            ax, bx, ox = fixed[f, 0, 0], fixed[f, 0, 1], fixed[f, 0, 2]
            ay, by, oy = fixed[f, 1, 0], fixed[f, 1, 1], fixed[f, 1, 2]
            az, bz, oz = fixed[f, 2, 0], fixed[f, 2, 1], fixed[f, 2, 2]
            for r in range(hc):
                j = y0 + r
                sx, sy, sz = ox + bx * j + ax * x0, oy + by * j + ay * x0, oz + bz * j + az * x0
                c0, c1 = _row_columns(sx, sy, sz, ax, ay, az, tx, ty, tz, wc)
                if c0 > c1:
                    continue
                fmin, fmax = _flat_span(sx, sy, sz, ax, ay, az, c0, c1, nx, nxny)
                if fmax + reach < lo or fmin >= hi:
                    continue
                # check: the row's corners straddle another thread's voxels (then each corner is checked)
                clo, chi = (-1, nxny * nz + reach + 1) if fmin >= lo and fmax + reach < hi else (lo, hi)
                rx, ry, rz = sx + ax * c0, sy + ay * c0, sz + az * c0
                # mean: the run of pixels with the same base voxel cur, summed per corner (weights t, values s)
                cur = -1
                t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = F_ZERO
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F_ZERO
                if plain and clo < 0:
                    # the common case without per-pixel tests: the same sums in the same order, a tighter loop
                    row = frames[f, j]
                    for c in range(x0 + c0, x0 + c1 + 1):
                        fx, fy, fz = rx & MASK, ry & MASK, rz & MASK
                        i = (rz >> FRAC_BITS) * nxny + (ry >> FRAC_BITS) * nx + (rx >> FRAC_BITS)
                        rx += ax
                        ry += ay
                        rz += az
                        v = np.float32(row[c])
                        w0, w1, w2, w3, w4, w5, w6, w7 = _trilinear(fx, fy, fz)
                        if i != cur:
                            if cur >= 0:
                                _flush_corners(acc_v, acc_w, cur, clo, chi, nx, nxny, t0, t1, t2, t3, t4, t5, t6, t7,
                                               s0, s1, s2, s3, s4, s5, s6, s7)
                            cur = i
                            t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = F_ZERO
                            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F_ZERO
                        t0 += w0
                        t1 += w1
                        t2 += w2
                        t3 += w3
                        t4 += w4
                        t5 += w5
                        t6 += w6
                        t7 += w7
                        s0 += w0 * v
                        s1 += w1 * v
                        s2 += w2 * v
                        s3 += w3 * v
                        s4 += w4 * v
                        s5 += w5 * v
                        s6 += w6 * v
                        s7 += w7 * v
                    count += c1 - c0 + 1  # the row's corners are all in [lo, hi), so are its base voxels
                    _flush_corners(acc_v, acc_w, cur, clo, chi, nx, nxny, t0, t1, t2, t3, t4, t5, t6, t7,
                                   s0, s1, s2, s3, s4, s5, s6, s7)
                    continue
                for c in range(c0, c1 + 1):
                    fx, fy, fz = rx & MASK, ry & MASK, rz & MASK
                    i = (rz >> FRAC_BITS) * nxny + (ry >> FRAC_BITS) * nx + (rx >> FRAC_BITS)
                    rx += ax
                    ry += ay
                    rz += az
                    if i + reach < clo or i >= chi:
                        continue
                    if use_mask and not mask[r, c]:
                        continue
                    v = np.float32(frames[f, j, x0 + c])
                    if use_thr and not v >= thr:
                        continue
                    if i >= lo and i < hi:
                        count += 1
                    if mode == PLUS or fixed_select:
                        qx, qy, qz = ONE - fx, ONE - fy, ONE - fz
                        yz0, yz1, yz2, yz3 = _fm(qy, qz), _fm(qy, fz), _fm(fy, qz), _fm(fy, fz)
                        k0, k1, k2, k3 = _fm(qx, yz0), _fm(fx, yz0), _fm(qx, yz2), _fm(fx, yz2)
                        k4, k5, k6, k7 = _fm(qx, yz1), _fm(fx, yz1), _fm(qx, yz3), _fm(fx, yz3)
                    else:
                        k0 = k1 = k2 = k3 = k4 = k5 = k6 = k7 = 0
                    if mode == PLUS:
                        vv = np.float64(v)
                        m = imp[r, c] if use_imp else F_ONE
                        _plus_linear(acc_v, acc_w, i, clo, chi, _pw(k0, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + 1, clo, chi, _pw(k1, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + nx, clo, chi, _pw(k2, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + nx + 1, clo, chi, _pw(k3, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + nxny, clo, chi, _pw(k4, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + nxny + 1, clo, chi, _pw(k5, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + nxny + nx, clo, chi, _pw(k6, m, use_imp), vv, integer)
                        _plus_linear(acc_v, acc_w, i + reach, clo, chi, _pw(k7, m, use_imp), vv, integer)
                        continue
                    if fixed_select:  # PLUS max/latest: IGSIO's fixed-point weights, also for the coverage
                        w0, w1, w2, w3 = np.float32(k0) * F_INV_ONE, np.float32(k1) * F_INV_ONE, \
                            np.float32(k2) * F_INV_ONE, np.float32(k3) * F_INV_ONE
                        w4, w5, w6, w7 = np.float32(k4) * F_INV_ONE, np.float32(k5) * F_INV_ONE, \
                            np.float32(k6) * F_INV_ONE, np.float32(k7) * F_INV_ONE
                        th = F_MIN_WEIGHT
                    else:
                        w0, w1, w2, w3, w4, w5, w6, w7 = _trilinear(fx, fy, fz)
                        th = F_MIN_WEIGHT
                    m = imp[r, c] if use_imp else F_ONE
                    if mode == MEAN:
                        if i != cur:
                            if cur >= 0:
                                _flush_corners(acc_v, acc_w, cur, clo, chi, nx, nxny, t0, t1, t2, t3, t4, t5, t6, t7,
                                               s0, s1, s2, s3, s4, s5, s6, s7)
                            cur = i
                            t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = F_ZERO
                            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F_ZERO
                        if use_imp:
                            w0, w1, w2, w3, w4, w5, w6, w7 = w0 * m, w1 * m, w2 * m, w3 * m, w4 * m, w5 * m, w6 * m, w7 * m
                        t0 += w0
                        t1 += w1
                        t2 += w2
                        t3 += w3
                        t4 += w4
                        t5 += w5
                        t6 += w6
                        t7 += w7
                        s0 += w0 * v
                        s1 += w1 * v
                        s2 += w2 * v
                        s3 += w3 * v
                        s4 += w4 * v
                        s5 += w5 * v
                        s6 += w6 * v
                        s7 += w7 * v
                        continue
                    _corner(mode, acc_v, acc_w, i, clo, chi, w0, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + 1, clo, chi, w1, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + nx, clo, chi, w2, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + nx + 1, clo, chi, w3, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + nxny, clo, chi, w4, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + nxny + 1, clo, chi, w5, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + nxny + nx, clo, chi, w6, m, use_imp, v, th)
                    _corner(mode, acc_v, acc_w, i + reach, clo, chi, w7, m, use_imp, v, th)
                if cur >= 0:
                    _flush_corners(acc_v, acc_w, cur, clo, chi, nx, nxny, t0, t1, t2, t3, t4, t5, t6, t7,
                                   s0, s1, s2, s3, s4, s5, s6, s7)
        landed[t] = count


@njit(cache=True, parallel=True, nogil=True)
def count_selected(frames, x0, y0, hc, wc, mask, use_mask, thr):
    """Pixels that pass the mask and the threshold, whether or not they land in the grid (per frame)."""
    n = frames.shape[0]
    out = np.zeros(n, dtype=np.int64)
    for f in prange(n):
        k = 0
        for r in range(hc):
            for c in range(wc):
                if (not use_mask or mask[r, c]) and np.float32(frames[f, y0 + r, x0 + c]) >= thr:
                    k += 1
        out[f] = k
    return out


@njit(cache=True, nogil=True)
def sample_voxels(fixed, x0, y0, hc, wc, dims, stride):
    """Flat voxel index (nearest) of every ``stride``-th row and column of each frame, -1 outside the grid."""
    nx, ny, nz = dims[0], dims[1], dims[2]
    rows = (hc + stride - 1) // stride
    cols = (wc + stride - 1) // stride
    out = np.empty(fixed.shape[0] * rows * cols, dtype=np.int64)
    k = 0
    for f in range(fixed.shape[0]):
        for r in range(0, hc, stride):
            for c in range(0, wc, stride):
                p = (x0 + c, y0 + r)
                ix = (fixed[f, 0, 0] * p[0] + fixed[f, 0, 1] * p[1] + fixed[f, 0, 2] + HALF) >> FRAC_BITS
                iy = (fixed[f, 1, 0] * p[0] + fixed[f, 1, 1] * p[1] + fixed[f, 1, 2] + HALF) >> FRAC_BITS
                iz = (fixed[f, 2, 0] * p[0] + fixed[f, 2, 1] * p[1] + fixed[f, 2, 2] + HALF) >> FRAC_BITS
                inside = 0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz
                out[k] = iz * nx * ny + iy * nx + ix if inside else -1
                k += 1
    return out


@njit(cache=True, parallel=True, nogil=True)
def mean_volume(acc_v, acc_w, out):
    """``out = acc_v / acc_w`` where ``acc_w > 0``, else 0 (elementwise, float32)."""
    for i in prange(out.shape[0]):
        w = acc_w[i]
        out[i] = acc_v[i] / w if w > 0 else np.float32(0.0)


@njit(cache=True, nogil=True)
def mean_volume_serial(acc_v, acc_w, out):
    """:func:`mean_volume` on the calling thread only: for a copy finished in a background thread while the
    pasting kernels run (two parallel regions at once oversubscribe the cores, and OpenMP's waiting threads spin)."""
    for i in range(out.shape[0]):
        w = acc_w[i]
        out[i] = acc_v[i] / w if w > 0 else np.float32(0.0)


@njit(cache=True, nogil=True)
def clear_neginf(a):
    """Untouched max voxels (-inf) to 0, in place."""
    for i in range(a.shape[0]):
        if a[i] == -np.inf:
            a[i] = 0.0


@njit(cache=True, nogil=True)
def count_positive(a):
    """Entries above 0 (no temporary mask)."""
    k = 0
    for i in range(a.shape[0]):
        if a[i] > 0:
            k += 1
    return k


def thread_bounds(fixed: np.ndarray, rect: tuple[int, int, int, int], dims: tuple[int, int, int],
                  threads: int) -> np.ndarray:
    """Voxel range boundaries ``[threads + 1]`` (contiguous flat ranges covering the grid) that share the
    sampled pixels evenly between the threads. They change only the speed, never the result."""
    nvox = int(dims[0]) * int(dims[1]) * int(dims[2])
    if threads <= 1:
        return np.array([0, nvox], dtype=np.int64)
    x0, y0, x1, y1 = rect
    hc, wc = y1 - y0 + 1, x1 - x0 + 1
    stride = max(1, int(np.sqrt(hc * wc * fixed.shape[0] / 8192.0)))
    s = sample_voxels(fixed, x0, y0, hc, wc, np.asarray(dims, dtype=np.int64), stride)
    s = np.sort(s[s >= 0])
    if s.size == 0:
        return np.linspace(0, nvox, threads + 1).astype(np.int64)
    cuts = s[(np.arange(1, threads) * s.size) // threads]
    return np.concatenate([[0], cuts, [nvox]]).astype(np.int64)


class NumbaAccumulators:
    """Persistent flat accumulators of one compounding strategy on ``dims``, pasted into by the kernels.

    ``acc_v``: summed value x weight (mean), maximum (max, from -inf), last value (latest), or the PLUS running
    mean; ``acc_w``: summed weights (coverage), or IGSIO's accumulation buffer (PLUS mean, 1/256 units)."""

    def __init__(self, dims: tuple[int, int, int], options: CompoundOptions, integer_frames: bool) -> None:
        self.dims = tuple(int(d) for d in dims)
        self.nearest = options.interpolation == "nearest"
        plus_mean = options.plus_arithmetic and options.compounding in ("mean", "importance")
        self.mode = PLUS if plus_mean else MODE_CODES[options.compounding]
        self.fixed_select = bool(options.plus_arithmetic) and not self.nearest and self.mode in (MAX, LATEST)
        self.integer = bool(integer_frames)
        nvox = self.nvox
        vdtype = np.float64 if self.mode == PLUS and not self.integer else np.float32
        self.acc_v = np.full(nvox, -np.inf if self.mode == MAX else 0.0, dtype=vdtype)
        self.acc_w = np.zeros(nvox, dtype=np.float32)
        self.serial = False

    @property
    def nvox(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    @property
    def fill_values(self) -> tuple[float, float]:
        """What an untouched voxel holds in (acc_v, acc_w)."""
        return (-np.inf if self.mode == MAX else 0.0), 0.0

    def add(self, frames: np.ndarray, fixed: np.ndarray, rect: tuple[int, int, int, int], mask: np.ndarray | None,
            importance: np.ndarray | None, threshold: float | None) -> int:
        """Paste ``frames`` ``[n, H, W]`` with raw fixed-point columns ``fixed`` ``[n, 3, 3]``; returns the
        selected pixels that landed in the grid."""
        x0, y0, x1, y1 = rect
        hc, wc = y1 - y0 + 1, x1 - x0 + 1
        threads = numba.get_num_threads()
        bounds = thread_bounds(fixed, rect, self.dims, threads)
        landed = np.zeros(bounds.size - 1, dtype=np.int64)
        use_mask = mask is not None
        m = mask if use_mask else _EMPTY_MASK
        use_imp = importance is not None
        imp = importance.astype(np.float32, copy=False) if use_imp else _EMPTY_IMP
        thr = np.float32(0.0 if threshold is None else threshold)
        dims = np.asarray(self.dims, dtype=np.int64)
        fixed = np.ascontiguousarray(fixed, dtype=np.int64)
        if self.nearest:
            paste_nearest(frames, fixed, x0, y0, hc, wc, m, use_mask, imp, use_imp, thr, threshold is not None, dims,
                          self.mode, self.integer, self.acc_v, self.acc_w, bounds, landed)
        else:
            paste_linear(frames, fixed, x0, y0, hc, wc, m, use_mask, imp, use_imp, thr, threshold is not None, dims,
                         self.mode, self.integer, self.fixed_select, self.acc_v, self.acc_w, bounds, landed)
        return int(landed.sum())

    def finish(self, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Flat volume and coverage ``[nvox]`` float32; ``copy=False`` may reuse (and change) the accumulators,
        after which they must not be pasted into again."""
        if self.mode == MEAN:
            volume = np.empty(self.nvox, dtype=np.float32)
            (mean_volume_serial if self.serial else mean_volume)(self.acc_v, self.acc_w, volume)
            return volume, (self.acc_w.copy() if copy else self.acc_w)
        if self.mode == PLUS:
            volume = self.acc_v.astype(np.float32, copy=copy)
            coverage = self.acc_w.copy() if copy else self.acc_w
            coverage /= np.float32(256.0)
            return volume, coverage
        volume = self.acc_v.copy() if copy else self.acc_v
        if self.mode == MAX:
            clear_neginf(volume)
        return volume, (self.acc_w.copy() if copy else self.acc_w)

    def copied(self) -> "NumbaAccumulators":
        """An independent copy (the accumulators' arrays copied)."""
        twin = copy.copy(self)
        twin.acc_v, twin.acc_w = self.acc_v.copy(), self.acc_w.copy()
        twin.serial = True  # finished beside the pasting thread: no parallel kernel
        return twin

    def embed(self, dims: tuple[int, int, int], offset: tuple[int, int, int]) -> None:
        """Move the accumulators into a larger grid ``dims`` whose voxel ``offset`` (i, j, k) is this grid's
        first voxel."""
        nx, ny, nz = self.dims
        i, j, k = (int(o) for o in offset)
        fv, fw = self.fill_values
        n = int(np.prod(dims))
        # zeros come from the OS as untouched pages: only the copied block is written now
        big_v = np.zeros(n, self.acc_v.dtype) if fv == 0 else np.full(n, fv, self.acc_v.dtype)
        big_w = np.zeros(n, self.acc_w.dtype) if fw == 0 else np.full(n, fw, self.acc_w.dtype)
        shape = (dims[2], dims[1], dims[0])
        big_v.reshape(shape)[k:k + nz, j:j + ny, i:i + nx] = self.acc_v.reshape(nz, ny, nx)
        big_w.reshape(shape)[k:k + nz, j:j + ny, i:i + nx] = self.acc_w.reshape(nz, ny, nx)
        self.acc_v, self.acc_w, self.dims = big_v, big_w, tuple(int(d) for d in dims)


_EMPTY_MASK = np.ones((1, 1), dtype=np.bool_)
_EMPTY_IMP = np.ones((1, 1), dtype=np.float32)


def count_pasted(frames: np.ndarray, rect: tuple[int, int, int, int], mask: np.ndarray | None,
                 threshold: float | None) -> int:
    """Pixels pasted (selected by the masks and the threshold), counted as the other engines do."""
    x0, y0, x1, y1 = rect
    hc, wc = y1 - y0 + 1, x1 - x0 + 1
    if threshold is None:
        return frames.shape[0] * (hc * wc if mask is None else int(np.count_nonzero(mask)))
    m = mask if mask is not None else _EMPTY_MASK
    return int(count_selected(frames, x0, y0, hc, wc, m, mask is not None, np.float32(threshold)).sum())


def fill_holes(volume: np.ndarray, coverage: np.ndarray, hf, truncate: bool) -> tuple[np.ndarray, int]:
    """Hole filling: stick with the compiled kernels of :mod:`.holes_numba`, normalized with the numpy box sums."""
    if hf.method == "stick":
        from .holes_numba import fill_sticks

        return fill_sticks(volume, coverage > 0, hf.size, hf.sticks, truncate=truncate)
    from . import numpy_engine

    return numpy_engine.fill_holes(volume, coverage, hf, truncate)
