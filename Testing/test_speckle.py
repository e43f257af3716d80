"""Classical speckle-decorrelation pose estimator (freehandrecon.poses.speckle) on simulated sweeps."""

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.errors import InputError
from freehandrecon.poses import common, speckle
from freehandrecon.simulate import AcquisitionSettings, phantom_for, random_sweep, simulate_sweep
from freehandrecon.simulate.beam import elevation_sigma_mm
from freehandrecon.sweep import Sweep

SETTINGS = AcquisitionSettings(f0_mhz=6.5, depth_mm=40.0, width_mm=35.0, elevation_focus_mm=20.0,
                               elevation_aperture_mm=4.8, image_size=(128, 128))


def _sweep_from_relative(params, settings=SETTINGS, seed=0, structure=False):
    """Simulate a sweep whose centre-frame relative motions are the 6-vectors ``params [N-1, 6]``."""
    rel = geometry.params_to_matrix(np.asarray(params, float))
    shape, spacing = settings.image_size, settings.pixel_spacing
    poses = common.absolute_from_centre(rel, shape, spacing)
    rng = np.random.default_rng(seed)
    return simulate_sweep(settings, poses, phantom_for(settings, poses, rng, structure=structure), rng)


def _estimate(sweep):
    sweep.metadata.setdefault("settings", SETTINGS.to_dict())
    rel, info = speckle.estimate_relative(sweep)
    return geometry.matrix_to_params(rel), info


def test_pure_elevational_step_within_ten_percent():
    for seed, step in ((1, 0.2), (2, 0.45)):
        params = np.zeros((16, 6))
        params[:, 2] = step
        sweep = _sweep_from_relative(params, seed=seed)
        sweep.metadata["settings"] = SETTINGS.to_dict()  # as random_sweep records them
        p, info = _estimate(sweep)
        assert abs(p[:, 2].mean() - step) < 0.1 * step, (step, p[:, 2].mean())
        assert np.abs(p[:, :2]).max() < 0.05  # no in-plane motion invented
        assert "simulated" in info["curve"]


def test_known_in_plane_shift_recovered_to_a_tenth_of_a_pixel():
    sx, sy = SETTINGS.pixel_spacing
    shift_px = np.array([1.3, -0.6])
    params = np.zeros((12, 6))
    params[:, 0], params[:, 1] = shift_px[0] * sx, shift_px[1] * sy
    p, _ = _estimate(_sweep_from_relative(params))
    err_px = np.abs(p[:, :2] / [sx, sy] - shift_px)
    assert err_px.mean(axis=0).max() < 0.1, err_px.mean(axis=0)
    assert np.abs(p[:, 5]).mean() < 0.1  # no in-plane rotation


def test_in_plane_rotation_recovered():
    params = np.zeros((10, 6))
    params[:, 5] = 1.0  # degrees about z through the frame centre
    p, _ = _estimate(_sweep_from_relative(params))
    assert p[:, 5].mean() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("axis", [3, 4])
def test_tilt_and_yaw_signs(axis):
    # forward step with a rotation about x (tilt) or y (yaw) small enough that every patch moves forward
    params = np.zeros((14, 6))
    params[:, 2] = 0.35
    params[:, axis] = 0.5
    p, _ = _estimate(_sweep_from_relative(params, seed=axis))
    other = 4 if axis == 3 else 3
    assert p[:, axis].mean() > 0.25, p[:, axis].mean()
    assert abs(p[:, other].mean()) < 0.5 * p[:, axis].mean()
    # and the mirrored rotation gives the opposite sign
    params[:, axis] = -0.5
    q, _ = _estimate(_sweep_from_relative(params, seed=axis))
    assert q[:, axis].mean() < -0.25


