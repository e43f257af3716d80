"""The numba compounding engine and the incremental Reconstructor: the same voxels as the numpy and torch
engines (max/latest exact, mean within float tolerance), PLUS arithmetic bit for bit equal to the torch engine,
deterministic on 1 and 2 threads, and adding frames one at a time or in uneven batches (and growing the grid)
gives exactly the offline volume."""

from __future__ import annotations

import dataclasses
import json

import numba
import numpy as np
import pytest
from test_compound_numpy import _cut_roi, _oblique_sweep, _run_blocked

from freehandrecon.compound import CompoundOptions, FanMask, HoleFilling, OutputGrid, compound, fit_grid
from freehandrecon.compound.reconstructor import Reconstructor
from freehandrecon.errors import InputError
from freehandrecon.sweep import Sweep

MODES = ["mean", "max", "latest", "importance"]
EXTRAS = {
    "plain": {},
    "clip+threshold": {"clip_rectangle": (5, 3, 70, 40), "pixel_threshold": 40},
    "fan+normalized": {"fan": FanMask((45.0, -5.0), (-30.0, 35.0), 10.0, 55.0),
                       "hole_filling": HoleFilling("normalized", 3)},
}


@pytest.fixture(scope="module")
def spine() -> Sweep:
    from test_compound_numpy import _spine

    return _spine()


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = numba.get_num_threads()
    yield
    numba.set_num_threads(threads)


def _opts(interp: str, mode: str, shape: tuple[int, int], **kw) -> CompoundOptions:
    imp = None
    if mode == "importance":
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w]
        imp = np.clip(1.0 - np.hypot(yy / h - 0.3, xx / w - 0.5), 0.0, 1.0).astype(np.float32)  # 0 in the corners
    return CompoundOptions(interpolation=interp, compounding=mode, importance_mask=imp, **kw)


def _same(ref, res, mode: str, exact_mean: bool = False) -> None:
    """``res`` (numba) against ``ref`` (numpy or torch): max/latest pick the same pixel, mean sums the same
    float32 terms in another order; the coverage sums the same weights."""
    assert res.stats["engine"] == "numba"
    for key in ("pixels_pasted", "voxels_hit", "filled_voxels"):
        assert ref.stats[key] == res.stats[key], key
    np.testing.assert_array_equal(res.coverage > 0, ref.coverage > 0)
    np.testing.assert_allclose(res.coverage, ref.coverage, rtol=1e-5, atol=1e-5)
    if mode in ("max", "latest") and ref.stats["filled_voxels"] == 0 or exact_mean:
        np.testing.assert_array_equal(res.volume, ref.volume)
    else:
        np.testing.assert_allclose(res.volume, ref.volume, rtol=1e-5, atol=1e-3)


