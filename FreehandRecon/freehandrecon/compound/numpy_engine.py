"""Numpy compounding engine: the torch engine's results without PyTorch (a stock Slicer has numpy only).

Same fixed-point pixel positions, same float32 trilinear weights and the same validity rules as the torch
engine (:mod:`.splat`); pixels that are not pasted are dropped (compacted) rather than sent to a trash slot.
Frames are pasted chunk by chunk into flat float32 accumulators with ``np.add.at`` / ``np.maximum.at``
(buffered and vectorised since numpy 1.25; older numpy sums with ``np.bincount`` over the chunk's span).
Normalized hole filling is a separable box sum (shifted adds). Stick filling still needs torch.
"""

from __future__ import annotations

import numpy as np
from numpy.lib import NumpyVersion

from ..errors import Cancelled
from .engine import PasteJob
from .fixedpoint import FRAC_BITS, ONE, all_inside, coordinate_terms, term_bounds
from .options import HoleFilling

# np.add.at got a fast path in numpy 1.25; before that it is ~10x slower than np.bincount.
FAST_UFUNC_AT = NumpyVersion(np.__version__) >= "1.25.0"
MIN_WEIGHT = np.float32(0.125)  # linear max/latest only touch corners with trilinear weight >= 1/8 (IGSIO)


def _scatter_add(acc: np.ndarray, index: np.ndarray, values: np.ndarray | None) -> None:
    """``acc[index] += values`` with repeated indices summed (``values`` None: add 1 per index)."""
    if index.size == 0:
        return
    if FAST_UFUNC_AT:
        np.add.at(acc, index, np.float32(1.0) if values is None else values)
        return
    lo, hi = int(index.min()), int(index.max()) + 1
    if hi - lo > 4 * index.size + 65536:  # a sparse span: bincount's buffer would dwarf the chunk
        np.add.at(acc, index, np.float32(1.0) if values is None else values)
        return
    acc[lo:hi] += np.bincount(index - lo, weights=values, minlength=hi - lo)