def test_blank_frames_raise_or_warn():
    params = np.zeros((11, 6))
    params[:, 2] = 0.3
    sweep = _sweep_from_relative(params)
    frames = sweep.frames.copy()
    frames[5] = 0
    _, info = speckle.estimate_relative(Sweep(frames, sweep.pixel_spacing, sweep.image_to_world,
                                              metadata={"settings": SETTINGS.to_dict()}))
    assert info["warnings"] and "blank" in info["warnings"][0]
    with pytest.raises(InputError, match="no speckle"):
        speckle.estimate_relative(Sweep(np.zeros_like(frames), sweep.pixel_spacing))


def test_curve_from_settings_inverts_the_beam_model(tmp_path):
    curve = speckle.DecorrelationCurve.from_settings(SETTINGS)
    depth = np.array([5.0, 20.0, 35.0])
    sigma = elevation_sigma_mm(SETTINGS, depth)
    d = np.array([0.3, 0.2, 0.5])
    rho = np.exp(-d ** 2 / (2 * sigma ** 2))
    np.testing.assert_allclose(curve.distance(rho, depth), d, rtol=0.02)
    np.testing.assert_allclose(curve.correlation(depth, d), rho, atol=2e-3)
    assert curve.distance(1.0, 20.0) == 0.0
    path = curve.save(tmp_path / "curve.json")
    back = speckle.DecorrelationCurve.load(path)
    np.testing.assert_allclose(back.rho, curve.rho)
    with pytest.raises(Exception, match="exists"):
        curve.save(path)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a FreehandRecon decorrelation curve"):
        speckle.DecorrelationCurve.load(tmp_path / "bad.json")


def test_calibrated_curve_is_used_for_real_sweeps_without_settings():
    calib = random_sweep("site-f", 10004, 24, kind="linear", step_mm=0.1, direction=1, structure=False)
    curve = speckle.DecorrelationCurve.calibrate(calib, max_lag=8)
    assert curve.rho.shape[0] == 5 and "tracked" in curve.source
    target = random_sweep("site-f", 10004, 12, kind="linear", step_mm=0.3, direction=1, structure=False)
    target.metadata.pop("settings")  # as a real file: only the calibration knows the probe
    rel, info = speckle.estimate_relative(target, curve=curve)
    assert info["curve"] == curve.source
    assert geometry.matrix_to_params(rel)[:, 2].mean() == pytest.approx(0.3, rel=0.15)
    with pytest.raises(InputError, match="tracked poses"):
        speckle.DecorrelationCurve.calibrate(Sweep(calib.frames, calib.pixel_spacing))


def test_log_to_intensity_correlation():
    # (6 / pi^2) Li2(x): Li2(1/2) = pi^2/12 - ln(2)^2 / 2
    r_log = 6 / np.pi ** 2 * (np.pi ** 2 / 12 - np.log(2) ** 2 / 2)
    assert speckle.log_to_intensity_correlation(np.array([r_log]))[0] == pytest.approx(0.5, abs=1e-4)
    assert speckle.log_to_intensity_correlation(np.array([0.0, 1.0, -0.2])).tolist() == [0.0, 1.0, 0.0]


def test_patches_on_the_fan_edge_or_a_static_overlay_are_left_out():
    import torch

    rng = np.random.default_rng(3)
    frames = rng.random((6, 96, 96)).astype(np.float32)
    frames[:, :, :30] = 0.0          # outside a fan: black in every frame
    frames[:, 80:, 60:] = 0.5        # a burnt-in overlay: the same grey in every frame
    grid = speckle.blockmatch.patch_grid((96, 96), 3, 3)
    ok = speckle.imaging_patches(torch.from_numpy(frames), grid).numpy().reshape(3, 3)
    x0 = grid.x0.reshape(3, 3)[0]
    y0 = grid.y0.reshape(3, 3)[:, 0]
    for r in range(3):
        for c in range(3):
            touches_black = x0[c] < 30
            touches_overlay = y0[r] + grid.size > 80 and x0[c] + grid.size > 60
            assert ok[r, c] == (not touches_black and not touches_overlay), (r, c)