def _run(sweep: Sweep, grid: OutputGrid, opts: CompoundOptions, engine: str):
    return compound(sweep, grid, dataclasses.replace(opts, engine=engine))


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("roi", [False, True], ids=["fitted", "cut-roi"])
def test_numba_matches_numpy_and_torch_on_synthetic_non_square_sweeps(extra: str, roi: bool) -> None:
    sw = _oblique_sweep()
    grid = _cut_roi(sw, 0.4) if roi else fit_grid(sw, 0.4)
    for interp in ("nearest", "linear"):
        for mode in MODES:
            opts = _opts(interp, mode, sw.frame_shape, **EXTRAS[extra])
            res = _run(sw, grid, opts, "numba")
            assert res.stats["voxels_hit"] > 1000
            _same(_run(sw, grid, opts, "numpy"), res, mode)
            _same(_run(sw, grid, opts, "torch"), res, mode)
            if roi:
                assert res.stats["pixels_outside"] > 0


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_numba_matches_numpy_on_the_spine_sweep(spine: Sweep, interp: str) -> None:
    grid = fit_grid(spine, 0.5)
    for mode in MODES:
        opts = _opts(interp, mode, spine.frame_shape)
        res = _run(spine, grid, opts, "numba")
        assert 0.2 < res.stats["voxels_hit"] / res.stats["voxels"] < 0.9
        # nearest mean of uint8 pixels: sums of integers (below 2**24) are exact in any order
        _same(_run(spine, grid, opts, "numpy"), res, mode, exact_mean=interp == "nearest" and mode == "mean")
    fan = FanMask((410.0, -20.0), (-35.0, 35.0), 80.0, 600.0)
    opts = CompoundOptions(interpolation=interp, fan=fan, pixel_threshold=12, clip_rectangle=(20, 10, 780, 590),
                           hole_filling=HoleFilling("normalized", 5))
    res = _run(spine, grid, opts, "numba")
    assert res.stats["filled_voxels"] > 1000 and res.stats["pixels_pasted"] < spine.frames.size * 0.9
    _same(_run(spine, grid, opts, "torch"), res, "mean")


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_plus_arithmetic_is_bit_for_bit_the_torch_engines(interp: str) -> None:
    """IGSIO's running integer mean (and PLUS's corner selection for max/latest), uint8 and float frames."""
    sw = _oblique_sweep()
    grid = _cut_roi(sw, 0.4)
    floats = Sweep(frames=sw.frames.astype(np.float32) * 1.37, pixel_spacing=sw.pixel_spacing,
                   image_to_world=sw.image_to_world)
    for s in (sw, floats):
        for mode in MODES:
            opts = _opts(interp, mode, s.frame_shape, plus_arithmetic=True, clip_rectangle=(2, 1, 80, 50))
            ours, theirs = _run(s, grid, opts, "numba"), _run(s, grid, opts, "torch")
            assert ours.stats["voxels_hit"] > 1000
            np.testing.assert_array_equal(ours.volume, theirs.volume)
            if mode in ("mean", "importance") or interp == "nearest":
                np.testing.assert_array_equal(ours.coverage, theirs.coverage)
            else:  # the torch engine sums PLUS max/latest corner weights in raw fixed-point units
                np.testing.assert_array_equal(ours.coverage * 16384, theirs.coverage)
            if s is sw and mode in ("mean", "importance"):
                assert np.array_equal(ours.volume, np.floor(ours.volume))  # integer frames: integer means


@pytest.mark.parametrize("mode", ["NN_MEAN", pytest.param("LN_MEAN", marks=pytest.mark.slow)])
def test_plus_arithmetic_on_the_spine_equals_torch_and_the_igsio_reference(mode: str) -> None:
    """The whole sweep against IGSIO's reference; the torch engine (slow at PLUS arithmetic) on its first frames,
    without hole filling. (Every IGSIO reference is also met by test_parity_igsio, whose "auto" engine is numba.)"""
    from test_parity_igsio import CASES, DATA, _sweep

    from freehandrecon.compound import options_from_plus_config
    from freehandrecon.io.metaimage import read_metaimage

    sweep_file, cfg, ref_name = (DATA / p for p in CASES[mode])
    sweep = _sweep(sweep_file, cfg)
    options, _ = options_from_plus_config(cfg, plus_arithmetic=True)
    ref = read_metaimage(ref_name)
    grid = OutputGrid(np.array(ref.offset), np.array(ref.spacing), ref.dim_size)
    ours = _run(sweep, grid, options, "numba")
    first = sweep.subset(slice(0, 5))
    bare = dataclasses.replace(options, hole_filling=HoleFilling())
    np.testing.assert_array_equal(_run(first, grid, bare, "numba").volume, _run(first, grid, bare, "torch").volume)
    diff = np.abs(ours.volume.astype(np.int64) - ref.array.astype(np.int64))
    assert (diff <= 2).mean() >= 0.99, mode


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_deterministic_on_one_and_two_threads(spine: Sweep, interp: str) -> None:
    grid = fit_grid(spine, 0.5)
    for mode in ("mean", "max", "latest"):
        for plus in (False, True):
            opts = CompoundOptions(interpolation=interp, compounding=mode, plus_arithmetic=plus, engine="numba",
                                   chunk_frames=4)
            numba.set_num_threads(2)
            a, b = compound(spine, grid, opts), compound(spine, grid, opts)
            numba.set_num_threads(1)
            c = compound(spine, grid, opts)
            assert a.stats["workers"] == 2 and c.stats["workers"] == 1
            for other in (b, c):
                np.testing.assert_array_equal(other.volume, a.volume)
                np.testing.assert_array_equal(other.coverage, a.coverage)


