"""numpy archives, plain arrays and TUS-REC HDF5 scans: round trips on the real spine sweep, layouts, bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from freehandrecon.errors import CalibrationError, InputError, OutputExistsError
from freehandrecon.geometry import params_to_matrix
from freehandrecon.io.npz import read_npz, sweep_from_arrays, write_npz
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.io.tusrec import read_tusrec_calibration, sweep_from_tusrec, write_tusrec

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


@pytest.fixture(scope="module")
def spine():
    s = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    rng = np.random.default_rng(0)
    s.channels["photoacoustic"] = rng.integers(0, 255, s.frames.shape, dtype=np.uint8)
    s.channels["doppler"] = rng.random(s.frames.shape).astype(np.float32)
    return s


def assert_same_sweep(a, b, atol=0.0):
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.dtype == b.frames.dtype
    np.testing.assert_allclose(a.pixel_spacing, b.pixel_spacing, rtol=0, atol=1e-15)
    np.testing.assert_allclose(a.image_to_world, b.image_to_world, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert sorted(a.channels) == sorted(b.channels)
    for k in a.channels:
        np.testing.assert_array_equal(a.channels[k], b.channels[k])


# --- npz --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_npz_round_trip(tmp_path, spine, compress):
    sweep = spine.subset(slice(0, 4)) if compress else spine  # random channels compress slowly
    out = write_npz(sweep, tmp_path / "s.npz", compress=compress)
    back = read_npz(out)
    assert_same_sweep(sweep, back)
    assert back.metadata["chain"] == sweep.metadata["chain"] and back.metadata["format"] == "npz"
    assert back.metadata["dropped_frames"] == []
    with pytest.raises(OutputExistsError):
        write_npz(sweep, out)


def test_npz_without_poses_and_plain_numpy_file(tmp_path):
    frames = np.zeros((3, 4, 5), np.uint16)
    np.savez(tmp_path / "plain.npz", frames=frames, pixel_spacing=[0.2, 0.3])
    s = read_npz(tmp_path / "plain.npz")
    assert s.image_to_world is None and s.pixel_spacing == (0.2, 0.3) and s.frames.dtype == np.uint16


def test_npz_frames_of_different_sizes(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 5)), np.zeros((4, 6))
    np.savez(tmp_path / "ragged.npz", frames=ragged, pixel_spacing=[0.2, 0.2])
    with pytest.raises(InputError, match="Python objects .*different sizes") as e:
        read_npz(tmp_path / "ragged.npz")
    assert "equal-size" in e.value.fix


def test_npz_bad_files(tmp_path):
    np.savez(tmp_path / "nospacing.npz", frames=np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match="no pixel_spacing array .*it has: frames"):
        read_npz(tmp_path / "nospacing.npz")
    good = write_npz(sweep_from_arrays(np.zeros((3, 4, 5), np.uint8), 0.5), tmp_path / "good.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:100])
    with pytest.raises(InputError, match="truncated"):
        read_npz(tmp_path / "cut.npz")


def test_sweep_from_arrays():
    frames = [np.full((4, 5), k, np.uint8) for k in range(3)]
    poses = params_to_matrix(np.array([[0, 0, k, 0, 0, 0] for k in range(3)], float))
    s = sweep_from_arrays(frames, 0.25, poses, timestamps=[0, 1, 2])
    assert s.frames.shape == (3, 4, 5) and s.pixel_spacing == (0.25, 0.25)
    np.testing.assert_allclose(s.pixel_to_world()[2] @ [4, 3, 0, 1], [1.0, 0.75, 2, 1])
    with pytest.raises(InputError, match=r"different sizes: \(4, 5\), \(4, 6\)") as e:
        sweep_from_arrays([np.zeros((4, 5)), np.zeros((4, 6))], 0.2)
    assert "same rows and columns" in e.value.fix
    with pytest.warns(UserWarning, match="colour"):
        assert sweep_from_arrays(np.zeros((2, 4, 5, 3), np.uint8), 0.2).frames.shape == (2, 4, 5)
    for bad in (0, -0.2, (0.2, 0.0), (0.2, np.nan), "x", (1, 2, 3)):
        with pytest.raises(InputError, match="positive numbers in mm"):
            sweep_from_arrays(frames, bad)
    with pytest.raises(InputError, match="at least 2 frames"):
        sweep_from_arrays(frames[:1], 0.2)


# --- TUS-REC ----------------------------------------------------------------------------------
def challenge_scan(folder: Path, n: int = 6, h: int = 48, w: int = 64, labels: bool = True, **extra) -> dict:
    """A scan laid out like the TUS-REC challenge files (float32 tforms, labelled calib csv)."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (n, h, w), dtype=np.uint8)
    tforms = params_to_matrix(np.c_[rng.normal(size=(n, 3)) * 50, rng.normal(size=(n, 3)) * 10]).astype(np.float32)
    scaling = np.diag([0.22939, 0.22098, 1.0, 1.0])
    mm_to_tool = params_to_matrix(np.array([10.0, -20.0, 5.0, 90.0, 0.0, 30.0]))
    with h5py.File(folder / "scan.h5", "w") as f:
        f["frames"], f["tforms"] = frames, tforms
        for k, v in extra.items():
            f[k] = v
    lines = (["scaling_from_pixel_to_mm"] if labels else []) + [",".join(map(str, r)) for r in scaling]
    lines += (["spatial_calibration_from_image_coordinate_system_to_tracking_tool_coordinate_system"]
              if labels else []) + [",".join(repr(float(v)) for v in r) for r in mm_to_tool]
    (folder / "calib_matrix.csv").write_text("\n".join(lines) + "\n")
    return dict(frames=frames, tforms=tforms, scaling=scaling, mm_to_tool=mm_to_tool)


