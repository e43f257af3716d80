"""The memory estimate is an honest upper bound (measured peak RSS <= estimate <= 1.5 x peak, each case in a
fresh process), and a refusal's suggested spacing is one whose estimate fits and whose run stays under the limit."""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.compound import CompoundOptions, HoleFilling, fit_grid
from freehandrecon.compound.memory import (estimate_memory_bytes, estimate_reconstruction_bytes, expected_holes,
                                           suggest_spacing)
from freehandrecon.errors import ResourceError
from freehandrecon.io import read_sweep
from freehandrecon.logic import ReconstructionRequest, check_job_memory, reconstruct_sweep

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "Data" / "igsio"
SPINE = DATA / "SpinePhantomFreehand.igs.mha"
CFG = DATA / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_memory", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def spine():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_sweep(SPINE, plus_config=CFG)


def _suggested(err: ResourceError) -> float:
    m = re.search(r"coarser spacing of about ([0-9.]+), ([0-9.]+), ([0-9.]+) mm", err.fix)
    assert m, err.fix
    values = {float(v) for v in m.groups()}
    assert len(values) == 1  # isotropic request, isotropic suggestion
    return values.pop()


def test_estimate_bounds_measured_peak_in_fresh_processes(tmp_path):
    bench = _bench()
    spine_args = [str(SPINE), "--plus-config", str(CFG)]
    bench.warm_numba_cache()  # a first-ever run also compiles the kernels (more memory, once)
    cases = [
        bench.compound_case("spine", 0.25, "nearest", "mean", "normalized", engine="torch"),
        bench.compound_case("spine", 0.25, "linear", "latest", engine="numpy"),
        bench.compound_case("spine", 0.25, "linear", "mean", engine="numba"),
        bench.compound_case("spine", 0.25, "nearest", "max", engine="numba"),
        bench.compound_case("spine", 0.25, "nearest", "mean", "stick", engine="numpy"),
        bench.compound_case("spine", 0.25, "nearest", "mean", "stick", engine="numba"),
        dict(bench.job_case("spine linear 0.25", [*spine_args, "--spacing", "0.25", "--interpolation", "linear",
                                                  "--fill-holes", "none", "--no-render", "--no-mrb"]),
             out=str(tmp_path / "out")),
    ]
    for case in cases:
        row = bench.run_child(case, timeout=600)
        assert "error" not in row, row
        assert row["peak"] <= row["estimate"] <= 1.5 * row["peak"], (bench.label(case), row)


def test_refusal_suggests_a_spacing_whose_estimate_fits(spine):
    limit = 200 << 20
    opts = CompoundOptions(interpolation="linear", max_memory_bytes=limit)
    request = ReconstructionRequest(spacing_mm=0.1, options=opts)
    with pytest.raises(ResourceError) as info:
        reconstruct_sweep(spine, request)
    assert "whole reconstruction" in info.value.problem
    sp = _suggested(info.value)
    assert 0.1 < sp < 2.0
    at = ReconstructionRequest(spacing_mm=sp, options=opts)
    grid = fit_grid(spine, sp)
    assert check_job_memory(spine, at, grid, [opts], []) <= limit
    # and the suggestion is not needlessly coarse: 10 % finer no longer fits
    finer = fit_grid(spine, sp / 1.1)
    with pytest.raises(ResourceError):
        check_job_memory(spine, at, finer, [opts], [])


def test_compound_refusal_inverts_the_same_estimate(spine):
    opts = CompoundOptions(interpolation="nearest", hole_filling=HoleFilling("stick", 9), max_memory_bytes=300 << 20)
    grid = fit_grid(spine, 0.1)
    holes = expected_holes(spine.pixel_to_world(), spine.frame_shape, grid, opts)
    need = estimate_memory_bytes(grid, opts, spine.frame_shape, spine.num_frames, holes=holes)
    assert need > opts.max_memory_bytes
    scale = holes / grid.num_voxels

    def need_at(g):
        return estimate_memory_bytes(g, opts, spine.frame_shape, spine.num_frames, holes=int(np.ceil(scale * g.num_voxels)))

    sp = suggest_spacing(grid, need_at, opts.max_memory_bytes)
    assert sp is not None and sp[0] > 0.1
    fitted = fit_grid(spine, sp)
    assert need_at(fitted) <= opts.max_memory_bytes
    from freehandrecon.compound import compound

    with pytest.raises(ResourceError) as info:
        compound(spine, grid, opts)
    assert _suggested(info.value) == pytest.approx(sp[0])


def test_estimate_grows_with_what_the_job_keeps(spine):
    grid = fit_grid(spine, 0.5)
    opts = CompoundOptions()
    args = (grid, [opts], spine.frame_shape, spine.num_frames, spine.frames.nbytes)
    bare = estimate_reconstruction_bytes(*args, nodes=False)
    nodes = estimate_reconstruction_bytes(*args)
    render = estimate_reconstruction_bytes(*args, render=True)
    channel = estimate_reconstruction_bytes(grid, [opts, opts], spine.frame_shape, spine.num_frames,
                                            2 * spine.frames.nbytes)
    assert bare < nodes < render and nodes < channel
    assert bare >= estimate_memory_bytes(grid, opts, spine.frame_shape, spine.num_frames) + spine.frames.nbytes


def test_run_at_the_suggested_spacing_stays_under_the_limit(tmp_path):
    """The command line refuses 0.1 mm under a 0.3 GB limit, and its suggestion then runs under that limit."""
    bench = _bench()
    args = [str(SPINE), "--plus-config", str(CFG), "--fill-holes", "none", "--interpolation", "linear",
            "--no-render", "--max-memory-gb", "0.3"]
    from freehandrecon.commands.main import main

    err = tmp_path / "stderr.txt"
    import contextlib

    with open(err, "w") as fh, contextlib.redirect_stderr(fh):
        assert main(["--quiet", "reconstruct", *args, "--spacing", "0.1", "--out", str(tmp_path / "b")]) == 4
    m = re.search(r"coarser spacing of about ([0-9.]+), ([0-9.]+), ([0-9.]+) mm", err.read_text())
    assert m, err.read_text()
    sp = m.group(1)
    row = bench.run_child(dict(bench.job_case("suggested", [*args, "--spacing", sp]), out=str(tmp_path / "c")))
    assert row.get("rc") == 0, row
    assert row["peak"] <= row["estimate"] <= int(0.3 * 2**30), row