def test_a_curve_calibrated_on_a_curvilinear_sweep_is_not_widened_by_the_fan_edge():
    """A convex probe's black border sits still in every frame; patches on it once made the calibrated curve
    3-5x wider than the probe's beam model (half-correlation distance 3.8 mm against 0.7-0.9 mm)."""
    settings = AcquisitionSettings(probe="curvilinear", f0_mhz=3.5, depth_mm=45.0, radius_mm=26.0, sector_deg=40.0,
                                   elevation_focus_mm=29.0, elevation_aperture_mm=7.5, lateral_fnumber=2.5)
    from freehandrecon.simulate.trajectory import make_trajectory

    rng = np.random.default_rng(999)
    poses = make_trajectory("mixed", 48, rng, direction=1, pivot_mm=settings.skin_point_mm, depth_mm=settings.depth_mm)
    sweep = simulate_sweep(settings, poses, phantom_for(settings, poses, rng, structure=True), rng)
    assert (sweep.frames[:, -1, 0] == 0).all() and (sweep.frames[:, 0, 0] == 0).all()  # black corners outside the fan
    calibrated = speckle.DecorrelationCurve.calibrate(sweep)
    assert calibrated.meta["static_patches_left_out"] > 0  # the fan's corners
    _, info = speckle.estimate_relative(sweep, curve=calibrated)
    assert info["static_patches_left_out"] == calibrated.meta["static_patches_left_out"]
    beam = speckle.DecorrelationCurve.from_settings(settings)
    mid = settings.depth_mm / 2
    ratio = float(calibrated.distance(0.5, mid)) / float(beam.distance(0.5, mid))
    assert 0.8 < ratio < 2.0, ratio


def test_an_image_that_is_mostly_static_keeps_all_its_patches():
    import torch

    rng = np.random.default_rng(4)
    frames = np.zeros((5, 96, 96), np.float32)
    frames[:, 40:44, 20:80] = rng.random((5, 4, 60))  # a bright moving line in black water: every patch has static pixels
    grid = speckle.blockmatch.patch_grid((96, 96), 3, 3)
    assert speckle.imaging_patches(torch.from_numpy(frames), grid).all()


def test_an_image_calibrated_curve_given_to_the_shipped_learned_model_is_warned_about(tmp_path):
    from freehandrecon.poses import IMAGE_CURVE_WARNING, estimate_poses

    sweep = random_sweep("site-a", 20000, 24, kind="mixed")
    calibrated = speckle.DecorrelationCurve.calibrate(random_sweep("site-a", 20001, 40, kind="linear"))
    path = calibrated.save(tmp_path / "curve.json")
    assert IMAGE_CURVE_WARNING in estimate_poses(sweep, "learned", curve=path).warnings
    assert IMAGE_CURVE_WARNING not in estimate_poses(sweep, "learned").warnings
    beam = speckle.DecorrelationCurve.from_settings(sweep.metadata["settings"])  # the kind it was trained with
    assert IMAGE_CURVE_WARNING not in estimate_poses(sweep, "learned", curve=beam).warnings
    assert IMAGE_CURVE_WARNING not in estimate_poses(sweep, "speckle", curve=path).warnings


def test_structure_patches_are_told_from_speckle_whatever_the_gain():
    """A bright line across speckle raises a patch's std above the sweep's typical one; a gain change (an offset of
    log-compressed pixels) does not change the verdict, nor does a uniformly brighter region of speckle."""
    import torch

    rng = np.random.default_rng(5)
    # log-compressed fully developed speckle: log of exponential intensities, scaled to about 0.1 std
    frames = (0.45 + 0.077 * np.log(rng.exponential(size=(4, 96, 96)))).astype(np.float32)
    frames[:, 10:14, :] += 0.35  # a bright layer through the top row of patches
    frames[:, 60:, :] += 0.15  # brighter speckle in the bottom row: still speckle
    grid = speckle.blockmatch.patch_grid((96, 96), 3, 3)
    for gain in (0.0, 0.1):
        t = torch.from_numpy(np.clip(frames + gain, 0.0, 1.0).astype(np.float32))
        std = speckle.patch_std(t, grid)
        ref = speckle.speckle_std(std, torch.ones(9, dtype=torch.bool))
        like = speckle.speckle_like(std, ref).numpy().reshape(4, 3, 3)
        assert not like[:, 0].any() and like[:, 1:].all(), gain
        assert speckle.speckle_like(std, ref, None).all()