def _batches(n: int) -> list[int]:
    """Uneven batch sizes covering ``n`` frames."""
    sizes, k = [], 0
    for s in (1, 3, 2, 5, 1, 4):
        if k >= n:
            break
        sizes.append(min(s, n - k))
        k += sizes[-1]
    if k < n:
        sizes.append(n - k)
    return sizes


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_incremental_equals_offline_voxel_for_voxel(engine: str) -> None:
    sw = _oblique_sweep(n=9)
    grid = _cut_roi(sw, 0.4)
    p2w = sw.pixel_to_world()
    for interp in ("nearest", "linear"):
        for mode in MODES:
            for plus in (False, True) if engine == "numba" else (False,):
                opts = _opts(interp, mode, sw.frame_shape, plus_arithmetic=plus, engine=engine,
                             clip_rectangle=(3, 2, 80, 45), pixel_threshold=20)
                offline = compound(sw, grid, opts)
                ones, uneven = Reconstructor(grid, opts), Reconstructor(grid, opts)
                for k in range(sw.num_frames):
                    ones.add_frames(sw.frames[k], p2w[k])  # single [H, W] frames with [4, 4] matrices
                k = 0
                for size in _batches(sw.num_frames):
                    uneven.add_frames(sw.frames[k:k + size], p2w[k:k + size])
                    k += size
                numba.set_num_threads(1 if plus else 2)
                for rec in (ones, uneven):
                    got = rec.result()
                    assert got.stats["engine"] == engine and rec.frames_added == sw.num_frames
                    np.testing.assert_array_equal(got.volume, offline.volume)
                    np.testing.assert_array_equal(got.coverage, offline.coverage)
                    for key in ("pixels_pasted", "voxels_hit", "pixels_outside"):
                        assert got.stats[key] == offline.stats[key], key
                assert offline.stats["pixels_outside"] > 0


def test_snapshot_does_not_repaste_and_adding_goes_on() -> None:
    sw = _oblique_sweep(n=6)
    grid = fit_grid(sw, 0.4)
    p2w = sw.pixel_to_world()
    opts = CompoundOptions(interpolation="linear", engine="numba")
    rec = Reconstructor(grid, opts)
    frames = sw.frames.copy()
    rec.add_frames(frames[:3], p2w[:3])
    first = rec.snapshot()
    frames[:] = 0  # the frames were pasted when added: changing them afterwards changes nothing
    np.testing.assert_array_equal(rec.snapshot().volume, first.volume)
    first.volume[:] = -1  # a snapshot is a copy: the accumulators go on
    rec.add_frames(sw.frames[3:], p2w[3:])
    np.testing.assert_array_equal(rec.snapshot().volume, compound(sw, grid, opts).volume)
    assert rec.snapshot().stats["frames"] == 6 and rec.frame_shape == sw.frame_shape


@pytest.mark.parametrize("engine", ["numba", "numpy", "torch"])
def test_detached_copy_is_finished_apart_while_adding_goes_on(engine: str) -> None:
    """What live snapshots use: the detached copy holds the first frames only, whatever is added afterwards,
    and the reconstructor itself still gives the offline volume of every frame."""
    sw = _oblique_sweep(n=6)
    grid = fit_grid(sw, 0.4)
    p2w = sw.pixel_to_world()
    for mode in ("mean", "max"):
        opts = CompoundOptions(interpolation="linear", compounding=mode, engine=engine)
        rec = Reconstructor(grid, opts)
        rec.add_frames(sw.frames[:3], p2w[:3])
        twin = rec.detached()
        rec.add_frames(sw.frames[3:], p2w[3:])
        first = twin.snapshot()
        assert first.stats["frames"] == 3
        # the torch engine sums a mean in another order when its frames came in two calls: float rounding only
        same = np.testing.assert_array_equal if engine != "torch" else \
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)
        same(first.volume, compound(sw.subset(slice(0, 3)), grid, opts).volume)
        same(rec.result().volume, compound(sw, grid, opts).volume)
        assert not np.array_equal(first.coverage, rec.snapshot().coverage)


