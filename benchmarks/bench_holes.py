"""Stick hole filling benchmark: torch ``holes.fill_sticks``, numba ``holes_numba.fill_sticks`` and numpy
``holes_numpy.fill_sticks`` on the spine sweep compounded at 0.5 mm, nearest (the IGSIO stick case, 147x106x105
voxels), 1 and 2 threads (numpy runs on one core either way).

``python benchmarks/bench_holes.py [--runs 9]``; prints medians (ms) of interleaved runs after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import time
import warnings
from pathlib import Path

import numba
import numpy as np
import torch

from freehandrecon.compound import (HoleFilling, compound, fit_grid, holes, holes_numba, holes_numpy,
                                    options_from_plus_config)
from freehandrecon.io.plus import sweep_from_plus

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"


def spine_volume() -> tuple[np.ndarray, np.ndarray, int, int]:
    """Volume, filled mask, stick length and count of the spine sweep at 0.5 mm, nearest, no hole filling."""
    cfg = DATA / "plus" / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = sweep_from_plus(DATA / "igsio" / "SpinePhantomFreehand.igs.mha", plus_config=cfg)
    options, spacing = options_from_plus_config(cfg)
    hf = options.hole_filling
    options = dataclasses.replace(options, interpolation="nearest", hole_filling=HoleFilling())
    result = compound(sweep, fit_grid(sweep, spacing, clip_rectangle=options.clip_rectangle), options)
    return np.ascontiguousarray(result.volume, dtype=np.float32), result.coverage > 0, hf.size, hf.sticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9, help="timed runs per case (median printed)")
    args = parser.parse_args()
    vol, filled, length, sticks = spine_volume()
    tv, tf = torch.from_numpy(vol), torch.from_numpy(filled)
    ref, n_ref = holes.fill_sticks(tv, tf, length, sticks, truncate=True)
    ours, n = holes_numba.fill_sticks(vol, filled, length, sticks, truncate=True)  # JIT / cache load
    assert n == n_ref and np.array_equal(ours, ref.numpy()), "numba and torch differ"
    plain, n_plain = holes_numpy.fill_sticks(vol, filled, length, sticks, truncate=True)
    assert n_plain == n_ref and np.array_equal(plain, ref.numpy()), "numpy and torch differ"
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {platform.processor()}  "
          f"torch {torch.__version__}  numba {numba.__version__}")
    print(f"volume {vol.shape[::-1]} (x, y, z), stick length {length}, sticks {sticks}, "
          f"{filled.mean() * 100:.1f}% filled, {n} holes filled")
    print("threads  torch ms  numba ms  numpy ms  torch/numba  numpy/numba")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        times: dict[str, list[float]] = {"torch": [], "numba": [], "numpy": []}
        for run in range(args.runs + 1):  # interleaved, the first run of each is a warm-up
            for name in times:
                t0 = time.perf_counter()
                if name == "torch":
                    holes.fill_sticks(tv, tf, length, sticks, truncate=True)
                elif name == "numba":
                    holes_numba.fill_sticks(vol, filled, length, sticks, truncate=True)
                else:
                    holes_numpy.fill_sticks(vol, filled, length, sticks, truncate=True)
                if run:
                    times[name].append(time.perf_counter() - t0)
        t, m, p = (statistics.median(times[k]) * 1e3 for k in ("torch", "numba", "numpy"))
        print(f"{threads:7d}  {t:8.2f}  {m:8.2f}  {p:8.2f}  {t / m:11.2f}  {p / m:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
