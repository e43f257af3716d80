"""The numpy compounding engine (tracked reconstruction without PyTorch, as in a stock Slicer): the package
imports without torch/h5py/tqdm, the engine matches the torch engine on synthetic non-square sweeps and on
the real spine sweep, meets the IGSIO reference volumes, and runs in a process where torch cannot be
imported; its memory estimate bounds its peak."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_parity_igsio import CASES, FLOORS, OLDER_PLUS_EXTENT

from freehandrecon.compound import (CompoundOptions, FanMask, HoleFilling, OutputGrid, compound,
                                    estimate_memory_bytes, fit_grid, grid_from_roi, numpy_engine,
                                    options_from_plus_config)
from freehandrecon.compound.memory import expected_holes
from freehandrecon.errors import Cancelled, InputError
from freehandrecon.geometry import params_to_matrix
from freehandrecon.io.metaimage import read_metaimage
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"
PACKAGE = Path(__file__).resolve().parents[1] / "FreehandRecon"
MODES = ["mean", "max", "latest", "importance"]


def _spine() -> Sweep:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sweep_from_plus(SPINE, plus_config=SPINE_CFG)


@pytest.fixture(scope="module")
def spine() -> Sweep:
    return _spine()


def _assert_same(a, b, mode: str) -> None:
    """numpy engine result ``b`` vs torch engine result ``a``: max/latest pick the same pixel (exact);
    mean sums in another order (float32 tolerance); coverage sums the same weights in another order."""
    assert a.stats["engine"] == "torch" and b.stats["engine"] == "numpy"
    assert a.volume.shape == b.volume.shape and b.volume.dtype == np.float32 and b.coverage.dtype == np.float32
    for key in ("pixels_pasted", "voxels_hit", "filled_voxels"):
        assert a.stats[key] == b.stats[key], key
    np.testing.assert_allclose(b.coverage, a.coverage, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b.coverage > 0, a.coverage > 0)
    if mode in ("max", "latest") and a.stats["filled_voxels"] == 0:
        np.testing.assert_array_equal(b.volume, a.volume)
    else:
        np.testing.assert_allclose(b.volume, a.volume, rtol=1e-5, atol=1e-3)


def _both(sweep: Sweep, grid: OutputGrid, **kw):
    return (compound(sweep, grid, CompoundOptions(engine="torch", **kw)),
            compound(sweep, grid, CompoundOptions(engine="numpy", **kw)))


def _oblique_sweep(n: int = 7, h: int = 53, w: int = 91, seed: int = 3) -> Sweep:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    t = np.linspace(0, 1, n)
    params = np.stack([3 * t, 2 * t, 0.9 * np.arange(n), 10 + 7 * t, 5 * t, 3 * t], axis=1)
    return Sweep(frames=frames, pixel_spacing=(0.23, 0.19), image_to_world=params_to_matrix(params))


def _cut_roi(sweep: Sweep, spacing: float) -> OutputGrid:
    """An ROI that cuts the sweep: frames partly outside it (bounds-checked and skipped tiles)."""
    full = fit_grid(sweep, spacing)
    centre = full.ijk_to_world() @ np.r_[(np.asarray(full.dims) - 1) * 0.5, 1.0]
    size = (np.asarray(full.dims) - 1) * full.spacing
    return grid_from_roi(centre[:3] + [0.2 * size[0], 0, 0], size * [0.6, 0.8, 0.7], spacing)


SYNTH_EXTRAS = {
    "plain": {},
    "clip+threshold": {"clip_rectangle": (5, 3, 70, 40), "pixel_threshold": 40},
    "fan+normalized": {"fan": FanMask((45.0, -5.0), (-30.0, 35.0), 10.0, 55.0),
                       "hole_filling": HoleFilling("normalized", 3)},
}


@pytest.mark.parametrize("extra", list(SYNTH_EXTRAS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("interp", ["nearest", "linear"])
@pytest.mark.parametrize("roi", [False, True], ids=["fitted", "cut-roi"])
def test_numpy_matches_torch_on_synthetic_non_square_sweeps(interp: str, mode: str, extra: str, roi: bool) -> None:
    sw = _oblique_sweep()
    grid = _cut_roi(sw, 0.4) if roi else fit_grid(sw, 0.4)
    imp = np.random.default_rng(5).uniform(0.2, 1.0, sw.frame_shape).astype(np.float32)
    a, b = _both(sw, grid, interpolation=interp, compounding=mode, importance_mask=imp if mode == "importance" else None,
                 **SYNTH_EXTRAS[extra])
    assert b.stats["voxels_hit"] > 1000
    _assert_same(a, b, mode)
    if extra == "fan+normalized":
        assert b.stats["filled_voxels"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_numpy_matches_torch_on_the_spine_sweep(spine: Sweep, interp: str, mode: str) -> None:
    grid = fit_grid(spine, 0.5)
    h, w = spine.frame_shape
    yy, xx = np.mgrid[0:h, 0:w]
    imp = np.clip(1.0 - np.hypot(yy / h - 0.3, xx / w - 0.5), 0.0, 1.0).astype(np.float32)  # 0 in the corners
    a, b = _both(spine, grid, interpolation=interp, compounding=mode,
                 importance_mask=imp if mode == "importance" else None)
    assert 0.2 < b.stats["voxels_hit"] / b.stats["voxels"] < 0.9
    _assert_same(a, b, mode)


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_numpy_matches_torch_on_the_spine_with_fan_threshold_and_normalized_fill(spine: Sweep, interp: str) -> None:
    grid = fit_grid(spine, 0.5)
    fan = FanMask((410.0, -20.0), (-35.0, 35.0), 80.0, 600.0)
    a, b = _both(spine, grid, interpolation=interp, fan=fan, pixel_threshold=12, clip_rectangle=(20, 10, 780, 590),
                 hole_filling=HoleFilling("normalized", 5))
    assert b.stats["filled_voxels"] > 1000 and b.stats["pixels_pasted"] < spine.frames.size * 0.9
    _assert_same(a, b, "mean")


@pytest.mark.parametrize("mode", list(CASES))
def test_numpy_engine_meets_the_igsio_references(mode: str) -> None:
    """The same per-voxel floors (within 2 grey levels) and correlation as the torch float parity test."""
    sweep_file, cfg, ref_name = (DATA / p for p in CASES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = sweep_from_plus(sweep_file, plus_config=cfg)
    options, spacing = options_from_plus_config(cfg)
    ref = read_metaimage(ref_name)
    grid = OutputGrid(np.array(ref.offset), np.array(ref.spacing), ref.dim_size)
    if mode not in OLDER_PLUS_EXTENT:
        assert fit_grid(sweep, spacing, clip_rectangle=options.clip_rectangle).dims == grid.dims
    options.engine = "numpy"
    result = compound(sweep, grid, options)
    assert result.stats["engine"] == "numpy"
    diff = np.abs(result.volume_as(np.uint8).astype(np.int64) - ref.array.astype(np.int64))
    within = float((diff <= 2).mean())
    corr = float(np.corrcoef(result.volume_as(np.uint8).ravel(), ref.array.ravel())[0, 1])
    assert within >= FLOORS[(False, mode)], (mode, within)
    assert corr >= 0.98, (mode, corr)


def test_bincount_path_for_old_numpy_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy < 1.25 sums with np.bincount over each tile's span (ufunc.at is slow there)."""
    sw = _oblique_sweep()
    grid = fit_grid(sw, 0.4)
    opts = [CompoundOptions(engine="numpy", interpolation=i, compounding=m) for i in ("nearest", "linear")
            for m in ("mean", "importance")]
    imp = np.linspace(0.1, 1.0, sw.frames[0].size, dtype=np.float32).reshape(sw.frame_shape)
    for o in opts:
        o.importance_mask = imp
    fast = [compound(sw, grid, o) for o in opts]
    monkeypatch.setattr(numpy_engine, "FAST_UFUNC_AT", False)
    for o, f in zip(opts, fast):
        slow = compound(sw, grid, o)
        np.testing.assert_allclose(slow.coverage, f.coverage, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(slow.volume, f.volume, rtol=1e-5, atol=1e-3)
        assert slow.stats["voxels_hit"] == f.stats["voxels_hit"]


def test_numpy_engine_progress_cancel_and_stats() -> None:
    sw = _oblique_sweep(n=6)
    grid = fit_grid(sw, 0.5)
    seen: list[tuple[int, int]] = []
    res = compound(sw, grid, CompoundOptions(engine="numpy", chunk_frames=2), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 6), (4, 6), (6, 6)]
    assert res.stats["engine"] == "numpy" and res.stats["workers"] == 1 and res.stats["chunk_frames"] == 2
    with pytest.raises(Cancelled):
        compound(sw, grid, CompoundOptions(engine="numpy"), should_cancel=lambda: True)


