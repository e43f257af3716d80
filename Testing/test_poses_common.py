"""Pose conventions shared by the estimators: centre frame, direction, model input, input checks."""

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.errors import InputError
from freehandrecon.poses import common, estimate_poses
from freehandrecon.sweep import Sweep


def _random_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    params = np.cumsum(rng.normal(0, [0.2, 0.2, 0.5, 1.0, 1.0, 1.0], (n, 6)), axis=0)
    return geometry.params_to_matrix(params)


def test_centre_frame_round_trip_and_definition():
    shape, spacing = (60, 80), (0.3, 0.2)
    poses = _random_poses(12)
    rel = common.relative_centre(poses, shape, spacing)
    c = common.centre_matrix(shape, spacing)
    assert np.allclose(c[:3, 3], [79 * 0.3 / 2, 59 * 0.2 / 2, 0])
    # definition: the centre of frame k+1 seen from frame k's centre frame
    k = 4
    centre_next_in_k = np.linalg.inv(poses[k] @ c) @ poses[k + 1] @ c @ [0, 0, 0, 1]
    assert np.allclose(rel[k][:3, 3], centre_next_in_k[:3])
    back = common.absolute_from_centre(rel, shape, spacing, first=poses[0])
    assert np.allclose(back, poses, atol=1e-9)


def test_pure_rotation_about_centre_keeps_centre_fixed():
    shape, spacing = (50, 50), (0.2, 0.2)
    rel_c = geometry.params_to_matrix(np.array([[0, 0, 0, 5.0, -3.0, 2.0]]))
    poses = common.absolute_from_centre(rel_c, shape, spacing, first=np.eye(4))
    centre = common.centre_matrix(shape, spacing)[:, 3]
    assert np.allclose(poses[0] @ centre, poses[1] @ centre)


def test_mirror_flips_elevation_translation_and_out_of_plane_rotations():
    p = np.array([[0.1, -0.2, 0.4, 1.5, -2.0, 3.0]])
    mirrored = geometry.matrix_to_params(common.mirror_elevation(geometry.params_to_matrix(p)))
    assert np.allclose(mirrored, [[0.1, -0.2, -0.4, -1.5, 2.0, 3.0]])


def test_default_first_pose_is_a_right_handed_rotation_with_depth_down():
    m = common.default_first_pose()
    assert np.isclose(np.linalg.det(m[:3, :3]), 1.0)
    assert np.allclose(m[:3, 1], [0, 0, -1])  # image y (depth) points to -S


def test_resolve_direction_from_hint_metadata_and_tracking():
    frames = np.zeros((3, 8, 8), np.uint8)
    backward = np.repeat(np.eye(4)[None], 3, axis=0)
    backward[:, 2, 3] = [0.0, -1.0, -2.0]
    sweep = Sweep(frames, (0.2, 0.2), backward)
    assert common.resolve_direction(sweep, "auto") == -1
    assert common.resolve_direction(sweep, "forward") == 1
    assert common.resolve_direction(Sweep(frames, (0.2, 0.2), metadata={"sweep_direction": -1}), "auto") == -1
    assert common.resolve_direction(Sweep(frames, (0.2, 0.2)), "auto") == 1
    with pytest.raises(InputError, match="sideways"):
        common.resolve_direction(sweep, "sideways")


def test_resample_frames_keeps_the_centre_and_physical_size():
    frames = np.zeros((2, 101, 201), np.uint8)
    frames[:, 50, 100] = 255  # the centre pixel
    frames[:, 50, 0] = 255  # left edge, 100 px * 0.1 mm = 10 mm left of centre
    out = common.resample_frames(frames, (0.1, 0.1), target_spacing=0.5, size=64)
    assert out.shape == (2, 64, 64) and out.dtype == np.float32
    row = out[0].sum(axis=0)
    centre_col = int(np.argmax(row[20:44])) + 20
    assert abs(centre_col - 31.5) <= 1.0
    assert row[:centre_col - 15].sum() > 0  # the left-edge dot lands 20 output pixels left of centre
    assert out.max() <= 1.0


def test_check_speckle_warns_for_a_few_blank_frames_and_refuses_mostly_blank_sweeps():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 200, (10, 16, 16), dtype=np.uint8)
    frames[3] = 0
    warnings = common.check_speckle(frames)
    assert len(warnings) == 1 and "frames 3" in warnings[0]
    frames[:6] = 255
    with pytest.raises(InputError, match="saturated"):
        common.check_speckle(frames)


def test_estimate_poses_tracked_and_bad_inputs():
    poses = _random_poses(5)
    sweep = Sweep(np.random.default_rng(0).integers(0, 255, (5, 20, 30), dtype=np.uint8), (0.2, 0.2), poses)
    est = estimate_poses(sweep, "tracked")
    assert np.allclose(est.image_to_world, poses)
    with pytest.raises(InputError, match="Unknown pose method"):
        estimate_poses(sweep, "magic")
    with pytest.raises(InputError, match="no tracked poses"):
        estimate_poses(Sweep(sweep.frames, (0.2, 0.2)), "tracked")
    unknown = Sweep(sweep.frames, (1.0, 1.0), metadata={"pixel_spacing_known": False})
    with pytest.raises(InputError, match="pixel spacing"):
        estimate_poses(unknown, "speckle")
    with pytest.raises(InputError, match="at least 10"):
        common.require_min_frames(4, 10)
