"""Memory needed by a compounding run, estimated before anything is allocated."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ResourceError
from .engine import planned_engine
from .grid import OutputGrid
from .options import CompoundOptions

# Pixels per chunk: small enough to stay in cache, large enough to amortise per-call overhead.
CHUNK_PIXELS = {"nearest": 1 << 20, "linear": 1 << 18}
# The tiled mean path (paste.py) keeps only the chunk's frame pixels, so its chunks can be larger.
FAST_CHUNK_PIXELS = 1 << 21
# Numpy engine: bytes per tile pixel, a generous bound on tracemalloc's peak per tile (spine sweep: ~19 for
# nearest-mean, ~122 for linear-mean): coordinates, flat indices, compacted samples; linear adds 8 corner
# indices (intp) and float32 weights, max/latest the selected corners and (latest) the int64 pixel order.
# Its accumulators and outputs take less than voxel_bytes counts, which is kept as their bound.
NUMPY_PIXEL_BYTES = {("nearest", False): 64, ("nearest", True): 96, ("linear", False): 256, ("linear", True): 400}


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


def voxel_bytes(options: CompoundOptions) -> int:
    """Bytes held per output voxel (accumulators, outputs, hole-filling work arrays)."""
    acc = {"mean": 8, "importance": 8, "max": 8, "latest": 12}[options.compounding]
    if options.plus_arithmetic and options.compounding in ("mean", "importance"):
        acc += 16
    out = 8 + 8  # float32 volume and coverage, plus their numpy copies
    holes = {"none": 0, "normalized": 16, "stick": 12}[options.hole_filling.method]
    return acc + out + holes


def chunk_frames_for(options: CompoundOptions, frame_pixels: int) -> int:
    """Frames per chunk (``options.chunk_frames`` or automatic)."""
    if options.chunk_frames is not None:
        return int(options.chunk_frames)
    per_chunk = FAST_CHUNK_PIXELS if uses_fast_paste(options) else CHUNK_PIXELS[options.interpolation]
    return max(1, per_chunk // max(frame_pixels, 1))


def chunk_bytes(options: CompoundOptions, frame_pixels: int, frame_width: int = 0) -> int:
    """Bytes of the per-chunk work arrays (``frame_width``: pixels per row, for the numpy engine's tiles)."""
    if uses_fast_paste(options):  # frame values (float32 at most) + threshold test; tile buffers are per worker
        return 12 * frame_pixels * chunk_frames_for(options, frame_pixels)
    if planned_engine(options) == "numpy":  # works tile by tile; per frame: the threshold masks
        from .numpy_engine import TILE_PIXELS

        per_pixel = NUMPY_PIXEL_BYTES[(options.interpolation, options.compounding in ("max", "latest"))]
        tile = min(frame_pixels, max(TILE_PIXELS[options.interpolation], int(frame_width)))  # whole rows
        return per_pixel * tile + 2 * frame_pixels
    per_pixel = 48 if options.interpolation == "nearest" else 8 * 24 + 32
    if options.plus_arithmetic:
        per_pixel += 64 if options.interpolation == "nearest" else 8 * 64
    return per_pixel * frame_pixels * chunk_frames_for(options, frame_pixels)


def worker_bytes(grid: OutputGrid, options: CompoundOptions) -> int:
    """Bytes each extra paste worker adds (its own accumulator and tile buffers)."""
    from .paste import TILE_PIXELS, tile_buffer_bytes

    pad = grid.dims[0] * grid.dims[1] + grid.dims[0] + 2
    nearest = options.interpolation == "nearest"
    return 8 * (grid.num_voxels + pad) + tile_buffer_bytes(nearest, TILE_PIXELS["nearest" if nearest else "linear"])


def estimate_memory_bytes(grid: OutputGrid, options: CompoundOptions, frame_shape: tuple[int, int],
                          num_frames: int, workers: int | None = None) -> int:
    """Peak bytes a :func:`compound` call needs (volume accumulators + one chunk of frames).

    ``workers``: paste worker threads. By default the minimum (one) is counted: :func:`compound` adds
    workers, each with its own accumulator, only while they fit the memory limit."""
    frame_pixels = int(frame_shape[0]) * int(frame_shape[1])
    fixed = chunk_bytes(options, frame_pixels, int(frame_shape[1])) + 4 * 3 * 3 * 8 * int(num_frames)
    pad = grid.dims[0] * grid.dims[1] + grid.dims[0] + 2
    nw = 1 if workers is None else int(workers)
    extra = (nw - 1) * worker_bytes(grid, options) if uses_fast_paste(options) else 0
    return int((grid.num_voxels + pad) * voxel_bytes(options) + fixed + extra)


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


def check_memory(grid: OutputGrid, options: CompoundOptions, frame_shape: tuple[int, int],
                 num_frames: int) -> tuple[int, int]:
    """Return the estimate and the number of paste workers that fit (more workers need more accumulators),
    or raise :class:`ResourceError` suggesting a spacing that would fit even one worker."""
    need = estimate_memory_bytes(grid, options, frame_shape, num_frames, workers=1)
    budget = int(options.max_memory_bytes) if options.max_memory_bytes is not None else available_bytes(options.device)
    if need <= budget:
        workers = default_workers(options)
        while workers > 1 and estimate_memory_bytes(grid, options, frame_shape, num_frames, workers) > budget:
            workers -= 1
        return estimate_memory_bytes(grid, options, frame_shape, num_frames, workers), workers
    per_voxel = voxel_bytes(options)
    voxels = grid.num_voxels + grid.dims[0] * grid.dims[1] + grid.dims[0] + 2
    fixed = need - voxels * per_voxel
    room = budget - fixed
    if room <= per_voxel:
        raise ResourceError(f"Even a tiny output needs {need / 2**20:.0f} MiB but only {budget / 2**20:.0f} MiB "
                            "may be used.", "Free memory, or lower chunk_frames.")
    factor = (voxels * per_voxel / room) ** (1.0 / 3.0) * 1.05
    suggested = np.asarray(grid.spacing) * factor
    sug = ", ".join(f"{math.ceil(s * 100) / 100:g}" for s in suggested)
    raise ResourceError(
        f"The output grid {grid.dims[0]}x{grid.dims[1]}x{grid.dims[2]} ({grid.num_voxels / 1e6:.1f} M voxels) needs "
        f"about {need / 2**30:.2f} GiB but only {budget / 2**30:.2f} GiB may be used on {options.device}.",
        f"Use a coarser spacing of about {sug} mm, a smaller ROI, or raise the memory limit.")