def test_numpy_engine_refusals_name_problem_and_fix() -> None:
    sw = _oblique_sweep(n=2)
    grid = fit_grid(sw, 1.0)
    with pytest.raises(InputError, match="engine 'jax'"):
        compound(sw, grid, CompoundOptions(engine="jax"))
    with pytest.raises(InputError, match="CPU only") as err:
        compound(sw, grid, CompoundOptions(engine="numpy", device="cuda"))
    assert "Fix:" in str(err.value)
    with pytest.raises(InputError, match="plus_arithmetic"):
        compound(sw, grid, CompoundOptions(engine="numpy", plus_arithmetic=True))
    # with torch installed, numpy + stick filling borrows torch's stick filling
    a, b = _both(sw, grid, hole_filling=HoleFilling("stick", 5))
    _assert_same(a, b, "mean")
    assert b.stats["filled_voxels"] > 0


@pytest.mark.parametrize("interp", ["nearest", "linear"])
@pytest.mark.parametrize("mode", ["mean", "latest"])
def test_memory_estimate_bounds_the_numpy_engines_peak(spine: Sweep, interp: str, mode: str) -> None:
    """Peak of numpy allocations (tracemalloc) during compound <= estimate_memory_bytes, at 1 mm."""
    grid = fit_grid(spine, 1.0)
    opts = CompoundOptions(engine="numpy", interpolation=interp, compounding=mode,
                           hole_filling=HoleFilling("normalized", 3))
    holes = expected_holes(spine.pixel_to_world(), spine.frame_shape, grid, opts)  # as compound() counts them
    estimate = estimate_memory_bytes(grid, opts, spine.frame_shape, spine.num_frames, holes=holes,
                                     itemsize=spine.frames.itemsize)
    tracemalloc.start()
    try:
        res = compound(spine, grid, opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.stats["memory_estimate_bytes"] == estimate
    assert peak <= estimate, (peak, estimate)
    assert peak >= 0.25 * estimate  # the estimate is a bound, not a wild overstatement


BLOCKED_CHILD = textwrap.dedent("""
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` raises ImportError, as in a Python without it
    {body}
""")


def _run_blocked(body: str, blocked: tuple[str, ...], *args: str) -> dict:
    code = BLOCKED_CHILD.format(blocked=blocked, body=textwrap.dedent(body))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(PACKAGE)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compound_package_imports_without_torch_h5py_tqdm() -> None:
    out = _run_blocked("""
        import numpy as np
        import freehandrecon.compound as c
        from freehandrecon.compound import engine, fixedpoint, grid, masks, memory, numpy_engine, options, plus_options
        from freehandrecon.errors import InputError, ResourceError
        from freehandrecon.sweep import Sweep
        poses = np.repeat(np.eye(4)[None], 3, axis=0)
        poses[:, 2, 3] = [0.0, 1.0, 2.0]  # three parallel frames 1 mm apart
        sw = Sweep(frames=np.full((3, 10, 14), 7, np.uint8), pixel_spacing=(1.0, 1.0), image_to_world=poses)
        g = c.fit_grid(sw, 1.0)
        est = c.estimate_memory_bytes(g, c.CompoundOptions(), (10, 14), 3)
        res = c.compound(sw, g, c.CompoundOptions(interpolation="linear"))
        gap = Sweep(frames=np.full((3, 10, 14), 7, np.uint8), pixel_spacing=(1.0, 1.0), image_to_world=poses * 1)
        gap.image_to_world[:, 2, 3] = [0.0, 2.0, 4.0]  # 2 mm apart on a 1 mm grid: a gap between every two frames
        sticks = c.compound(gap, c.fit_grid(gap, 1.0), c.CompoundOptions(hole_filling=c.HoleFilling("stick", 9)))
        errors = {}
        for label, kw in {"plus": dict(plus_arithmetic=True),
                          "cuda": dict(device="cuda"), "torch": dict(engine="torch")}.items():
            try:
                c.compound(sw, g, c.CompoundOptions(**kw))
            except ResourceError as err:
                errors[label] = str(err)
        print(json.dumps({"torch": sys.modules.get("torch") is not None, "estimate": est, "errors": errors,
                          "engine": res.stats["engine"], "hit": res.stats["voxels_hit"],
                          "values": sorted(set(res.volume.ravel().tolist())), "stick_engine": sticks.stats["engine"],
                          "stick_filled": sticks.stats["filled_voxels"],
                          "stick_values": sorted(set(sticks.volume.ravel().tolist()))}))
    """, ("torch", "numba", "h5py", "tqdm"))  # a stock Slicer: neither torch nor numba
    assert out["torch"] is False and out["engine"] == "numpy" and out["estimate"] > 0
    assert out["hit"] == 3 * 10 * 14 and out["values"] == [7.0]
    assert set(out["errors"]) == {"plus", "cuda", "torch"}
    # stick filling needs nothing beyond numpy: the two gap planes between the three frames are filled
    assert out["stick_engine"] == "numpy" and out["stick_filled"] == 2 * 10 * 14 and out["stick_values"] == [7.0]
    assert "needs numba or PyTorch" in out["errors"]["plus"] and "needs PyTorch" in out["errors"]["cuda"]


def _io_imports_without_h5py() -> bool:
    code = "import sys; sys.modules['h5py'] = None; import freehandrecon.io.plus"
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(PACKAGE)}).returncode == 0


