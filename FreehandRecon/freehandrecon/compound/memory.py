"""Memory needed by a compounding run, estimated before anything is allocated.

Two figures, both peaks of resident memory (RSS) above what the process held before:

* :func:`estimate_memory_bytes`: one :func:`~.compounder.compound` call (its input frames excluded), the
  larger of the paste stage (accumulators, per-worker buffers, one chunk's work arrays, the finishing
  division) and the hole-filling stage (volume, coverage and the filler's work arrays).
* :func:`estimate_reconstruction_bytes`: the whole reconstruction job of :mod:`freehandrecon.logic` above
  an idle process that imported the same modules: reading the input, the input frames held throughout,
  one :func:`compound` per channel (earlier results held), then MRML nodes, files and rendering.

Each term below is a byte count per voxel / pixel read off the code that allocates it, rounded up;
``benchmarks/bench_memory.py`` measures the estimates against peak RSS (estimate >= peak, within 1.5x).
The refusal (:func:`check_memory`, :func:`check_reconstruction_memory`) inverts the same estimate to
suggest a spacing that fits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from ..errors import ResourceError
from .engine import planned_engine, planned_offline_engine
from .grid import OutputGrid
from .options import CompoundOptions

# Pixels per chunk: small enough to stay in cache, large enough to amortise per-call overhead.
CHUNK_PIXELS = {"nearest": 1 << 20, "linear": 1 << 18}
# The tiled mean path (paste.py) keeps only the chunk's frame pixels, so its chunks can be larger.
FAST_CHUNK_PIXELS = 1 << 21
# Numpy engine: bytes per tile pixel, a generous bound on tracemalloc's peak per tile (spine sweep: ~19 for
# nearest-mean, ~122 for linear-mean): coordinates, flat indices, compacted samples; linear adds 8 corner
# indices (intp) and float32 weights, max/latest the selected corners and (latest) the int64 pixel order.
NUMPY_PIXEL_BYTES = {("nearest", False): 64, ("nearest", True): 96, ("linear", False): 256, ("linear", True): 400}
# Torch engine, whole-chunk kernels (max, latest, PLUS arithmetic): bytes per chunk pixel of the work
# tensors (float values, fixed-point coordinates, int64 flat indices; linear: 8 corners of indices, weights,
# expanded values, corner tests; latest: the int64 pixel order). Measured 80-125 (nearest) and 420-570
# (linear), depending on how the allocator reuses freed chunks; PLUS arithmetic adds the stable sort.
TORCH_CHUNK_PIXEL_BYTES = {"nearest": 140, "linear": 620}
LATEST_CHUNK_PIXEL_BYTES = {"nearest": 16, "linear": 72}  # latest: the int64 pixel order (8 corners: linear)
PLUS_CHUNK_PIXEL_BYTES = {"nearest": 200, "linear": 1600}
# Per hole that stick filling fills: its flat index (int64), and the per-hole work of the shortest-stick
# search and interpolation (keys, scores, direction, steps, float64 values and weights; ~121 measured).
STICK_HOLE_BYTES = 136
STICK_HOLE_BYTES_RANKED = 260  # several sticks: every direction's total per hole, then a ranking
# Numpy stick filling (holes_numpy): per padded voxel the distances (4 arrays), 13 direction codes, the lowest code,
# the hole mask and the padded float volume (23 bytes); per hole its codes, the sticks it uses and the float64
# interpolation (131-154 measured on the spine at 0.25 mm, one or three sticks)
NUMPY_STICK_PADDED_BYTES = 23
NUMPY_STICK_HOLE_BYTES = 170
NUMBA_FIXED_BYTES = 64 << 20  # 59 MB measured (LLVM and the cached kernels, loaded on the first call)
# Numba engine: frames per call of the kernels (they read the frames in place and allocate nothing per pixel,
# so a chunk only sets how often progress and cancellation are checked).
NUMBA_CHUNK_PIXELS = 1 << 22
# Fixed costs that do not scale with the grid: thread stacks, allocator arenas, small tensors, the pixel
# selection masks. Torch's first kernels initialise its thread pool and allocator.
# Numba: the compiled kernels loaded from numba's cache on the first call of a process (LLVM, the kernels'
# code, the thread pool).
FIXED_BYTES = {"torch": 24 << 20, "numpy": 2 << 20, "numba": NUMBA_FIXED_BYTES}


def uses_fast_paste(options: CompoundOptions) -> bool:
    """Whether :func:`compound` takes the torch engine's tiled multi-worker path (mean/importance without PLUS
    arithmetic)."""
    return (options.compounding in ("mean", "importance") and not options.plus_arithmetic
            and planned_engine(options) == "torch")


def default_workers(options: CompoundOptions) -> int:
    """Paste worker threads before any memory limit: one per torch thread (CPU, fast path), at most
    :data:`~.paste.MAX_WORKERS`; the numpy engine has one."""
    if not uses_fast_paste(options) or str(options.device).startswith("cuda"):
        return 1
    import torch

    from .paste import MAX_WORKERS

    return max(1, min(torch.get_num_threads(), MAX_WORKERS))


def chunk_frames_for(options: CompoundOptions, frame_pixels: int) -> int:
    """Frames per chunk (``options.chunk_frames`` or automatic)."""
    if options.chunk_frames is not None:
        return int(options.chunk_frames)
    if planned_engine(options) == "numba":
        per_chunk = NUMBA_CHUNK_PIXELS
    else:
        per_chunk = FAST_CHUNK_PIXELS if uses_fast_paste(options) else CHUNK_PIXELS[options.interpolation]
    return max(1, per_chunk // max(frame_pixels, 1))


def chunk_bytes(options: CompoundOptions, frame_pixels: int, frame_width: int = 0, num_frames: int | None = None) -> int:
    """Bytes of the per-chunk work arrays (``frame_width``: pixels per row, for the numpy engine's tiles;
    ``num_frames``: the sweep's, when fewer than a chunk's)."""
    frames = chunk_frames_for(options, frame_pixels)
    if num_frames is not None:
        frames = max(1, min(frames, int(num_frames)))
    if planned_engine(options) == "numba":  # a float32 copy of a chunk whose pixel type the kernels do not read
        return 4 * frame_pixels * frames
    if uses_fast_paste(options):  # the chunk's frame values (float32 at most), the threshold test's float copy
        per_pixel = 4 + (5 if options.pixel_threshold is not None else 0)
        return per_pixel * frame_pixels * frames
    if planned_engine(options) == "numpy":  # works tile by tile; per frame: the threshold masks
        from .numpy_engine import TILE_PIXELS

        per_pixel = NUMPY_PIXEL_BYTES[(options.interpolation, options.compounding in ("max", "latest"))]
        tile = min(frame_pixels, max(TILE_PIXELS[options.interpolation], int(frame_width)))  # whole rows
        return per_pixel * tile + 2 * frame_pixels
    interp = options.interpolation
    per_pixel = PLUS_CHUNK_PIXEL_BYTES[interp] if options.plus_arithmetic else TORCH_CHUNK_PIXEL_BYTES[interp]
    if options.compounding == "latest":
        per_pixel += LATEST_CHUNK_PIXEL_BYTES[interp]
    return per_pixel * frame_pixels * frames


def worker_bytes(grid: OutputGrid, options: CompoundOptions) -> int:
    """Bytes each paste worker holds (its own complex accumulator and tile buffers)."""
    from .paste import TILE_PIXELS

    nearest = options.interpolation == "nearest"
    # per tile pixel: int32 coordinates and flat index, the (value, weight) pair, the thresholded values;
    # linear: fractions, axis weights, 8 corners of pairs and indices
    per_pixel = 32 if nearest else 172
    return 8 * _padded_length(grid) + per_pixel * TILE_PIXELS["nearest" if nearest else "linear"]


def _padded_length(grid: OutputGrid) -> int:
    """Length of the flat accumulators: the voxels plus a trash/overrun pad."""
    return grid.num_voxels + grid.dims[0] * grid.dims[1] + grid.dims[0] + 2


def _paste_stage(grid: OutputGrid, options: CompoundOptions, engine: str, frame_shape: tuple[int, int],
                 num_frames: int, itemsize: int, workers: int) -> tuple[int, int]:
    """(peak of pasting and finishing, bytes still held afterwards: volume and coverage)."""
    v, n = grid.num_voxels, _padded_length(grid)
    frame_pixels = int(frame_shape[0]) * int(frame_shape[1])
    chunk = chunk_bytes(options, frame_pixels, int(frame_shape[1]), num_frames)
    mode = options.compounding
    if engine == "numba":
        # value and weight accumulators of the voxels (float32; PLUS mean on float frames: float64 values);
        # finishing: mean divides into a new volume, PLUS mean converts float64 values to float32, max and latest
        # reuse the accumulators
        plus = options.plus_arithmetic and mode in ("mean", "importance")
        acc = (12 if plus and itemsize >= 4 else 8) * v
        finish = 4 * v if mode in ("mean", "importance") and (not plus or itemsize >= 4) else 0
        return max(acc + chunk, acc + finish), 8 * v
    if engine == "numpy":
        acc = {"mean": 8, "importance": 8, "max": 8, "latest": 16}[mode] * n
        # finishing: mean divides into a new volume (+ the coverage > 0 test), latest gathers into one in
        # blocks; max keeps its accumulator as the volume (views), hence held = both accumulators
        finish = {"mean": 5 * v, "importance": 5 * v, "max": 2 * v, "latest": 0}[mode]
        held = 8 * n if mode in ("max", "latest") else 4 * n + 4 * v
        return max(acc + chunk, acc + finish), held
    if uses_fast_paste(options):
        paste = workers * worker_bytes(grid, options) + chunk
        finish = 8 * n + 14 * v  # coverage, two tests, the guarded divisor, the quotient, the volume
        return max(paste, finish), 8 * v
    if options.plus_arithmetic and mode in ("mean", "importance"):
        return max(16 * n + chunk, 16 * n + 16 * v), 8 * v
    if mode in ("mean", "importance"):  # flat indices too large for the tiled path
        return max(8 * n + chunk, 8 * n + 14 * v), 8 * v
    acc = 8 * n if mode == "max" else 12 * n
    finish = 5 * v if mode == "max" else (13 + max(int(itemsize), 1)) * v  # latest: index, hit mask, gather
    return max(acc + chunk, acc + finish), 4 * n + 4 * v


def _holes_stage(grid: OutputGrid, options: CompoundOptions, engine: str, held: int, holes: int | None) -> int:
    """Peak while filling holes (``held``: the volume and coverage; ``holes``: voxels expected to be
    filled, None for the worst case of every voxel)."""
    hf = options.hole_filling
    v = grid.num_voxels
    m = v if holes is None else min(int(holes), v)
    if hf.method == "normalized":
        if engine in ("numpy", "numba"):  # two box sums (one copy per axis), fill mask, new volume, filled values
            return held + max(12 * v, 13 * v + 12 * m)
        return held + 26 * v  # avg_pool3d of volume*coverage and of coverage, masks, guarded division
    if hf.method == "stick":
        nx, ny, nz = grid.dims
        reach = int(hf.size) - 1
        steps = max(reach - 1, 1)
        padded = (nx + steps) * (ny + steps) * nz
        if engine == "numba":  # plane by plane: the filled mask, its padded copy and the new volume
            return held + v + padded + 4 * v
        if engine == "numpy":
            return held + v + NUMPY_STICK_PADDED_BYTES * padded + 4 * v + NUMPY_STICK_HOLE_BYTES * m
        fast = int(hf.sticks) == 1 and 16 * reach + 7 <= 255
        unit = 8 if fast else 1
        top = 2 * reach * unit + unit
        ddt = 1 if top <= 255 else 2 if top <= 32767 else 4
        # distances (dist0, doubled, stepped, scratch): 8; forward per direction + backward: 14; class keys
        # (fast: lowest/highest, 6) or every direction's total (13); the padded float volume; filled mask
        per_voxel = ddt * (8 + 14 + (6 if fast else 13)) + 4
        per_hole = STICK_HOLE_BYTES if fast else STICK_HOLE_BYTES_RANKED
        return held + v + per_voxel * padded + 4 * v + per_hole * m
    return held


def estimate_memory_bytes(grid: OutputGrid, options: CompoundOptions, frame_shape: tuple[int, int],
                          num_frames: int, workers: int | None = None, *, holes: int | None = None,
                          itemsize: int = 4) -> int:
    """Peak bytes one :func:`compound` call adds to the process (its input frames excluded).

    ``workers``: paste worker threads. By default the minimum (one) is counted: :func:`compound` adds
    workers, each with its own accumulator, only while they fit the memory limit. ``holes``: voxels hole
    filling is expected to fill (:func:`expected_holes`); None counts every voxel. ``itemsize``: bytes per
    input pixel."""
    engine = planned_offline_engine(options, int(num_frames) * int(frame_shape[0]) * int(frame_shape[1]),
                                    grid.num_voxels)
    if engine != planned_engine(options):  # a small job on numpy (engine.offline_engine): estimate that engine
        options = dataclasses.replace(options, engine=engine)
    nw = 1 if workers is None else max(1, int(workers))
    paste, held = _paste_stage(grid, options, engine, frame_shape, num_frames, itemsize, nw)
    peak = max(paste, _holes_stage(grid, options, engine, held, holes))
    per_frame = 4 * 4 * 8 * 3 + 3 * 3 * 8  # pixel-to-voxel matrices, their fixed-point columns
    frame_pixels = int(frame_shape[0]) * int(frame_shape[1])
    masks = (5 if options.compounding == "importance" else 1) * frame_pixels  # pixel mask, importance weights
    return int(peak + per_frame * int(num_frames) + masks + FIXED_BYTES[engine])


def expected_holes(pixel_to_world: np.ndarray, frame_shape: tuple[int, int], grid: OutputGrid,
                   options: CompoundOptions) -> int | None:
    """Voxels hole filling will fill, estimated from the frame geometry (an over-estimate), or None.

    Between two consecutive frames the slab is ``gap`` thick (how far the clip rectangle's corners move along
    the frame normal). Pasting fills a layer of about one voxel (nearest) or two (linear) per frame, measured
    along the normal; the rest of the slab are holes, and they are filled only where a stick (at most
    ``size - 1`` steps between its two filled ends) spans the gap, or within the normalized kernel's reach of
    a filled voxel (which also fills a rim around the swept region). Checked against the filled counts of the
    spine sweep at 1, 0.5 and 0.25 mm (nearest and linear, both methods): the estimate was never below."""
    hf = options.hole_filling
    if hf.method == "none":
        return 0
    p2w = np.asarray(pixel_to_world, dtype=np.float64)
    if p2w.ndim != 3 or p2w.shape[0] < 1:
        return None
    from .grid import _pixel_rect

    h, w = frame_shape
    x0, y0, x1, y1 = _pixel_rect(w, h, options.clip_rectangle, None)
    corners = np.array([[x0, y0, 0, 1], [x1, y0, 0, 1], [x0, y1, 0, 1], [x1, y1, 0, 1]], dtype=np.float64)
    pts = np.einsum("nab,pb->npa", p2w, corners)[..., :3]  # [N, 4, 3]
    u, v = p2w[:, :3, 0], p2w[:, :3, 1]
    area = np.linalg.norm(np.cross(u, v), axis=1) * (x1 - x0 + 1) * (y1 - y0 + 1)  # mm^2 per frame
    normal = np.cross(u, v)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    sp = np.asarray(grid.spacing, dtype=np.float64)
    s_min, s_max, voxel = float(sp.min()), float(sp.max()), float(np.prod(sp))
    # one voxel step along the grid's axes and diagonals covers at most |n|_1 voxel sizes along the normal n
    n1 = np.abs(normal @ np.asarray(grid.direction)).sum(axis=1)[:, None]  # [N, 1], 1 .. sqrt(3)
    # pasted layer per frame: ~|n|_1 voxels (nearest) or twice that (linear's 8 corners); 0.7 of it, so that
    # the holes are over-estimated
    nominal = (1.0 if options.interpolation == "nearest" else 2.0) * s_min * n1
    layer = 0.7 * nominal
    if hf.method == "stick":
        span = (int(hf.size) - 1) * s_max * n1  # the longest stick, measured along the frame normal
        rim = np.zeros_like(n1)
    else:
        span = 2 * ((int(hf.size) | 1) // 2) * s_max * n1  # reach of the box on both sides
        rim = span / 2
    if pts.shape[0] < 2:
        return int(min(grid.num_voxels, (area[:, None] * 2 * rim).sum() / voxel))
    gaps = np.abs(np.einsum("npa,na->np", pts[1:] - pts[:-1], normal[:-1]))  # [N-1, 4]
    holes = np.clip(gaps - layer[:-1], 0.0, None)
    if hf.method == "stick":
        # a stick must span the holes between the two pasted layers (taken 1.5x as thick, to be generous)
        holes = np.where(gaps - 1.5 * nominal[:-1] <= span[:-1], holes, 0.0)
    else:
        holes = np.minimum(holes, span[:-1])
    slab = (area[:-1] * holes.mean(axis=1)).sum()
    # normalized also fills a rim around the swept region: beyond the first/last frames and the frame edges
    edge = 2 * (x1 - x0 + 1 + y1 - y0 + 1) * float(np.linalg.norm(u, axis=1).mean())
    shell = float(rim.max()) * (area[0] + area[-1] + edge * gaps.mean(axis=1).sum())
    return int(min(grid.num_voxels, (slab + shell) / voxel))


def available_bytes(device: str) -> int:
    """Memory that may be used on ``device`` (80 % of what is free now)."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return int(0.8 * info.get("MemAvailable", info["MemFree"]))
    except (OSError, KeyError, ValueError):
        return 8 << 30


