"""Compounder on synthetic sweeps with known answers: grids, kernels, modes, masks, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from freehandrecon.compound import (CompoundOptions, FanMask, HoleFilling, OutputGrid, compound,
                                    estimate_memory_bytes, fit_grid, grid_from_roi)
from freehandrecon.errors import Cancelled, InputError, ResourceError
from freehandrecon.geometry import params_to_matrix
from freehandrecon.sweep import Sweep


def stack_sweep(n: int = 4, h: int = 6, w: int = 8, dz: float = 1.0, values: np.ndarray | None = None) -> Sweep:
    """Frames lying in planes z = k*dz, pixels 1 mm apart: the grid can reproduce them exactly."""
    frames = values if values is not None else np.arange(n * h * w, dtype=np.float32).reshape(n, h, w) % 200
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = np.arange(n) * dz
    return Sweep(frames=np.asarray(frames), pixel_spacing=(1.0, 1.0), image_to_world=poses)


def test_fit_grid_matches_frame_corners_and_spacing() -> None:
    sw = stack_sweep()
    g = fit_grid(sw, 1.0)
    assert g.dims == (8, 6, 4)
    np.testing.assert_allclose(g.origin, [0, 0, 0])
    np.testing.assert_allclose(g.ijk_to_world() @ [7, 5, 3, 1], [7, 5, 3, 1])
    g2 = fit_grid(sw, (0.5, 0.5, 1.0), clip_rectangle=(2, 1, 4, 3), margin_mm=1.0)
    np.testing.assert_allclose(g2.origin, [1, 0, -1])
    assert g2.dims == (round(5 / 0.5) + 1, round(4 / 0.5) + 1, 6)


def test_oriented_grid_is_smaller_for_an_oblique_sweep() -> None:
    sw = stack_sweep(n=10, h=20, w=30)
    rot = params_to_matrix(np.array([0, 0, 0, 30.0, 40.0, 20.0]))
    sw = sw.with_poses(rot[None] @ sw.image_to_world)
    axis = fit_grid(sw, 1.0)
    oriented = fit_grid(sw, 1.0, oriented=True)
    assert oriented.num_voxels < 0.5 * axis.num_voxels
    np.testing.assert_allclose(oriented.direction.T @ oriented.direction, np.eye(3), atol=1e-9)
    res = compound(sw, oriented, CompoundOptions())
    assert res.stats["voxels_hit"] > 0.6 * res.volume.size  # the box hugs the sweep


def test_grid_from_roi_is_centred() -> None:
    g = grid_from_roi((10, 20, 30), (10, 4, 6), 2.0)
    assert g.dims == (5, 2, 3)
    centre = g.ijk_to_world() @ np.r_[(np.array(g.dims) - 1) / 2.0, 1]
    np.testing.assert_allclose(centre[:3], [10, 20, 30])


@pytest.mark.parametrize("spacing", [0.0, -1.0, (1.0, 0.0, 1.0), float("nan")])
def test_bad_spacing_is_refused(spacing) -> None:
    with pytest.raises(InputError, match="spacing"):
        fit_grid(stack_sweep(), spacing)
    with pytest.raises(InputError, match="spacing"):
        grid_from_roi((0, 0, 0), (1, 1, 1), spacing)


def test_nearest_mean_reproduces_frames_on_their_own_grid() -> None:
    sw = stack_sweep()
    res = compound(sw, fit_grid(sw, 1.0), CompoundOptions())
    np.testing.assert_allclose(res.volume, sw.frames)
    np.testing.assert_allclose(res.coverage, 1.0)
    assert res.stats["pixels_pasted"] == sw.frames.size


def test_linear_splat_spreads_trilinear_weights() -> None:
    sw = stack_sweep(n=2, h=2, w=2, values=np.full((2, 2, 2), 100, np.float32))
    shift = np.eye(4)
    shift[:3, 3] = [0.25, 0.5, 0.0]
    sw = sw.with_poses(shift[None] @ sw.image_to_world)
    grid = OutputGrid(np.zeros(3), np.ones(3), (3, 3, 2))
    res = compound(sw, grid, CompoundOptions(interpolation="linear"))
    # every pixel puts 0.75/0.25 along x and 0.5/0.5 along y; weights sum to the pixel count
    assert res.coverage.sum() == pytest.approx(8.0)
    np.testing.assert_allclose(res.coverage[0, 0], [0.375, 0.5, 0.125])
    np.testing.assert_allclose(res.volume[res.coverage > 0], 100.0, rtol=1e-6)


def _two_frames(a: float, b: float) -> Sweep:
    frames = np.stack([np.full((4, 4), a, np.float32), np.full((4, 4), b, np.float32)])
    return Sweep(frames=frames, pixel_spacing=(1.0, 1.0), image_to_world=np.repeat(np.eye(4)[None], 2, axis=0))


@pytest.mark.parametrize("interp", ["nearest", "linear"])
@pytest.mark.parametrize("mode,expected", [("mean", 50.0), ("max", 80.0), ("latest", 20.0)])
def test_compounding_modes_on_overlapping_frames(interp: str, mode: str, expected: float) -> None:
    sw = _two_frames(80.0, 20.0)
    grid = OutputGrid(np.zeros(3), np.ones(3), (4, 4, 1))
    res = compound(sw, grid, CompoundOptions(interpolation=interp, compounding=mode))
    np.testing.assert_allclose(res.volume, expected)
    np.testing.assert_allclose(res.coverage, 2.0)


def test_importance_weights_the_mean() -> None:
    frames = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 0, np.uint8)])
    sw = Sweep(frames=frames, pixel_spacing=(1.0, 1.0), image_to_world=np.repeat(np.eye(4)[None], 2, axis=0))
    mask = np.full((4, 4), 255, np.uint8)
    mask[:, 2:] = 85  # weight 1/3 on the right half
    grid = OutputGrid(np.zeros(3), np.ones(3), (4, 4, 1))
    res = compound(sw, grid, CompoundOptions(compounding="importance", importance_mask=mask))
    np.testing.assert_allclose(res.volume[0, :, :2], 50.0, rtol=1e-6)  # equal weights in both frames
    np.testing.assert_allclose(res.coverage[0, :, 2:], 2 / 3, rtol=1e-6)
    with pytest.raises(InputError, match="importance mask"):
        compound(sw, grid, CompoundOptions(compounding="importance"))


def test_clip_fan_and_threshold_drop_pixels() -> None:
    sw = stack_sweep(n=2, h=40, w=41)
    grid = fit_grid(sw, 1.0)
    clipped = compound(sw, grid, CompoundOptions(clip_rectangle=(5, 10, 20, 8)))
    hit = clipped.coverage[0] > 0
    assert hit[10:18, 5:25].all() and hit.sum() == 20 * 8
    fan = FanMask((20.0, 0.0), (-30.0, 30.0), 10.0, 35.0)
    fanned = compound(sw, grid, CompoundOptions(fan=fan)).coverage[0] > 0
    assert not fanned[:8].any() and not fanned[38:].any()  # inside the start radius, beyond the stop radius
    assert fanned[25, 20] and not fanned[25, 2]  # on the axis, outside the -30 degree edge
    values = sw.frames.copy()
    values[:, :, :10] = 3
    dark = Sweep(frames=values, pixel_spacing=(1, 1), image_to_world=sw.image_to_world)
    thr = compound(dark, grid, CompoundOptions(pixel_threshold=5)).coverage[0] > 0
    assert not thr[:, :10].any() and thr[:, 10:][values[0, :, 10:] >= 5].all()


def test_roi_missing_every_frame_is_refused() -> None:
    sw = stack_sweep()
    roi = grid_from_roi((500, 500, 500), (10, 10, 10), 1.0)
    with pytest.raises(InputError, match="No frame intersects the ROI") as err:
        compound(sw, roi, CompoundOptions())
    assert "Fix:" in str(err.value)


def test_too_large_output_is_refused_with_a_spacing_that_fits() -> None:
    sw = stack_sweep()
    grid = grid_from_roi((0, 0, 0), (400, 400, 400), 0.1)
    # 128 MB: the numba engine counts 64 MB for loading its kernels
    opts = CompoundOptions(max_memory_bytes=128 << 20)
    with pytest.raises(ResourceError, match=r"coarser spacing of about") as err:
        compound(sw, grid, opts)
    suggested = float(str(err.value).split("about ")[-1].split(",")[0])
    coarse = grid_from_roi((0, 0, 0), (400, 400, 400), suggested)
    assert estimate_memory_bytes(coarse, opts, sw.frame_shape, sw.num_frames) <= 128 << 20


def test_estimate_grows_with_voxels_and_modes() -> None:
    # grids large enough that the voxel terms, not the fixed per-worker buffers, set the peak
    g1 = grid_from_roi((0, 0, 0), (100, 100, 100), 1.0)
    g2 = grid_from_roi((0, 0, 0), (100, 100, 100), 0.5)
    o = CompoundOptions()
    e1, e2 = (estimate_memory_bytes(g, o, (100, 100), 10) for g in (g1, g2))
    # at least the accumulators (8 bytes a voxel) and the float32 volume divided out of them (the numba engine's
    # coverage is its weight accumulator; the torch and numpy engines make a new one: 16)
    assert e2 - e1 >= (g2.num_voxels - g1.num_voxels) * 12
    stick = CompoundOptions(hole_filling=HoleFilling("stick", 9))
    assert estimate_memory_bytes(g2, stick, (100, 100), 10) > estimate_memory_bytes(g2, o, (100, 100), 10)


def test_progress_cancel_channels_and_no_mutation() -> None:
    sw = stack_sweep(n=6)
    sw.channels["pa"] = (255 - sw.frames).astype(np.float32)
    before = sw.frames.copy(), sw.image_to_world.copy()
    seen: list[tuple[int, int]] = []
    grid = fit_grid(sw, 1.0)
    res = compound(sw, grid, CompoundOptions(chunk_frames=2), channel="pa", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 6), (4, 6), (6, 6)]
    np.testing.assert_allclose(res.volume, sw.channels["pa"])
    np.testing.assert_array_equal(sw.frames, before[0])
    np.testing.assert_array_equal(sw.image_to_world, before[1])
    with pytest.raises(Cancelled):
        compound(sw, grid, CompoundOptions(chunk_frames=2), should_cancel=lambda: True)
    with pytest.raises(InputError, match="no channel 'doppler'"):
        compound(sw, grid, CompoundOptions(), channel="doppler")


def test_volume_as_rounds_and_clips() -> None:
    sw = stack_sweep(values=np.full((4, 6, 8), 254.6, np.float32))
    res = compound(sw, fit_grid(sw, 1.0), CompoundOptions())
    assert res.volume_as(np.uint8).dtype == np.uint8 and res.volume_as(np.uint8).max() == 255


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    sw = stack_sweep(n=8, h=30, w=40)
    rot = params_to_matrix(np.array([0, 0, 0, 10.0, 20.0, 5.0]))
    sw = sw.with_poses(rot[None] @ sw.image_to_world)
    grid = fit_grid(sw, 0.7)
    for interp in ("nearest", "linear"):
        cpu = compound(sw, grid, CompoundOptions(interpolation=interp))
        gpu = compound(sw, grid, CompoundOptions(interpolation=interp, device="cuda"))
        np.testing.assert_allclose(gpu.volume, cpu.volume, rtol=1e-5, atol=1e-3)


def _reference_mean(sw: Sweep, grid: OutputGrid, linear: bool, keep: np.ndarray, weight: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy float64 splat (IGSIO rules: nearest rounds half up; linear needs all 8 corners inside;
    pixel->voxel matrices quantised to 14 fractional bits as IGSIO's fixed point)."""
    n, h, w = sw.frames.shape
    jj, ii = np.mgrid[0:h, 0:w]
    pix = np.stack([ii.ravel(), jj.ravel(), np.zeros(h * w), np.ones(h * w)]).astype(np.float64)
    p2v = grid.world_to_ijk()[None] @ sw.pixel_to_world()
    p2v[:, :3, [0, 1, 3]] = np.rint(p2v[:, :3, [0, 1, 3]] * 2**14) / 2**14
    nx, ny, nz = grid.dims
    size = np.array([nx, ny, nz])[:, None]
    num = np.zeros(grid.num_voxels)
    den = np.zeros(grid.num_voxels)
    for k in range(n):  # per frame, vectorised over pixels
        x = (p2v[k] @ pix)[:3]
        v = sw.frames[k].ravel().astype(np.float64)
        use = keep[k].ravel()
        if not linear:
            b = np.floor(x + 0.5).astype(np.int64)
            use = use & ((b >= 0) & (b < size)).all(axis=0)
            flat = b[2] * nx * ny + b[1] * nx + b[0]
            num += np.bincount(flat[use], (v * weight.ravel())[use], grid.num_voxels)
            den += np.bincount(flat[use], weight.ravel()[use], grid.num_voxels)
            continue
        b = np.floor(x).astype(np.int64)
        f = x - b
        use = use & (b >= 0).all(axis=0) & ((b + (f > 0)) <= size - 1).all(axis=0)
        for c in range(8):
            o = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])[:, None]
            wt = np.prod(np.where(o == 1, f, 1 - f), axis=0) * weight.ravel()
            bb = np.minimum(b + o, size - 1)
            flat = bb[2] * nx * ny + bb[1] * nx + bb[0]
            num += np.bincount(flat[use], (v * wt)[use], grid.num_voxels)
            den += np.bincount(flat[use], wt[use], grid.num_voxels)
    shape = grid.shape_zyx
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0).reshape(shape), den.reshape(shape)


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_tiled_mean_matches_a_plain_reference_with_masks_and_partial_roi(interp: str) -> None:
    """Several tiles per frame, frames partly outside the ROI (bounds-checked and skipped tiles),
    clip rectangle, threshold and importance weights, shared between worker threads."""
    rng = np.random.default_rng(3)
    n, h, w = 6, 200, 300
    frames = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    t = np.linspace(0, 1, n)
    params = np.stack([3 * t, 2 * t, 1.7 * np.arange(n), 10 + 7 * t, 5 * t, 3 * t], axis=1)
    sw = Sweep(frames=frames, pixel_spacing=(0.23, 0.19), image_to_world=params_to_matrix(params))
    full = fit_grid(sw, 0.7)
    centre = full.ijk_to_world() @ np.r_[(np.asarray(full.dims) - 1) * 0.5, 1.0]
    size = (np.asarray(full.dims) - 1) * full.spacing
    roi = grid_from_roi(centre[:3] + [0.2 * size[0], 0, 0], size * [0.6, 0.8, 0.7], 0.7)
    importance = rng.uniform(0.2, 1.0, (h, w)).astype(np.float32)
    clip = (10, 5, 250, 180)
    opts = CompoundOptions(interpolation=interp, compounding="importance", importance_mask=importance,
                           clip_rectangle=clip, pixel_threshold=40)
    keep = np.zeros((n, h, w), dtype=bool)
    keep[:, 5:185, 10:260] = True
    keep &= frames >= 40
    ref_vol, ref_cov = _reference_mean(sw, roi, interp == "linear", keep, importance)
    assert 0.05 < (ref_cov > 0).mean() < 0.9  # the ROI really cuts the sweep
    hit = ref_cov > 0.05
    for engine in ("numba", "torch"):
        res = compound(sw, roi, dataclasses.replace(opts, engine=engine))
        assert res.stats["engine"] == engine
        np.testing.assert_allclose(res.coverage, ref_cov, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(res.volume[hit], ref_vol[hit], rtol=2e-3, atol=0.1)
        assert res.stats["pixels_pasted"] == int(keep.sum())
    # torch: one worker (memory limit leaves no room for a second accumulator) gives the same result
    opts = dataclasses.replace(opts, engine="torch")
    one = estimate_memory_bytes(roi, opts, (h, w), n, workers=1)
    single = compound(sw, roi, CompoundOptions(**{**opts.__dict__, "max_memory_bytes": one}))
    assert single.stats["workers"] == 1
    np.testing.assert_allclose(single.volume, res.volume, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(single.coverage, res.coverage, rtol=1e-5, atol=1e-5)
