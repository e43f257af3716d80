"""Pose metrics (freehandrecon.poses.metrics) on hand-computable cases."""

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.poses import metrics
from freehandrecon.poses import common
from freehandrecon.errors import CalibrationError, InputError


def _translations(points):
    m = np.tile(np.eye(4), (len(points), 1, 1))
    m[:, :3, 3] = points
    return m


def _elevational(n, step):
    return _translations([[0.0, 0.0, k * step] for k in range(n)])


def test_identical_chains_have_zero_errors():
    rng = np.random.default_rng(0)
    p = np.cumsum(rng.normal(0, [0.2, 0.2, 0.5, 1, 1, 1], (12, 6)), axis=0)
    poses = geometry.params_to_matrix(p)
    r = metrics.evaluate_poses(poses, poses, (30, 40), (0.3, 0.2))
    for key in ("gpe_mm", "lpe_mm", "final_drift_mm", "average_drift_mm", "max_drift_mm",
                "final_drift_rate_length_pct", "final_drift_rate_distance_pct"):
        assert r[key] == pytest.approx(0.0, abs=1e-9), key
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in r["per_dof_mae"].values())
    assert r["frames"] == 12


def test_constant_offset_after_first_frame():
    # est_i = true_i @ Tr(o) for i >= 2: every point of frames 2..N is off by |o| in frame 1 (GPE = |o|);
    # in its previous frame only frame 2 is off (pure translations), so LPE = |o| / (N - 1).
    n, o = 6, np.array([0.3, -0.4, 1.2])
    true = _translations([[0.1 * k, 0.0, 0.5 * k] for k in range(n)])
    est = true.copy()
    est[1:, :3, 3] += o
    norm = np.linalg.norm(o)  # 1.3
    assert metrics.gpe(true, est, (8, 10), (0.5, 0.5)) == pytest.approx(norm)
    assert metrics.lpe(true, est, (8, 10), (0.5, 0.5)) == pytest.approx(norm / (n - 1))
    np.testing.assert_allclose(metrics.drift_per_frame(true, est, (8, 10), (0.5, 0.5)), [0] + [norm] * (n - 1))


def test_scaled_elevational_step_gives_known_drift():
    n, s, e = 11, 0.4, 0.25  # estimate overshoots each step by 25 %
    true, est = _elevational(n, s), _elevational(n, s * (1 + e))
    r = metrics.evaluate_poses(true, est, (16, 16), (0.2, 0.2), per_frame=True)
    assert r["final_drift_mm"] == pytest.approx((n - 1) * s * e)  # 1.0 mm
    assert r["trajectory_length_mm"] == pytest.approx((n - 1) * s)
    assert r["start_end_distance_mm"] == pytest.approx((n - 1) * s)
    assert r["final_drift_rate_length_pct"] == pytest.approx(100 * e)
    assert r["final_drift_rate_distance_pct"] == pytest.approx(100 * e)
    assert r["average_drift_mm"] == pytest.approx(s * e * n / 2)  # mean of k*s*e over k = 1..n-1
    assert r["max_drift_mm"] == pytest.approx((n - 1) * s * e)
    assert r["gpe_mm"] == pytest.approx(s * e * n / 2)
    assert r["lpe_mm"] == pytest.approx(s * e)
    assert r["per_dof_mae"]["tz_mm"] == pytest.approx(s * e)
    assert r["per_dof_mae"]["tx_mm"] == pytest.approx(0.0, abs=1e-12)
    assert len(r["drift_mm"]) == n and len(r["gpe_per_frame_mm"]) == n - 1