def _scatter_max(acc: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    if index.size:
        np.maximum.at(acc, index, values)


def _flat_index(c: np.ndarray, dims: tuple[int, int, int]) -> np.ndarray:
    """Flat voxel index (intp) of integer voxel coordinates ``c[:, 3, ...]`` (x, y, z)."""
    nx, ny, _ = dims
    flat = np.multiply(c[:, 2], nx * ny, dtype=np.intp)
    flat += np.multiply(c[:, 1], nx, dtype=np.intp)
    flat += c[:, 0]
    return flat


def _linear_weights(frac: np.ndarray) -> np.ndarray:
    """Trilinear weights ``[8, m]`` float32 of the corners (z, y, x order) from raw fractions ``[3, m]``;
    the same float32 operations as the torch engine, so the weights are bit-identical."""
    g1 = frac.astype(np.float32)
    g1 *= np.float32(1.0 / ONE)
    g = np.stack([np.float32(1.0) - g1, g1], axis=1)  # [axis, side, m]
    yz = g[2][:, None, :] * g[1][None, :, :]  # [z-side, y-side, m]
    return (yz[:, :, None, :] * g[0][None, None, :, :]).reshape(8, -1)


def paste_frames(job: PasteJob) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Volume and coverage ``[nz, ny, nx]`` float32, pixels pasted and paste workers used (always 1)."""
    frames, fixed, sel, opts, dims = job.frames, job.fixed, job.selection, job.options, job.dims
    n, h, w = frames.shape
    nx, ny, nz = dims
    nvox = nx * ny * nz
    length = nvox + nx * ny + nx + 2  # a zero-weight corner of a pixel on the last voxel may point past the end
    nearest = opts.interpolation == "nearest"
    mode = opts.compounding
    x0, y0, x1, y1 = sel.rect
    hc, wc = sel.shape
    static = sel.mask
    imp = None if sel.weights is None else sel.weights.astype(np.float32, copy=False)
    thr = None if opts.pixel_threshold is None else np.float32(opts.pixel_threshold)
    size = np.asarray(dims, dtype=np.int64).reshape(1, 3, 1, 1)
    offsets = np.array([0, 1, nx, nx + 1, nx * ny, nx * ny + 1, nx * ny + nx, nx * ny + nx + 1],
                       dtype=np.intp)[:, None]
    per_frame = hc * wc if static is None else int(static.sum())

    wsum = np.zeros(length, dtype=np.float32)  # coverage: summed (importance-weighted) trilinear weights
    vsum = vmax = key = None
    if mode in ("mean", "importance"):
        vsum = np.zeros(length, dtype=np.float32)
    elif mode == "max":
        vmax = np.full(length, -np.inf, dtype=np.float32)
    else:
        key = np.full(length, -1, dtype=np.int64)  # latest: highest pixel order (frame, row, column) per voxel

    pasted = 0
    for s in range(0, n, job.step):
        if job.should_cancel is not None and job.should_cancel():
            raise Cancelled("Compounding cancelled by the user.", "Run it again when ready; nothing was changed.")
        e = min(n, s + job.step)
        vals = frames[s:e, y0:y1 + 1, x0:x1 + 1].astype(np.float32)
        row_term, col_term = coordinate_terms(fixed[s:e], sel.rect, nearest)
        lo, hi = term_bounds(row_term, col_term)
        inside = all_inside(lo, hi, dims, nearest)
        ctype = np.int32 if max(abs(int(lo.min())), abs(int(hi.max()))) < 2**30 else np.int64
        c = row_term.astype(ctype)[:, :, :, None] + col_term.astype(ctype)[:, :, None, :]  # [m, 3, Hc, Wc]
        valid = None if static is None else np.broadcast_to(static, vals.shape)
        if thr is not None:
            bright = vals >= thr
            valid = bright if valid is None else valid & bright
        pasted += int(valid.sum()) if valid is not None else (e - s) * per_frame
        frac = None if nearest else c & (ONE - 1)
        c >>= FRAC_BITS  # floor: integer voxel (nearest: rounded, as the offset is folded in)
        if not inside:
            if nearest:
                ok = ((c >= 0) & (c < size)).all(axis=1)
            else:
                ok = ((c >= 0) & (c + (frac > 0) <= size - 1)).all(axis=1)
            valid = ok if valid is None else valid & ok
        flat = _flat_index(c, dims)
        del c
        if valid is None:
            index, v = flat.reshape(-1), vals.reshape(-1)
            wimp = None if imp is None else np.broadcast_to(imp, vals.shape).reshape(-1)
        else:
            index, v = flat[valid], vals[valid]
            wimp = None if imp is None else np.broadcast_to(imp, vals.shape)[valid]
        if key is not None:
            order = ((np.arange(s, e, dtype=np.int64) * (h * w))[:, None, None]
                     + (np.arange(y0, y1 + 1, dtype=np.int64) * w)[None, :, None]
                     + np.arange(x0, x1 + 1, dtype=np.int64)[None, None, :])
            order = np.broadcast_to(order, vals.shape)
            order = order.reshape(-1) if valid is None else order[valid]
        if nearest:
            _scatter_add(wsum, index, wimp)
            if vsum is not None:
                _scatter_add(vsum, index, v if wimp is None else v * wimp)
            elif vmax is not None:
                _scatter_max(vmax, index, v)
            else:
                _scatter_max(key, index, order)
        else:
            fr = frac.transpose(1, 0, 2, 3).reshape(3, -1) if valid is None else frac.transpose(1, 0, 2, 3)[:, valid]
            del frac
            w8 = _linear_weights(fr)  # [8, m]
            del fr
            index8 = index[None, :] + offsets  # [8, m]
            wt = w8 if wimp is None else w8 * wimp
            _scatter_add(wsum, index8.reshape(-1), wt.reshape(-1))
            if vsum is not None:
                _scatter_add(vsum, index8.reshape(-1), (wt * v).reshape(-1))
            else:
                ok8 = w8 >= MIN_WEIGHT
                corners = index8[ok8]
                if vmax is not None:
                    _scatter_max(vmax, corners, np.broadcast_to(v, w8.shape)[ok8])
                else:
                    _scatter_max(key, corners, np.broadcast_to(order, w8.shape)[ok8])
        if job.progress is not None:
            job.progress(e, n)

    shape = (nz, ny, nx)
    coverage = wsum[:nvox]
    if vsum is not None:
        hit = coverage > 0
        volume = np.zeros(nvox, dtype=np.float32)
        np.divide(vsum[:nvox], coverage, out=volume, where=hit)
    elif vmax is not None:
        volume = vmax[:nvox]
        volume[~np.isfinite(volume)] = 0.0
    else:
        volume = np.zeros(nvox, dtype=np.float32)
        block = 1 << 20  # the gather's index arrays stay small
        for b in range(0, nvox, block):
            k = key[b:b + block]
            hit = np.flatnonzero(k >= 0)
            f, rest = np.divmod(k[hit], h * w)
            row, col = np.divmod(rest, w)
            volume[b + hit] = frames[f, row, col]
    return volume.reshape(shape), coverage.reshape(shape), pasted, 1


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum over a ``(2 radius + 1)``^3 box around every voxel, zero outside (separable shifted adds)."""
    out = a
    for axis in range(3):
        src = out
        out = src.copy()
        n = src.shape[axis]
        for d in range(1, min(radius, n - 1) + 1):
            hi = [slice(None)] * 3
            lo = [slice(None)] * 3
            hi[axis], lo[axis] = slice(d, None), slice(None, n - d)
            out[tuple(hi)] += src[tuple(lo)]
            out[tuple(lo)] += src[tuple(hi)]
        del src
    return out


def fill_normalized(volume: np.ndarray, coverage: np.ndarray, size: int = 3) -> tuple[np.ndarray, int]:
    """Normalised convolution: holes (coverage 0) get ``box(volume*coverage) / box(coverage)`` over a
    ``size``^3 box (made odd, so it is centred), as :func:`.holes.fill_normalized`; returns the filled
    volume ``[nz, ny, nx]`` float32 and the number of voxels filled."""
    radius = (int(size) | 1) // 2
    s = _box_sum(volume * coverage, radius)
    wgt = _box_sum(coverage, radius)
    fill = coverage <= 0
    fill &= wgt > 0
    out = volume.copy()
    out[fill] = s[fill] / wgt[fill]
    return out, int(np.count_nonzero(fill))


def fill_holes(volume: np.ndarray, coverage: np.ndarray, hf: HoleFilling, truncate: bool) -> tuple[np.ndarray, int]:
    """Hole filling ``hf``; stick filling borrows the torch implementation (checked present beforehand)."""
    if hf.method == "normalized":
        return fill_normalized(volume, coverage, hf.size)
    if hf.method == "stick":
        import torch

        from . import holes

        out, filled = holes.fill_sticks(torch.from_numpy(volume), torch.from_numpy(coverage > 0), hf.size,
                                        hf.sticks, truncate=truncate)
        return out.numpy(), filled
    return volume, 0


def to_numpy(a: np.ndarray) -> np.ndarray:
    return a
