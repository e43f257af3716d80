"""Ultrasound sweep simulator: determinism, beam physics (elevational decorrelation, speckle
statistics, in-plane shifts), anatomy (anechoic vessels), trajectories, sites and the CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from freehandrecon import geometry
from freehandrecon.errors import InputError, OutputExistsError
from freehandrecon.io import read_sweep
from freehandrecon.simulate import (BLENDED_SITES, HELDOUT_SITE, KINDS, SIMULATOR_VERSION, SITES, TRAIN_SITES,
                                    AcquisitionSettings, Imager, elevation_sigma_mm, make_phantom, make_trajectory, phantom_for,
                                    random_sweep, simulate_sweep, site_settings, theoretical_correlation, vessel_mask)
from freehandrecon.lab.simulate_command import add_parser
from freehandrecon.simulate.imaging import torch_threads
from freehandrecon.simulate.sites import RANDOMISED_SITES

# a plain linear probe with negligible electronic noise, for the physics checks
PROBE = AcquisitionSettings(probe="linear", f0_mhz=7.5, fractional_bandwidth=0.65, depth_mm=40.0, width_mm=38.0,
                            elevation_focus_mm=18.0, elevation_aperture_mm=4.5, noise_db=-120.0)


def _shifted(base: np.ndarray, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> np.ndarray:
    """``base`` moved by (dx, dy, dz) mm along its own image axes."""
    m = base.copy()
    m[:3, 3] += m[:3, :3] @ np.array([dx, dy, dz])
    return m


def _envelopes(settings: AcquisitionSettings, poses: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imager = Imager(settings, phantom_for(settings, poses, rng, structure=False))
    with torch_threads(1):
        return torch.stack([imager.envelope(m) for m in poses]).numpy()


# --- determinism, shapes, metadata, poses ------------------------------------------------------------

@pytest.mark.parametrize("site", ["site-a", "site-c"])  # linear and curvilinear
def test_random_sweep_is_deterministic_with_exact_poses(site):
    a = random_sweep(site, 7, num_frames=5)
    b = random_sweep(site, 7, num_frames=5)
    c = random_sweep(site, 8, num_frames=5)
    assert a.frames.shape == (5, 128, 128) and a.frames.dtype == np.uint8
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.image_to_world, b.image_to_world)
    assert not np.array_equal(a.frames, c.frames)
    assert 20 < a.frames.mean() < 200 and a.frames.std() > 10  # an image, not blank or saturated
    meta = json.loads(json.dumps(a.metadata))  # plain JSON
    assert meta["source"] == "simulated" and meta["site"] == site and meta["seed"] == 7
    assert meta["simulator_version"] == SIMULATOR_VERSION  # sweeps say which simulator made them
    assert meta["trajectory"] in KINDS and meta["sweep_direction"] in (1, -1)
    assert AcquisitionSettings.from_dict(meta["settings"]).pixel_spacing == pytest.approx(a.pixel_spacing)
    assert all({"point", "direction", "radius"} <= set(v) for v in meta["vessels"])
    np.testing.assert_allclose(np.diff(a.timestamps), 1.0 / meta["settings"]["frame_rate_hz"])
    # the poses are the trajectory's, untouched
    settings = AcquisitionSettings.from_dict(meta["settings"])
    poses = make_trajectory("linear", 3, np.random.default_rng(1), step_mm=0.3, pivot_mm=settings.skin_point_mm)
    sweep = simulate_sweep(settings, poses, phantom_for(settings, poses, np.random.default_rng(2)),
                           np.random.default_rng(3))
    np.testing.assert_array_equal(sweep.image_to_world, poses)


def test_kind_and_direction_overrides_keep_the_rest():
    a = random_sweep("site-b", 3, num_frames=4, kind="fan", direction=-1)
    b = random_sweep("site-b", 3, num_frames=4, kind="linear", direction=1)
    assert (a.metadata["trajectory"], a.metadata["sweep_direction"]) == ("fan", -1)
    assert (b.metadata["trajectory"], b.metadata["sweep_direction"]) == ("linear", 1)
    assert a.metadata["settings"] == b.metadata["settings"]  # same site draw whatever the trajectory


# --- beam physics ------------------------------------------------------------------------------------

def test_elevational_decorrelation_follows_the_beam_model():
    """Intensity correlation between parallel frames d mm apart, per depth band, against
    theoretical_correlation (exp(-d^2 / (2 sigma_e(depth)^2)))."""
    dists = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.2])
    base = make_trajectory("linear", 2, np.random.default_rng(0), step_mm=1.0)[0]
    refs = [0.0, 6.0, 12.0, 18.0]  # independent speckle realisations (more than 3 sigma apart)
    poses = np.array([_shifted(base, dz=r + d) for r in refs for d in dists])
    inten = (_envelopes(PROBE, poses) ** 2).reshape(len(refs), len(dists), 128, 128)[..., 4:-4]
    sy = PROBE.pixel_spacing[1]
    bands = [(0, 16), (32, 48), (48, 64), (64, 80), (112, 128)]
    errors, wrong_errors, fitted, expected = [], [], [], []
    for b0, b1 in bands:
        meas = np.array([np.mean([np.corrcoef(inten[r, 0, b0:b1].ravel(), inten[r, j, b0:b1].ravel())[0, 1]
                                  for r in range(len(refs))]) for j in range(len(dists))])
        depths = np.arange(b0, b1) * sy
        theory = theoretical_correlation(PROBE, depths[:, None], dists[None, :]).mean(axis=0)
        errors.append(np.abs(meas - theory).max())
        # a depth-independent beam of the image's mean width must NOT fit: the test can fail
        mean_sigma = float(elevation_sigma_mm(PROBE, np.arange(128) * sy).mean())
        wrong = np.exp(-dists ** 2 / (2 * mean_sigma ** 2))
        wrong_errors.append(np.abs(meas - wrong).max())
        # effective sigma from the 0.4 mm point
        use = 2 if meas[2] < 0.9 else 4
        fitted.append(dists[use] / math.sqrt(-2 * math.log(max(meas[use], 1e-3))))
        expected.append(dists[use] / math.sqrt(-2 * math.log(theory[use])))
    print("max |measured - theory| per band:", np.round(errors, 3), "fitted sigma:", np.round(fitted, 3),
          "expected:", np.round(expected, 3))
    assert max(errors) < 0.06  # about 3 standard errors of the estimate
    assert max(wrong_errors) > 0.15
    np.testing.assert_allclose(fitted, expected, rtol=0.1)
    # narrowest near the elevation focus (18 mm, band 2-3), wider at the skin and deep
    focal = min(fitted[2], fitted[3])
    assert focal < 0.6 * fitted[0] and focal < 0.6 * fitted[-1]


def test_speckle_is_fully_developed_rayleigh():
    base = make_trajectory("linear", 2, np.random.default_rng(0), step_mm=1.0)[0]
    poses = np.array([_shifted(base, dz=5.0 * k) for k in range(4)])
    env = _envelopes(PROBE, poses)[:, :, 4:-4]
    snr = env.mean() / env.std()
    assert abs(snr - 1.913) < 0.06, snr
    assert abs((env ** 2).mean() - 1.0) < 0.05  # unit mean intensity of plain tissue at every depth
    rows = (env ** 2).mean(axis=(0, 2))
    assert abs(rows[:64].mean() / rows[64:].mean() - 1.0) < 0.08
    # on the log scale a Rayleigh envelope has a standard deviation of 5.57 dB
    assert abs((20 * np.log10(env)).std() - 5.57) < 0.3
    # any pose convention: frames in an arbitrarily turned world give the same statistics
    turned = geometry.params_to_matrix(np.array([5.0, -3.0, 2.0, 30.0, -50.0, 70.0]))
    env = _envelopes(PROBE, np.array([turned @ _shifted(np.eye(4), dz=5.0 * k) for k in range(2)]))[:, :, 4:-4]
    assert abs(env.mean() / env.std() - 1.913) < 0.06 and abs((env ** 2).mean() - 1.0) < 0.06


def test_in_plane_shift_moves_the_speckle():
    base = make_trajectory("linear", 2, np.random.default_rng(0), step_mm=1.0)[0]
    sx, sy = PROBE.pixel_spacing
    poses = np.array([base, _shifted(base, dx=5 * sx, dy=3 * sy)])
    env = _envelopes(PROBE, poses)
    a, b = env[0] - env[0].mean(), env[1] - env[1].mean()
    xc = np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a))).real
    j, i = np.unravel_index(np.argmax(xc), xc.shape)
    shift = ((j + 64) % 128 - 64, (i + 64) % 128 - 64)
    assert shift == (-3, -5)  # the window moved right/down, so the tissue moves left/up
    peak = xc.max() / np.sqrt((a ** 2).sum() * (b ** 2).sum())
    assert peak > 0.8  # same speckle, just shifted (minus the edges)


def test_vessels_are_anechoic_linear_and_curvilinear():
    for probe in ("linear", "curvilinear"):
        settings = AcquisitionSettings(probe=probe, f0_mhz=5.0, depth_mm=40.0, width_mm=38.0, sector_deg=40.0,
                                       radius_mm=25.0, elevation_focus_mm=20.0)
        poses = make_trajectory("linear", 3, np.random.default_rng(0), step_mm=0.5,
                                pivot_mm=settings.skin_point_mm)
        centre = geometry.transform_points(poses[1:2], np.array([[settings.skin_point_mm[0], 20.0, 0.0, 1.0]]))[0, 0]
        vessel = {"point": centre.tolist(), "direction": (poses[1][:3, 2] + 0.3 * poses[1][:3, 0]).tolist(),
                  "radius": 3.0, "echogenicity": 0.05}
        lo, hi = np.array([-30.0, -5.0, -50.0]), np.array([30.0, 6.0, 5.0])
        phantom = make_phantom(lo, hi, np.random.default_rng(1), density=40.0, structure={"vessels": [vessel]})
        sweep = simulate_sweep(settings, poses, phantom, np.random.default_rng(2))
        inside = vessel_mask(sweep.metadata["vessels"], sweep.pixel_to_world(), sweep.frame_shape, margin_mm=0.8)
        outside = ~vessel_mask(sweep.metadata["vessels"], sweep.pixel_to_world(), sweep.frame_shape,
                               margin_mm=-1.5)
        outside &= sweep.frames > 0 if probe == "curvilinear" else True  # inside the fan
        assert inside.sum() > 200
        assert sweep.frames[inside].mean() < 0.35 * sweep.frames[outside].mean(), probe
    # the curvilinear image is zero outside its fan: top corners
    assert sweep.frames[:, :10, :5].max() == 0 and sweep.frames[:, 110, 64].min() > 0


# --- trajectories and sites --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", [1, -1])
def test_trajectories_are_rigid_mostly_elevational_and_directed(kind, direction):
    poses = make_trajectory(kind, 80, np.random.default_rng(3), direction=direction, step_mm=0.3,
                            pivot_mm=(19.0, 0.0, 0.0))
    assert poses.shape == (80, 4, 4)
    rot = poses[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    # motion of the image centre, expressed in the first frame's axes
    centre = np.array([19.0, 20.0, 0.0, 1.0])
    local = np.einsum("ab,nb->na", np.linalg.inv(poses[0]), poses @ centre)
    steps = np.diff(local[:, :3], axis=0)
    assert np.sign(local[-1, 2] - local[0, 2]) == direction
    assert np.abs(steps[:, 2]).mean() > np.linalg.norm(steps[:, :2], axis=1).mean()
    angles = geometry.matrix_to_params(np.linalg.inv(poses[0]) @ poses)[:, 3:]
    assert np.abs(angles).max() < 16.0  # freehand sweeps turn by ~10-15 degrees at most


@pytest.mark.parametrize("kind", KINDS)
def test_trajectories_turn_as_smoothly_as_a_hand(kind):
    # A hand turns a probe by well under a degree per frame at 25 frames/s (the s-curve yaw once
    # flipped between +-7 degrees in a few frames where the lateral motion reversed).
    for seed in range(10):
        poses = make_trajectory(kind, 80, np.random.default_rng(seed), step_mm=0.6, pivot_mm=(19.0, 0.0, 0.0))
        turn = np.abs(geometry.matrix_to_params(geometry.relative_transforms(poses))[:, 3:])  # degrees
        assert turn.max() < 1.0, (kind, seed, turn.max(0))


def test_trajectories_start_in_the_default_pose_convention():
    from freehandrecon.poses.common import default_first_pose

    poses = make_trajectory("linear", 2, np.random.default_rng(0), step_mm=0.3, pivot_mm=(19.0, 0.0, 0.0))
    np.testing.assert_allclose(poses[0][:3, :3], default_first_pose()[:3, :3])
    np.testing.assert_allclose(poses[0] @ [19.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0])  # skin point at the origin


def test_linear_trajectory_step_is_exact():
    poses = make_trajectory("linear", 5, np.random.default_rng(0), step_mm=0.25)
    rel = geometry.relative_transforms(poses)
    np.testing.assert_allclose(rel[:, :3, 3], np.tile([0.0, 0.0, 0.25], (4, 1)), atol=1e-12)
    np.testing.assert_allclose(rel[:, :3, :3], np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-12)


def test_sites_keep_spacing_and_heldout_inside_training_span():
    assert HELDOUT_SITE not in TRAIN_SITES and set(TRAIN_SITES) | {HELDOUT_SITE} == set(SITES)
    rng = np.random.default_rng(0)
    for site in SITES:
        for _ in range(20):
            sx, sy = site_settings(site, rng).pixel_spacing
            assert 0.2 <= sx <= 0.45 and 0.2 <= sy <= 0.45, (site, sx, sy)
    held = SITES[HELDOUT_SITE]
    for name, value in held.items():
        lo_hi = value if isinstance(value, tuple) else (value, value)
        train = [SITES[s][name] for s in TRAIN_SITES if name in SITES[s]]
        if isinstance(value, str):
            assert value in train
            continue
        assert min(min(np.atleast_1d(t)) for t in train) <= lo_hi[0] and lo_hi[1] <= max(max(np.atleast_1d(t))
                                                                                        for t in train), name
    for site in RANDOMISED_SITES:  # wider physics, pixel spacing still fine for the 0.3 mm model grid
        for _ in range(50):
            sx, sy = site_settings(site, rng).pixel_spacing
            assert 0.2 <= sx <= 0.5 and 0.2 <= sy <= 0.5, (site, sx, sy)
    # a new combination: no training site's ranges contain all held-out ranges
    for s in TRAIN_SITES:
        spec = SITES[s]
        contains = all(isinstance(v, tuple) and k in spec and isinstance(spec[k], tuple)
                       and spec[k][0] <= v[0] and v[1] <= spec[k][1] for k, v in held.items() if k != "probe")
        assert not contains, s


def test_blended_site_interpolates_between_two_same_probe_training_sites():
    assert not set(BLENDED_SITES) & set(SITES)
    rng = np.random.default_rng(1)
    pairs = BLENDED_SITES["site-blend"]
    for first, second in pairs:
        assert first in TRAIN_SITES and second in TRAIN_SITES and SITES[first]["probe"] == SITES[second]["probe"]
    between = 0
    for _ in range(40):
        s = site_settings("site-blend", rng)
        sx, sy = s.pixel_spacing
        assert 0.2 <= sx <= 0.45 and 0.2 <= sy <= 0.45, s
        # some pair of the blend contains every setting in the hull of its two ranges
        fits = []
        for first, second in pairs:
            a, b = SITES[first], SITES[second]
            if a["probe"] != s.probe:
                continue
            ok = all(min(np.min(a[k]), np.min(b[k])) - 1e-9 <= getattr(s, k) <= max(np.max(a[k]), np.max(b[k])) + 1e-9
                     for k in a if k != "probe")
            fits.append(ok)
        assert any(fits), s
        # and it is often outside both sites' own ranges (a gap filler, not a copy of one site)
        between += not any(all(np.min(SITES[t][k]) <= getattr(s, k) <= np.max(SITES[t][k])
                               for k in SITES[t] if k != "probe") for t in TRAIN_SITES)
    assert between >= 20
    # deterministic per seed, and recorded under its own name
    a, b = random_sweep("site-blend", 5, num_frames=3), random_sweep("site-blend", 5, num_frames=3)
    assert a.metadata["site"] == "site-blend" and a.metadata["settings"] == b.metadata["settings"]
    np.testing.assert_array_equal(a.frames, b.frames)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="site-a.*site-blend"):
        random_sweep("nowhere", 0)
    with pytest.raises(InputError, match="linear"):
        make_trajectory("zigzag", 10, np.random.default_rng(0))
    with pytest.raises(InputError, match="direction"):
        make_trajectory("linear", 10, np.random.default_rng(0), direction=2)
    with pytest.raises(InputError, match="at least 2"):
        random_sweep("site-a", 0, num_frames=1)
    with pytest.raises(InputError, match="probe"):
        AcquisitionSettings(probe="phased")
    with pytest.raises(InputError, match="f0_mhz"):
        AcquisitionSettings(f0_mhz=-1.0)


# --- command line ------------------------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    """``freehandrecon --quiet simulate ARGV`` through the module's own sub-parser."""
    parser = argparse.ArgumentParser(prog="freehandrecon")
    parser.add_argument("--quiet", action="store_true")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["--quiet", "simulate", *argv])
    return args.func(args)