def test_drift_attribution_names_the_degree_of_freedom_that_drifts():
    n, s, e = 21, 0.5, 0.2
    true = _elevational(n, s)
    # the elevational steps over-read by 20 %: correcting tz removes all drift, correcting rotations none
    r = metrics.evaluate_poses(true, _elevational(n, s * (1 + e)), (16, 16), (0.2, 0.2))
    with_true = r["final_drift_rate_length_pct_with_true"]
    assert with_true["tz"] == pytest.approx(0.0, abs=1e-9)
    assert with_true["rotation"] == pytest.approx(r["final_drift_rate_length_pct"]) == pytest.approx(100 * e)
    assert r["elevation_step_ratio"] == pytest.approx(1 + e)
    assert r["per_dof_bias"]["tz_mm"] == pytest.approx(s * e) and r["per_dof_bias"]["rx_deg"] == pytest.approx(0.0)
    # a tilt bias of b degrees per frame about the lateral axis: the path curves away, and only the rotation
    # (rx) correction removes the drift; step k goes k * b off course, so the rate is about b (rad) * (N - 2) / 2
    b = 0.1
    rel_est = geometry.params_to_matrix(np.tile([0.0, 0.0, s, b, 0.0, 0.0], (n - 1, 1)))
    est = common.absolute_from_centre(rel_est, (16, 16), (0.2, 0.2), true[0])
    r = metrics.evaluate_poses(true, est, (16, 16), (0.2, 0.2))
    with_true = r["final_drift_rate_length_pct_with_true"]
    assert with_true["rx"] == pytest.approx(0.0, abs=1e-6) and with_true["rotation"] == pytest.approx(0.0, abs=1e-6)
    assert with_true["tz"] == pytest.approx(r["final_drift_rate_length_pct"], rel=1e-6)
    assert r["final_drift_rate_length_pct"] == pytest.approx(100 * np.radians(b) * (n - 2) / 2, rel=0.01)
    assert r["per_dof_bias"]["rx_deg"] == pytest.approx(b)
    # too little elevational motion to read a ratio
    r = metrics.drift_attribution(_elevational(4, 0.1), _elevational(4, 0.2), (16, 16), (0.2, 0.2))
    assert np.isnan(r["elevation_step_ratio"])


def test_back_and_forth_sweep_separates_the_two_drift_rates():
    # out 4 mm and back 2 mm: length 6, start-end 2; the estimate misses the last step entirely
    true = _elevational(3, 0.0)
    true[1, 2, 3], true[2, 2, 3] = 4.0, 2.0
    est = true.copy()
    est[2, 2, 3] = 4.0
    r = metrics.evaluate_poses(true, est, (4, 4), (1.0, 1.0))
    assert r["final_drift_mm"] == pytest.approx(2.0)
    assert r["final_drift_rate_length_pct"] == pytest.approx(100 * 2 / 6)
    assert r["final_drift_rate_distance_pct"] == pytest.approx(100 * 2 / 2)


def test_rotation_error_against_explicit_corners():
    # 2x2-pixel frame: its four pixels are exactly the corners. The estimate rotates frame 2 by 30 deg about
    # the image z axis through the top-left pixel, the true one does not.
    sx, sy, th = 0.5, 0.8, np.deg2rad(30.0)
    true = _elevational(2, 1.0)
    est = true.copy()
    est[1, :3, :3] = geometry.euler_to_matrix([0.0, 0.0, 30.0])
    corners = [(0.0, 0.0), (sx, 0.0), (0.0, sy), (sx, sy)]
    moved = [(x * np.cos(th) - y * np.sin(th), x * np.sin(th) + y * np.cos(th)) for x, y in corners]
    expected = np.mean([np.hypot(mx - x, my - y) for (x, y), (mx, my) in zip(corners, moved)])
    assert metrics.gpe(true, est, (2, 2), (sx, sy)) == pytest.approx(expected)
    assert metrics.lpe(true, est, (2, 2), (sx, sy)) == pytest.approx(expected)
    # the centre (sx/2, sy/2) swings by 2 sin(th/2) |c|
    centre_drift = 2 * np.sin(th / 2) * np.hypot(sx / 2, sy / 2)
    assert metrics.final_drift_mm(true, est, (2, 2), (sx, sy)) == pytest.approx(centre_drift)
    # in the centre frame this is a 30 deg rotation about z plus the translation the pivot change implies
    dof = metrics.per_dof_errors(true, est, (2, 2), (sx, sy))
    assert dof["rz_deg"] == pytest.approx(30.0)
    assert dof["rx_deg"] == pytest.approx(0.0, abs=1e-9) and dof["tz_mm"] == pytest.approx(0.0, abs=1e-9)


