"""Stick hole filling with numpy alone: IGSIO's rule, the same voxels as :mod:`.holes` (torch) and :mod:`.holes_numba`,
bit for bit.

A stock 3D Slicer has numpy but neither numba nor torch, and a PLUS config often asks for stick filling; this module
fills such holes there, and is what small jobs use where starting numba would cost more than it saves. The volume is
padded, as in :mod:`.holes`, with unfilled voxels after each row and rows after each plane, so a line leaving it
sideways runs through padding and one leaving through the first or last plane past the flat array's ends, which
count as unfilled. Per direction, the steps to the nearest filled voxel forwards and backwards come from pointer
doubling over the flat padded mask (a few whole-array passes), packed per voxel as
``steps between the ends << shift | forward steps``; then each hole's shortest sticks (ties included) are
interpolated and averaged in IGSIO's direction order and float64 arithmetic.
"""

from __future__ import annotations

import numpy as np

# IGSIO's 13 stick directions (dx, dy, dz): axes, face and space diagonals, grouped by squared length 1, 2, 3;
# each is also searched backwards. Their order is the summation order.
STICKS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, -1, 0), (1, 0, -1), (0, 1, -1),
          (1, 1, 1), (-1, 1, 1), (1, -1, 1), (-1, -1, 1))
SQUARED_LENGTHS = tuple(dx * dx + dy * dy + dz * dz for dx, dy, dz in STICKS)
CLASS_STARTS = (0, 3, 9, 13)  # first direction of each squared length, and the end


def stick_weights(reach: int) -> np.ndarray:
    """``[13, reach + 1]`` float64 stick weights 1 / (length in voxels * direction length), per (direction,
    steps between the ends)."""
    lens = np.arange(1, reach + 2, dtype=np.float64)
    return 1.0 / (lens[None, :] * np.sqrt(np.asarray(SQUARED_LENGTHS, dtype=np.float64))[:, None])


def _steps_to_filled(dist0: np.ndarray, off: int, steps: int, out: np.ndarray, tmp: np.ndarray) -> None:
    """``out[i] = min_k dist0[i + k * off] + k`` over ``0 <= k <= steps`` at least (pointer doubling); reads
    past the flat array's ends count as unfilled. ``dist0``: 0 at filled voxels, ``reach`` elsewhere."""
    n = dist0.size
    np.copyto(out, dist0)
    s = 1
    while s <= steps:  # after the pass with step s, k < 2 s is covered
        sh = abs(s * off)
        if sh < n:
            a, b = (slice(0, n - sh), slice(sh, n)) if off > 0 else (slice(sh, n), slice(0, n - sh))
            t = np.add(out[b], out.dtype.type(s), out=tmp[:n - sh])
            np.minimum(out[a], t, out=out[a])
        s *= 2


def _used_sticks(c: np.ndarray, reach: int, shift: int, sticks: int) -> np.ndarray:
    """``[13, M]`` bool: the sticks each hole uses, from its ``[13, M]`` codes (``tot > reach``: no stick): the
    ``sticks`` shortest (squared length ``(tot + 1)^2 * squared direction length``), ties included (IGSIO takes
    whole tie groups)."""
    t = c >> shift
    if sticks <= 1:
        # per class of equal direction length the shortest stick, then the shortest class (classes never tie:
        # sqrt 2 and sqrt 3 are irrational); tmin > reach: the class has none
        bounds = list(zip(CLASS_STARTS[:-1], CLASS_STARTS[1:]))
        tmin = [t[a:b].min(axis=0) for a, b in bounds]
        lens = np.arange(reach + 2, dtype=np.int64) + 1
        score = [np.where(lens <= reach + 1, lens * lens * (k + 1), np.iinfo(np.int64).max)[tm]
                 for k, tm in enumerate(tmin)]
        best = np.minimum(np.minimum(score[0], score[1]), score[2])
        used = np.empty(c.shape, dtype=bool)
        for k, (a, b) in enumerate(bounds):
            tk = np.where(score[k] == best, tmin[k], reach + 2).astype(t.dtype)  # t <= reach + 1: none match
            np.equal(t[a:b], tk, out=used[a:b])
        return used
    # squared lengths looked up per direction (no [13, M] int64 temporaries)
    sdt = np.int32 if 3 * (reach + 2) ** 2 < np.iinfo(np.int32).max else np.int64
    lens = np.arange(1, reach + 3, dtype=sdt)
    score = np.empty(c.shape, dtype=sdt)
    for d, q in enumerate(SQUARED_LENGTHS):
        np.take(np.where(lens <= reach + 1, lens * lens * q, np.iinfo(sdt).max).astype(sdt), t[d], out=score[d])
    k = min(sticks, len(STICKS)) - 1
    kth = np.partition(score, k, axis=0)[k]
    return (t <= reach) & (score <= kth)


