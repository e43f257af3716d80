"""Sensorless benchmark: frames/s of the learned network, both estimators end to end, the quality guard
and the simulator (one process per core, as training-data generation runs)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _simulate_job(args: tuple[str, int, int]) -> tuple[int, float]:
    from ..simulate import random_sweep

    site, seed, frames = args
    t0 = time.perf_counter()
    random_sweep(site, seed, frames, kind="mixed")
    return frames, time.perf_counter() - t0


def simulator_throughput(workers: int = 2, sweeps: int = 4, frames: int = 60) -> dict[str, float]:
    """128x128 frames/s of ``random_sweep`` (phantom build included) with ``workers`` processes."""
    from ..simulate import TRAIN_SITES

    jobs = [(TRAIN_SITES[k % len(TRAIN_SITES)], 50_000 + k, frames) for k in range(sweeps)]
    t0 = time.perf_counter()
    # spawn, not fork: a forked child of a process whose torch thread pool is running can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_simulate_job, jobs))
    wall = time.perf_counter() - t0
    frames_total = sum(n for n, _ in done)
    busy = sum(t for _, t in done) / workers  # the workers' own time: no process start-up (torch import)
    return {"workers": workers, "sweeps": sweeps, "frames_per_second": frames_total / busy,
            "frames_per_second_wall": frames_total / wall}


def run_sensorless_benchmark(quick: bool = False) -> list[dict[str, Any]]:
    """Rows ``{"what", "frames_per_second", "note"}`` for the table printed by ``bench sensorless``."""
    import torch

    from ..poses import estimate_poses
    from ..poses.learned import benchmark_inference
    from ..poses.speckle import curve_for
    from ..quality import check_sweep, guard_available
    from ..simulate import random_sweep

    rows = []
    n = 64 if quick else 256
    for threads in (2, 1):
        r = benchmark_inference(num_frames=n, threads=threads)
        rows.append({"what": f"learned network, {threads} thread(s)", "frames_per_second": r["frames_per_second"],
                     "note": f"{r['input_size']}x{r['input_size']} model input, {n} frames"})
    sweep = random_sweep("site-b", 50_000, 40 if quick else 100, kind="mixed")
    curve_for(sweep, None)  # the one-off probe calibration is not part of the per-sweep cost
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for method in ("learned", "speckle"):
            est = estimate_poses(sweep, method)
            rows.append({"what": f"estimate-poses --method {method}", "frames_per_second": est.frames_per_second,
                         "note": f"end to end incl. resampling, {sweep.num_frames} frames of 128x128, 2 threads"})
        if guard_available():
            t0 = time.perf_counter()
            check_sweep(sweep)
            fps = sweep.num_frames / (time.perf_counter() - t0)
            rows.append({"what": "quality guard (check_sweep)", "frames_per_second": fps,
                         "note": f"{1000 / fps:.2f} ms per frame"})
    finally:
        torch.set_num_threads(previous)
    sim = simulator_throughput(sweeps=2 if quick else 6, frames=30 if quick else 100)
    rows.append({"what": "simulator (random_sweep)", "frames_per_second": sim["frames_per_second"],
                 "note": f"128x128, {sim['workers']} processes x 1 thread, phantom build included "
                         f"({sim['frames_per_second_wall']:.0f} frames/s counting process start-up)"})
    return rows


def format_sensorless_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| what | frames/s | note |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['frames_per_second']:.0f} | {r['note']} |" for r in rows]
    return "\n".join(lines)