@pytest.mark.parametrize("labels", [True, False])
def test_tusrec_challenge_layout(tmp_path, labels):
    scan = challenge_scan(tmp_path, labels=labels, pa_frames=np.ones((6, 48, 64), np.uint8),
                          doppler_frames=np.zeros((6, 48, 64), np.float32))
    s = sweep_from_tusrec(tmp_path / "scan.h5")  # calib_matrix.csv found beside the scan
    assert s.pixel_spacing == (0.22939, 0.22098)
    assert sorted(s.channels) == ["doppler", "photoacoustic"]
    # a pixel maps as in the challenge: tforms @ image(mm)->tool @ scaling @ (col, row, 0, 1)
    px = np.array([63.0, 47.0, 0.0, 1.0])
    expected = scan["tforms"][4].astype(np.float64) @ scan["mm_to_tool"] @ scan["scaling"] @ px
    np.testing.assert_allclose(s.pixel_to_world()[4] @ px, expected, atol=1e-9)
    np.testing.assert_array_equal(s.frames, scan["frames"])
    one = sweep_from_tusrec(tmp_path / "scan.h5", one_based=True)
    np.testing.assert_allclose(one.pixel_to_world()[4] @ px, s.pixel_to_world()[4] @ (px + [1, 1, 0, 0]), atol=1e-9)


def test_tusrec_round_trip(tmp_path, spine):
    h5, csv = write_tusrec(spine, tmp_path / "spine.h5", tmp_path / "calib_matrix.csv")
    back = sweep_from_tusrec(h5, csv)
    assert_same_sweep(spine, back, atol=1e-12)
    # a TUS-REC sweep keeps its own image(mm)->tool calibration when written again
    challenge_scan(tmp_path)
    s = sweep_from_tusrec(tmp_path / "scan.h5")
    (tmp_path / "again").mkdir()
    h5b, csvb = write_tusrec(s, tmp_path / "again" / "scan.h5", tmp_path / "again" / "calib_matrix.csv")
    for a, b in zip(read_tusrec_calibration(csvb), read_tusrec_calibration(tmp_path / "calib_matrix.csv")):
        np.testing.assert_array_equal(a, b)
    with h5py.File(h5b) as f, h5py.File(tmp_path / "scan.h5") as g:
        np.testing.assert_allclose(f["tforms"][()], g["tforms"][()], atol=1e-4)