def fill_sticks(volume: np.ndarray, filled: np.ndarray, length: int = 9, sticks: int = 1,
                truncate: bool = False) -> tuple[np.ndarray, int]:
    """IGSIO's stick hole filling with numpy: arguments, result and voxels as :func:`.holes_numba.fill_sticks`
    (and :func:`.holes.fill_sticks`), bit for bit."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    filled = np.asarray(filled, dtype=bool)
    reach = int(length) - 1
    steps = reach - 1  # both filled ends are >= 1 step away and together <= reach steps
    if steps < 1 or volume.size == 0:
        return volume.copy(), 0
    p = steps
    nz, ny, nx = volume.shape
    pz, py, px = nz, ny + p, nx + p
    inner = (slice(0, nz), slice(0, ny), slice(0, nx))
    # distances are <= reach plus what one doubling pass adds (< 2 reach); codes pack (min(tot, reach + 1), fwd)
    # with fwd <= reach at holes, so reach + 1 steps between the ends means no stick
    ddt = np.uint8 if 3 * reach < 255 else np.uint16 if 3 * reach < 65535 else np.int32
    shift = int(reach).bit_length()
    top = (reach + 1) << shift | reach
    cdt = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int64
    none = (reach + 1) << shift  # codes >= none: no stick
    dist0 = np.full((pz, py, px), reach, dtype=ddt)
    dist0[inner] = np.where(filled, 0, reach).astype(ddt)
    dist0 = dist0.reshape(-1)
    n = dist0.size
    offs = [dx + dy * px + dz * px * py for dx, dy, dz in STICKS]
    fwd, bwd, tmp = np.empty(n, ddt), np.empty(n, ddt), np.empty(n, ddt)
    codes = np.empty((len(STICKS), n), dtype=cdt)
    best = np.full(n, none, dtype=cdt)  # per voxel its lowest code: below ``none`` where it has a stick
    for d, off in enumerate(offs):
        _steps_to_filled(dist0, off, steps, fwd, tmp)
        _steps_to_filled(dist0, -off, steps, bwd, tmp)
        code = codes[d]
        np.add(fwd, bwd, out=code, dtype=cdt)
        np.minimum(code, cdt(reach + 1), out=code)
        np.left_shift(code, shift, out=code)
        np.bitwise_or(code, fwd.astype(cdt, copy=False), out=code)
        np.minimum(best, code, out=best)
    holes = np.zeros((pz, py, px), dtype=bool)
    holes[inner] = ~filled
    holes = holes.reshape(-1)
    holes &= best < none
    cand = np.flatnonzero(holes)
    out = volume.copy()
    if cand.size == 0:
        return out, 0
    c = np.take(codes, cand, axis=1)  # [13, M]
    del codes
    used = _used_sticks(c, reach, shift, int(sticks))
    volp = np.zeros((pz, py, px), dtype=np.float32)
    volp[inner] = volume
    volp = volp.reshape(-1)
    w_table = stick_weights(reach)
    num = np.zeros(cand.size, dtype=np.float64)
    den = np.zeros(cand.size, dtype=np.float64)
    for d, off in enumerate(offs):  # IGSIO's summation order
        j = np.flatnonzero(used[d])
        if j.size == 0:
            continue
        cj = c[d, j].astype(np.int64)
        td = cj >> shift
        f = cj & ((1 << shift) - 1)
        r = td - f
        fv = volp[cand[j] + f * off].astype(np.float64)
        rv = volp[cand[j] - r * off].astype(np.float64)
        w = w_table[d, td]
        # the float64 operations (and their order) of holes._interpolate
        num[j] += (rv * f + fv * (r + 1)) * w / (td + 1)
        den[j] += w
    res = num / den
    if truncate:
        res = np.trunc(res)
    volp[cand] = res.astype(np.float32)
    out[...] = volp.reshape(pz, py, px)[inner]
    return out, int(cand.size)