def test_regrid_moves_what_was_compounded_with_its_voxels() -> None:
    sw = _oblique_sweep(n=8)
    big = fit_grid(sw, 0.4)
    nx, ny, nz = big.dims
    small = OutputGrid(big.ijk_to_world()[:3] @ np.array([3, 2, 1, 1.0]), big.spacing, (nx - 7, ny - 4, nz - 3),
                       big.direction)
    box = (slice(1, 1 + nz - 3), slice(2, 2 + ny - 4), slice(3, 3 + nx - 7))
    p2w = sw.pixel_to_world()
    for interp in ("nearest", "linear"):
        for mode in ("mean", "max", "latest"):
            for engine in ("numba", "numpy"):
                opts = CompoundOptions(interpolation=interp, compounding=mode, engine=engine)
                rec = Reconstructor(small, opts)
                rec.add_frames(sw.frames[:4], p2w[:4])
                part = rec.snapshot()
                assert part.stats["pixels_outside"] > 0
                rec.regrid(big)
                grown = rec.snapshot()
                assert rec.grid is big and grown.volume.shape == big.shape_zyx
                np.testing.assert_array_equal(grown.volume[box], part.volume)
                np.testing.assert_array_equal(grown.coverage[box], part.coverage)
                outside = np.ones(big.shape_zyx, dtype=bool)
                outside[box] = False
                assert not grown.coverage[outside].any() and not grown.volume[outside].any()
                rec.add_frames(sw.frames[4:], p2w[4:])  # pasting goes on in the large grid
                assert rec.result().stats["voxels_hit"] > grown.stats["voxels_hit"]


def test_regrid_equals_direct_compounding_of_every_frame() -> None:
    """Frames added before and after growing the grid give the volume of compounding them all into the large
    grid (the origin moves by whole voxels, so every pixel lands on the same voxel)."""
    sw = _oblique_sweep(n=8)
    big = fit_grid(sw, 0.5)
    p2w = sw.pixel_to_world()
    h, w = sw.frame_shape
    corners = np.array([[0, 0, 0, 1], [w - 1, 0, 0, 1], [0, h - 1, 0, 1], [w - 1, h - 1, 0, 1]], dtype=np.float64)
    ijk = np.einsum("ab,nbc,pc->npa", big.world_to_ijk(), p2w[:3], corners)[..., :3].reshape(-1, 3)
    lo = np.maximum(np.floor(ijk.min(axis=0)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(axis=0)) + 1, np.asarray(big.dims) - 1).astype(int)
    small = OutputGrid(big.ijk_to_world()[:3] @ np.r_[lo, 1.0], big.spacing, tuple(int(d) for d in hi - lo + 1),
                       big.direction)
    assert small.num_voxels < 0.8 * big.num_voxels
    for interp in ("nearest", "linear"):
        for mode in ("mean", "max", "latest"):
            opts = CompoundOptions(interpolation=interp, compounding=mode, engine="numba")
            rec = Reconstructor(small, opts)
            rec.add_frames(sw.frames[:3], p2w[:3])
            assert rec.snapshot().stats["pixels_outside"] == 0
            rec.regrid(big)
            rec.add_frames(sw.frames[3:], p2w[3:])
            direct = compound(sw, big, opts)
            got = rec.result()
            np.testing.assert_array_equal(got.volume, direct.volume)
            np.testing.assert_array_equal(got.coverage, direct.coverage)