def test_tusrec_existing_calibration_kept_or_refused(tmp_path, spine):
    write_tusrec(spine, tmp_path / "a.h5", tmp_path / "calib_matrix.csv")
    write_tusrec(spine.subset(slice(0, 5)), tmp_path / "b.h5", tmp_path / "calib_matrix.csv")  # same calibration
    other = sweep_from_arrays(spine.frames, (0.5, 0.5), spine.image_to_world)
    with pytest.raises(OutputExistsError, match="calib_matrix.csv' exists with different matrices"):
        write_tusrec(other, tmp_path / "c.h5", tmp_path / "calib_matrix.csv")
    assert not (tmp_path / "c.h5").exists()
    with pytest.raises(OutputExistsError):
        write_tusrec(spine, tmp_path / "a.h5", tmp_path / "calib_matrix.csv")


def test_tusrec_missing_calibration(tmp_path):
    challenge_scan(tmp_path)
    (tmp_path / "calib_matrix.csv").unlink()
    with pytest.raises(CalibrationError, match="calib_matrix.csv' does not exist") as e:
        sweep_from_tusrec(tmp_path / "scan.h5")
    assert "--calibration calib_matrix.csv" in e.value.fix


def test_tusrec_bad_calibration(tmp_path):
    challenge_scan(tmp_path)
    csv = tmp_path / "calib_matrix.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]))
    with pytest.raises(CalibrationError, match="7 matrix rows; expected 8"):
        sweep_from_tusrec(tmp_path / "scan.h5")
    csv.write_text("\n".join(lines[:-1] + ["0,0,1"]))
    with pytest.raises(CalibrationError, match="has 3 numbers"):
        sweep_from_tusrec(tmp_path / "scan.h5")
    csv.write_text("\n".join(["0,0,0,0"] * 4 + lines[6:]))
    with pytest.raises(CalibrationError, match="singular"):
        sweep_from_tusrec(tmp_path / "scan.h5")


def test_tusrec_bad_scans(tmp_path):
    challenge_scan(tmp_path, pa_frames=np.zeros((6, 40, 64), np.uint8))
    with pytest.raises(InputError, match="channel 'photoacoustic' frames are \\(6, 40, 64\\) but B-mode"):
        sweep_from_tusrec(tmp_path / "scan.h5")
    challenge_scan(tmp_path)
    with h5py.File(tmp_path / "scan.h5", "a") as f:
        del f["tforms"]
        f["tforms"] = np.stack([np.eye(4)] * 5)
    with pytest.raises(InputError, match="'tforms' has shape \\(5, 4, 4\\) for 6 frames"):
        sweep_from_tusrec(tmp_path / "scan.h5")
    with h5py.File(tmp_path / "scan.h5", "a") as f:
        del f["tforms"]
        t = np.stack([np.eye(4)] * 6)
        t[2, 0, 0] = np.nan
        f["tforms"] = t
    with pytest.raises(CalibrationError, match="frame 2 contain NaN"):
        sweep_from_tusrec(tmp_path / "scan.h5")
    with h5py.File(tmp_path / "nof.h5", "w") as f:
        f["images"] = np.zeros((2, 3, 4))
    with pytest.raises(InputError, match="no 'frames' dataset \\(it has: images\\)"):
        sweep_from_tusrec(tmp_path / "nof.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        sweep_from_tusrec(tmp_path / "text.h5")
    data = (tmp_path / "scan.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        sweep_from_tusrec(tmp_path / "cut.h5")


def test_tusrec_untracked_scan(tmp_path):
    with h5py.File(tmp_path / "free.h5", "w") as f:
        f["frames"] = np.zeros((4, 8, 9), np.uint8)
    with pytest.warns(UserWarning, match="pixel spacing set to 1 mm"):
        s = sweep_from_tusrec(tmp_path / "free.h5")
    assert s.image_to_world is None and s.pixel_spacing == (1.0, 1.0)
    assert sweep_from_tusrec(tmp_path / "free.h5", pixel_spacing=(0.2, 0.3)).pixel_spacing == (0.2, 0.3)
