"""Memory estimate against measured peak, one fresh process per case.

Two levels are measured:

* ``compound``: one :func:`freehandrecon.compound.compound` call. The child process imports the modules,
  reads the sweep and fits the grid, then resets its peak-RSS mark (``/proc/self/clear_refs``) and records
  its RSS; the peak is ``VmHWM`` after the call minus that RSS. Bounded by ``estimate_memory_bytes``
  (what :func:`compound` checks against the memory limit).
* ``job``: the whole ``freehandrecon reconstruct`` process path (``commands.main.main``: reading, compounding, MRML
  nodes, writing the nrrd files, the .mrb, optionally rendering). The child imports every module the job
  uses, records its RSS (the baseline: an idle process that imported the same modules) and resets its
  peak mark; the peak is ``VmHWM`` at the end minus that baseline. Bounded by ``estimate_reconstruction_bytes``
  (``memory_estimate_mb`` in report.json, what ``--max-memory-gb`` is checked against).

Usage: ``python benchmarks/bench_memory.py [--only REGEX] [--quick] [--json FILE]``.
Run it alone on the machine (other processes do not change RSS, but swap or memory pressure would).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "Testing" / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"
PAUS = DATA / "paus" / "paus_sample.npz"
MASK = DATA / "igsio" / "ImportanceMask.png"


def _vm(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def synthetic_file(path: Path, frames: int) -> Path:
    """A generated tracked sweep (480x640 uint8 frames, freehand-like motion) written as .npz."""
    if not path.exists():
        from freehandrecon.lab.bench import synthetic_sweep
        from freehandrecon.io import write_sweep

        write_sweep(synthetic_sweep(frames), path)
    return path


def _no_torch() -> None:
    sys.modules["torch"] = None  # type: ignore[assignment]  # as in a stock Slicer: the numpy engine runs


def child_compound(case: dict) -> dict:
    if case["engine"] == "numpy":
        _no_torch()
    import warnings

    import numpy as np

    from freehandrecon.compound import CompoundOptions, HoleFilling, compound, fit_grid
    from freehandrecon.io import read_sweep

    engine = case["engine"]
    if engine == "torch":
        import torch  # noqa: F401

        from freehandrecon.compound import holes, torch_engine  # noqa: F401
    elif engine == "numba":  # imported in the baseline; loading its compiled kernels counts (FIXED_BYTES)
        from freehandrecon.compound import numba_engine, numpy_engine  # noqa: F401
    else:
        from freehandrecon.compound import numpy_engine  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case["input"] == "spine":
            sweep = read_sweep(SPINE, plus_config=SPINE_CFG)
        else:
            sweep = read_sweep(case["input"])
    mask = None
    if case["compounding"] == "importance":
        h, w = sweep.frame_shape
        mask = np.tile(np.linspace(0.2, 1.0, w, dtype=np.float32), (h, 1))
    opts = CompoundOptions(interpolation=case["interpolation"], compounding=case["compounding"], engine=engine,
                           importance_mask=mask, hole_filling=HoleFilling(case["holes"], 3 if case["holes"] ==
                                                                          "normalized" else 9))
    grid = fit_grid(sweep, case["spacing"])
    channel = case.get("channel")
    _reset_peak()
    rss0 = _vm("VmRSS")
    res = compound(sweep, grid, opts, channel=channel)
    peak = _vm("VmHWM") - rss0
    return {"peak": peak, "estimate": res.stats["memory_estimate_bytes"], "dims": list(grid.dims),
            "engine": res.stats["engine"], "workers": res.stats["workers"]}


def child_job(case: dict) -> dict:
    import freehandrecon.commands.main as cli
    import freehandrecon.compound as _c  # noqa: F401
    import freehandrecon.channels  # noqa: F401
    import freehandrecon.io  # noqa: F401
    import freehandrecon.logic  # noqa: F401
    import freehandrecon.io.slicer_files  # noqa: F401
    import freehandrecon.io.slicer_sequences  # noqa: F401
    import freehandrecon.scene.nodes  # noqa: F401
    import freehandrecon.scene.render  # noqa: F401

    from freehandrecon.compound import engine, holes, numba_engine, numpy_engine, torch_engine  # noqa: F401

    if case["engine"] == "numpy":  # the command line needs torch elsewhere; compound as a stock Slicer would
        engine.torch_available = lambda: False
        engine._import_torch = lambda: False
    if case["engine"] in ("numpy", "torch"):  # "auto": whatever the command line picks (numba where installed)
        engine.numba_available = lambda: False
        engine._import_numba = lambda: False
    import slicer  # noqa: F401

    base = _vm("VmRSS")
    _reset_peak()
    out = Path(case["out"])
    rc = cli.main(["--quiet", "reconstruct", *case["args"], "--out", str(out), "--force"])
    peak = _vm("VmHWM") - base
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return {"peak": peak, "rc": rc, "estimate": int(report.get("memory_estimate_mb", float("nan")) * 2**20)
            if rc == 0 else None, "dims": report.get("grid", {}).get("dims_ijk"), "baseline": base}


WARM_UP = """
import numpy as np
from freehandrecon.compound import CompoundOptions, compound, fit_grid
from freehandrecon.sweep import Sweep
poses = np.repeat(np.eye(4)[None], 3, axis=0)
poses[:, 2, 3] = [0.0, 1.0, 2.0]
sw = Sweep(frames=np.full((3, 10, 14), 7, np.uint8), pixel_spacing=(1.0, 1.0), image_to_world=poses)
for interp in ("nearest", "linear"):
    compound(sw, fit_grid(sw, 1.0), CompoundOptions(interpolation=interp, engine="numba"))