def test_regrid_refuses_another_lattice_or_a_smaller_grid() -> None:
    sw = _oblique_sweep(n=3)
    grid = fit_grid(sw, 0.5)
    rec = Reconstructor(grid, CompoundOptions(engine="numba"))
    rec.add_frames(sw.frames, sw.pixel_to_world())
    shifted = OutputGrid(grid.origin - 0.25, grid.spacing, tuple(d + 2 for d in grid.dims), grid.direction)
    finer = OutputGrid(grid.origin, grid.spacing / 2, tuple(2 * d for d in grid.dims), grid.direction)
    smaller = OutputGrid(grid.origin, grid.spacing, (grid.dims[0] - 1, grid.dims[1], grid.dims[2]), grid.direction)
    for bad, words in ((shifted, "lattice"), (finer, "lattice"), (smaller, "does not contain")):
        with pytest.raises(InputError, match=words) as err:
            rec.regrid(bad)
        assert err.value.fix
    assert rec.grid is grid


def test_reset_and_frame_size_change() -> None:
    sw = _oblique_sweep(n=4)
    grid = fit_grid(sw, 0.5)
    p2w = sw.pixel_to_world()
    rec = Reconstructor(grid, CompoundOptions(engine="numba"))
    rec.add_frames(sw.frames[:2], p2w[:2])
    with pytest.raises(InputError, match="arrived after frames of 91x53") as err:
        rec.add_frames(np.zeros((1, 40, 91), np.uint8), p2w[:1])
    assert "reset" in err.value.fix
    with pytest.raises(InputError, match="one pixel-to-world matrix per frame"):
        rec.add_frames(sw.frames[:2], p2w[:1])
    rec.reset()
    assert rec.frames_added == 0 and rec.frame_shape is None
    empty = rec.snapshot()
    assert empty.stats["frames"] == 0 and not empty.volume.any()
    rec.add_frames(np.full((1, 40, 91), 9, np.uint8), p2w[:1])  # a new size after reset is fine
    assert rec.frame_shape == (40, 91)
    rec.reset()
    rec.add_frames(sw.frames, p2w)
    np.testing.assert_array_equal(rec.result().volume, compound(sw, grid, CompoundOptions(engine="numba")).volume)


def test_frames_wholly_outside_are_counted_not_errors() -> None:
    sw = _oblique_sweep(n=3)
    grid = fit_grid(sw, 0.5)
    far = sw.pixel_to_world().copy()
    far[:, :3, 3] += 1000.0
    rec = Reconstructor(grid, CompoundOptions(engine="numba"))
    rec.add_frames(sw.frames, far)
    snap = rec.snapshot()
    assert snap.stats["pixels_outside"] == snap.stats["pixels_pasted"] == sw.frames.size
    assert snap.stats["voxels_hit"] == 0


def test_auto_is_numba_without_importing_torch_and_numpy_without_numba() -> None:
    body = """
        import numpy as np
        import freehandrecon.compound as c
        from freehandrecon.compound.reconstructor import Reconstructor
        from freehandrecon.errors import ResourceError
        from freehandrecon.sweep import Sweep
        poses = np.repeat(np.eye(4)[None], 3, axis=0)
        poses[:, 2, 3] = [0.0, 1.0, 2.0]
        sw = Sweep(frames=np.full((3, 10, 14), 7, np.uint8), pixel_spacing=(1.0, 1.0), image_to_world=poses)
        g = c.fit_grid(sw, 1.0)
        out = {"planned": c.engine.planned_engine(c.CompoundOptions())}
        try:
            res = c.compound(sw, g, c.CompoundOptions(plus_arithmetic=True, interpolation="linear"))
            out["plus"] = [res.stats["engine"], sorted(set(res.volume.ravel().tolist()))]
        except ResourceError as err:
            out["plus"] = str(err)
        out["rec"] = Reconstructor(g, c.CompoundOptions()).engine
        out["torch"] = sys.modules.get("torch") is not None
        print(json.dumps(out))
    """
    with_numba = _run_blocked(body, ("torch",))
    assert with_numba == {"planned": "numba", "plus": ["numba", [7.0]], "rec": "numba", "torch": False}
    stock = _run_blocked(body, ("torch", "numba"))
    assert stock["planned"] == "numpy" and stock["rec"] == "numpy" and not stock["torch"]
    assert "needs numba or PyTorch" in stock["plus"] and "install numba" in stock["plus"]
    json.dumps(stock)


