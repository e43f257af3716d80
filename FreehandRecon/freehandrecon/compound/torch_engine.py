"""Torch compounding engine (CPU or CUDA): one accumulator class per compounding strategy (tiled multi-worker
mean pasting, scatter kernels for max/latest, IGSIO's sequential integer mean for ``plus_arithmetic``),
normalized and stick hole filling."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import Cancelled, ResourceError
from . import holes, paste, splat
from .engine import PasteJob
from .memory import uses_fast_paste
from .options import CompoundOptions, HoleFilling


def device(name: str) -> torch.device:
    """The torch device ``name``, or ResourceError when CUDA is asked for but missing."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError("CUDA was requested but no CUDA device is available to torch.",
                            "Use device='cpu', or install a CUDA build of torch on a machine with a GPU.")
    return torch.device(name)


def _paste_fast(frames: np.ndarray, fixed: np.ndarray, sel, opts: CompoundOptions, dims: tuple[int, int, int],
                length: int, trash: int, nearest: bool, step: int, workers: int, dev: torch.device,
                static_valid: torch.Tensor | None, importance: torch.Tensor | None,
                progress: Callable[[int, int], None] | None, should_cancel: Callable[[], bool] | None
                ) -> tuple[torch.Tensor, int]:
    """Mean/importance compounding with :mod:`.paste`; returns the complex accumulator and pixels pasted."""
    n = frames.shape[0]
    hc, wc = sel.shape
    tile = paste.tile_pixels(dev, nearest)
    thr = opts.pixel_threshold
    pasters = [paste.MeanPaster(length, trash, dims, nearest, tile, wc, torch.int32, dev, static_valid, importance,
                                None if thr is None else float(thr)) for _ in range(max(1, workers))]
    rows = pasters[0].rows_per_tile
    per_frame = hc * wc if static_valid is None else int(static_valid.sum())
    pool = paste.WorkerPool(pasters)
    pasted = 0
    try:
        for s in range(0, n, step):
            if should_cancel is not None and should_cancel():
                raise Cancelled("Compounding cancelled by the user.", "Run it again when ready; nothing was changed.")
            e = min(n, s + step)
            chunk = paste.make_chunk(frames, fixed, s, e, sel.rect, dims, nearest, rows, dev)
            if thr is None:
                pasted += (e - s) * per_frame
            else:
                bright = chunk.values.to(torch.float32) >= float(thr)
                if static_valid is not None:
                    bright &= static_valid
                pasted += int(bright.sum())
            pool.paste(chunk)
            if progress is not None:
                progress(e, n)
    finally:
        pool.close()
    return pool.result(), pasted


