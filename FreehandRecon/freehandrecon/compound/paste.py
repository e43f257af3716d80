"""Fast mean/importance pasting: cache-sized tiles, preallocated buffers, one accumulator per worker thread.

A tile is a block of rows of one frame. Its fixed-point voxel coordinates are one broadcast sum of a
per-row and a per-column term (see :mod:`.splat`); everything after that is written with ``out=`` into
buffers that are reused from tile to tile, so they stay in cache and no memory is allocated per tile.

On CPU the tiles of a chunk are shared out between worker threads. Each worker runs torch single-threaded
and adds into its own complex accumulator (sum of value*weight, sum of weight); the accumulators are added
at the end. ``index_add_`` is serial in torch, so this is what puts both cores to work on it, and a worker
that loses its core to another process only slows itself down instead of stalling every parallel region.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .fixedpoint import classify_tiles, coordinate_terms
from .splat import FRAC_BITS, ONE

# Pixels per tile: linear keeps its 8-corner buffers in L2; nearest has few ops per pixel and likes more.
TILE_PIXELS = {"nearest": 1 << 17, "linear": 1 << 15, "cuda": 1 << 22}
MAX_WORKERS = 4
NATIVE_DTYPES = (np.uint8, np.int8, np.int16, np.float32)  # exact in float32, usable by torch as they are


def tile_pixels(device: torch.device, nearest: bool) -> int:
    return TILE_PIXELS["cuda" if device.type == "cuda" else "nearest" if nearest else "linear"]


def tile_buffer_bytes(nearest: bool, tile: int) -> int:
    """Bytes of the per-worker tile buffers."""
    return (4 * 3 * 4 + 8 * 4 if nearest else 4 * 42) * tile


@dataclass
class Chunk:
    """What the workers need to paste frames ``[s, e)``: values, per-row/per-column coordinate terms."""

    values: torch.Tensor  # [n, Hc, Wc] frame pixels (native or float32)
    row_term: torch.Tensor  # [n, 3, Hc] raw fixed point (rounding offset folded in for nearest)
    col_term: torch.Tensor  # [n, 3, Wc]
    tiles: list[tuple[int, int, int, bool]]  # (frame, row0, row1, needs bounds check)


class MeanPaster:
    """One worker's accumulator and tile buffers."""

    def __init__(self, length: int, trash: int, dims: tuple[int, int, int], nearest: bool, tile: int, wc: int,
                 coord_dtype: torch.dtype, device: torch.device, static_valid: torch.Tensor | None,
                 importance: torch.Tensor | None, threshold: float | None) -> None:
        self.acc = torch.zeros(length, dtype=torch.complex64, device=device)
        self.trash, self.dims, self.nearest, self.wc = trash, dims, nearest, wc
        self.static_valid, self.importance, self.threshold = static_valid, importance, threshold
        self.rows_per_tile = max(1, tile // wc)
        t = self.rows_per_tile * wc
        f32, dev = torch.float32, device
        # flat storage; each tile takes contiguous views of the first elements (tiles can be shorter)
        self.coords = torch.empty(3 * t, dtype=coord_dtype, device=dev)
        self.flat = torch.empty(t, dtype=coord_dtype, device=dev)
        self.vf = torch.empty(t, dtype=f32, device=dev) if threshold is not None else None
        nx, ny, _ = dims
        if nearest:
            self.pair = torch.empty(2 * t, dtype=f32, device=dev)
        else:
            self.frac = torch.empty(3 * t, dtype=coord_dtype, device=dev)
            self.g = torch.empty(6 * t, dtype=f32, device=dev)  # per axis: (1 - f, f)
            self.yz = torch.empty(4 * t, dtype=f32, device=dev)
            self.pair = torch.empty(16 * t, dtype=f32, device=dev)  # per corner and pixel: (value*weight, weight)
            self.index = torch.empty(8 * t, dtype=coord_dtype, device=dev)
            self.offsets = torch.tensor([0, 1, nx, nx + 1, nx * ny, nx * ny + 1, nx * ny + nx, nx * ny + nx + 1],
                                        dtype=coord_dtype, device=dev).view(8, 1)
            self.lim = torch.tensor([nx - 1, ny - 1, dims[2] - 1], dtype=coord_dtype, device=dev).view(3, 1)
        self.dim_t = torch.tensor(list(dims), dtype=coord_dtype, device=dev).view(3, 1)

    def paste_chunk(self, chunk: Chunk, next_tile) -> None:
        """Paste tiles of ``chunk`` until ``next_tile()`` returns None."""
        while True:
            k = next_tile()
            if k is None:
                return
            self._tile(chunk, *chunk.tiles[k])

    def _valid(self, v: torch.Tensor, r0: int, r1: int, ok: torch.Tensor | None) -> torch.Tensor | None:
        """Pixels of the tile to use: static mask & threshold & bounds ``ok``."""
        valid = ok
        if self.static_valid is not None:
            m = self.static_valid[r0:r1].reshape(-1)
            valid = m if valid is None else valid & m
        if self.threshold is not None:
            bright = torch.ge(v, self.threshold)
            valid = bright if valid is None else valid & bright
        return valid

    def _tile(self, chunk: Chunk, f: int, r0: int, r1: int, check: bool) -> None:
        nx, ny, nz = self.dims
        t = (r1 - r0) * self.wc
        c = self.coords[:3 * t].view(3, t)
        torch.add(chunk.row_term[f, :, r0:r1, None], chunk.col_term[f, :, None, :], out=c.view(3, r1 - r0, self.wc))
        v = chunk.values[f, r0:r1].reshape(-1)
        if self.threshold is not None:
            self.vf[:t].copy_(v)
            v = self.vf[:t]
        flat = self.flat[:t]
        imp = None if self.importance is None else self.importance[r0:r1].reshape(-1)
        if self.nearest:
            c.bitwise_right_shift_(FRAC_BITS)
            ok = ((c >= 0) & (c < self.dim_t)).all(0) if check else None
            valid = self._valid(v, r0, r1, ok)
            torch.mul(c[2], nx * ny, out=flat)
            flat.add_(c[1], alpha=nx).add_(c[0])
            if valid is not None:
                flat.masked_fill_(~valid, self.trash)
            pair = self.pair[:2 * t].view(t, 2)
            pair[:, 0].copy_(v)
            if imp is None:
                pair[:, 1].fill_(1.0)
            else:
                pair[:, 0].mul_(imp)
                pair[:, 1].copy_(imp)
            self.acc.index_add_(0, flat, torch.view_as_complex(pair))
            return
        frac = self.frac[:3 * t].view(3, t)
        torch.bitwise_and(c, ONE - 1, out=frac)
        c.bitwise_right_shift_(FRAC_BITS)
        ok = ((c >= 0) & ((c + (frac > 0).to(c.dtype)) <= self.lim)).all(0) if check else None
        valid = self._valid(v, r0, r1, ok)
        torch.mul(c[2], nx * ny, out=flat)
        flat.add_(c[1], alpha=nx).add_(c[0])
        if valid is not None:
            flat.masked_fill_(~valid, self.trash)
        g = self.g[:6 * t].view(3, 2, t)
        torch.mul(frac, 1.0 / ONE, out=g[:, 1])
        torch.sub(1.0, g[:, 1], out=g[:, 0])
        yz = self.yz[:4 * t].view(2, 2, t)
        torch.mul(g[2].view(2, 1, t), g[1].view(1, 2, t), out=yz)  # [z-side, y-side]
        pair = self.pair[:16 * t].view(8, t, 2)
        w = pair[:, :, 1]
        torch.mul(yz.view(4, 1, t), g[0].view(1, 2, t), out=w.view(4, 2, t))  # corners in z, y, x order
        if valid is not None:
            w.mul_(valid)
        if imp is not None:
            w.mul_(imp)
        torch.mul(w, v, out=pair[:, :, 0])
        index = self.index[:8 * t].view(8, t)
        torch.add(flat, self.offsets, out=index)
        self.acc.index_add_(0, index.view(-1), torch.view_as_complex(pair).view(-1))


class WorkerPool:
    """Worker threads, each with its own :class:`MeanPaster`; torch runs single-threaded inside them."""

    def __init__(self, pasters: list[MeanPaster]) -> None:
        self.pasters = pasters
        self.inbox: list[queue.Queue] = [queue.Queue() for _ in pasters]
        self.done: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        if len(pasters) > 1:
            main_threads = torch.get_num_threads()
            for i in range(len(pasters)):
                th = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"freehandrecon-paste-{i}")
                th.start()
                self.threads.append(th)
            for _ in self.threads:
                self.done.get()  # every worker has set its own thread count
            torch.set_num_threads(main_threads)  # set_num_threads also sets the default new threads start with

    def _run(self, i: int) -> None:
        torch.get_num_threads()  # initialise this thread's settings before changing them
        torch.set_num_threads(1)
        self.done.put(None)
        while True:
            job = self.inbox[i].get()
            if job is None:
                return
            chunk, next_tile = job
            try:
                self.pasters[i].paste_chunk(chunk, next_tile)
                self.done.put(None)
            except BaseException as exc:  # handed to the main thread
                self.done.put(exc)

    def paste(self, chunk: Chunk) -> None:
        order = iter(range(len(chunk.tiles)))
        lock = threading.Lock()

        def next_tile() -> int | None:
            with lock:
                return next(order, None)

        if not self.threads:
            self.pasters[0].paste_chunk(chunk, next_tile)
            return
        for box in self.inbox:
            box.put((chunk, next_tile))
        errors = [self.done.get() for _ in self.threads]
        for err in errors:
            if err is not None:
                raise err

    def close(self) -> None:
        for box in self.inbox:
            box.put(None)
        for th in self.threads:
            th.join()

    def result(self) -> torch.Tensor:
        """The workers' accumulators, summed."""
        acc = self.pasters[0].acc
        for p in self.pasters[1:]:
            acc += p.acc
        return acc