def test_auto_takes_numpy_for_small_jobs_until_numba_is_loaded() -> None:
    """A fresh process (the command line) compounds a small sweep on numpy, stick filling included, without
    importing numba; a large job, PLUS arithmetic or a process where numba is loaded take numba."""
    body = """
        import numpy as np
        import freehandrecon.compound as c
        from freehandrecon.compound.engine import numba_pays_off, offline_engine
        from freehandrecon.sweep import Sweep
        poses = np.repeat(np.eye(4)[None], 3, axis=0)
        poses[:, 2, 3] = [0.0, 2.0, 4.0]
        sw = Sweep(frames=np.full((3, 10, 14), 7, np.uint8), pixel_spacing=(1.0, 1.0), image_to_world=poses)
        g = c.fit_grid(sw, 1.0)
        opts = c.CompoundOptions(hole_filling=c.HoleFilling("stick", 9))
        small = c.compound(sw, g, opts)
        out = {"small": small.stats["engine"], "filled": small.stats["filled_voxels"],
               "numba_after_small": "numba" in sys.modules,
               # numba not loaded: the estimate decides (numba_pays_off imports nothing)
               "pays_off": [numba_pays_off(opts, 2000 * 640 * 480, 300 ** 3),
                            numba_pays_off(c.CompoundOptions(interpolation="linear"), 100 * 640 * 480, 10 ** 6),
                            numba_pays_off(c.CompoundOptions(interpolation="linear"), 10 * 640 * 480, 10 ** 6),
                            numba_pays_off(c.CompoundOptions(), 100 * 640 * 480, 10 ** 6),
                            "numba" in sys.modules],
               # deciding on numba imports it, so the small job goes first
               "small_linear": offline_engine(c.CompoundOptions(interpolation="linear"), 10 * 640 * 480, 10 ** 6),
               "large": offline_engine(opts, 2000 * 640 * 480, 300 ** 3),
               "plus": offline_engine(c.CompoundOptions(plus_arithmetic=True), 10, 10),
               "asked": offline_engine(c.CompoundOptions(engine="numba"), 10, 10)}
        import numba  # noqa: F401  (now its start-up is paid)
        out["loaded"] = [numba_pays_off(opts, 10, 10), c.compound(sw, g, opts).stats["engine"]]
        print(json.dumps(out))
    """
    out = _run_blocked(body, ("torch",))
    assert out == {"small": "numpy", "filled": 2 * 10 * 14, "numba_after_small": False,
                   "pays_off": [True, True, False, False, False], "small_linear": "numpy", "large": "numba",
                   "plus": "numba", "asked": "numba", "loaded": [True, "numba"]}


def test_torch_reconstructor_keeps_frames_and_matches_offline() -> None:
    """engine='torch' (the CUDA path, here on the CPU): frames kept, every snapshot compounds them."""
    sw = _oblique_sweep(n=5)
    grid = fit_grid(sw, 0.5)
    opts = CompoundOptions(interpolation="linear", compounding="max", engine="torch")
    rec = Reconstructor(grid, opts)
    p2w = sw.pixel_to_world()
    rec.add_frames(sw.frames[:2], p2w[:2])
    rec.add_frames(sw.frames[2:], p2w[2:])
    got, offline = rec.result(), compound(sw, grid, opts)
    assert got.stats["engine"] == "torch" and got.stats["pixels_pasted"] == offline.stats["pixels_pasted"]
    np.testing.assert_array_equal(got.volume, offline.volume)
