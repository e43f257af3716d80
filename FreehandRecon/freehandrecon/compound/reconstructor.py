"""``Reconstructor``: incremental compounding, frames added as they arrive, the volume available at any time.

The contract (live reconstruction builds on it):

- ``Reconstructor(grid, options)``; ``add_frames(frames, pixel_to_world)`` takes ``[n, H, W]`` (or one
  ``[H, W]``) frames and their ``[n, 4, 4]`` (or ``[4, 4]``) pixel-index -> world-mm matrices (spacing
  included, as an OpenIGTLink IMAGE message or a volume's IJKToRAS gives them);
- ``snapshot()`` is the volume and coverage so far (no hole filling unless asked), ``result()`` the final
  one with ``options.hole_filling``; adding frames one at a time gives the same volume as adding them all
  at once, and as the offline :func:`~.compounder.compound` (which is itself a loop of ``add_frames``);
- ``reset()`` forgets every frame; ``regrid(grid)`` moves what was compounded into a larger grid on the same
  lattice (an auto-growing live grid);
- every frame must have the frame size of the first (a clear error otherwise); pixels that fall outside the
  grid are counted (``stats["pixels_outside"]``), not errors.

The frames are pasted when they are added, into accumulators that persist between calls: the numba engine
(:mod:`.numba_engine`, deterministic on any number of threads) where numba can be imported, else the numpy
engine. ``snapshot()`` only normalises the accumulators. On a CUDA device (the torch engine) the frames are
kept and every snapshot compounds them all.
"""

from __future__ import annotations

import copy

import dataclasses
import time

import numpy as np

from ..errors import InputError
from .engine import reconstructor_engine
from .fixedpoint import fixed_matrices
from .grid import OutputGrid
from .masks import PixelSelection, select_pixels
from .options import CompoundOptions, CompoundResult, HoleFilling

# Frame dtypes the compiled kernels read as they are; anything else is converted to float32 first.
NATIVE_FRAME_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                                    np.float32, np.float64))