# --- the whole reconstruction job ---------------------------------------------------------------

# Compounding inside the job: the reader's and poses' leftovers (allocator arenas). Nodes: an MRML scene
# with its logic objects, VTK's writers (~15 MB measured).
JOB_FIXED_BYTES = 16 << 20
SCENE_FIXED_BYTES = 24 << 20
# What each compound() leaves resident besides its result: freed work arrays the allocator keeps (0-45 MB).
# Numba: also its loaded kernels (NUMBA_FIXED_BYTES), which stay resident.
RESIDUE_BYTES = {"torch": 32 << 20, "numpy": 16 << 20, "numba": (16 << 20) + NUMBA_FIXED_BYTES}
# Volume rendering (offscreen, through Slicer's displayable managers): the mapper's copies of the volume and
# its textures while rendering (~11 bytes a voxel measured on the spine sweep), part of them kept to the end.
RENDER_VOXEL_BYTES = 14
RENDER_KEPT_VOXEL_BYTES = 8
RENDER_FIXED_BYTES = 32 << 20
READ_FACTOR = 3  # reading a sweep file: the file's bytes, the decoded frames and one conversion at most


def estimate_reconstruction_bytes(grid: OutputGrid, options: Sequence[CompoundOptions], frame_shape: tuple[int, int],
                                  num_frames: int, input_bytes: int, *, holes: Sequence[int | None] | None = None,
                                  itemsize: int = 1, nodes: bool = True, render: bool = False,
                                  browser: bool = False, mrb: bool = False, workers: int | None = None) -> int:
    """Peak bytes of a reconstruction job above an idle process that imported the same modules.

    ``options``: the B-mode's options, then each channel's; ``input_bytes``: the sweep's frames and channels
    (held throughout; reading them peaks at about :data:`READ_FACTOR` times that). ``nodes``: the result goes
    into MRML volume nodes (the command line, the Slicer module); ``browser``: the frames are copied into a
    sequence browser (the command line); ``mrb``: the scene is saved as .mrb (its sequence is written out);
    ``render``: a 3D view PNG too.
    """
    v = grid.num_voxels
    holes = list(holes) if holes is not None else [None] * len(options)
    peak = READ_FACTOR * int(input_bytes)
    results = 0
    for k, opts in enumerate(options):  # each compound() with the earlier results held
        est = estimate_memory_bytes(grid, opts, frame_shape, num_frames, workers, holes=holes[k], itemsize=itemsize)
        peak = max(peak, int(input_bytes) + results + est)
        ran = planned_offline_engine(opts, int(num_frames) * int(frame_shape[0]) * int(frame_shape[1]), v)
        results += 8 * v + RESIDUE_BYTES[ran]  # float32 volume and coverage
    if nodes:
        # node arrays: each volume in the input pixel type, the float32 coverage; building them rounds a
        # float32 copy and clips another; the report masks the covered voxels (after rendering)
        held = int(input_bytes) + results + (4 + max(itemsize, 1) * len(options)) * v + SCENE_FIXED_BYTES
        if browser:
            held += int(1.1 * input_bytes)  # the frames in the browser's sequence, one volume node each
        transient = 8 * v
        if mrb:  # saving the sequence of frames
            transient = max(transient, int(1.1 * input_bytes))
        if render:
            transient = max(transient, RENDER_VOXEL_BYTES * v + RENDER_FIXED_BYTES,
                            RENDER_KEPT_VOXEL_BYTES * v + RENDER_FIXED_BYTES + 5 * v)
        peak = max(peak, held + transient)
    return int(peak + JOB_FIXED_BYTES)


