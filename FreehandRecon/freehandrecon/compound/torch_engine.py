"""Torch compounding engine (CPU or CUDA): tiled multi-worker mean pasting, scatter kernels for max/latest,
IGSIO's sequential integer mean (``plus_arithmetic``), normalized and stick hole filling."""

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
    integer_in = np.issubdtype(frames.dtype, np.integer)
    plus_mean = opts.plus_arithmetic and mode in ("mean", "importance")
    fixed_weights = opts.plus_arithmetic and not nearest

    x0, y0, x1, y1 = sel.rect
    hc, wc = sel.shape
    static_valid = None if sel.mask is None else torch.from_numpy(sel.mask).to(dev)
    importance = None if sel.weights is None else torch.from_numpy(sel.weights).to(dev)

    acc = wsum = vmax = key = seq = None
    pasted = 0
    fast = uses_fast_paste(opts) and paste.fits_int32(fixed, sel.rect, length)
    if fast:
        acc, pasted = _paste_fast(frames, fixed, sel, opts, dims, length, trash, nearest, step, job.workers, dev,
                                  static_valid, importance, progress, should_cancel)
    elif plus_mean:
        seq = splat.SequentialMean(length, dev, linear=not nearest, integer_output=integer_in)
    elif mode in ("mean", "importance"):
        acc = torch.zeros(length, dtype=torch.complex64, device=dev)
    else:
        wsum = torch.zeros(length, dtype=torch.float32, device=dev)
        if mode == "max":
            vmax = torch.full((length,), -torch.inf, dtype=torch.float32, device=dev)
        else:
            key = torch.full((length,), -1, dtype=torch.int64, device=dev)

    for s in range(0, n if not fast else 0, step):
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
        if plus_mean:
            if nearest:
                wacc = (torch.full_like(values, 256.0) if weights is None
                        else torch.round(weights * 255.0))  # IGSIO adds the 8-bit importance per pixel
            else:
                wacc = weights.to(torch.float64) if importance is None else torch.round(weights.to(torch.float64))
            if not nearest:  # insertion order is pixel by pixel, corners of one pixel together
                index, values, wacc = (t.view(8, -1).t().reshape(-1) for t in (index, values, wacc))
            seq.add(index, values, wacc, trash)
        elif acc is not None:
            wv = torch.ones_like(values) if weights is None else weights.to(torch.float32)
            acc.index_add_(0, index, torch.complex(values * wv, wv))
        else:
            wv = torch.ones_like(values) if weights is None else weights.to(torch.float32)
            wsum.index_add_(0, index, wv)
            if corner_ok is not None:
                index = torch.where(corner_ok, index, torch.full((), trash, dtype=index.dtype, device=dev))
            if vmax is not None:
                vmax.scatter_reduce_(0, index.to(torch.int64), values, "amax")
            else:
                order = (torch.arange(s, e, device=dev, dtype=torch.int64).view(-1, 1, 1) * (h * w)
                         + torch.arange(y0, y1 + 1, device=dev, dtype=torch.int64).view(1, -1, 1) * w
                         + torch.arange(x0, x1 + 1, device=dev, dtype=torch.int64).view(1, 1, -1))
                seq_key = order.expand(8, -1, -1, -1).reshape(-1) if not nearest else order.reshape(-1)
                key.scatter_reduce_(0, index.to(torch.int64), seq_key, "amax")
        if progress is not None:
            progress(e, n)

    if seq is not None:
        volume = seq.out[:nvox].to(torch.float32)
        coverage = (seq.acc[:nvox] / 256.0).to(torch.float32)
    elif acc is not None:
        a = acc[:nvox]
        coverage = a.imag.contiguous()
        volume = torch.where(coverage > 0, a.real / torch.where(coverage > 0, coverage, 1.0), 0.0)
    else:
        coverage = wsum[:nvox]
        if vmax is not None:
            v = vmax[:nvox]
            volume = torch.where(torch.isfinite(v), v, 0.0)
        else:
            k = key[:nvox].cpu().numpy()
            flat_frames = frames.reshape(-1)
            vol_np = np.zeros(nvox, dtype=np.float32)
            hit = k >= 0
            vol_np[hit] = flat_frames[k[hit]]
            volume = torch.from_numpy(vol_np).to(dev)
    shape = (dims[2], dims[1], dims[0])
    return volume.reshape(shape), coverage.reshape(shape), pasted, job.workers if fast else 1


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