"""


def warm_numba_cache() -> None:
    """Compile the numba kernels into numba's cache in a child process (no-op when they are cached), so that
    the measured processes only load them, as every run after the first does."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "FreehandRecon") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", WARM_UP], env=env, check=True, capture_output=True, timeout=900)


def run_child(case: dict, timeout: int = 1800) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "FreehandRecon") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMBENCH")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:], "rc": proc.returncode}
    row = json.loads(line[8:])
    row["seconds"] = time.perf_counter() - t0
    return row


def compound_case(inp: str, spacing: float, interp: str = "nearest", comp: str = "mean", holes: str = "none",
                  engine: str = "torch", channel: str | None = None) -> dict:
    return {"level": "compound", "input": inp, "spacing": spacing, "interpolation": interp, "compounding": comp,
            "holes": holes, "engine": engine, "channel": channel}


def job_case(name: str, args: list[str], engine: str = "auto") -> dict:
    return {"level": "job", "name": name, "args": args, "engine": engine}


def cases(tmp: Path, quick: bool = False) -> list[dict]:
    synth = str(synthetic_file(tmp / "synthetic_400.npz", 400))
    spine = [str(SPINE), "--plus-config", str(SPINE_CFG)]
    out: list[dict] = []
    spacings = (0.5, 0.25) if quick else (0.5, 0.25, 0.15)
    for engine in ("torch", "numpy", "numba"):
        for sp in spacings:
            for interp in ("nearest", "linear"):
                out.append(compound_case("spine", sp, interp, engine=engine))
        for comp in ("max", "latest", "importance"):
            out.append(compound_case("spine", 0.25, "linear", comp, engine=engine))
            out.append(compound_case("spine", 0.25, "nearest", comp, engine=engine))
        for holes in ("normalized", "stick"):  # every engine fills with sticks (numpy and numba without torch)
            out.append(compound_case("spine", 0.25, "nearest", "mean", holes, engine=engine))
        out.append(compound_case(str(PAUS), 0.25, "linear", "max", engine=engine, channel="photoacoustic"))
        out.append(compound_case(synth, 0.5, "linear", engine=engine))
        out.append(compound_case(synth, 0.5, "nearest", "max", engine=engine))
        out.append(compound_case(synth, 0.5, "linear", "max", engine=engine))
        if engine == "torch":
            for sp in spacings:
                if sp != 0.25:
                    out.append(compound_case("spine", sp, "nearest", "mean", "stick", engine=engine))
    for engine in ("auto", "torch", "numpy"):
        for sp in spacings:
            for interp in ("nearest", "linear"):
                out.append(job_case(f"spine {interp} {sp} mm, no render", [*spine, "--spacing", str(sp),
                                    "--interpolation", interp, "--fill-holes", "none", "--no-render"], engine))
        fill = "stick" if engine == "torch" else "normalized"
        out.append(job_case(f"spine nearest 0.25 mm, {fill} fill (config), no render",
                            [*spine, "--spacing", "0.25", "--fill-holes", fill, "--no-render"], engine))
        if engine == "torch":
            for sp in spacings:
                out.append(job_case(f"spine linear {sp} mm, the config's stick fill, no render",
                                    [*spine, "--spacing", str(sp), "--interpolation", "linear", "--no-render"]))
            out.append(job_case("spine 0.25 mm, the config, --plus-compatible, no render",
                                [*spine, "--spacing", "0.25", "--plus-compatible", "--no-render"]))
        out.append(job_case("spine linear 0.25 mm, render", [*spine, "--spacing", "0.25", "--interpolation",
                            "linear", "--fill-holes", "none"], engine))
        out.append(job_case("spine linear max 0.25 mm, no mrb, no render",
                            [*spine, "--spacing", "0.25", "--interpolation", "linear", "--compounding", "max",
                             "--fill-holes", "none", "--no-render", "--no-mrb"], engine))
        out.append(job_case("PA+US+Doppler linear 0.1 mm, no render",
                            [str(PAUS), "--spacing", "0.1", "--interpolation", "linear", "--no-render"], engine))
        out.append(job_case("generated 400x480x640 linear 0.5 mm, no render",
                            [synth, "--spacing", "0.5", "--interpolation", "linear", "--no-render"], engine))
        out.append(job_case("generated 400x480x640 nearest 0.3 mm, no render",
                            [synth, "--spacing", "0.3", "--no-render"], engine))
    return out


