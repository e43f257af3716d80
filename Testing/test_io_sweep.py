"""read_sweep / write_sweep: dispatch on the file name, spacing override, refusal to overwrite, bad paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freehandrecon.errors import CalibrationError, InputError, OutputExistsError
from freehandrecon.io import read_sweep, sweep_format, write_sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


@pytest.fixture(scope="module")
def spine():
    return read_sweep(SPINE, plus_config=SPINE_CFG)


def test_format_from_name():
    assert [sweep_format(n) for n in ("a.igs.mha", "A.MHA", "b.mhd", "c.h5", "c.hdf5", "d.npz", "e.seq.nrrd")] == \
        ["plus", "plus", "plus", "tusrec", "tusrec", "npz", "seq.nrrd"]
    with pytest.raises(InputError, match="not a supported sweep file") as e:
        sweep_format("volume.nrrd")
    assert ".igs.mha" in e.value.fix and ".seq.nrrd" in e.value.fix and ".h5" in e.value.fix


@pytest.mark.parametrize("name", ["s.igs.mha", "s.mhd", "s.npz", "s.h5"])
def test_write_then_read_every_format(tmp_path, spine, name):
    out = write_sweep(spine, tmp_path / name)
    back = read_sweep(out)
    np.testing.assert_array_equal(back.frames, spine.frames)
    np.testing.assert_allclose(back.pixel_to_world(), spine.pixel_to_world(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.timestamps, spine.timestamps, rtol=0, atol=1e-9)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_sweep(spine, out)
    write_sweep(spine, out, force=True)


def test_seq_nrrd_goes_through_mrml(tmp_path, spine):
    import slicer  # noqa: F401 - slicer-core is a dependency: fail, do not skip, when it is missing
    out = write_sweep(spine, tmp_path / "s.seq.nrrd")
    back = read_sweep(out)
    np.testing.assert_array_equal(back.frames, spine.frames)
    # Slicer's transform sequence file keeps 6 significant digits
    np.testing.assert_allclose(back.pixel_to_world(), spine.pixel_to_world(), rtol=1e-5, atol=1e-6)
    with pytest.raises(OutputExistsError):
        write_sweep(spine, out)


def test_pixel_spacing_override(tmp_path, spine):
    s = read_sweep(SPINE, plus_config=SPINE_CFG, pixel_spacing=(0.1, 0.2))
    assert s.pixel_spacing == (0.1, 0.2) and s.metadata["pixel_spacing_source"] == "override"
    np.testing.assert_allclose(s.metadata["file_pixel_spacing"], spine.pixel_spacing)
    np.testing.assert_allclose(s.image_to_world, spine.image_to_world)
    out = write_sweep(spine, tmp_path / "s.npz")
    assert read_sweep(out, pixel_spacing=0.3).pixel_spacing == (0.3, 0.3)
    for bad in (0, -1, (0.2, -0.2), (0.0, 0.0)):
        with pytest.raises(InputError, match="pixel spacing override must be two positive numbers") as e:
            read_sweep(out, pixel_spacing=bad)
        assert "--pixel-spacing" in e.value.fix


def test_plus_options_reach_the_reader():
    with pytest.raises(CalibrationError, match="Cannot compute ImageToReference"):
        read_sweep(SPINE)
    s = read_sweep(SPINE, calibration=SPINE_CFG, image_to_reference="ImageToTracker")
    assert s.metadata["transforms_used"] == ["ImageToProbe", "ProbeToTracker"]


def test_tusrec_default_and_explicit_calibration(tmp_path, spine):
    write_sweep(spine, tmp_path / "scan.h5")
    assert (tmp_path / "calib_matrix.csv").is_file()
    (tmp_path / "other").mkdir()
    moved = tmp_path / "other" / "scan.h5"
    (tmp_path / "scan.h5").rename(moved)
    with pytest.raises(CalibrationError, match="does not exist"):
        read_sweep(moved)
    s = read_sweep(moved, calibration=tmp_path / "calib_matrix.csv")
    np.testing.assert_allclose(s.pixel_to_world(), spine.pixel_to_world(), atol=1e-9)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_sweep(tmp_path / "nothing.igs.mha")
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    with pytest.raises(InputError, match="not a supported sweep file"):
        read_sweep(tmp_path / "x.wav")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_sweep(tmp_path / "empty.npz")


def test_write_refusals_leave_nothing(tmp_path, spine):
    with pytest.raises(InputError, match="not a supported sweep file"):
        write_sweep(spine, tmp_path / "s.tiff")
    with pytest.raises(InputError, match="folder .* does not exist"):
        write_sweep(spine, tmp_path / "no" / "s.npz")
    assert list(tmp_path.iterdir()) == []
