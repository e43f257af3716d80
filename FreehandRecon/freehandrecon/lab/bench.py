"""Compounding benchmark: frames/s, megapixels/s and peak memory, one fresh process per case."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPINE = Path(__file__).resolve().parents[3] / "Testing" / "Data" / "igsio"


def synthetic_sweep(num_frames: int = 1000, height: int = 480, width: int = 640, seed: int = 0):
    """A smooth freehand-like sweep (0.2 mm pixels, 0.15 mm steps, gentle tilts) with random speckle."""
    from ..geometry import params_to_matrix
    from ..sweep import Sweep

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, height, width), dtype=np.uint8)
    t = np.linspace(0.0, 1.0, num_frames)
    params = np.stack([5 * np.sin(2 * np.pi * t), 2 * np.sin(4 * np.pi * t), 0.15 * np.arange(num_frames),
                       90 + 8 * np.sin(2 * np.pi * t), 4 * np.sin(3 * np.pi * t), 3 * np.cos(2 * np.pi * t)], axis=1)
    return Sweep(frames=frames, pixel_spacing=(0.2, 0.2), image_to_world=params_to_matrix(params))


def _spine_sweep():
    from ..io.plus import sweep_from_plus

    return sweep_from_plus(SPINE / "SpinePhantomFreehand.igs.mha",
                           plus_config=SPINE / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml")


def _vm(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _run_case(case: dict) -> dict:
    """Run one case in this process (called in a fresh subprocess by :func:`run_compound_benchmark`)."""
    import warnings

    from ..compound import CompoundOptions, compound, fit_grid
    from ..compound.engine import require_engine

    engine = require_engine(CompoundOptions(engine=case.get("engine", "auto"), device=case["device"]))
    dev = case["device"]
    if engine == "torch":
        import torch

        torch.set_num_threads(int(case.get("threads", 2)))
    if case["kind"] == "normalized" and engine == "numpy":
        from ..compound.numpy_engine import fill_normalized as fill_np

        sweep = _spine_sweep()
        grid = fit_grid(sweep, 0.5)
        res = compound(sweep, grid, CompoundOptions(engine=engine))
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            _, n = fill_np(res.volume, res.coverage, 3)
            times.append(time.perf_counter() - t0)
        return {"case": f"normalized fill 3 on {grid.dims[0]}x{grid.dims[1]}x{grid.dims[2]} [numpy]",
                "seconds": min(times), "filled_voxels": n, "peak_mb": _vm("VmHWM")}
    if case["kind"] in ("stick", "normalized"):
        import torch

        from ..compound.holes import fill_normalized, fill_sticks

        sweep = _spine_sweep()
        grid = fit_grid(sweep, 0.5)
        res = compound(sweep, grid, CompoundOptions(device=dev))
        vol, cov = torch.from_numpy(res.volume).to(dev), torch.from_numpy(res.coverage).to(dev)
        if case["kind"] == "stick":
            name, filled = "stick fill 9/1", cov > 0
            run = lambda: fill_sticks(vol, filled, 9, 1)  # noqa: E731
        else:
            name = "normalized fill 3"
            run = lambda: fill_normalized(vol, cov, 3)  # noqa: E731
        run()
        times = []
        for _ in range(10):  # milliseconds each: best of 10 against the noise of a shared machine
            t0 = time.perf_counter()
            _, n = run()
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return {"case": f"{name} on {grid.dims[0]}x{grid.dims[1]}x{grid.dims[2]}", "seconds": min(times),
                "filled_voxels": n, "peak_mb": _vm("VmHWM")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = _spine_sweep() if case["kind"] == "spine" else synthetic_sweep(case["frames"])
    opts = CompoundOptions(interpolation=case["interpolation"], compounding="mean", device=dev, engine=engine)
    grid = fit_grid(sweep, case["spacing"])
    compound(sweep.subset(slice(0, 2)), grid, opts)  # warm-up (thread pools, first allocations)
    rss0 = _vm("VmRSS")
    t0 = time.perf_counter()
    res = compound(sweep, grid, opts)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n, h, w = sweep.frames.shape
    return {"case": f"{case['kind']} {n}x{h}x{w} {case['interpolation']}-mean {case['spacing']} mm [{engine}]",
            "grid": "x".join(str(d) for d in grid.dims), "seconds": dt, "frames_per_s": n / dt,
            "megapixels_per_s": n * h * w / dt / 1e6, "peak_mb": _vm("VmHWM"), "peak_delta_mb": _vm("VmHWM") - rss0,
            "coverage": res.stats["voxels_hit"] / res.stats["voxels"]}


def benchmark_cases(device: str = "cpu", quick: bool = False, engine: str = "auto") -> list[dict]:
    """Cases for ``engine`` ("auto", "torch", "numpy"); stick filling only where torch runs."""
    frames = 200 if quick else 1000
    cases = []
    for kind in ("spine", "synthetic"):
        for interp in ("nearest", "linear"):
            for spacing in (0.5, 1.0):
                cases.append({"kind": kind, "interpolation": interp, "spacing": spacing, "frames": frames,
                              "device": device, "engine": engine})
    if engine != "numpy":
        cases.append({"kind": "stick", "device": device, "engine": engine})
    cases.append({"kind": "normalized", "device": device, "engine": engine})
    return cases


def run_compound_benchmark(device: str = "cpu", quick: bool = False, engine: str = "auto") -> list[dict]:
    """Run every case in its own Python process (so peak memory is per case) and return the rows."""
    rows = []
    for case in benchmark_cases(device, quick, engine):
        code = ("import json,sys; from freehandrecon.lab.bench import _run_case; "
                "print('BENCH' + json.dumps(_run_case(json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")), None)
        if proc.returncode != 0 or line is None:
            rows.append({"case": str(case), "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(line[5:]))
    return rows


# --- engines side by side: spine sweep, mean, no hole filling -------------------------------------------

ENGINE_RUNS = (("numba", 1), ("numba", 2), ("numpy", 1), ("torch", 1), ("torch", 2))
"""(engine, threads) compared by :func:`run_engine_benchmark`."""


def _run_engine_case(case: dict) -> dict:
    """Time one engine on the spine sweep in this process: a warm-up run (numba loads or compiles its kernels,
    torch starts its threads), then the median of ``repeats`` runs; peak RSS of the whole process."""
    import statistics
    import warnings

    from ..compound import CompoundOptions, compound, fit_grid

    engine, threads = case["engine"], int(case["threads"])
    rss_start = _vm("VmRSS")
    if engine == "numba":
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    elif engine == "torch":
        import torch

        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = _spine_sweep()
    grid = fit_grid(sweep, case["spacing"])
    opts = CompoundOptions(interpolation=case["interpolation"], compounding="mean", engine=engine,
                           plus_arithmetic=bool(case.get("plus", False)))
    rss_ready = _vm("VmRSS")
    t0 = time.perf_counter()
    res = compound(sweep, grid, opts)
    first = time.perf_counter() - t0
    times = []
    for _ in range(int(case["repeats"])):
        t0 = time.perf_counter()
        res = compound(sweep, grid, opts)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    n = sweep.num_frames
    return {"engine": engine, "threads": threads, "workers": res.stats["workers"], "spacing": case["spacing"],
            "interpolation": case["interpolation"], "plus": bool(case.get("plus", False)),
            "grid": "x".join(str(d) for d in grid.dims), "frames": n, "seconds": median, "first_seconds": first,
            "frames_per_s": n / median, "peak_mb": _vm("VmHWM"), "peak_above_input_mb": _vm("VmHWM") - rss_ready,
            "start_mb": rss_start}


def engine_cases(repeats: int = 5, quick: bool = False, engines=ENGINE_RUNS, plus: bool = False) -> list[dict]:
    """Spine 0.5 and 1.0 mm (quick: 1.0 mm only), nearest and linear mean, for each (engine, threads)."""
    cases = []
    for spacing in ((1.0,) if quick else (0.5, 1.0)):
        for interp in ("nearest", "linear"):
            for engine, threads in engines:
                cases.append({"engine": engine, "threads": threads, "spacing": spacing, "interpolation": interp,
                              "repeats": repeats})
                if plus and engine in ("numba", "torch"):
                    cases.append(dict(cases[-1], plus=True, repeats=max(1, repeats if engine == "numba" else 1)))
    return cases


def run_engine_benchmark(repeats: int = 5, quick: bool = False, plus: bool = False,
                         engines=ENGINE_RUNS) -> list[dict]:
    """Every case of :func:`engine_cases` in a fresh process (its own threads setting and peak RSS)."""
    from ..compound.engine import numba_available, torch_available

    have = {"numba": numba_available(), "torch": torch_available(), "numpy": True}
    rows = []
    for case in engine_cases(repeats, quick, engines, plus):
        label = f"spine {case['interpolation']}-mean{' PLUS' if case.get('plus') else ''} {case['spacing']} mm"
        if not have[case["engine"]]:
            rows.append({**case, "case": label, "error": [f"{case['engine']} is not installed"]})
            continue
        code = ("import json,sys; from freehandrecon.lab.bench import _run_engine_case; "
                "print('BENCH' + json.dumps(_run_engine_case(json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")), None)
        if proc.returncode != 0 or line is None:
            rows.append({**case, "case": label, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]})
            continue
        rows.append({"case": label, **json.loads(line[5:])})
    return rows


def format_engine_table(rows: list[dict]) -> str:
    """Engine rows as a plain-text table."""
    out = [f"{'case':34s} {'engine':7s} {'thr':>3s} {'grid':>12s} {'median s':>9s} {'frames/s':>9s} "
           f"{'first s':>8s} {'peak MB':>8s}"]
    for r in rows:
        if "error" in r:
            out.append(f"{r['case']:34s} {r['engine']:7s} {r['threads']:3d} ERROR {r['error']}")
            continue
        out.append(f"{r['case']:34s} {r['engine']:7s} {r['threads']:3d} {r['grid']:>12s} {r['seconds']:9.4f} "
                   f"{r['frames_per_s']:9.1f} {r['first_seconds']:8.3f} {r['peak_mb']:8.0f}")
    return "\n".join(out)


def format_table(rows: list[dict]) -> str:
    """Rows as a plain-text table."""
    out = [f"{'case':52s} {'s':>7s} {'frames/s':>9s} {'MP/s':>7s} {'peak MB':>8s}"]
    for r in rows:
        if "error" in r:
            out.append(f"{r['case'][:52]:52s} ERROR {r['error']}")
            continue
        fps = f"{r['frames_per_s']:9.1f}" if "frames_per_s" in r else f"{'-':>9s}"
        mps = f"{r['megapixels_per_s']:7.1f}" if "megapixels_per_s" in r else f"{'-':>7s}"
        out.append(f"{r['case'][:52]:52s} {r['seconds']:7.3f} {fps} {mps} {r['peak_mb']:8.0f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="FreehandRecon compounding benchmark")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="200 synthetic frames instead of 1000")
    p.add_argument("--engine", choices=("auto", "torch", "numpy"), default="auto",
                   help="compounding engine (auto: torch when installed, else numpy)")
    a = p.parse_args(argv)
    print(format_table(run_compound_benchmark(a.device, a.quick, a.engine)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