@pytest.mark.parametrize("site", ["site-a", "site-d"])
def test_structure_does_not_widen_a_calibrated_curve(site):
    """Tissue layers and vessel walls decorrelate far slower than speckle: calibrated on a sweep with structure, the
    curve came out wider than on the same probe's plain speckle (half-correlation distance at the deeper bands up
    to 2.8x). Leaving structure patches out brings it back towards the speckle curve."""
    from freehandrecon.simulate.trajectory import make_trajectory

    settings = AcquisitionSettings.from_dict(random_sweep(site, 30000, 2).metadata["settings"])
    curves = {}
    for structure in (False, True):
        rng = np.random.default_rng(5)
        poses = make_trajectory("linear", 48, rng, direction=1, step_mm=0.08, pivot_mm=settings.skin_point_mm,
                                depth_mm=settings.depth_mm)
        sweep = simulate_sweep(settings, poses, phantom_for(settings, poses, rng, structure=structure,
                                                             per_cell=settings.scatterers_per_cell), rng)
        for ratio in (None, speckle.STRUCTURE_STD_RATIO) if structure else (None,):
            c = speckle.DecorrelationCurve.calibrate(sweep, min_bands=2, structure_ratio=ratio)
            curves[structure, ratio] = c.distance(np.full(c.depths_mm.size, 0.5), c.depths_mm)
            assert (c.meta["structure_pairs_left_out"] > 0) == (structure and ratio is not None)
            # tissue (a fifth of the pairs hold structure here) is warned about; a speckle phantom is not
            judged = structure and ratio is not None
            assert bool(c.meta.get("warnings")) == judged and (c.meta["structure_pairs_fraction"] > 0.1) == judged
            if judged:
                assert "speckle phantom" in c.meta["warnings"][0]
    speckle_only = curves[False, None]
    err = {k: float(np.mean(np.abs(np.log(v / speckle_only)))) for k, v in curves.items() if k[0]}
    assert err[True, speckle.STRUCTURE_STD_RATIO] < 0.6 * err[True, None], err


def test_the_simulated_probe_curve_of_a_low_contrast_near_field():
    """A randomised probe whose shallowest band has no texture (high dynamic range, few grey levels): its simulated
    curve takes the neighbouring band's there, as a user's calibration does, instead of refusing."""
    settings = AcquisitionSettings.from_dict(random_sweep("site-random-linear", 40002, 2).metadata["settings"])
    curve = speckle.DecorrelationCurve.from_simulation(settings)
    assert curve.meta["bands_without_texture_mm"] and curve.depths_mm.size >= 2
    assert 0.0 < float(curve.distance(0.5, settings.depth_mm / 2)) < 3.0


def test_a_sweep_without_plain_speckle_is_called_so():
    """The real N-wire sweep (wires in water) has texture only on the wires: every textured patch pair is structure,
    and the calibration says the sweep has no plain speckle, not only that it holds some structure."""
    from pathlib import Path

    from freehandrecon.io import read_sweep

    data = Path(__file__).parent / "Data" / "plus"
    sweep = read_sweep(data / "NwirePhantomFreehand.igs.mha",
                       plus_config=data / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml")
    c = speckle.DecorrelationCurve.calibrate(sweep.subset(slice(0, 40)), min_bands=2)
    assert c.meta["structure_pairs_fraction"] >= speckle.NO_SPECKLE_FRACTION
    assert c.meta["warnings"] and "almost no plain speckle" in c.meta["warnings"][0]