def label(case: dict) -> str:
    if case["level"] == "job":
        return f"job [{case['engine']}] {case['name']}"
    inp = "spine" if case["input"] == "spine" else Path(case["input"]).stem
    ch = f" {case['channel']}" if case.get("channel") else ""
    return (f"compound [{case['engine']}] {inp}{ch} {case['interpolation']}-{case['compounding']} holes "
            f"{case['holes']} {case['spacing']} mm")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="run only cases whose label matches this regular expression")
    ap.add_argument("--quick", action="store_true", help="leave out 0.15 mm")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.child:
        case = json.loads(args.child)
        row = child_job(case) if case["level"] == "job" else child_compound(case)
        print("MEMBENCH" + json.dumps(row))
        return 0
    rows = []
    warm_numba_cache()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        print(f"| case | grid | estimate MB | peak MB | estimate / peak | seconds |\n|---|---|---|---|---|---|",
              flush=True)
        for case in cases(Path(tmp), args.quick):
            name = label(case)
            if args.only and not re.search(args.only, name):
                continue
            if case["level"] == "job":
                case = dict(case, out=str(Path(tmp) / "out"))
            row = run_child(case)
            row["case"] = name
            rows.append(row)
            if "error" in row or row.get("estimate") is None:
                print(f"| {name} | error | | | | {row.get('error')} |", flush=True)
                continue
            ratio = row["estimate"] / max(row["peak"], 1)
            dims = "x".join(str(d) for d in row["dims"] or [])
            print(f"| {name} | {dims} | {row['estimate'] / 2**20:.0f} | {row['peak'] / 2**20:.0f} | {ratio:.2f} "
                  f"| {row['seconds']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if "error" in r or r.get("estimate") is None
           or not r["peak"] <= r["estimate"] <= 1.5 * r["peak"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} cases within peak <= estimate <= 1.5 x peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
