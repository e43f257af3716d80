"""Numpy compounding engine: the torch engine's results without PyTorch (a stock Slicer has numpy only).

Same fixed-point pixel positions, same float32 trilinear weights and the same validity rules as the torch
engine (:mod:`.splat`); pixels that are not pasted are dropped (compacted) rather than sent to a trash slot.
Frames are pasted chunk by chunk into flat float32 accumulators with ``np.add.at`` / ``np.maximum.at``
(buffered and vectorised since numpy 1.25; older numpy sums with ``np.bincount`` over the chunk's span).
Normalized hole filling is a separable box sum (shifted adds); stick filling is :mod:`.holes_numpy`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib import NumpyVersion

from ..errors import Cancelled
from .engine import PasteJob
from .fixedpoint import FRAC_BITS, ONE, classify_tiles, coordinate_terms, term_bounds
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


# Pixels per tile: the tile's work arrays (8 corners for linear) stay in the L2 cache.
TILE_PIXELS = {"nearest": 1 << 15, "linear": 1 << 14}


def _linear_weights(frac: np.ndarray) -> np.ndarray:
    """Trilinear weights ``[8, m]`` float32 of the corners (z, y, x order) from raw fractions ``[3, m]``;
    the same float32 operations as the torch engine, so the weights are bit-identical."""
    g = np.empty((3, 2, frac.shape[1]), dtype=np.float32)  # [axis, (1 - f, f), m]
    np.multiply(frac, np.float32(1.0 / ONE), out=g[:, 1], casting="unsafe")
    np.subtract(np.float32(1.0), g[:, 1], out=g[:, 0])
    yz = g[2][:, None, :] * g[1][None, :, :]  # [z-side, y-side, m]
    return (yz[:, :, None, :] * g[0][None, None, :, :]).reshape(8, -1)


class _Accumulator:
    """Flat float32 accumulators of one compounding strategy, and the kernel that pastes one tile into them.

    The coverage (summed, importance-weighted splat weights) and the pixel-to-voxel arithmetic are shared;
    each strategy (a subclass) keeps its own value accumulator and turns it into the volume."""

    needs_order = False  # latest: paste() wants each pixel's order in the sweep

    def __init__(self, dims: tuple[int, int, int], nearest: bool) -> None:
        nx, ny, nz = dims
        self.dims, self.nearest = dims, nearest
        self.nvox = nx * ny * nz
        # a zero-weight corner of a pixel on the last voxel may point past it
        self.length = self.nvox + nx * ny + nx + 2
        self.size = np.asarray(dims, dtype=np.int64).reshape(3, 1)
        self.offsets = np.array([0, 1, nx, nx + 1, nx * ny, nx * ny + 1, nx * ny + nx, nx * ny + nx + 1],
                                dtype=np.intp)[:, None]
        self.wsum = np.zeros(self.length, dtype=np.float32)  # coverage: summed (importance-weighted) weights

    def paste(self, c: np.ndarray, vals: np.ndarray, valid: np.ndarray | None, check: bool,
              imp: np.ndarray | None, order: np.ndarray | None) -> int:
        """Paste pixels with raw coordinates ``c`` ``[3, P]`` (int32/int64, consumed), float32 values ``[P]``,
        validity (None: all), importance weights and (latest) pixel order; ``check``: bounds-check them.
        Returns the pixels pasted (valid and inside the grid)."""
        nx, ny, _ = self.dims
        frac = None if self.nearest else c & (ONE - 1)
        c >>= FRAC_BITS  # floor: the voxel (nearest: rounded, its offset is folded into c)
        if check:
            if self.nearest:
                ok = ((c >= 0) & (c < self.size)).all(axis=0)
            else:
                ok = ((c >= 0) & (c + (frac > 0) <= self.size - 1)).all(axis=0)
            valid = ok if valid is None else valid & ok
        flat = np.multiply(c[2], nx * ny, dtype=np.intp)
        flat += np.multiply(c[1], nx, dtype=np.intp)
        flat += c[0]
        if valid is not None:
            flat, vals = flat[valid], vals[valid]
            imp = None if imp is None else imp[valid]
            order = None if order is None else order[valid]
            frac = None if frac is None else frac[:, valid]
        if flat.size == 0:
            return 0
        if self.nearest:
            _scatter_add(self.wsum, flat, imp)
            self._add_nearest(flat, vals, imp, order)
            return flat.size
        w8 = _linear_weights(frac)  # [8, m]
        index8 = (flat[None, :] + self.offsets).reshape(-1)
        wt = w8 if imp is None else w8 * imp
        _scatter_add(self.wsum, index8, wt.reshape(-1))
        self._add_linear(index8, w8, wt, vals, order)
        return flat.size

    def _add_nearest(self, flat: np.ndarray, vals: np.ndarray, imp: np.ndarray | None,
                     order: np.ndarray | None) -> None:
        raise NotImplementedError

    def _add_linear(self, index8: np.ndarray, w8: np.ndarray, wt: np.ndarray, vals: np.ndarray,
                    order: np.ndarray | None) -> None:
        """``w8`` ``[8, m]`` trilinear weights, ``wt`` the same times importance (may be ``w8`` itself)."""
        raise NotImplementedError

    def result(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat volume and coverage ``[nvox]`` float32 (``frames``: to look the latest pixels up)."""
        raise NotImplementedError