SPINE_CASES = {"nearest-mean": {"interpolation": "nearest", "compounding": "mean", "hole": "none"},
               "linear-max": {"interpolation": "linear", "compounding": "max", "hole": "none"},
               "nearest-mean-normalized": {"interpolation": "nearest", "compounding": "mean", "hole": "normalized"},
               "nearest-mean-stick": {"interpolation": "nearest", "compounding": "mean", "hole": "stick"}}


@pytest.mark.parametrize("blocked", [
    ("torch", "numba", "tqdm"),
    pytest.param(("torch", "numba", "h5py", "tqdm"), marks=pytest.mark.xfail(
        not _io_imports_without_h5py(), strict=True,
        reason="freehandrecon.io imports h5py eagerly (io/__init__ -> tusrec); fixed outside this branch")),
], ids=["no-torch", "no-torch-h5py"])
def test_tracked_spine_reconstruction_without_torch(spine: Sweep, tmp_path: Path, blocked: tuple[str, ...]) -> None:
    """A process where neither torch nor numba can be imported (a stock Slicer) reads the spine sweep with its PLUS config, fits the grid and
    compounds it; its volumes match the torch engine's, computed here."""
    base, spacing = options_from_plus_config(SPINE_CFG)
    grid = fit_grid(spine, spacing, clip_rectangle=base.clip_rectangle)
    for name, case in SPINE_CASES.items():
        kw = {**case, "hole_filling": HoleFilling(case["hole"], 9 if case["hole"] == "stick" else 3)}
        del kw["hole"]
        opts = CompoundOptions(**{**base.__dict__, **kw, "engine": "torch"})
        np.save(tmp_path / f"{name}.npy", compound(spine, grid, opts).volume)
    out = _run_blocked("""
        import warnings
        import numpy as np
        from freehandrecon.compound import CompoundOptions, HoleFilling, compound, fit_grid, options_from_plus_config
        from freehandrecon.io.plus import sweep_from_plus
        sweep_file, cfg, folder, cases = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sweep = sweep_from_plus(sweep_file, plus_config=cfg)
        base, spacing = options_from_plus_config(cfg)
        grid = fit_grid(sweep, spacing, clip_rectangle=base.clip_rectangle)
        assert base.hole_filling.method == "stick"  # the config asks for stick filling, which numpy does
        config = compound(sweep, grid, base)
        rows = {"torch": "torch" in sys.modules and sys.modules["torch"] is not None,
                "config_engine": config.stats["engine"], "config_filled": config.stats["filled_voxels"],
                "dims": list(grid.dims)}
        for name, kw in cases.items():
            hole = kw.pop("hole")
            kw["hole_filling"] = HoleFilling(hole, 9 if hole == "stick" else 3)
            res = compound(sweep, grid, CompoundOptions(**{**base.__dict__, **kw}))
            ref = np.load(f"{folder}/{name}.npy")
            rows[name] = {"engine": res.stats["engine"], "max_abs_diff": float(np.abs(res.volume - ref).max()),
                          "mean": float(res.volume.mean()), "ref_mean": float(ref.mean()),
                          "hit": res.stats["voxels_hit"], "ref_hit": int((ref > 0).sum()),
                          "nonzero": int((res.volume > 0).sum()), "filled": res.stats["filled_voxels"]}
        print(json.dumps(rows))
    """, blocked, str(SPINE), str(SPINE_CFG), str(tmp_path), json.dumps(SPINE_CASES))
    assert out["torch"] is False and out["dims"] == list(grid.dims)
    assert out["config_engine"] == "numpy" and out["config_filled"] > 10_000
    for name in SPINE_CASES:
        row = out[name]
        assert row["engine"] == "numpy", name
        assert row["max_abs_diff"] <= (1e-3 if "max" in name else 0.05), (name, row)
        assert row["mean"] == pytest.approx(row["ref_mean"], rel=1e-5), (name, row)
        assert row["hit"] > 100_000, (name, row)
    assert out["nearest-mean-normalized"]["filled"] > 0
    assert out["nearest-mean-normalized"]["nonzero"] > out["nearest-mean"]["nonzero"]
    assert out["nearest-mean-stick"]["filled"] > 10_000
    assert out["nearest-mean-stick"]["nonzero"] > out["nearest-mean"]["nonzero"]