# --- refusals -----------------------------------------------------------------------------------

def _grid_at(grid: OutputGrid, spacing: np.ndarray) -> OutputGrid:
    """The same box at ``spacing`` with every axis rounded up (at least the voxels a fitted grid or an ROI
    of that box would have)."""
    extent = (np.asarray(grid.dims) - 1) * grid.spacing
    dims = tuple(int(d) for d in np.ceil(extent / spacing - 1e-9).astype(np.int64) + 2)
    return OutputGrid(grid.origin.copy(), spacing, dims, grid.direction.copy())


def _display(spacing: np.ndarray) -> tuple[np.ndarray, str]:
    """Spacing rounded up for display (2 significant digits), and its text."""
    digits = np.maximum(0, 1 - np.floor(np.log10(spacing))).astype(int)
    shown = np.array([math.ceil(s * 10 ** d - 1e-9) / 10 ** d for s, d in zip(spacing, digits)])
    return shown, ", ".join(f"{s:g}" for s in shown)


def suggest_spacing(grid: OutputGrid, need_at: Callable[[OutputGrid], int], budget: int,
                    grid_at: Callable[[np.ndarray], OutputGrid] | None = None) -> np.ndarray | None:
    """The finest spacing (``grid.spacing`` times one factor, rounded up for display) whose estimate
    ``need_at(grid)`` is within ``budget``, searched by bisection over the factor; None when even a
    one-voxel-thick grid does not fit. ``grid_at(spacing)``: the grid a run at that spacing would use."""
    grid_at = grid_at or (lambda sp: _grid_at(grid, sp))
    base = np.asarray(grid.spacing, dtype=np.float64)
    hi = max(np.asarray(grid.dims, dtype=np.float64).max(), 2.0) * 2.0  # a grid of a few voxels per axis
    if need_at(grid_at(base * hi)) > budget:
        return None
    lo = 1.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if need_at(grid_at(base * mid)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.001:
            break
    shown, _ = _display(base * hi)
    while need_at(grid_at(shown)) > budget:  # never happens for a monotone estimate; kept as a guard
        shown, _ = _display(shown * 1.01)
    return shown


def refuse(grid: OutputGrid, need: int, budget: int, device: str, suggested: np.ndarray | None,
           what: str = "") -> ResourceError:
    """The ResourceError for an estimate over the budget, with the suggested spacing."""
    if suggested is None:
        return ResourceError(f"Even a tiny output needs more than the {budget / 2**20:.0f} MiB {device} allows "
                             f"(this grid: about {need / 2**20:.0f} MiB).",
                             "Free memory or raise the memory limit; a sweep with fewer or smaller frames needs less.")
    _, text = _display(suggested)
    return ResourceError(
        f"The output grid {grid.dims[0]}x{grid.dims[1]}x{grid.dims[2]} ({grid.num_voxels / 1e6:.1f} M voxels) needs "
        f"about {need / 2**30:.2f} GiB{what} but {device} allows only {budget / 2**30:.2f} GiB.",
        f"Use a coarser spacing of about {text} mm (the finest whose estimate fits), a smaller ROI, or raise the "
        "memory limit.")


def check_memory(grid: OutputGrid, options: CompoundOptions, frame_shape: tuple[int, int],
                 num_frames: int, *, holes: int | None = None, itemsize: int = 4) -> tuple[int, int]:
    """Return the estimate and the number of paste workers that fit (more workers need more accumulators),
    or raise :class:`ResourceError` suggesting a spacing whose estimate fits even one worker."""
    need = estimate_memory_bytes(grid, options, frame_shape, num_frames, workers=1, holes=holes, itemsize=itemsize)
    budget = int(options.max_memory_bytes) if options.max_memory_bytes is not None else available_bytes(options.device)
    if need <= budget:
        workers = default_workers(options)
        while workers > 1 and estimate_memory_bytes(grid, options, frame_shape, num_frames, workers, holes=holes,
                                                    itemsize=itemsize) > budget:
            workers -= 1
        return estimate_memory_bytes(grid, options, frame_shape, num_frames, workers, holes=holes,
                                     itemsize=itemsize), workers
    scale = 1.0 if holes is None else holes / max(grid.num_voxels, 1)  # holes scale with the voxels

    def need_at(g: OutputGrid) -> int:
        return estimate_memory_bytes(g, options, frame_shape, num_frames, 1,
                                     holes=None if holes is None else int(math.ceil(scale * g.num_voxels)),
                                     itemsize=itemsize)

    where = "the memory limit" if options.max_memory_bytes is not None else f"the free memory on {options.device}"
    raise refuse(grid, need, budget, where, suggest_spacing(grid, need_at, budget))


def check_reconstruction_memory(grid: OutputGrid, options: Sequence[CompoundOptions], frame_shape: tuple[int, int],
                                num_frames: int, input_bytes: int, *, grid_at: Callable[[np.ndarray], OutputGrid],
                                holes_at: Callable[[OutputGrid], list[int | None]], itemsize: int = 1,
                                nodes: bool = True, render: bool = False, browser: bool = False,
                                mrb: bool = False, check: bool = True) -> int:
    """The job's estimate (:func:`estimate_reconstruction_bytes`, with the paste workers compound() would
    start), or (``check``) :class:`ResourceError` when even one worker's exceeds ``options[0].max_memory_bytes``
    (default: the input already held plus 80 % of the available memory), suggesting the finest spacing whose
    estimate fits: ``grid_at(spacing)`` is the grid a run at that spacing would use, ``holes_at(grid)`` its
    holes."""
    opts = options[0]

    def need_at(g: OutputGrid, workers: int | None = None) -> int:
        return estimate_reconstruction_bytes(g, options, frame_shape, num_frames, input_bytes, holes=holes_at(g),
                                             itemsize=itemsize, nodes=nodes, render=render, browser=browser, mrb=mrb,
                                             workers=workers)

    need = need_at(grid)
    if not check:
        return need_at(grid, max(default_workers(o) for o in options))
    if opts.max_memory_bytes is not None:
        budget = int(opts.max_memory_bytes)
    else:  # what is free now, besides the input this process already holds
        budget = available_bytes("cpu") + int(input_bytes)
    if need > budget:
        raise refuse(grid, need, budget, "the free memory" if opts.max_memory_bytes is None else "the memory limit",
                     suggest_spacing(grid, need_at, budget, grid_at), " for the whole reconstruction")
    workers = max(default_workers(o) for o in options)
    while workers > 1 and need_at(grid, workers) > budget:
        workers -= 1
    return need_at(grid, workers)
