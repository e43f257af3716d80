"""Calibrated decorrelation features and the v2 pose network (poses.decorrelation, network v2, --init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from freehandrecon.poses import common, decorrelation, learned
from freehandrecon.poses.network import PoseNetConfig, build_pose_net
from freehandrecon.poses.speckle import DecorrelationCurve
from freehandrecon.simulate import AcquisitionSettings, phantom_for, simulate_sweep
from freehandrecon.simulate.trajectory import make_trajectory
from freehandrecon.lab.train import datasets
from freehandrecon.lab.train.trainer import init_from_model

SMALL_V2 = PoseNetConfig(input_size=64, widths=(8, 8, 16, 16), global_width=16, feature_dim=16, hidden=16, window=4,
                         decorrelation_lags=(1, 2), decorrelation_floor_lag=4)


@pytest.fixture(scope="module")
def elevational_sweep():
    """A structure-free pure elevational sweep at 0.12 mm per frame, and its model-input frames."""
    s = AcquisitionSettings(depth_mm=38.0, width_mm=38.0, image_size=(128, 128))
    rng = np.random.default_rng(5)
    poses = make_trajectory("linear", 10, rng, step_mm=0.12, pivot_mm=s.skin_point_mm, depth_mm=s.depth_mm)
    sweep = simulate_sweep(s, poses, phantom_for(s, poses, rng, structure=False), rng)
    frames = common.resample_frames(sweep.frames, sweep.pixel_spacing, 0.3, 128)
    return sweep, frames


def test_row_depths_follow_the_centred_model_input():
    d = decorrelation.row_depths_mm((128, 128), (0.3, 0.3), 0.3, 128, 8)
    assert d.shape == (8,)
    assert d[0] == pytest.approx(7.5 * 0.3) and np.allclose(np.diff(d), 16 * 0.3)
    deep = decorrelation.row_depths_mm((200, 100), (0.3, 0.3), 0.3, 128, 8)  # 60 mm deep: the crop is centred
    assert deep.mean() == pytest.approx(199 * 0.3 / 2)


def test_features_measure_the_step_where_the_curve_is_informative(elevational_sweep):
    sweep, frames = elevational_sweep
    curve = decorrelation.curve_for_sweep(sweep)
    assert "beam model" in curve.source
    depths = decorrelation.row_depths_mm(sweep.frame_shape, sweep.pixel_spacing, 0.3, 128, 8)
    f = decorrelation.elevation_features(frames, curve, depths, input_spacing=0.3, lags=(1, 2, 4), grid=8,
                                         floor_lag=8)
    assert f.shape == (9, decorrelation.feature_channels((1, 2, 4), 8), 8, 8) == (9, 11, 8, 8)
    assert f.dtype == np.float32
    rho = f[:, 0:6:2]
    assert np.all((rho >= 0) & (rho <= 1))
    # correlation falls with the lag in the focal rows (around 18 mm deep)
    focal = np.argmin(np.abs(depths - 18.0))
    means = rho[:, :, focal].mean(axis=(0, 2))
    assert means[0] > means[1] > means[2]
    # the calibrated per-frame distance of the focal rows is the true step within 30 %
    step = f[:, 3, focal - 1:focal + 2].mean() * decorrelation.DISTANCE_UNIT_MM  # lag 2
    assert step == pytest.approx(0.12, rel=0.3)
    # floor channels: the far correlation is below the near ones; the beam width is narrowest at the focus;
    # the floor-corrected distance is never shorter than the plain one
    assert f[:, 6, focal].mean() < means[-1]
    width = f[0, 7, :, 0]
    assert np.argmin(width) == focal and width.min() > 0
    assert np.all(f[:, 8:11] >= f[:, 1:6:2] - 1e-5)
    same = decorrelation.elevation_features(frames, curve, depths, input_spacing=0.3, lags=(1, 2, 4), grid=8,
                                            per_patch=True)
    assert np.abs(same[:, 0:6:2] - f[:, 0:6:2]).mean() < 0.03  # rigid per patch vs shifted frame: nearly equal


def test_curve_choice_and_mirror(elevational_sweep, tmp_path):
    sweep, _ = elevational_sweep
    plain = sweep.with_poses(sweep.image_to_world)
    plain.metadata = {}
    assert "default" in decorrelation.curve_for_sweep(plain).source
    path = DecorrelationCurve.from_settings(sweep.metadata["settings"]).save(tmp_path / "c.json")
    assert decorrelation.curve_for_sweep(plain, path).distances_mm.size == 256
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    assert np.array_equal(decorrelation.mirror_lateral(x)[..., 0], x[..., 3])


def test_v2_config_round_trip_and_checks():
    d = SMALL_V2.to_dict()
    assert d["architecture"] == "moglo-lite-v2" and d["decorrelation_lags"] == [1, 2]
    assert SMALL_V2.decorrelation_channels == 8
    assert PoseNetConfig.from_dict(d) == SMALL_V2
    assert PoseNetConfig().to_dict()["architecture"] == "moglo-lite-v1"
    with pytest.raises(ValueError, match="does not match"):
        PoseNetConfig.from_dict(dict(d, architecture="moglo-lite-v1"))
    with pytest.raises(ValueError, match="positive"):
        PoseNetConfig(decorrelation_lags=(0,)).validate()
    net = build_pose_net(SMALL_V2).eval()
    with pytest.raises(ValueError, match="decorrelation features"):
        net(torch.rand(1, 5, 64, 64))
    out = net(torch.rand(1, 5, 64, 64), torch.rand(1, 4, 8, 4, 4))
    assert out["pred"].shape == (1, 4, 6)


def test_init_from_a_v1_model_starts_as_that_model(tmp_path):
    v1 = PoseNetConfig(**{k: v for k, v in SMALL_V2.__dict__.items() if not k.startswith("decorrelation")})
    old = build_pose_net(v1).eval()
    learned.save_model(old, np.arange(1, 7, dtype=float), tmp_path, "old")
    new = build_pose_net(SMALL_V2).eval()
    scales = init_from_model(new, tmp_path / "old.json")
    assert np.allclose(scales, np.arange(1, 7))
    x = torch.rand(2, 5, 64, 64)
    with torch.no_grad():
        a = old(x)["pred"]
        b = new(x, torch.rand(2, 4, 8, 4, 4))["pred"]  # the new channels start at zero: features do not matter yet
    assert torch.allclose(a, b, atol=1e-5)


def test_records_carry_features_and_augmentation_keeps_them_aligned(elevational_sweep):
    sweep, _ = elevational_sweep
    rec = datasets.prepare_record(sweep, 0.3, 128, "s", "g", lags=(1, 2))
    assert rec.decor.shape == (9, 4, 8, 8) and rec.decor.dtype == np.float16
    ds = datasets.WindowDataset([rec], 4, 40, np.ones(6), seed=1)
    for i in range(40):
        _, _, d = ds[i]
        assert d.shape == (4, 4, 8, 8)
        # every window's features are a (possibly mirrored / reversed) slice of the record's
        found = False
        for start in range(rec.num_pairs - 4 + 1):
            ref = rec.decor[start:start + 4].astype(np.float32)
            for cand in (ref, ref[..., ::-1], ref[::-1], ref[::-1, ..., ::-1]):
                found |= np.array_equal(cand, d)
        assert found
    vx, _, vd = datasets.fixed_windows([rec], 4, np.ones(6))
    assert vd.shape == (2, 4, 4, 8, 8) and vx.shape[0] == 2
