"""Coordinate conventions of freehandrecon.geometry and the Sweep model."""

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.errors import CalibrationError, InputError
from freehandrecon.sweep import Sweep, to_grey


def test_euler_convention_is_rz_ry_rx():
    rx, ry, rz = 10.0, -20.0, 30.0
    a = np.deg2rad([rx, ry, rz])
    Rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
    Ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
    Rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
    np.testing.assert_allclose(geometry.euler_to_matrix([rx, ry, rz]), Rz @ Ry @ Rx, atol=1e-12)


def test_params_round_trip():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(-50, 50, (100, 3)), rng.uniform(-80, 80, (100, 3))], axis=1)
    m = geometry.params_to_matrix(p)
    np.testing.assert_allclose(geometry.matrix_to_params(m), p, atol=1e-9)
    np.testing.assert_allclose(m[:, :3, :3] @ m[:, :3, :3].transpose(0, 2, 1), np.broadcast_to(np.eye(3), (100, 3, 3)), atol=1e-12)


def test_relative_and_accumulate_are_inverse():
    rng = np.random.default_rng(1)
    p = np.cumsum(rng.normal(0, [1, 1, 1, 2, 2, 2], (20, 6)), axis=0)
    absolute = geometry.params_to_matrix(p)
    rel = geometry.relative_transforms(absolute)
    np.testing.assert_allclose(rel[3], np.linalg.inv(absolute[3]) @ absolute[4], atol=1e-12)
    np.testing.assert_allclose(geometry.accumulate(rel, absolute[0]), absolute, atol=1e-9)


def test_pixel_to_world_uses_spacing_then_pose():
    pose = geometry.params_to_matrix(np.array([[10, 20, 30, 0, 0, 90]] * 2))
    sweep = Sweep(np.zeros((2, 4, 5), np.uint8), (0.5, 0.25), pose)
    p = sweep.pixel_to_world()[0] @ np.array([2, 4, 0, 1.0])  # image mm (1, 1, 0)
    np.testing.assert_allclose(p[:3], [10 - 1, 20 + 1, 30], atol=1e-12)


def test_frame_corners_and_transform_points():
    corners = geometry.frame_corners_pixels(820, 616, clip=(192, 16, 420, 580))
    assert corners[:, 0].min() == 192 and corners[:, 0].max() == 611
    assert corners[:, 1].min() == 16 and corners[:, 1].max() == 595
    pts = geometry.transform_points(np.stack([np.eye(4), 2 * np.eye(4)]), corners)
    assert pts.shape == (2, 4, 3)
    np.testing.assert_allclose(pts[1, :, :2], 2 * corners[:, :2])


def test_split_scale_reproduces_matrix_on_image_plane():
    m = geometry.params_to_matrix(np.array([5, -3, 8, 10, 20, 30])) @ np.diag([0.08, 0.07, 0.09, 1])
    unit, (sx, sy) = geometry.split_scale(m)
    np.testing.assert_allclose((unit @ geometry.pixel_scale_matrix((sx, sy)))[:, [0, 1, 3]], m[:, [0, 1, 3]], atol=1e-12)
    assert sx == pytest.approx(0.08) and sy == pytest.approx(0.07)


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 4, 4), np.nan), "NaN"),
    (np.zeros((2, 4, 4)), "singular"),
    (np.eye(3)[None].repeat(2, 0), "shape"),
])
def test_validate_transforms_rejects_bad(bad, message):
    with pytest.raises(CalibrationError, match=message):
        geometry.validate_transforms(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=np.zeros((1, 8, 8), np.uint8)), "at least 2 frames"),
    (dict(frames=np.zeros((0, 8, 8), np.uint8)), "at least 2 frames"),
    (dict(frames=np.zeros((3, 8, 8, 3), np.uint8)), "colour"),
    (dict(frames=np.zeros((3, 8, 8), np.uint8), pixel_spacing=(0.0, 0.1)), "positive"),
    (dict(frames=np.zeros((3, 8, 8), np.uint8), pixel_spacing=(-1, 0.1)), "positive"),
    (dict(frames=np.zeros((3, 8, 8), np.uint8), image_to_world=np.eye(4)[None].repeat(2, 0)), "2 transforms for 3 frames"),
    (dict(frames=np.zeros((3, 8, 8), np.uint8), channels={"pa": np.zeros((2, 8, 8))}), "Channel 'pa' has 2 frames"),
    (dict(frames=np.zeros((3, 8, 8), np.uint8), channels={"pa": np.zeros((3, 4, 8))}), "Resample"),
    (dict(frames=np.zeros((3, 8, 8), np.complex64)), "Unsupported pixel type"),
])
def test_sweep_rejects_bad_input_with_fix(kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        Sweep(**kwargs)
    assert err.value.fix, "every input error must say how to fix it"


def test_sweep_without_poses_explains_how_to_get_them():
    with pytest.raises(InputError, match="no poses") as err:
        Sweep(np.zeros((3, 8, 8), np.uint8)).pixel_to_world()
    assert "--poses" in err.value.fix


def test_to_grey_keeps_dtype_and_weights():
    rgb = np.zeros((2, 3, 3, 3), np.uint8)
    rgb[..., 1] = 200
    grey = to_grey(rgb)
    assert grey.dtype == np.uint8 and grey.shape == (2, 3, 3)
    assert int(grey[0, 0, 0]) == round(200 * 0.587)


def test_subset_and_with_poses_do_not_touch_original():
    frames = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    s = Sweep(frames, (1, 1), np.eye(4)[None].repeat(5, 0), timestamps=np.arange(5.0), channels={"pa": frames * 2})
    sub = s.subset(slice(1, 4))
    assert sub.num_frames == 3 and sub.channels["pa"].shape[0] == 3 and sub.timestamps[0] == 1.0
    moved = s.with_poses(geometry.params_to_matrix(np.ones((5, 6))), source="test")
    assert np.allclose(s.image_to_world, np.eye(4)) and moved.metadata["source"] == "test"