def test_cli_writes_readable_sweeps_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    argv = ["--out", str(out), "--site", "site-e", "--seed", "4", "--frames", "3", "--trajectory", "tilt",
            "--direction", "backward", "--size", "64", "96"]
    assert _cli(argv) == 0
    sweep = read_sweep(out)
    assert sweep.frames.shape == (3, 64, 96)
    assert sweep.metadata["trajectory"] == "tilt" and sweep.metadata["sweep_direction"] == -1
    direct = random_sweep("site-e", 4, 3, "tilt", (64, 96), direction=-1)
    np.testing.assert_array_equal(sweep.frames, direct.frames)
    np.testing.assert_allclose(sweep.image_to_world, direct.image_to_world)
    assert json.loads(capsys.readouterr().out)["sweeps"][0]["seed"] == 4
    with pytest.raises(OutputExistsError, match="--force"):
        _cli(argv)
    assert _cli([*argv, "--force"]) == 0
    folder = tmp_path / "many"
    assert _cli(["--out", str(folder), "--count", "2", "--frames", "2", "--size", "32", "32"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["sweep_000.npz", "sweep_001.npz"]
    assert read_sweep(folder / "sweep_001.npz").metadata["seed"] == 1
    with pytest.raises(InputError, match="at least 2"):
        _cli(["--out", str(tmp_path / "x.npz"), "--frames", "1"])


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        _cli(["--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--count", "--site", "--seed", "--frames", "--trajectory", "--direction", "--size",
                   "--force"):
        assert option in text


def test_randomised_sites_vary_the_physics_and_leave_the_named_sites_alone():
    """Physics randomisation (issue 17): each sweep draws its own elevation beam, speckle density and display
    chain; the named sites keep the defaults (fully developed speckle, plain grey map), so their sweeps are
    unchanged."""
    rng = np.random.default_rng(1)
    drawn = [site_settings("site-random-linear", rng) for _ in range(40)]
    for name in ("elevation_focus_mm", "elevation_aperture_mm", "scatterers_per_cell", "smoothing_px", "gamma",
                 "grey_levels", "f0_mhz"):
        values = np.array([getattr(s, name) for s in drawn])
        assert values.max() > 1.5 * values.min() or values.min() == 0, name
    assert site_settings("site-random-convex", rng).probe == "curvilinear"
    for site in SITES:
        s = site_settings(site, np.random.default_rng(2))
        assert (s.scatterers_per_cell, s.smoothing_px, s.gamma, s.grey_levels) == (10.0, 0.0, 1.0, 256.0)
    plain = random_sweep("site-random-linear", 5, num_frames=3, image_size=(48, 48))
    grey = plain.metadata["settings"]["grey_levels"]
    assert len(np.unique(plain.frames)) <= int(grey)  # the grey-level loss is applied