class _Accumulator:
    """Flat accumulators of one compounding strategy on the device: :meth:`add` takes one chunk's splats (voxel
    index, value, weight; linear: the corners, 8 per pixel), :meth:`result` gives volume and coverage."""

    def __init__(self, length: int, dev: torch.device) -> None:
        self.length, self.dev = length, dev

    def add(self, index: torch.Tensor, values: torch.Tensor, weights: torch.Tensor | None,
            corner_ok: torch.Tensor | None, order: Callable[[], torch.Tensor]) -> None:
        """``weights`` None: all 1; ``corner_ok`` (linear) the corners with weight >= 1/8; ``order()`` each
        splat's pixel order in the sweep (frame, row, column), computed only by the strategy that needs it."""
        raise NotImplementedError

    def result(self, nvox: int, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MeanAccumulator(_Accumulator):
    """Weighted mean in one complex64 accumulator (real: value x weight, imaginary: weight)."""

    def __init__(self, length: int, dev: torch.device, acc: torch.Tensor | None = None) -> None:
        super().__init__(length, dev)
        self.acc = torch.zeros(length, dtype=torch.complex64, device=dev) if acc is None else acc

    def add(self, index, values, weights, corner_ok, order) -> None:
        wv = torch.ones_like(values) if weights is None else weights.to(torch.float32)
        self.acc.index_add_(0, index, torch.complex(values * wv, wv))

    def result(self, nvox: int, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.acc[:nvox]
        coverage = a.imag.contiguous()
        volume = torch.where(coverage > 0, a.real / torch.where(coverage > 0, coverage, 1.0), 0.0)
        return volume, coverage


class ImportanceAccumulator(MeanAccumulator):
    """Mean weighted by the per-pixel importance mask (already multiplied into the splat weights)."""


class _CoverageAccumulator(_Accumulator):
    """Strategies that keep the summed weights (coverage) beside a per-voxel winner."""

    def __init__(self, length: int, dev: torch.device, trash: int) -> None:
        super().__init__(length, dev)
        self.trash = trash
        self.wsum = torch.zeros(length, dtype=torch.float32, device=dev)

    def _winners(self, index, values, weights, corner_ok) -> torch.Tensor:
        """Add the weights to the coverage; the indices that compete for the voxel (light corners to the trash)."""
        wv = torch.ones_like(values) if weights is None else weights.to(torch.float32)
        self.wsum.index_add_(0, index, wv)
        if corner_ok is not None:
            index = torch.where(corner_ok, index, torch.full((), self.trash, dtype=index.dtype, device=self.dev))
        return index.to(torch.int64)


class MaxAccumulator(_CoverageAccumulator):
    """Brightest pixel per voxel."""

    def __init__(self, length: int, dev: torch.device, trash: int) -> None:
        super().__init__(length, dev, trash)
        self.vmax = torch.full((length,), -torch.inf, dtype=torch.float32, device=dev)

    def add(self, index, values, weights, corner_ok, order) -> None:
        self.vmax.scatter_reduce_(0, self._winners(index, values, weights, corner_ok), values, "amax")

    def result(self, nvox: int, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.vmax[:nvox]
        return torch.where(torch.isfinite(v), v, 0.0), self.wsum[:nvox]


class LatestAccumulator(_CoverageAccumulator):
    """Last pixel in sweep order per voxel: the highest order wins, looked up in the frames at the end."""

    def __init__(self, length: int, dev: torch.device, trash: int) -> None:
        super().__init__(length, dev, trash)
        self.key = torch.full((length,), -1, dtype=torch.int64, device=dev)

    def add(self, index, values, weights, corner_ok, order) -> None:
        self.key.scatter_reduce_(0, self._winners(index, values, weights, corner_ok), order(), "amax")

    def result(self, nvox: int, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.key[:nvox].cpu().numpy()
        flat_frames = frames.reshape(-1)
        vol_np = np.zeros(nvox, dtype=np.float32)
        hit = k >= 0
        vol_np[hit] = flat_frames[k[hit]]
        return torch.from_numpy(vol_np).to(self.dev), self.wsum[:nvox]


class PlusMeanAccumulator(_Accumulator):
    """Mean and importance with ``plus_arithmetic``: IGSIO's running integer mean, rounded at every insertion in
    IGSIO's order (pixel by pixel, the 8 corners of a pixel together), weights in 1/256 units."""

    def __init__(self, length: int, dev: torch.device, trash: int, nearest: bool, integer_output: bool,
                 importance: bool) -> None:
        super().__init__(length, dev)
        self.trash, self.nearest, self.importance = trash, nearest, importance
        self.seq = splat.SequentialMean(length, dev, linear=not nearest, integer_output=integer_output)

    def add(self, index, values, weights, corner_ok, order) -> None:
        if self.nearest:
            wacc = (torch.full_like(values, 256.0) if weights is None
                    else torch.round(weights * 255.0))  # IGSIO adds the 8-bit importance per pixel
        else:
            wacc = weights.to(torch.float64) if not self.importance else torch.round(weights.to(torch.float64))
            index, values, wacc = (t.view(8, -1).t().reshape(-1) for t in (index, values, wacc))
        self.seq.add(index, values, wacc, self.trash)

    def result(self, nvox: int, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seq.out[:nvox].to(torch.float32), (self.seq.acc[:nvox] / 256.0).to(torch.float32)


ACCUMULATORS = {"mean": MeanAccumulator, "importance": ImportanceAccumulator, "max": MaxAccumulator,
                "latest": LatestAccumulator}
"""The accumulator class of each compounding strategy (``plus_arithmetic`` means: :class:`PlusMeanAccumulator`)."""


def paste_frames(job: PasteJob) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Volume and coverage ``[nz, ny, nx]`` float32 tensors, pixels pasted and paste workers used."""
    frames, fixed, sel, opts, dims = job.frames, job.fixed, job.selection, job.options, job.dims
    progress, should_cancel, step = job.progress, job.should_cancel, job.step
    n, h, w = frames.shape
    dev = device(opts.device)
    nearest = opts.interpolation == "nearest"
    nvox = dims[0] * dims[1] * dims[2]
    pad = dims[0] * dims[1] + dims[0] + 2
    length = nvox + pad
    trash = nvox
    mode = opts.compounding
    fixed_weights = opts.plus_arithmetic and not nearest

    x0, y0, x1, y1 = sel.rect
    hc, wc = sel.shape
    static_valid = None if sel.mask is None else torch.from_numpy(sel.mask).to(dev)
    importance = None if sel.weights is None else torch.from_numpy(sel.weights).to(dev)

    if uses_fast_paste(opts) and paste.fits_int32(fixed, sel.rect, length):  # mean/importance, multi-worker
        acc, pasted = _paste_fast(frames, fixed, sel, opts, dims, length, trash, nearest, step, job.workers, dev,
                                  static_valid, importance, progress, should_cancel)
        volume, coverage = ACCUMULATORS[mode](length, dev, acc).result(nvox, frames)
        shape = (dims[2], dims[1], dims[0])
        return volume.reshape(shape), coverage.reshape(shape), pasted, job.workers
    if opts.plus_arithmetic and mode in ("mean", "importance"):
        acc = PlusMeanAccumulator(length, dev, trash, nearest, np.issubdtype(frames.dtype, np.integer),
                                  importance is not None)
    elif mode in ("mean", "importance"):
        acc = ACCUMULATORS[mode](length, dev)
    else:
        acc = ACCUMULATORS[mode](length, dev, trash)

    pasted = 0
    for s in range(0, n, step):
        if should_cancel is not None and should_cancel():
            raise Cancelled("Compounding cancelled by the user.", "Run it again when ready; nothing was changed.")
        e = min(n, s + step)
        vals = torch.from_numpy(np.ascontiguousarray(frames[s:e, y0:y1 + 1, x0:x1 + 1])).to(dev)
        vals = vals.to(torch.float32)
        coords, inside = splat.chunk_coords(fixed[s:e], sel.rect, dims, dev, nearest)
        valid = None if static_valid is None else static_valid.expand(e - s, hc, wc)
        if opts.pixel_threshold is not None:
            bright = vals >= float(opts.pixel_threshold)
            valid = bright if valid is None else valid & bright
        if nearest:
            flat = splat.nearest_indices(coords, dims, not inside, valid, trash)
            weight = importance.expand(e - s, hc, wc) if importance is not None else None
            index, values = flat.reshape(-1), vals.reshape(-1)
            weights = None if weight is None else weight.reshape(-1)
            corner_ok = None
        else:
            index8, w8 = splat.linear_corners(coords, dims, not inside, valid, trash, fixed_weights)
            index = index8.reshape(-1)
            values = vals.expand(8, e - s, hc, wc).reshape(-1)
            corner_ok = (w8 >= (splat.MIN_WEIGHT_RAW if fixed_weights else 0.125)).reshape(-1)
            weights = w8.reshape(-1)
            if importance is not None:
                weights = weights * importance.expand(8, e - s, hc, wc).reshape(-1)
        pasted += int(valid.sum()) if valid is not None else (e - s) * hc * wc

        def order(s: int = s, e: int = e) -> torch.Tensor:
            o = (torch.arange(s, e, device=dev, dtype=torch.int64).view(-1, 1, 1) * (h * w)
                 + torch.arange(y0, y1 + 1, device=dev, dtype=torch.int64).view(1, -1, 1) * w
                 + torch.arange(x0, x1 + 1, device=dev, dtype=torch.int64).view(1, 1, -1))
            return o.expand(8, -1, -1, -1).reshape(-1) if not nearest else o.reshape(-1)

        acc.add(index, values, weights, corner_ok, order)
        if progress is not None:
            progress(e, n)

    volume, coverage = acc.result(nvox, frames)
    shape = (dims[2], dims[1], dims[0])
    return volume.reshape(shape), coverage.reshape(shape), pasted, 1


def fill_holes(volume: torch.Tensor, coverage: torch.Tensor, hf: HoleFilling, truncate: bool
               ) -> tuple[torch.Tensor, int]:
    """Hole filling ``hf`` on the engine's tensors; returns the volume and the number of voxels filled."""
    if hf.method == "normalized":
        return holes.fill_normalized(volume, coverage, hf.size)
    if hf.method == "stick":
        return holes.fill_sticks(volume, coverage > 0, hf.size, hf.sticks, truncate=truncate)
    return volume, 0


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()