class MeanAccumulator(_Accumulator):
    """Weighted mean: value x weight summed beside the weights, divided at the end."""

    def __init__(self, dims: tuple[int, int, int], nearest: bool) -> None:
        super().__init__(dims, nearest)
        self.vsum = np.zeros(self.length, dtype=np.float32)

    def _add_nearest(self, flat, vals, imp, order) -> None:
        _scatter_add(self.vsum, flat, vals if imp is None else vals * imp)

    def _add_linear(self, index8, w8, wt, vals, order) -> None:
        wt *= vals
        _scatter_add(self.vsum, index8, wt.reshape(-1))

    def result(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        coverage = self.wsum[:self.nvox]
        volume = np.zeros(self.nvox, dtype=np.float32)
        np.divide(self.vsum[:self.nvox], coverage, out=volume, where=coverage > 0)
        return volume, coverage


class ImportanceAccumulator(MeanAccumulator):
    """Mean weighted by the per-pixel importance mask (the selection's weights reach :meth:`paste` as ``imp``)."""


class MaxAccumulator(_Accumulator):
    """Brightest pixel per voxel (linear: over the corners with trilinear weight >= 1/8, as IGSIO)."""

    def __init__(self, dims: tuple[int, int, int], nearest: bool) -> None:
        super().__init__(dims, nearest)
        self.vmax = np.full(self.length, -np.inf, dtype=np.float32)

    def _add_nearest(self, flat, vals, imp, order) -> None:
        _scatter_max(self.vmax, flat, vals)

    def _add_linear(self, index8, w8, wt, vals, order) -> None:
        ok8 = (w8 >= MIN_WEIGHT).reshape(-1)
        _scatter_max(self.vmax, index8[ok8], np.broadcast_to(vals, w8.shape).reshape(-1)[ok8])

    def result(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        volume = self.vmax[:self.nvox]
        volume[~np.isfinite(volume)] = 0.0
        return volume, self.wsum[:self.nvox]


class LatestAccumulator(_Accumulator):
    """Last pixel in sweep order (frame, row, column) per voxel: the highest order wins; each tile's winners
    write their values at once, so no frame needs to be kept."""

    needs_order = True

    def __init__(self, dims: tuple[int, int, int], nearest: bool) -> None:
        super().__init__(dims, nearest)
        self.key = np.full(self.length, -1, dtype=np.int64)
        self.vlast = np.zeros(self.length, dtype=np.float32)

    def _take(self, index: np.ndarray, vals: np.ndarray, order: np.ndarray) -> None:
        _scatter_max(self.key, index, order)
        win = self.key[index] == order  # orders are unique per pixel: one winner per voxel
        self.vlast[index[win]] = vals[win]

    def _add_nearest(self, flat, vals, imp, order) -> None:
        self._take(flat, vals, order)

    def _add_linear(self, index8, w8, wt, vals, order) -> None:
        ok8 = (w8 >= MIN_WEIGHT).reshape(-1)
        self._take(index8[ok8], np.broadcast_to(vals, w8.shape).reshape(-1)[ok8],
                   np.broadcast_to(order, w8.shape).reshape(-1)[ok8])

    def result(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.vlast[:self.nvox], self.wsum[:self.nvox]


ACCUMULATORS = {"mean": MeanAccumulator, "importance": ImportanceAccumulator, "max": MaxAccumulator,
                "latest": LatestAccumulator}
"""The accumulator class of each compounding strategy."""


class IncrementalPaster:
    """The numpy engine's accumulators, pasted into batch by batch (the order of pixels in the sweep carries on
    from batch to batch), normalised into a volume at any time."""

    def __init__(self, dims: tuple[int, int, int], options) -> None:
        self.dims = tuple(int(d) for d in dims)
        self.nearest = options.interpolation == "nearest"
        self.interpolation, self.mode = options.interpolation, options.compounding
        self.acc = ACCUMULATORS[options.compounding](self.dims, self.nearest)
        self.order_base = 0  # latest: pixels of the frames pasted before

    def add(self, frames: np.ndarray, fixed: np.ndarray, rect: tuple[int, int, int, int], mask: np.ndarray | None,
            importance: np.ndarray | None, threshold: float | None) -> int:
        """Paste ``frames`` ``[n, H, W]`` (raw fixed-point columns ``fixed`` ``[n, 3, 3]``); returns the selected
        pixels that landed in the grid."""
        n, h, w = frames.shape
        dims, nearest, acc = self.dims, self.nearest, self.acc
        x0, y0, x1, y1 = rect
        wc = x1 - x0 + 1
        imp = None if importance is None else importance.astype(np.float32, copy=False)
        thr = None if threshold is None else np.float32(threshold)
        rows_per_tile = max(1, TILE_PIXELS[self.interpolation] // wc)
        cols = np.arange(x0, x1 + 1, dtype=np.int64)
        row_term, col_term = coordinate_terms(fixed, rect, nearest)
        lo, hi = term_bounds(row_term, col_term)
        ctype = np.int32 if max(abs(int(lo.min())), abs(int(hi.max()))) < 2**30 else np.int64
        row_term, col_term = row_term.astype(ctype), col_term.astype(ctype)
        starts, ends, outside, inside = classify_tiles(row_term, col_term, rows_per_tile, dims, nearest)
        landed = 0
        for f in range(n):
            block = frames[f, y0:y1 + 1, x0:x1 + 1]
            for k in np.flatnonzero(~outside[f]):
                r0, r1 = int(starts[k]), int(ends[k])
                c = (row_term[f, :, r0:r1, None] + col_term[f, :, None, :]).reshape(3, -1)
                vals = block[r0:r1].astype(np.float32).reshape(-1)
                valid = None if mask is None else mask[r0:r1].reshape(-1)
                if thr is not None:
                    bright = vals >= thr
                    valid = bright if valid is None else valid & bright
                order = None  # latest: the pixels' order in the sweep (frame, row, column)
                if acc.needs_order:
                    rows = np.arange(y0 + r0, y0 + r1, dtype=np.int64) * w + (self.order_base + f * h * w)
                    order = (rows[:, None] + cols[None, :]).reshape(-1)
                landed += acc.paste(c, vals, valid, not bool(inside[f, k]),
                                    None if imp is None else imp[r0:r1].reshape(-1), order)
        self.order_base += n * h * w
        return landed

    def finish(self, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Flat volume and coverage ``[nvox]`` float32 (``copy=False``: may be views of the accumulators, which
        must not be pasted into afterwards)."""
        acc = self.acc
        if self.mode in ("mean", "importance"):
            volume, coverage = acc.result()  # a new volume; the coverage is a view
        elif self.mode == "max":
            volume, coverage = acc.vmax[:acc.nvox], acc.wsum[:acc.nvox]
            if copy:
                volume = volume.copy()
            volume[~np.isfinite(volume)] = 0.0
        else:
            volume, coverage = acc.vlast[:acc.nvox], acc.wsum[:acc.nvox]
            if copy:
                volume = volume.copy()
        return volume, (coverage.copy() if copy else coverage)

    def embed(self, dims: tuple[int, int, int], offset: tuple[int, int, int]) -> None:
        """Move the accumulators into a larger grid ``dims`` whose voxel ``offset`` is this grid's first voxel."""
        old = self.acc
        new = type(old)(tuple(int(d) for d in dims), self.nearest)
        nx, ny, nz = self.dims
        i, j, k = offset
        for name in ("wsum", "vsum", "vmax", "key", "vlast"):
            if hasattr(old, name):
                src, dst = getattr(old, name), getattr(new, name)
                dst[:new.nvox].reshape(dims[2], dims[1], dims[0])[k:k + nz, j:j + ny, i:i + nx] = \
                    src[:old.nvox].reshape(nz, ny, nx)
        self.acc, self.dims = new, tuple(int(d) for d in dims)


def paste_frames(job: PasteJob) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Volume and coverage ``[nz, ny, nx]`` float32, pixels pasted and paste workers used (always 1): the whole
    sweep of ``job`` through an :class:`IncrementalPaster`, chunk by chunk."""
    frames, fixed, sel, opts, dims = job.frames, job.fixed, job.selection, job.options, job.dims
    n = frames.shape[0]
    x0, y0, x1, y1 = sel.rect
    paster = IncrementalPaster(dims, opts)
    thr = None if opts.pixel_threshold is None else np.float32(opts.pixel_threshold)
    pasted = 0
    for s in range(0, n, job.step):
        if job.should_cancel is not None and job.should_cancel():
            raise Cancelled("Compounding cancelled by the user.", "Run it again when ready; nothing was changed.")
        e = min(n, s + job.step)
        paster.add(frames[s:e], fixed[s:e], sel.rect, sel.mask, sel.weights, opts.pixel_threshold)
        if thr is None:
            pasted += (e - s) * sel.num_pixels
        else:
            for f in range(s, e):
                bright = frames[f, y0:y1 + 1, x0:x1 + 1].astype(np.float32) >= thr
                pasted += int(np.count_nonzero(bright if sel.mask is None else bright & sel.mask))
        if job.progress is not None:
            job.progress(e, n)
    volume, coverage = paster.finish(copy=False)
    shape = (dims[2], dims[1], dims[0])
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
    """Hole filling ``hf`` with numpy alone (normalized: box sums; stick: :mod:`.holes_numpy`, the same voxels as
    the numba and torch implementations); returns the volume and the number of voxels filled."""
    if hf.method == "normalized":
        return fill_normalized(volume, coverage, hf.size)
    if hf.method == "stick":
        from .holes_numpy import fill_sticks

        return fill_sticks(volume, coverage > 0, hf.size, hf.sticks, truncate=truncate)
    return volume, 0


def to_numpy(a: np.ndarray) -> np.ndarray:
    return a