def test_estimate_anchored_on_true_first_pose():
    # an estimate in another world (rigidly moved) with the right relative motions has no drift
    true = geometry.params_to_matrix(np.array([[0, 0, k * 0.5, k, 0, 0] for k in range(5)], float))
    other = geometry.params_to_matrix(np.array([10.0, -5, 3, 20, 30, 40])) @ true
    r = metrics.evaluate_poses(true, other, (20, 20), (0.3, 0.3))
    assert r["final_drift_mm"] == pytest.approx(0.0, abs=1e-9)
    assert r["gpe_mm"] == pytest.approx(0.0, abs=1e-9)


def test_sub_grid_for_large_frames():
    pts = metrics.frame_points((600, 800), (0.1, 0.1), max_points=4096)
    assert 3000 <= len(pts) <= 4096
    assert pts[:, 0].min() == 0 and pts[:, 0].max() == pytest.approx(79.9)  # spans first to last pixel
    assert pts[:, 1].max() == pytest.approx(59.9)
    assert len(metrics.frame_points((10, 12), (1, 1), 4096)) == 120  # small frames: every pixel
    # a tilt about the lateral axis through the top row: error grows linearly with depth, so the sub-grid
    # mean equals the all-pixel mean
    true = _elevational(2, 1.0)
    est = true.copy()
    est[1, :3, :3] = geometry.euler_to_matrix([2.0, 0.0, 0.0])
    full = metrics.gpe(true, est, (200, 300), (0.1, 0.1), max_points=10**6)
    sub = metrics.gpe(true, est, (200, 300), (0.1, 0.1), max_points=500)
    assert sub == pytest.approx(full, rel=1e-9)
    assert full == pytest.approx(2 * np.sin(np.deg2rad(1.0)) * 19.9 / 2)


def test_bad_inputs_are_named():
    poses = _elevational(4, 1.0)
    with pytest.raises(InputError, match="both be"):
        metrics.evaluate_poses(poses, poses[:3], (4, 4), (1, 1))
    with pytest.raises(InputError, match="at least 2"):
        metrics.gpe(poses[:1], poses[:1], (4, 4), (1, 1))
    bad = poses.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="frame 2"):
        metrics.lpe(poses, bad, (4, 4), (1, 1))


def test_motionless_sweep_has_undefined_rates():
    poses = _elevational(3, 0.0)
    r = metrics.evaluate_poses(poses, _elevational(3, 0.1), (4, 4), (1, 1))
    assert np.isnan(r["final_drift_rate_length_pct"]) and r["final_drift_mm"] == pytest.approx(0.2)


def test_drift_of_a_non_square_frame_uses_its_true_centre():
    """frame_shape is (height, width): the centre of a 10-row, 100-column frame is 4.5 mm deep, not 49.5."""
    from freehandrecon.poses.metrics import drift_per_frame, frame_centre

    np.testing.assert_allclose(frame_centre((10, 100), (1.0, 1.0)), [49.5, 4.5, 0.0, 1.0])
    true = np.repeat(np.eye(4)[None], 3, axis=0)
    est = true.copy()
    est[2, :3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # 90 degrees about x: (x, y, 0) -> (x, 0, y)
    drift = drift_per_frame(true, est, (10, 100), (1.0, 1.0))
    assert drift[2] == pytest.approx(4.5 * np.sqrt(2.0))  # with height and width swapped: 49.5 * sqrt(2)


def test_angle_errors_wrap_at_180_degrees():
    """179 degrees estimated for a true -179 is a 2 degree error, not 358."""
    from freehandrecon.geometry import params_to_matrix
    from freehandrecon.poses.metrics import per_dof_bias, per_dof_errors

    true = params_to_matrix(np.array([[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, -179.0]]))
    est = params_to_matrix(np.array([[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 179.0]]))
    errors = per_dof_errors(true, est, (1, 1), (1.0, 1.0))
    bias = per_dof_bias(true, est, (1, 1), (1.0, 1.0))
    assert errors["rz_deg"] == pytest.approx(2.0, abs=1e-6)
    assert bias["rz_deg"] == pytest.approx(-2.0, abs=1e-6)