def fits_int32(fixed: np.ndarray, rect: tuple[int, int, int, int], length: int) -> bool:
    """Whether every raw coordinate of every frame and every flat index fit in int32 (the fast path's type)."""
    x0, y0, x1, y1 = rect
    bound = np.abs(fixed) @ np.array([max(abs(x0), abs(x1)), max(abs(y0), abs(y1)), 1], dtype=np.int64)
    return int(bound.max()) + ONE < 2**30 and length < 2**31 - 1


def make_chunk(frames: np.ndarray, fixed: np.ndarray, s: int, e: int, rect: tuple[int, int, int, int],
               dims: tuple[int, int, int], nearest: bool, rows_per_tile: int, device: torch.device) -> Chunk:
    """Values and coordinate terms of frames ``[s, e)``; tiles wholly outside the grid are left out."""
    x0, y0, x1, y1 = rect
    row_term, col_term = coordinate_terms(fixed[s:e], rect, nearest)  # [n, 3, Hc], [n, 3, Wc]
    starts, ends, outside, inside = classify_tiles(row_term, col_term, rows_per_tile, dims, nearest)
    tiles = [(int(f), int(starts[k]), int(ends[k]), not bool(inside[f, k]))
             for f, k in zip(*np.nonzero(~outside))]
    block = frames[s:e, y0:y1 + 1, x0:x1 + 1]
    if block.dtype.type not in NATIVE_DTYPES:
        block = block.astype(np.float32)
    values = torch.from_numpy(np.ascontiguousarray(block)).to(device)
    return Chunk(values, torch.from_numpy(row_term.astype(np.int32)).to(device),
                 torch.from_numpy(col_term.astype(np.int32)).to(device), tiles)