def _as_batch(frames: np.ndarray, pixel_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(frames [n, H, W], matrices [n, 4, 4] float64)`` from one frame or a batch; InputError when unlike."""
    f = np.asarray(frames)
    m = np.asarray(pixel_to_world, dtype=np.float64)
    if f.ndim == 2:
        f = f[None]
    if m.ndim == 2:
        m = m[None]
    if f.ndim != 3 or m.ndim != 3 or m.shape[1:] != (4, 4) or m.shape[0] != f.shape[0]:
        raise InputError(f"add_frames needs frames [n, H, W] with matrices [n, 4, 4]; got frames {np.shape(frames)} "
                         f"and matrices {np.shape(pixel_to_world)}.",
                         "Pass one pixel-to-world matrix per frame (a single [H, W] frame takes one [4, 4]).")
    if not np.isfinite(m).all():
        raise InputError("A pixel-to-world matrix passed to add_frames holds NaN or infinity.",
                         "Drop frames whose tracking is invalid before adding them.")
    return f, m


def lattice_offset(old: OutputGrid, new: OutputGrid) -> tuple[int, int, int]:
    """Voxel (i, j, k) of ``new`` at ``old``'s first voxel, or InputError when ``new`` is not on the same
    lattice or does not contain ``old``."""
    same = (np.allclose(old.spacing, new.spacing, rtol=1e-9, atol=0)
            and np.allclose(old.direction, new.direction, atol=1e-9))
    shift = new.direction.T @ (old.origin - new.origin) / new.spacing if same else np.zeros(3)
    whole = np.rint(shift)
    fix = ("Grow the grid by whole voxels with the same spacing and orientation (origin moved by whole "
           "voxels), or reset the reconstruction and start on the new grid.")
    if not same or not np.allclose(shift, whole, atol=1e-6):
        raise InputError("The new grid is not on the lattice of the current one (another spacing or orientation, or "
                         "an origin moved by a fraction of a voxel).", fix)
    off = whole.astype(np.int64)
    if (off < 0).any() or (off + np.asarray(old.dims) > np.asarray(new.dims)).any():
        raise InputError(f"The new grid {new.dims} does not contain the current grid {old.dims} (offset "
                         f"{tuple(int(o) for o in off)} voxels).", fix)
    return int(off[0]), int(off[1]), int(off[2])


class _NumpyAccumulators:
    """The numpy engine's accumulators behind the same interface as :class:`~.numba_engine.NumbaAccumulators`."""

    def __init__(self, dims: tuple[int, int, int], options: CompoundOptions) -> None:
        from . import numpy_engine

        self.paster = numpy_engine.IncrementalPaster(dims, options)

    def add(self, frames, fixed, rect, mask, importance, threshold) -> int:
        return self.paster.add(frames, fixed, rect, mask, importance, threshold)

    def finish(self, copy: bool = True):
        return self.paster.finish(copy)

    def embed(self, dims, offset) -> None:
        self.paster.embed(dims, offset)

    def copied(self) -> "_NumpyAccumulators":
        return copy.deepcopy(self)


class Reconstructor:
    """Compound frames into ``grid`` as they arrive (see the module docstring for the contract)."""

    def __init__(self, grid: OutputGrid, options: CompoundOptions | None = None) -> None:
        self.options = options or CompoundOptions()
        self.options.validate()
        self.engine = reconstructor_engine(self.options)
        self.grid = grid
        self.reset()

    @property
    def frames_added(self) -> int:
        return self._frames_added

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        return self._frame_shape

    def reset(self) -> None:
        """Forget every frame added so far (the grid and options stay)."""
        self._frames_added = 0
        self._frame_shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        self._selection: PixelSelection | None = None
        self._acc = None
        self._pasted = 0
        self._landed = 0
        self._kept: list[tuple[np.ndarray, np.ndarray]] = []  # torch engine only: the frames themselves

    def _start(self, frames: np.ndarray) -> None:
        """Set up for the first frames: their size and type, the pixel selection, the accumulators."""
        self._frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        dtype = frames.dtype
        if dtype == np.bool_ or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            dtype = np.dtype(np.float32)
        self._dtype = np.dtype(dtype)
        opts = self.options
        self._selection = select_pixels(self._frame_shape, opts.clip_rectangle, opts.fan,
                                        opts.importance_mask if opts.compounding == "importance" else None)
        if self.engine == "numba":
            from .numba_engine import NumbaAccumulators

            self._acc = NumbaAccumulators(self.grid.dims, opts, np.issubdtype(self._dtype, np.integer))
        elif self.engine == "numpy":
            self._acc = _NumpyAccumulators(self.grid.dims, opts)

    def add_frames(self, frames: np.ndarray, pixel_to_world: np.ndarray) -> None:
        """Paste ``frames`` with their pixel-index -> world-mm matrices, in arrival order."""
        f, m = _as_batch(frames, pixel_to_world)
        if self._frame_shape is None:
            self._start(f)
        elif f.shape[1:] != self._frame_shape:
            h, w = self._frame_shape
            raise InputError(f"A frame of {f.shape[2]}x{f.shape[1]} pixels arrived after frames of {w}x{h}.",
                             "Keep the imaging depth and size fixed during a reconstruction, or reset it "
                             "(a new reconstruction) after changing them.")
        if f.shape[0] == 0:
            return
        if f.dtype != self._dtype:
            f = f.astype(self._dtype)
        if self.engine == "torch":
            self._kept.append((f.copy(), m.copy()))
            self._frames_added += f.shape[0]
            return
        if self.engine == "numba" and (f.dtype not in NATIVE_FRAME_DTYPES or not f.dtype.isnative):
            f = f.astype(np.float32)
        if not f.flags.c_contiguous:
            f = np.ascontiguousarray(f)
        sel, opts = self._selection, self.options
        fixed = fixed_matrices(self.grid.world_to_ijk()[None] @ m)
        if self.engine == "numba":
            from .numba_engine import count_pasted

            self._pasted += count_pasted(f, sel.rect, sel.mask, opts.pixel_threshold)
        else:
            self._pasted += _count_pasted_numpy(f, sel, opts.pixel_threshold)
        self._landed += self._acc.add(f, fixed, sel.rect, sel.mask, sel.weights, opts.pixel_threshold)
        self._frames_added += f.shape[0]

    def regrid(self, grid: OutputGrid) -> None:
        """Compound into ``grid`` from now on, keeping what was compounded: ``grid`` must be on the same
        lattice (spacing, orientation, origin moved by whole voxels) and contain the current grid."""
        offset = lattice_offset(self.grid, grid)
        if self._acc is not None:
            self._acc.embed(grid.dims, offset)
        self.grid = grid

    def _empty(self) -> CompoundResult:
        shape = self.grid.shape_zyx
        return CompoundResult(np.zeros(shape, np.float32), np.zeros(shape, np.float32), self.grid,
                              {"frames": 0, "pixels_pasted": 0, "pixels_outside": 0, "voxels": self.grid.num_voxels,
                               "voxels_hit": 0, "filled_voxels": 0, "engine": self.engine, "seconds": 0.0,
                               "hole_filling_seconds": 0.0, "workers": _threads(self.engine)})

    def _finish(self, hole_filling: HoleFilling, final: bool = False) -> CompoundResult:
        t0 = time.perf_counter()
        if self._frames_added == 0:
            return self._empty()
        if self.engine == "torch":
            return self._torch_result(hole_filling)
        volume, coverage = self._acc.finish(copy=not final)
        if final:
            self._acc = None  # its arrays now back the result
        shape = self.grid.shape_zyx
        volume, coverage = volume.reshape(shape), coverage.reshape(shape)
        t_holes = time.perf_counter()
        truncate = self.options.plus_arithmetic and np.issubdtype(self._dtype, np.integer)
        if self.engine == "numba":
            from .numba_engine import count_positive

            hit = int(count_positive(coverage.reshape(-1)))
        else:
            hit = int(np.count_nonzero(coverage > 0))
        if self.engine == "numba":
            from .numba_engine import fill_holes
        else:
            from .numpy_engine import fill_holes
        volume, filled = fill_holes(volume, coverage, hole_filling, truncate)
        t_end = time.perf_counter()
        stats = {"frames": self._frames_added, "pixels_pasted": self._pasted,
                 "pixels_outside": self._pasted - self._landed, "voxels": self.grid.num_voxels,
                 "voxels_hit": hit, "filled_voxels": filled, "engine": self.engine,
                 "seconds": t_end - t0, "hole_filling_seconds": t_end - t_holes, "workers": _threads(self.engine)}
        return CompoundResult(volume, coverage, self.grid, stats)

    def _torch_result(self, hole_filling: HoleFilling) -> CompoundResult:
        """The torch engine: every kept frame pasted again (CUDA, or torch asked for)."""
        from . import torch_engine
        from .engine import PasteJob
        from .memory import chunk_frames_for, default_workers

        t0 = time.perf_counter()
        frames = np.concatenate([f for f, _ in self._kept])
        p2v = self.grid.world_to_ijk()[None] @ np.concatenate([m for _, m in self._kept])
        opts = dataclasses.replace(self.options, hole_filling=hole_filling, engine="torch")
        sel = self._selection
        job = PasteJob(frames, fixed_matrices(p2v), sel, opts, self.grid.dims,
                       chunk_frames_for(opts, sel.shape[0] * sel.shape[1]), default_workers(opts), None, None)
        volume, coverage, pasted, workers = torch_engine.paste_frames(job)
        t_holes = time.perf_counter()
        truncate = opts.plus_arithmetic and np.issubdtype(frames.dtype, np.integer)
        volume, filled = torch_engine.fill_holes(volume, coverage, hole_filling, truncate)
        volume, coverage = torch_engine.to_numpy(volume), torch_engine.to_numpy(coverage)
        t_end = time.perf_counter()
        stats = {"frames": self._frames_added, "pixels_pasted": pasted, "pixels_outside": None,  # not counted
                 "voxels": self.grid.num_voxels, "voxels_hit": int(np.count_nonzero(coverage > 0)),
                 "filled_voxels": filled, "engine": "torch", "seconds": t_end - t0,
                 "hole_filling_seconds": t_end - t_holes, "workers": workers}
        return CompoundResult(volume, coverage, self.grid, stats)

    def detached(self) -> "Reconstructor":
        """A copy of what was compounded so far, to be finished (:meth:`snapshot`, :meth:`result`) in another
        thread while frames keep being added to this one. Costs one memory copy of the accumulators (the torch
        engine: of the list of frames); nothing is normalised here."""
        twin = copy.copy(self)
        twin._kept = list(self._kept)
        if self._acc is not None:
            twin._acc = self._acc.copied()
        return twin

    def snapshot(self, fill_holes: bool = False) -> CompoundResult:
        """The volume and coverage of the frames added so far (copies: adding goes on); hole filling only with
        ``fill_holes``."""
        return self._finish(self.options.hole_filling if fill_holes else HoleFilling())

    def result(self, final: bool = False) -> CompoundResult:
        """The volume with every frame added so far, holes filled as ``options.hole_filling`` says.
        ``final=True`` hands the accumulators over to the result without copying them (no frames may be added
        afterwards: :meth:`reset` first)."""
        res = self._finish(self.options.hole_filling, final)
        if final:
            self.reset()
        return res


def _threads(engine: str) -> int:
    if engine == "numba":
        import numba

        return int(numba.get_num_threads())
    return 1


def _count_pasted_numpy(frames: np.ndarray, sel: PixelSelection, threshold: float | None) -> int:
    """Pixels pasted (mask and threshold), vectorised per frame."""
    x0, y0, x1, y1 = sel.rect
    if threshold is None:
        return frames.shape[0] * sel.num_pixels
    thr = np.float32(threshold)
    total = 0
    for f in frames:  # one frame at a time: no [n, H, W] temporaries
        bright = f[y0:y1 + 1, x0:x1 + 1].astype(np.float32) >= thr
        total += int(np.count_nonzero(bright if sel.mask is None else bright & sel.mask))
    return total
