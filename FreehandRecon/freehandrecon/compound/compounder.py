"""``compound``: paste every frame of a sweep into an output grid, then fill holes.

The work is done by an engine (see :mod:`.engine`): numba (:mod:`.numba_engine`) and numpy
(:mod:`.numpy_engine`) through an incremental :class:`~.reconstructor.Reconstructor` (one ``add_frames`` per
chunk, then its result), torch (:mod:`.torch_engine`, CPU or CUDA) in one call over the sweep. This module
imports neither torch nor an engine until :func:`compound` runs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from .. import geometry
from ..errors import Cancelled, InputError
from ..sweep import Sweep
from .engine import PasteJob, offline_engine
from .fixedpoint import fixed_matrices
from .grid import OutputGrid
from .masks import select_pixels
from .memory import check_memory, chunk_frames_for, expected_holes
from .options import CompoundOptions, CompoundResult


def _check_reach(sweep: Sweep, p2v: np.ndarray, grid: OutputGrid, rect: tuple[int, int, int, int]) -> None:
    """InputError when no frame rectangle intersects the grid box at all."""
    x0, y0, x1, y1 = rect
    pts = geometry.transform_points(p2v, geometry.frame_corners_pixels(0, 0, (x0, y0, x1 - x0 + 1, y1 - y0 + 1)))
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    size = np.asarray(grid.dims, dtype=np.float64) - 1
    boxes = (hi >= -0.5).all(axis=1) & (lo <= size + 0.5).all(axis=1)
    if not boxes.any():
        raise InputError("No frame intersects the ROI (output box): every frame lies outside it.",
                         "Move or enlarge the ROI so it covers the sweep, or let the grid be fitted to the "
                         "frames (no ROI); check that the ROI and the sweep are in the same coordinate frame.")


def compound(sweep: Sweep, grid: OutputGrid, options: CompoundOptions | None = None, channel: str | None = None,
             progress: Callable[[int, int], None] | None = None,
             should_cancel: Callable[[], bool] | None = None) -> CompoundResult:
    """Compound ``sweep`` (or one of its channels) into ``grid``; never mutates the sweep.

    ``progress(done_frames, total_frames)`` is called per chunk; ``should_cancel()`` is checked per chunk
    and raises :class:`~freehandrecon.errors.Cancelled`. ``options.engine`` picks numba, torch or numpy
    ("auto": numba when it can be imported, else torch, else numpy; torch on CUDA; numpy where starting numba
    would cost more than it saves, see :func:`.engine.offline_engine`); ``stats["engine"]`` says which one ran.
    """
    t0 = time.perf_counter()
    opts = options or CompoundOptions()
    opts.validate()
    frames = sweep.channel_frames(channel)
    n, h, w = frames.shape
    opts = dataclasses.replace(opts, engine=offline_engine(opts, n * h * w, grid.num_voxels))
    if opts.engine == "torch":
        from . import torch_engine as engine

        dev = engine.device(opts.device)
    estimate, workers = check_memory(grid, opts, (h, w), n, itemsize=frames.itemsize,
                                     holes=expected_holes(sweep.pixel_to_world(), (h, w), grid, opts))
    sel = select_pixels((h, w), opts.clip_rectangle, opts.fan,
                        opts.importance_mask if opts.compounding == "importance" else None)
    p2w = sweep.pixel_to_world()
    p2v = grid.world_to_ijk()[None] @ p2w
    _check_reach(sweep, p2v, grid, sel.rect)
    hc, wc = sel.shape
    step = chunk_frames_for(opts, hc * wc)
    if opts.engine != "torch":
        return _compound_incremental(frames, p2w, grid, opts, step, estimate, progress, should_cancel, t0)
    job = PasteJob(frames, fixed_matrices(p2v), sel, opts, grid.dims, step, workers, progress, should_cancel)
    volume, coverage, pasted, used_workers = engine.paste_frames(job)
    t_holes = time.perf_counter()
    truncate = opts.plus_arithmetic and np.issubdtype(frames.dtype, np.integer)
    volume, filled = engine.fill_holes(volume, coverage, opts.hole_filling, truncate)
    volume, coverage = engine.to_numpy(volume), engine.to_numpy(coverage)
    t_end = time.perf_counter()
    hit = int(np.count_nonzero(coverage > 0))
    stats = {"frames": n, "pixels_pasted": pasted, "voxels": grid.num_voxels, "voxels_hit": hit,
             "filled_voxels": filled, "seconds": t_end - t0, "hole_filling_seconds": t_end - t_holes,
             "memory_estimate_bytes": estimate, "chunk_frames": step, "device": str(dev), "workers": used_workers,
             "engine": opts.engine}
    return CompoundResult(volume, coverage, grid, stats)


def _compound_incremental(frames: np.ndarray, p2w: np.ndarray, grid: OutputGrid, opts: CompoundOptions, step: int,
                          estimate: int, progress: Callable[[int, int], None] | None,
                          should_cancel: Callable[[], bool] | None, t0: float) -> CompoundResult:
    """The numba and numpy engines: a :class:`~.reconstructor.Reconstructor` fed one chunk at a time."""
    from .reconstructor import Reconstructor

    n = frames.shape[0]
    rec = Reconstructor(grid, opts)
    for s in range(0, n, step):
        if should_cancel is not None and should_cancel():
            raise Cancelled("Compounding cancelled by the user.", "Run it again when ready; nothing was changed.")
        e = min(n, s + step)
        rec.add_frames(frames[s:e], p2w[s:e])
        if progress is not None:
            progress(e, n)
    res = rec.result(final=True)
    res.stats.update({"seconds": time.perf_counter() - t0, "memory_estimate_bytes": estimate, "chunk_frames": step,
                      "device": "cpu"})
    return res
