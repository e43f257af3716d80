"""``Reconstructor``: incremental compounding, frames added as they arrive, the volume available at any time.

The contract (live reconstruction builds on it):

- ``Reconstructor(grid, options)``; ``add_frames(frames, pixel_to_world)`` takes ``[n, H, W]`` (or one
  ``[H, W]``) frames and their ``[n, 4, 4]`` (or ``[4, 4]``) pixel-index -> world-mm matrices (spacing
  included, as an OpenIGTLink IMAGE message or a volume's IJKToRAS gives them);
- ``snapshot()`` is the volume and coverage so far (no hole filling unless asked), ``result()`` the final
  one with ``options.hole_filling``; adding frames one at a time gives the same volume as adding them all
  at once, and as the offline :func:`~.compounder.compound`;
- ``reset()`` forgets every frame; ``regrid(grid)`` moves what was compounded into a larger grid on the same
  lattice (an auto-growing live grid);
- every frame must have the frame size of the first (a clear error otherwise).

INTERIM implementation: frames are kept and every snapshot recompounds them all (correct, not fast). It is
replaced by engine accumulators that persist between calls (issue 21 item 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .compounder import compound
from .grid import OutputGrid
from .options import CompoundOptions, CompoundResult, HoleFilling


def _as_batch(frames: np.ndarray, pixel_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(frames [n, H, W], matrices [n, 4, 4] float64)`` from one frame or a batch; InputError when unlike."""
    f = np.asarray(frames)
    m = np.asarray(pixel_to_world, dtype=np.float64)
    if f.ndim == 2:
        f = f[None]
    if m.ndim == 2:
        m = m[None]
    if f.ndim != 3 or m.shape[1:] != (4, 4) or m.shape[0] != f.shape[0]:
        raise InputError(f"add_frames needs frames [n, H, W] with matrices [n, 4, 4]; got frames {np.shape(frames)} "
                         f"and matrices {np.shape(pixel_to_world)}.",
                         "Pass one pixel-to-world matrix per frame (a single [H, W] frame takes one [4, 4]).")
    if not np.isfinite(m).all():
        raise InputError("A pixel-to-world matrix passed to add_frames holds NaN or infinity.",
                         "Drop frames whose tracking is invalid before adding them.")
    return f, m


class Reconstructor:
    """Compound frames into ``grid`` as they arrive (see the module docstring for the contract)."""

    def __init__(self, grid: OutputGrid, options: CompoundOptions | None = None) -> None:
        self.options = options or CompoundOptions()
        self.options.validate()
        self.grid = grid
        self.reset()

    @property
    def frames_added(self) -> int:
        return sum(len(f) for f in self._frames)

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        return None if not self._frames else tuple(self._frames[0].shape[1:])

    def reset(self) -> None:
        """Forget every frame added so far (the grid and options stay)."""
        self._frames: list[np.ndarray] = []
        self._matrices: list[np.ndarray] = []

    def add_frames(self, frames: np.ndarray, pixel_to_world: np.ndarray) -> None:
        """Add ``frames`` with their pixel-index -> world-mm matrices, in arrival order."""
        f, m = _as_batch(frames, pixel_to_world)
        if self._frames and f.shape[1:] != self._frames[0].shape[1:]:
            raise InputError(f"A frame of {f.shape[2]}x{f.shape[1]} pixels arrived after frames of "
                             f"{self._frames[0].shape[2]}x{self._frames[0].shape[1]}.",
                             "Keep the imaging depth and size fixed during a reconstruction, or reset it "
                             "(a new reconstruction) after changing them.")
        if self._frames and f.dtype != self._frames[0].dtype:
            f = f.astype(self._frames[0].dtype)
        self._frames.append(f.copy())
        self._matrices.append(m.copy())

    def regrid(self, grid: OutputGrid) -> None:
        """Compound into ``grid`` from now on, keeping every frame added so far."""
        self.grid = grid

    def _compound(self, hole_filling: HoleFilling) -> CompoundResult:
        if not self._frames:
            shape = self.grid.shape_zyx
            return CompoundResult(np.zeros(shape, np.float32), np.zeros(shape, np.float32), self.grid,
                                  {"frames": 0})
        sweep = Sweep(np.concatenate(self._frames), (1.0, 1.0), np.concatenate(self._matrices))
        opts = dataclasses.replace(self.options, hole_filling=hole_filling)
        return compound(sweep, self.grid, opts)

    def snapshot(self, fill_holes: bool = False) -> CompoundResult:
        """The volume and coverage of the frames added so far; hole filling only with ``fill_holes``."""
        return self._compound(self.options.hole_filling if fill_holes else HoleFilling())

    def result(self) -> CompoundResult:
        """The final volume: every frame added, holes filled as ``options.hole_filling`` says."""
        return self._compound(self.options.hole_filling)
