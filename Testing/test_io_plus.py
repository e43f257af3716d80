"""PLUS sequences, PLUS configs, transform chains and calibration files, on the real IGSIO/PLUS test data."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.errors import CalibrationError, InputError, OutputExistsError
from freehandrecon.geometry import params_to_matrix
from freehandrecon.io.matrix_file import read_matrix_file
from freehandrecon.io.metaimage import read_metaimage, write_metaimage
from freehandrecon.io.plus import read_plus_sequence, sweep_from_plus, write_plus_sequence
from freehandrecon.io.plus_config import read_plus_config
from freehandrecon.io.transform_chain import TransformGraph, split_transform_name
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"
NWIRE = DATA / "plus" / "NwirePhantomFreehand.igs.mha"
NWIRE_CFG = DATA / "plus" / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml"
CURVI = DATA / "plus" / "UltrasonixCurvilinearScanConvertedData.igs.mha"

# ImageToProbe of the spine configs, typed from the XML.
SPINE_IMAGE_TO_PROBE = np.array([[-0.00157821, 0.0785919, -0.00803285, 15.3978],
                                 [-0.0839128, 0.00372697, 0.0153803, 49.5705],
                                 [0.0159024, 0.00714276, 0.0803604, -8.63446],
                                 [0, 0, 0, 1]])
NWIRE_IMAGE_TO_PROBE = np.array([[-0.0094, -0.0739, -0.0028, -103.5322],
                                 [0.0774, -0.0076, -0.0049, -43.1227],
                                 [0.0046, -0.0032, 0.0760, -93.3],
                                 [0, 0, 0, 1]])
PLANE = [0, 1, 3]  # columns that act on pixels (i, j, 0, 1)


def header_matrix(path: Path, frame: int, name: str) -> np.ndarray:
    """The per-frame matrix as written in the header text, parsed here independently."""
    return np.array(read_metaimage(path).fields[f"Seq_Frame{frame:04d}_{name}Transform"].split(),
                    float).reshape(4, 4)


def edited(tmp_path: Path, src: Path, *replacements: tuple[bytes, bytes], name: str = "edited.igs.mha") -> Path:
    """A copy of ``src`` with header strings replaced (the data follow the header, so lengths may change)."""
    data = src.read_bytes()
    for old, new in replacements:
        assert data.count(old) >= 1, old
        data = data.replace(old, new, 1)
    out = tmp_path / name
    out.write_bytes(data)
    return out


# --- the real data -----------------------------------------------------------------------------
def test_spine_sweep_matches_hand_computed_chain():
    t0 = time.perf_counter()
    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    elapsed = time.perf_counter() - t0
    assert sweep.frames.shape == (21, 616, 820) and sweep.frames.dtype == np.uint8
    p2w = sweep.pixel_to_world()
    for k in (0, 20):
        expected = (np.linalg.inv(header_matrix(SPINE, k, "ReferenceToTracker"))
                    @ header_matrix(SPINE, k, "ProbeToTracker") @ SPINE_IMAGE_TO_PROBE)
        np.testing.assert_allclose(p2w[k][:, PLANE], expected[:, PLANE], rtol=0, atol=1e-10)
    # the spacing is the length of the calibration's pixel axes
    np.testing.assert_allclose(sweep.pixel_spacing, np.linalg.norm(SPINE_IMAGE_TO_PROBE[:3, :2], axis=0), rtol=1e-5)
    # image_to_world is image mm -> world mm: its in-plane axes have unit length
    np.testing.assert_allclose(np.linalg.norm(sweep.image_to_world[:, :3, :3], axis=1), 1.0, atol=1e-5)
    assert sweep.timestamps[0] == pytest.approx(215.102186) and sweep.timestamps[-1] == pytest.approx(216.947186)
    m = sweep.metadata
    assert m["transforms_used"] == ["ImageToProbe", "ProbeToTracker", "ReferenceToTracker"]
    assert "inverse of ReferenceToTracker" in m["chain"] and m["orientation"] == "MFA"
    assert m["dropped_frames"] == [] and m["source"].endswith("SpinePhantomFreehand.igs.mha")
    assert m["volume_reconstruction"]["CompoundingMode"] == "MEAN"
    assert elapsed < 1.0, f"sweep_from_plus on the spine sweep took {elapsed:.3f} s"


def test_nwire_sweep_with_device_set_config():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the INVALID stylus must not drop frames or warn
        sweep = sweep_from_plus(NWIRE, plus_config=NWIRE_CFG)
    assert sweep.frames.shape == (97, 616, 820)
    seq = read_plus_sequence(NWIRE)
    assert not seq.transform_status["StylusToTracker"].any() and seq.transform_status["ProbeToTracker"].all()
    k = 50
    expected = (np.linalg.inv(header_matrix(NWIRE, k, "ReferenceToTracker"))
                @ header_matrix(NWIRE, k, "ProbeToTracker") @ NWIRE_IMAGE_TO_PROBE)
    np.testing.assert_allclose(sweep.pixel_to_world()[k][:, PLANE], expected[:, PLANE], atol=1e-10)


def test_curvilinear_file_reads_without_poses():
    seq = read_plus_sequence(CURVI)
    assert seq.frames.shape == (5, 616, 820) and seq.transforms == {}
    np.testing.assert_allclose(seq.timestamps, [98.0, 98.01, 98.02, 99.03, 99.04], atol=1e-6)
    sweep = sweep_from_plus(CURVI)
    assert sweep.image_to_world is None and sweep.pixel_spacing == (1.0, 1.0)
    assert sweep.metadata["pixel_spacing_source"] == "ElementSpacing"
    np.testing.assert_array_equal(sweep.frames, read_metaimage(CURVI).array)


def test_calibration_as_matrix_file_array_or_config(tmp_path):
    ref = sweep_from_plus(SPINE, plus_config=SPINE_CFG).pixel_to_world()
    txt = tmp_path / "cal.txt"
    txt.write_text("# ImageToProbe\n" + "\n".join(", ".join(repr(float(v)) for v in row) for row in SPINE_IMAGE_TO_PROBE))
    for cal in (txt, SPINE_IMAGE_TO_PROBE, SPINE_IMAGE_TO_PROBE[:3], SPINE_CFG, {"ImageToProbe": SPINE_IMAGE_TO_PROBE}):
        np.testing.assert_allclose(sweep_from_plus(SPINE, calibration=cal).pixel_to_world(), ref, atol=1e-10)


def test_image_to_reference_none_gives_frames_only():
    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG, image_to_reference=None)
    assert sweep.image_to_world is None and sweep.num_frames == 21


def test_other_transform_names_resolve():
    # ProbeToReference is not stored: inv(ReferenceToTracker) @ ProbeToTracker
    sweep = sweep_from_plus(SPINE, image_to_reference="ProbeToReference")
    expected = np.linalg.inv(header_matrix(SPINE, 7, "ReferenceToTracker")) @ header_matrix(SPINE, 7, "ProbeToTracker")
    np.testing.assert_allclose(sweep.pixel_to_world()[7][:, PLANE], expected[:, PLANE], atol=1e-9)
    assert sweep.metadata["transforms_used"] == ["ProbeToTracker", "ReferenceToTracker"]


# --- orientation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code,flip", [("MF", lambda a: a), ("UF", lambda a: a[:, :, ::-1]),
                                       ("MN", lambda a: a[:, ::-1]), ("UN", lambda a: a[:, ::-1, ::-1]),
                                       ("UFA", lambda a: a[:, :, ::-1]), ("FM", lambda a: a.swapaxes(1, 2)),
                                       ("FU", lambda a: a.swapaxes(1, 2)[:, :, ::-1]),
                                       ("NM", lambda a: a.swapaxes(1, 2)[:, ::-1]),
                                       ("NU", lambda a: a.swapaxes(1, 2)[:, ::-1, ::-1])])
def test_orientation_converted_to_mf(tmp_path, code, flip):
    stored = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_metaimage(tmp_path / "o.igs.mha", stored, fields={"UltrasoundImageOrientation": code})
    seq = read_plus_sequence(path)
    np.testing.assert_array_equal(seq.frames, flip(stored))
    assert seq.orientation == code


def test_bad_orientation(tmp_path):
    path = write_metaimage(tmp_path / "o.igs.mha", np.zeros((3, 4, 5), np.uint8),
                           fields={"UltrasoundImageOrientation": "XY"})
    with pytest.raises(InputError, match="not one of MF, UF, MN, UN, FM"):
        read_plus_sequence(path)


# --- dropped frames and bad transforms ------------------------------------------------------------
def test_invalid_frames_are_dropped_with_warning(tmp_path):
    path = edited(tmp_path, SPINE,
                  (b"Seq_Frame0003_ProbeToTrackerTransformStatus = OK", b"Seq_Frame0003_ProbeToTrackerTransformStatus = INVALID"),
                  (b"Seq_Frame0005_ImageStatus = OK", b"Seq_Frame0005_ImageStatus = INVALID"),
                  (b"Seq_Frame0009_ReferenceToTrackerTransform =", b"Seq_Frame0009_ReferenceToTrackerTransformX ="),
                  # an invalid stylus is not needed for ImageToReference
                  (b"Seq_Frame0001_StylusToTrackerTransformStatus = OK", b"Seq_Frame0001_StylusToTrackerTransformStatus = INVALID"))
    with pytest.warns(UserWarning, match=r"dropped 3 of 21 frames .*\(frames 3, 5, 9\)"):
        sweep = sweep_from_plus(path, plus_config=SPINE_CFG)
    full = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    keep = [k for k in range(21) if k not in (3, 5, 9)]
    assert sweep.metadata["dropped_frames"] == [3, 5, 9] and sweep.num_frames == 18
    np.testing.assert_array_equal(sweep.frames, full.frames[keep])
    np.testing.assert_allclose(sweep.pixel_to_world(), full.pixel_to_world()[keep], atol=1e-12)
    np.testing.assert_array_equal(sweep.timestamps, full.timestamps[keep])


def test_fewer_than_two_valid_frames(tmp_path):
    reps = [(f"Seq_Frame{k:04d}_ImageStatus = OK".encode(), f"Seq_Frame{k:04d}_ImageStatus = INVALID".encode())
            for k in range(1, 21)]
    path = edited(tmp_path, SPINE, *reps)
    with pytest.warns(UserWarning, match="dropped 20 of 21"), pytest.raises(InputError, match="1 usable frame"):
        sweep_from_plus(path, plus_config=SPINE_CFG)


def test_one_frame_sequence(tmp_path):
    path = write_metaimage(tmp_path / "one.igs.mha", np.zeros((1, 8, 9), np.uint8),
                           fields={"Seq_Frame0000_ImageToReferenceTransform": " ".join(map(str, np.eye(4).ravel()))})
    with pytest.raises(InputError, match="at least 2"):
        sweep_from_plus(path)


def test_nan_transform_with_ok_status(tmp_path):
    line = read_metaimage(SPINE).fields["Seq_Frame0004_ProbeToTrackerTransform"]
    path = edited(tmp_path, SPINE, (line.encode(), ("nan " + line.split(" ", 1)[1]).encode()))
    with pytest.raises(CalibrationError, match="ProbeToTracker transforms .* frame 4 contain NaN"):
        sweep_from_plus(path, plus_config=SPINE_CFG)


def test_singular_transform(tmp_path):
    line = read_metaimage(SPINE).fields["Seq_Frame0002_ReferenceToTrackerTransform"]
    zero = " ".join(["0"] * 12 + ["0", "0", "0", "1"])
    path = edited(tmp_path, SPINE, (line.encode(), zero.encode()))
    with pytest.raises(CalibrationError, match="ReferenceToTracker .* frame 2 are singular"):
        sweep_from_plus(path, plus_config=SPINE_CFG)


def test_transform_text_not_numbers(tmp_path):
    old = b"Seq_Frame0004_ProbeToTrackerTransform = 0.2"
    path = edited(tmp_path, SPINE, (old, b"Seq_Frame0004_ProbeToTrackerTransform = abc"))
    with pytest.raises(InputError, match="Seq_Frame0004_ProbeToTrackerTransform = 'abc"):
        read_plus_sequence(path)


def test_missing_calibration_names_available_transforms():
    with pytest.raises(CalibrationError) as e:
        sweep_from_plus(SPINE)
    msg = str(e.value)
    assert "'Image'" in msg and "ProbeToTracker" in msg and "ReferenceToTracker" in msg
    assert "--plus-config" in e.value.fix and "--calibration" in e.value.fix


def test_unknown_transform_name():
    with pytest.raises(CalibrationError, match="'Transducer' .* not in any available transform") as e:
        sweep_from_plus(SPINE, plus_config=SPINE_CFG, image_to_reference="TransducerToReference")
    assert "--image-to-reference" in e.value.fix and "StylusToTracker" in e.value.fix
    with pytest.raises(CalibrationError, match="not a transform name"):
        sweep_from_plus(SPINE, plus_config=SPINE_CFG, image_to_reference="Reference")


def test_disconnected_frames():
    with pytest.raises(CalibrationError, match="no chain of available transforms links 'Phantom' to 'Probe'"):
        g = TransformGraph(2)
        g.add("PhantomToReference", np.eye(4))
        g.add("ProbeToTracker", np.stack([np.eye(4)] * 2))
        g.resolve("PhantomToProbe")


def test_ambiguous_chain_named_unless_paths_agree():
    other = SPINE_IMAGE_TO_PROBE.copy()
    other[0, 3] += 5.0
    with pytest.raises(CalibrationError, match=r"ambiguous.*\n  1\) .*PLUS config.*\n  2\) .*calibration"):
        sweep_from_plus(SPINE, plus_config=SPINE_CFG, calibration=other)
    # the same calibration given twice is no ambiguity
    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG, calibration=SPINE_IMAGE_TO_PROBE)
    assert sweep.num_frames == 21


def test_chain_algebra_and_names():
    rng = np.random.default_rng(1)
    a = params_to_matrix(rng.normal(size=(4, 6)) * 20)   # AToB per frame
    c = params_to_matrix(rng.normal(size=(4, 6)) * 20)   # CToB per frame
    d = params_to_matrix(rng.normal(size=6) * 20)        # DToA constant
    g = TransformGraph(4)
    g.add("AToB", a, np.array([True, True, False, True]))
    g.add(("C", "B"), c)
    g.add("DToA", d)
    chain = g.resolve("DToC")
    np.testing.assert_allclose(chain.matrices[[0, 1, 3]], (np.linalg.inv(c) @ a @ d)[[0, 1, 3]], atol=1e-9)
    assert chain.valid.tolist() == [True, True, False, True] and chain.names == ["DToA", "AToB", "CToB"]
    assert split_transform_name("ToolToTrackerTransform") == ("Tool", "Tracker")
    assert split_transform_name("TRUSToReference") == ("TRUS", "Reference")
    for bad in ("Image", "AToBToC", "ToB"):
        with pytest.raises(CalibrationError):
            split_transform_name(bad)


# --- files that are not plain grey 8-bit -----------------------------------------------------------
def _tracked_fields(n: int, spacing_mm: float = 0.0) -> dict[str, str]:
    fields = {}
    for k in range(n):
        m = np.eye(4)
        m[2, 3] = k * 0.5
        if spacing_mm:
            m[:3, :2] *= spacing_mm
        fields[f"Seq_Frame{k:04d}_ImageToReferenceTransform"] = " ".join(repr(float(v)) for v in m.ravel())
    return fields


def test_rgb_frames_become_grey_with_warning(tmp_path):
    rgb = np.zeros((3, 4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    path = write_metaimage(tmp_path / "rgb.igs.mha", rgb, channels=3, fields=_tracked_fields(3, 0.2))
    with pytest.warns(UserWarning, match="colour frames"):
        sweep = sweep_from_plus(path)
    assert sweep.frames.shape == (3, 4, 5) and sweep.frames.dtype == np.uint8
    assert int(sweep.frames[0, 0, 0]) == round(0.299 * 100 + 0.587 * 150 + 0.114 * 200)


def test_16bit_frames_kept(tmp_path):
    frames = (np.arange(3 * 4 * 5, dtype=np.uint16) * 1000).reshape(3, 4, 5)
    path = write_metaimage(tmp_path / "u16.igs.mha", frames, fields=_tracked_fields(3, 0.2), compress=True)
    sweep = sweep_from_plus(path)
    assert sweep.frames.dtype == np.uint16
    np.testing.assert_array_equal(sweep.frames, frames)
    np.testing.assert_allclose(sweep.pixel_spacing, (0.2, 0.2))


def test_element_spacing_used_only_for_direct_mm_transform(tmp_path):
    path = write_metaimage(tmp_path / "mm.igs.mha", np.zeros((3, 4, 5), np.uint8), spacing=(0.3, 0.4, 1.0),
                           fields=_tracked_fields(3))
    sweep = sweep_from_plus(path)
    assert sweep.pixel_spacing == (0.3, 0.4) and sweep.metadata["pixel_spacing_source"].startswith("ElementSpacing")
    np.testing.assert_allclose(sweep.pixel_to_world()[1][:3, 3], [0, 0, 0.5])
    np.testing.assert_allclose(sweep.pixel_to_world()[1][0, 0], 0.3)
    # with an image calibration in pixels (PLUS style) ElementSpacing is ignored, as PLUS does
    path = write_metaimage(tmp_path / "px.igs.mha", np.zeros((3, 4, 5), np.uint8), spacing=(0.3, 0.4, 1.0),
                           fields=_tracked_fields(3, 0.25))
    assert sweep_from_plus(path).pixel_spacing == pytest.approx((0.25, 0.25))


# --- writing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,compress", [("out.igs.mha", True), ("out.mha", False), ("out.mhd", False),
                                           ("out.mhd", True)])
def test_write_read_round_trip(tmp_path, name, compress):
    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    out = write_plus_sequence(sweep, tmp_path / name, compress=compress)
    back = sweep_from_plus(out)
    np.testing.assert_array_equal(back.frames, sweep.frames)
    np.testing.assert_allclose(back.pixel_to_world(), sweep.pixel_to_world(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.image_to_world, sweep.image_to_world, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.pixel_spacing, sweep.pixel_spacing, rtol=1e-12)
    np.testing.assert_array_equal(back.timestamps, sweep.timestamps)
    assert back.metadata["transforms_used"] == ["ImageToReference"]
    assert read_metaimage(out).fields["UltrasoundImageOrientation"] == "MF"
    with pytest.raises(OutputExistsError):
        write_plus_sequence(sweep, out)
    write_plus_sequence(sweep, out, force=True)


def test_write_untracked_and_channels(tmp_path):
    sweep = Sweep(frames=np.ones((2, 3, 4), np.float32), channels={"doppler": np.zeros((2, 3, 4), np.float32)})
    with pytest.warns(UserWarning, match="doppler"):
        out = write_plus_sequence(sweep, tmp_path / "u.mha")
    back = sweep_from_plus(out)
    assert back.image_to_world is None and back.timestamps is None
    np.testing.assert_array_equal(back.frames, sweep.frames)


# --- PLUS configs and matrix files -------------------------------------------------------------
@pytest.mark.parametrize("cfg,mode,holes", [("igsio/Config_VolumeReconstruction_SonixRP_TRUS_D70mm_NN_LATE.xml", "LATEST", 0),
                                            ("igsio/Config_VolumeReconstruction_SonixRP_TRUS_D70mm_LN_MEAN.xml", "MEAN", 1),
                                            ("igsio/Config_VolumeReconstruction_SpinePhantom_LN_MAXI.xml", "MAXIMUM", 0),
                                            ("igsio/Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml", "MEAN", 1)])
def test_read_plus_configs(cfg, mode, holes):
    c = read_plus_config(DATA / cfg)
    np.testing.assert_array_equal(c.transforms[("Image", "Probe")], SPINE_IMAGE_TO_PROBE)
    assert ("Phantom", "Reference") in c.transforms
    assert c.transform_attributes[("Image", "Probe")]["Error"] == "1.68149"
    assert c.volume_reconstruction["CompoundingMode"] == mode
    assert c.volume_reconstruction["OutputSpacing"] == "0.5 0.5 0.5"
    assert len(c.hole_filling) == holes
    if holes:
        assert c.hole_filling[0] == {"Type": "STICK", "StickLengthLimit": "9", "NumberOfSticksToUse": "1"}
    np.testing.assert_allclose(c.matrix("Probe", "Image"), np.linalg.inv(SPINE_IMAGE_TO_PROBE))


def test_nwire_device_set_config():
    c = read_plus_config(NWIRE_CFG)
    np.testing.assert_array_equal(c.transforms[("Image", "Probe")], NWIRE_IMAGE_TO_PROBE)
    np.testing.assert_array_equal(c.transforms[("Phantom", "Reference")], np.eye(4))
    assert c.volume_reconstruction["ClipRectangleOrigin"] == "167 62" and c.hole_filling == []


def test_bad_configs(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<PlusConfiguration><CoordinateDefinitions>")
    with pytest.raises(InputError, match="not valid XML"):
        read_plus_config(bad)
    bad.write_text('<PlusConfiguration><CoordinateDefinitions><Transform From="Image" To="Probe" Matrix="1 0 0 0 1"/>'
                   "</CoordinateDefinitions></PlusConfiguration>")
    with pytest.raises(CalibrationError, match="has 5 numbers; a 4x4 matrix needs 16"):
        read_plus_config(bad)
    bad.write_text('<PlusConfiguration><CoordinateDefinitions><Transform From="Image" '
                   'Matrix="1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"/></CoordinateDefinitions></PlusConfiguration>')
    with pytest.raises(CalibrationError, match="without From, To or Matrix"):
        read_plus_config(bad)
    with pytest.raises(CalibrationError, match="no ImageToTracker transform"):
        read_plus_config(SPINE_CFG).matrix("Image", "Tracker")


def test_matrix_files(tmp_path):
    f = tmp_path / "m.txt"
    f.write_text("# calibration\n1, 0, 0, 5\n0 1 0 6\n0\t0 1 7\n")
    expected = np.eye(4)
    expected[:3, 3] = [5, 6, 7]
    np.testing.assert_array_equal(read_matrix_file(f), expected)
    f.write_text(" ".join(map(str, expected.ravel())))
    np.testing.assert_array_equal(read_matrix_file(f), expected)
    np.testing.assert_allclose(read_matrix_file(SPINE_CFG, "ProbeToImage"), np.linalg.inv(SPINE_IMAGE_TO_PROBE))
    for text, match in (("1 2 3", "holds 3 numbers"), ("1 0 0 0 0 1 0 0 0 0 1 0 0 0 x 1", "'x', which is not a number"),
                        (" ".join(map(str, expected.T.ravel())), "last row"), ("nan " * 16, "NaN")):
        f.write_text(text)
        with pytest.raises(CalibrationError, match=match) as e:
            read_matrix_file(f)
        assert e.value.fix
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_matrix_file(empty)


def test_slicer_reads_the_transforms_we_write(tmp_path):
    """Slicer's own sequence-metafile reader sees the same per-frame ImageToReference matrices."""
    import slicer  # noqa: F401 - slicer-core is a dependency: fail, do not skip, when it is missing
    import vtk

    from freehandrecon.io.slicer_scene import new_scene

    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    out = write_plus_sequence(sweep, tmp_path / "s.seq.mha")
    scene = new_scene()
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = scene.AddNewNodeByClass("vtkMRMLLinearTransformSequenceStorageNode")
    storage.SetFileName(str(out))
    assert storage.ReadData(seq) and seq.GetNumberOfDataNodes() == 21
    m = vtk.vtkMatrix4x4()
    seq.GetNthDataNode(20).GetMatrixTransformToParent(m)
    got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(got, sweep.pixel_to_world()[20], rtol=0, atol=1e-12)
    assert float(seq.GetNthIndexValue(20)) == pytest.approx(sweep.timestamps[20], abs=1e-3)
