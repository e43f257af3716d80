"""freehandrecon.io.slicer_* and scene.nodes against real Slicer MRML (slicer-core): browsers, volumes, files, scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

from freehandrecon import geometry
from freehandrecon.io.slicer_files import load_mrb, read_seq_nrrd, save_mrb, save_node, write_seq_nrrd
from freehandrecon.io.slicer_scene import (PRESET_NAMES, PRESETS_DIR, PRESETS_FILE, get_logic, new_scene,
                                           register_presets)
from freehandrecon.io.slicer_sequences import add_transform_sequence, sweep_from_browser, sweep_to_browser
from freehandrecon.scene.nodes import add_volume_node
from freehandrecon.errors import CalibrationError, InputError, OutputExistsError
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


@pytest.fixture(scope="module")
def spine() -> Sweep:
    return sweep_from_plus(SPINE, plus_config=SPINE_CFG)


def synthetic_sweep(n: int = 12, channels: bool = False, seed: int = 3) -> Sweep:
    """Frames with known rotations (up to ~40 deg) and translations (mm)."""
    rng = np.random.default_rng(seed)
    params = np.c_[rng.uniform(-50, 50, (n, 3)), rng.uniform(-40, 40, (n, 3))]
    frames = rng.integers(0, 256, (n, 24, 32), dtype=np.uint8)
    extra = {"photoacoustic": rng.random((n, 24, 32)).astype(np.float32)} if channels else {}
    return Sweep(frames=frames, pixel_spacing=(0.25, 0.4), image_to_world=geometry.params_to_matrix(params),
                 timestamps=10.0 + 0.05 * np.arange(n), channels=extra)


def matrix(node_matrix_getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node_matrix_getter(m)
    return slicer.util.arrayFromVTKMatrix(m)


def rigid(rx: float, ry: float, rz: float, t: tuple[float, float, float]) -> np.ndarray:
    return geometry.params_to_matrix(np.array([*t, rx, ry, rz], dtype=float))


# --- scene ----------------------------------------------------------------------------------------

def test_new_scene_registers_node_classes_and_presets():
    scene = new_scene()
    for cls in ("vtkMRMLSequenceNode", "vtkMRMLSequenceBrowserNode", "vtkMRMLGPURayCastVolumeRenderingDisplayNode",
                "vtkMRMLVolumePropertyNode", "vtkMRMLMarkupsROINode", "vtkMRMLScalarVolumeNode"):
        assert scene.IsNodeClassRegistered(cls), cls
    assert scene.GetCacheManager() is not None and scene.GetDataIOManager() is not None
    vr = get_logic(scene, "volumerendering")
    assert Path(vr.GetModuleShareDirectory()) == PRESETS_DIR
    for name in PRESET_NAMES:
        preset = vr.GetPresetByName(name)
        assert preset is not None, name
        opacity = preset.GetScalarOpacity()
        assert opacity.GetValue(0) == 0.0, f"{name}: zero intensity must be transparent"
        assert opacity.GetValue(255) > 0.5, f"{name}: bright voxels must be nearly opaque"
    bmode = vr.GetPresetByName("US-BMode").GetColor().GetColor(200)
    assert np.ptp(bmode) < 0.05, "B-mode preset is grey"
    for red in ("PA-Hot", "Doppler-Red"):
        r, g, b = vr.GetPresetByName(red).GetColor().GetColor(100)
        assert r > 0.7 and r > 3 * b, red


def test_slicers_default_volume_rendering_nodes_work_for_8bit_volumes():
    # Slicer picks the "US-Fetal" preset for 8-bit volumes and crashes without one.
    scene = new_scene()
    node = add_volume_node(scene, np.full((4, 5, 6), 100, np.uint8), np.eye(4), "us")
    display = get_logic(scene, "volumerendering").CreateDefaultVolumeRenderingNodes(node)
    assert display is not None and display.GetVolumePropertyNode() is not None


# --- browser round trips --------------------------------------------------------------------------

def test_spine_browser_round_trip(spine):
    scene = new_scene()
    browser = sweep_to_browser(scene, spine, name="Spine")
    assert browser.IsA("vtkMRMLSequenceBrowserNode") and browser.GetNumberOfItems() == spine.num_frames
    image_seq = scene.GetFirstNodeByName("Spine")
    tseq = scene.GetFirstNodeByName("Spine_ImageToReference")
    assert image_seq.IsA("vtkMRMLSequenceNode") and tseq.IsA("vtkMRMLSequenceNode")
    assert tseq.GetDataNodeClassName() == "vtkMRMLLinearTransformNode"
    assert image_seq.GetIndexName() == "time" and image_seq.GetIndexUnit() == "s"
    assert float(image_seq.GetNthIndexValue(3)) == spine.timestamps[3]

    # The proxy chain reproduces pixel_to_world (what Slicer's views show).
    image_proxy, transform_proxy = browser.GetProxyNode(image_seq), browser.GetProxyNode(tseq)
    assert image_proxy.GetParentTransformNode().GetID() == transform_proxy.GetID()
    np.testing.assert_allclose(matrix(image_proxy.GetIJKToRASMatrix),
                               np.diag([*spine.pixel_spacing, 1.0, 1.0]), atol=1e-12)
    browser.SetSelectedItemNumber(7)
    get_logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    to_world = vtk.vtkGeneralTransform()
    image_proxy.GetParentTransformNode().GetTransformToWorld(to_world)
    pixel = np.array([500.0, 300.0, 0.0, 1.0])
    expected = (spine.pixel_to_world()[7] @ pixel)[:3]
    ras = to_world.TransformPoint(*(matrix(image_proxy.GetIJKToRASMatrix) @ pixel)[:3])
    np.testing.assert_allclose(ras, expected, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(image_proxy)[0], spine.frames[7])

    back = sweep_from_browser(browser)
    np.testing.assert_array_equal(back.frames, spine.frames)
    assert back.frames.dtype == spine.frames.dtype
    np.testing.assert_allclose(back.image_to_world, spine.image_to_world, atol=1e-6)
    np.testing.assert_allclose(back.pixel_spacing, spine.pixel_spacing, rtol=1e-12)
    np.testing.assert_array_equal(back.timestamps, spine.timestamps)
    assert back.metadata["transform_chain"] == ["Spine_ImageToReference"]
    assert browser.GetSelectedItemNumber() == 7, "reading must not move the user's browser"


def test_names_are_unique_and_users_nodes_untouched():
    scene = new_scene()
    users = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Sweep")
    browser = sweep_to_browser(scene, synthetic_sweep(), name="Sweep")
    assert scene.GetFirstNodeByName("Sweep").GetID() == users.GetID()
    assert users.GetImageData() is None, "the user's node must not be reused"
    image_seq = browser.GetMasterSequenceNode()
    assert image_seq.GetName() == "Sweep_1" and scene.GetFirstNodeByName("Sweep_1_ImageToReference") is not None


def test_extra_parent_transform_above_transform_proxy_changes_poses():
    sweep = synthetic_sweep()
    scene = new_scene()
    browser = sweep_to_browser(scene, sweep)
    tseq = scene.GetFirstNodeByName("Sweep_ImageToReference")
    extra = rigid(10.0, -25.0, 30.0, (5.0, -12.0, 40.0))
    reference_to_ras = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ReferenceToRAS")
    reference_to_ras.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(extra))
    browser.GetProxyNode(tseq).SetAndObserveTransformNodeID(reference_to_ras.GetID())

    back = sweep_from_browser(browser)
    np.testing.assert_allclose(back.image_to_world, extra @ sweep.image_to_world, atol=1e-9)
    assert back.metadata["transform_chain"] == ["Sweep_ImageToReference", "ReferenceToRAS"]
    assert not np.allclose(back.image_to_world, sweep.image_to_world, atol=1.0)


def test_users_own_browser_with_calibration_chain():
    """A browser built as a user would: frames with spacing 1 and an origin, a scaled
    ImageToProbe calibration, a ProbeToTracker sequence and a static TrackerToRAS."""
    rng = np.random.default_rng(7)
    n, h, w = 9, 20, 30
    frames = rng.integers(0, 4000, (n, h, w), dtype=np.uint16)
    probe_to_tracker = geometry.params_to_matrix(np.c_[rng.uniform(-80, 80, (n, 3)), rng.uniform(-30, 30, (n, 3))])
    image_to_probe = rigid(90.0, 0.0, 180.0, (12.0, -3.0, 4.0)) @ np.diag([0.12, 0.15, 1.0, 1.0])
    tracker_to_ras = rigid(0.0, 0.0, 90.0, (0.0, 100.0, 0.0))
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, 3] = (2.0, 3.0, 0.0)  # origin of the frame pixels inside "image" coordinates

    scene = new_scene()
    images = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Image_Image")
    poses = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "ProbeToTracker-Sequence")
    volume, transform = slicer.vtkMRMLScalarVolumeNode(), slicer.vtkMRMLLinearTransformNode()
    for k in range(n):
        slicer.util.updateVolumeFromArray(volume, frames[k][None])
        volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        images.SetDataNodeAtValue(volume, f"{k * 0.1:.1f}")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(probe_to_tracker[k]))
        poses.SetDataNodeAtValue(transform, f"{k * 0.1:.1f}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Recording")
    browser.SetAndObserveMasterSequenceNodeID(poses.GetID())  # master need not be the images
    browser.AddSynchronizedSequenceNode(images)
    get_logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    calib = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToProbe")
    calib.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(image_to_probe))
    tracker = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "TrackerToRAS")
    tracker.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(tracker_to_ras))
    browser.GetProxyNode(images).SetAndObserveTransformNodeID(calib.GetID())
    calib.SetAndObserveTransformNodeID(browser.GetProxyNode(poses).GetID())
    browser.GetProxyNode(poses).SetAndObserveTransformNodeID(tracker.GetID())

    sweep = sweep_from_browser(browser)
    pixel_to_world = tracker_to_ras @ probe_to_tracker @ image_to_probe @ ijk_to_ras
    np.testing.assert_allclose(sweep.pixel_to_world(), pixel_to_world, atol=1e-9)
    np.testing.assert_allclose(sweep.pixel_spacing, (0.12, 0.15), rtol=1e-12)
    np.testing.assert_array_equal(sweep.frames, frames)
    np.testing.assert_allclose(sweep.timestamps, 0.1 * np.arange(n))
    assert sweep.metadata["transform_chain"] == ["ImageToProbe", "ProbeToTracker-Sequence", "TrackerToRAS"]
    # image_to_world is rigid once the spacing is taken out
    rot = sweep.image_to_world[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)

    forced = sweep_from_browser(browser, image_sequence="Image_Image", pixel_spacing=(0.5, 0.5))
    assert forced.pixel_spacing == (0.5, 0.5)
    np.testing.assert_allclose(forced.pixel_to_world(), pixel_to_world, atol=1e-9)


def test_channels_round_trip_and_mismatch_is_refused():
    sweep = synthetic_sweep(channels=True)
    scene = new_scene()
    browser = sweep_to_browser(scene, sweep, name="PA")
    back = sweep_from_browser(browser)
    assert list(back.channels) == ["photoacoustic"]
    np.testing.assert_array_equal(back.channels["photoacoustic"], sweep.channels["photoacoustic"])
    assert back.channels["photoacoustic"].dtype == np.float32
    np.testing.assert_allclose(back.image_to_world, sweep.image_to_world, atol=1e-9)

    short = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Doppler")
    vol = slicer.vtkMRMLScalarVolumeNode()
    for k in range(sweep.num_frames - 3):
        slicer.util.updateVolumeFromArray(vol, sweep.frames[k][None])
        short.SetDataNodeAtValue(vol, repr(float(sweep.timestamps[k])))
    browser.AddSynchronizedSequenceNode(short)
    with pytest.raises(InputError, match="Doppler' has 9 frames") as err:
        sweep_from_browser(browser)
    assert "Fix:" in str(err.value)


def test_sweep_without_poses_or_timestamps():
    sweep = Sweep(frames=np.arange(3 * 8 * 9, dtype=np.int16).reshape(3, 8, 9), pixel_spacing=(0.3, 0.2),
                  timestamps=np.array([1.0, 1.0, 2.0]))  # repeated timestamps cannot index a sequence
    scene = new_scene()
    browser = sweep_to_browser(scene, sweep)
    assert browser.GetMasterSequenceNode().GetIndexName() == "frame"
    assert scene.GetFirstNodeByName("Sweep_ImageToReference") is None
    back = sweep_from_browser(browser)
    assert back.image_to_world is None and back.timestamps is None
    np.testing.assert_allclose(back.pixel_spacing, (0.3, 0.2))
    np.testing.assert_array_equal(back.frames, sweep.frames)


def test_bad_browser_inputs_are_explained():
    scene = new_scene()
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Empty")
    with pytest.raises(InputError, match="no image") as err:
        sweep_from_browser(browser)
    assert "Fix:" in str(err.value)
    full = sweep_to_browser(scene, synthetic_sweep())
    with pytest.raises(InputError, match="not in browser"):
        sweep_from_browser(full, image_sequence="NoSuchSequence")
    with pytest.raises(InputError, match="holds vtkMRMLLinearTransformNode"):
        sweep_from_browser(full, image_sequence="Sweep_ImageToReference")
    with pytest.raises(InputError, match="3 transforms for the 12 items"):
        add_transform_sequence(scene, np.tile(np.eye(4), (3, 1, 1)), "Short", browser=full)
    with pytest.raises(CalibrationError, match="singular"):
        add_transform_sequence(scene, np.zeros((2, 4, 4)), "Zero")


def test_add_transform_sequence_without_browser():
    scene = new_scene()
    mats = synthetic_sweep().image_to_world
    seq = add_transform_sequence(scene, mats, "Poses")
    assert seq.GetName() == "Poses" and seq.GetNumberOfDataNodes() == len(mats)
    got = np.array([matrix(seq.GetNthDataNode(k).GetMatrixTransformToParent) for k in range(len(mats))])
    np.testing.assert_allclose(got, mats, atol=1e-12)


# --- volumes ----------------------------------------------------------------------------------------

def oblique_grid() -> np.ndarray:
    m = rigid(20.0, -35.0, 60.0, (-40.0, 12.5, 88.0))
    return m @ np.diag([0.5, 0.8, 1.2, 1.0])


def test_add_volume_node_geometry_with_non_identity_direction():
    scene = new_scene()
    a = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    ijk_to_ras = oblique_grid()
    node = add_volume_node(scene, a, ijk_to_ras, "Reconstruction")
    np.testing.assert_allclose(matrix(node.GetIJKToRASMatrix), ijk_to_ras, atol=1e-12)
    np.testing.assert_allclose(node.GetSpacing(), (0.5, 0.8, 1.2), atol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), ijk_to_ras[:3, 3], atol=1e-12)
    assert node.GetImageData().GetDimensions() == (7, 6, 5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), a)
    # voxel (i, j, k) = (6, 0, 4) sits where the matrix says
    ras_to_ijk = matrix(node.GetRASToIJKMatrix)
    corner = ijk_to_ras @ np.array([6.0, 0.0, 4.0, 1.0])
    np.testing.assert_allclose(ras_to_ijk @ corner, [6.0, 0.0, 4.0, 1.0], atol=1e-9)
    assert node.GetDisplayNode() is not None


def test_add_volume_node_unique_names_and_explicit_replace():
    scene = new_scene()
    first = add_volume_node(scene, np.zeros((2, 3, 4), np.uint8), np.eye(4), "Out")
    second = add_volume_node(scene, np.ones((2, 3, 4), np.uint8), np.eye(4), "Out")
    assert first.GetID() != second.GetID() and {first.GetName(), second.GetName()} == {"Out", "Out_1"}
    assert slicer.util.arrayFromVolume(first).max() == 0
    replaced = add_volume_node(scene, np.full((3, 3, 3), 9, np.int16), 2 * np.eye(4) + np.diag([0, 0, 0, -1]),
                                    "Ignored", replace=first)
    assert replaced.GetID() == first.GetID() and replaced.GetName() == "Out"
    assert slicer.util.arrayFromVolume(first).shape == (3, 3, 3) and first.GetSpacing() == (2.0, 2.0, 2.0)
    coverage = add_volume_node(scene, np.ones((2, 2, 2), bool), np.eye(4), "Coverage")
    assert slicer.util.arrayFromVolume(coverage).dtype == np.uint8


def test_add_volume_node_rejects_bad_input():
    scene = new_scene()
    with pytest.raises(InputError, match="3D array") as err:
        add_volume_node(scene, np.zeros((4, 4)), np.eye(4), "x")
    assert "Fix:" in str(err.value)
    with pytest.raises(CalibrationError, match="singular"):
        add_volume_node(scene, np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]), "x")
    with pytest.raises(CalibrationError, match="4x4"):
        add_volume_node(scene, np.zeros((2, 2, 2)), np.eye(3), "x")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    with pytest.raises(InputError, match="not a scalar volume"):
        add_volume_node(scene, np.zeros((2, 2, 2)), np.eye(4), "x", replace=transform)
    other = add_volume_node(new_scene(), np.zeros((2, 2, 2)), np.eye(4), "elsewhere")
    with pytest.raises(InputError, match="not in this scene"):
        add_volume_node(scene, np.zeros((2, 2, 2)), np.eye(4), "x", replace=other)
    with pytest.raises(InputError, match="empty"):
        add_volume_node(scene, np.zeros((2, 2, 2)), np.eye(4), " ")


# --- files ------------------------------------------------------------------------------------------

def read_volume_file(path: Path):
    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def test_save_nrrd_and_read_back_equal(tmp_path):
    scene = new_scene()
    a = (np.random.default_rng(1).random((6, 7, 8)) * 1000).astype(np.int16)
    node = add_volume_node(scene, a, oblique_grid(), "Vol")
    out = save_node(node, tmp_path / "sub" / "vol.nrrd")
    assert out == tmp_path / "sub" / "vol.nrrd" and out.stat().st_size > 100
    assert node.GetStorageNode().GetFileName() == str(out)
    assert "space: left-posterior-superior" in out.read_bytes()[:400].decode("latin-1")  # LPS on disk
    back = read_volume_file(out)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), a)
    np.testing.assert_allclose(matrix(back.GetIJKToRASMatrix), oblique_grid(), atol=1e-9)
    assert [p.name for p in out.parent.iterdir()] == ["vol.nrrd"], "no temporary files left"

    a[0, 0, 0] = 1234  # overwrite in place, atomically
    add_volume_node(scene, a, oblique_grid(), "", replace=node)
    save_node(node, out)
    assert slicer.util.arrayFromVolume(read_volume_file(out))[0, 0, 0] == 1234


def test_save_node_refuses_unknown_formats(tmp_path):
    scene = new_scene()
    node = add_volume_node(scene, np.zeros((2, 2, 2)), np.eye(4), "v")
    with pytest.raises(InputError, match="ending in .nrrd") as err:
        save_node(node, tmp_path / "v.png")
    assert "Fix:" in str(err.value)
    browser = sweep_to_browser(scene, synthetic_sweep())
    with pytest.raises(InputError, match=r"\.seq\.nrrd"):
        save_node(browser.GetMasterSequenceNode(), tmp_path / "frames.nrrd")
    assert not list(tmp_path.iterdir())


def test_write_and_read_seq_nrrd_spine(spine, tmp_path):
    paths = write_seq_nrrd(spine, tmp_path / "spine.seq.nrrd")
    assert [p.name for p in paths] == ["spine.seq.nrrd", "spine_ImageToReference.seq.mha"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "Seq_Frame0000_ImageToReferenceTransform =" in paths[1].read_text(errors="replace")

    back = read_seq_nrrd(paths[0])
    np.testing.assert_array_equal(back.frames, spine.frames)
    np.testing.assert_array_equal(back.timestamps, spine.timestamps)
    np.testing.assert_allclose(back.pixel_spacing, spine.pixel_spacing, rtol=1e-12)
    # Slicer writes .seq.mha matrix elements with 6 significant digits
    np.testing.assert_allclose(back.image_to_world, spine.image_to_world, atol=1e-3)
    assert back.metadata["transforms_file"] == str(paths[1])

    with pytest.raises(OutputExistsError, match="already exist") as err:
        write_seq_nrrd(spine, tmp_path / "spine.seq.nrrd")
    assert "force" in str(err.value)
    assert write_seq_nrrd(spine.subset(slice(0, 5)), tmp_path / "spine.seq.nrrd", force=True) == paths
    assert read_seq_nrrd(paths[0]).num_frames == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_seq_nrrd_channels_spacing_override_and_missing_transforms(tmp_path):
    sweep = synthetic_sweep(channels=True)
    paths = write_seq_nrrd(sweep, tmp_path / "pa.seq.nrrd")
    assert [p.name for p in paths] == ["pa.seq.nrrd", "pa_ImageToReference.seq.mha",
                                       "pa_channel-photoacoustic.seq.nrrd"]
    back = read_seq_nrrd(paths[0])
    np.testing.assert_array_equal(back.channels["photoacoustic"], sweep.channels["photoacoustic"])
    np.testing.assert_allclose(back.pixel_to_world(), sweep.pixel_to_world(), atol=1e-3)

    images_only = read_seq_nrrd(paths[0], transforms_path=None, pixel_spacing=(1.0, 2.0))
    assert images_only.pixel_spacing == (1.0, 2.0)
    paths[1].unlink()
    assert read_seq_nrrd(paths[0]).image_to_world is None
    with pytest.raises(InputError, match="does not exist"):
        read_seq_nrrd(paths[0], transforms_path=tmp_path / "nope.seq.mha")
    with pytest.raises(InputError, match=r"\.seq\.nrrd"):
        write_seq_nrrd(sweep, tmp_path / "pa.nrrd")


def test_read_seq_nrrd_rejects_mismatched_transform_file(tmp_path):
    sweep = synthetic_sweep()
    write_seq_nrrd(sweep, tmp_path / "a.seq.nrrd")
    other = write_seq_nrrd(sweep.subset(slice(0, 4)), tmp_path / "b.seq.nrrd")
    with pytest.raises(InputError, match="4 transforms but 'a.seq.nrrd' has 12 frames"):
        read_seq_nrrd(tmp_path / "a.seq.nrrd", transforms_path=other[1])


def test_mrb_round_trip(spine, tmp_path):
    scene = new_scene()
    sweep = spine.subset(slice(0, 6))
    sweep_to_browser(scene, sweep, name="Spine")
    a = np.random.default_rng(2).integers(0, 255, (9, 10, 11), dtype=np.uint8)
    add_volume_node(scene, a, oblique_grid(), "Reconstruction")
    out = save_mrb(scene, tmp_path / "scene.mrb")
    assert out.stat().st_size > 1000 and [p.name for p in tmp_path.iterdir()] == ["scene.mrb"]

    loaded = load_mrb(out)
    volume = loaded.GetFirstNodeByName("Reconstruction")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), a)
    np.testing.assert_allclose(matrix(volume.GetIJKToRASMatrix), oblique_grid(), atol=1e-9)
    browser = loaded.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    back = sweep_from_browser(browser)
    np.testing.assert_array_equal(back.frames, sweep.frames)
    np.testing.assert_allclose(back.image_to_world, sweep.image_to_world, atol=1e-3)
    np.testing.assert_array_equal(back.timestamps, sweep.timestamps)


def test_mrb_errors(tmp_path):
    cwd = Path.cwd()
    with pytest.raises(InputError, match="does not exist"):
        load_mrb(tmp_path / "missing.mrb")
    junk = tmp_path / "junk.mrb"
    junk.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(InputError, match="not a readable Slicer scene") as err:
        load_mrb(junk)
    assert "Fix:" in str(err.value)
    assert Path.cwd() == cwd, "Slicer's failed MRB read must not leave the process in its temp folder"
    with pytest.raises(InputError, match=r"\.mrb"):
        save_mrb(new_scene(), tmp_path / "scene.zip")


def test_register_presets_adds_ours_to_a_logic_with_its_own_presets():
    # As in the Slicer application: the logic already has presets; ours are added once, by name.
    scene = new_scene()
    logic = slicer.vtkSlicerVolumeRenderingLogic()
    logic.SetMRMLScene(scene)
    logic.SetModuleShareDirectory(str(PRESETS_DIR))
    logic.LoadCustomPresetsScene(str(PRESETS_FILE))
    presets = logic.GetPresetsScene()
    presets.RegisterNodeClass(slicer.vtkMRMLVolumePropertyNode())
    assert logic.LoadCustomPresetsScene(str(PRESETS_FILE))
    own = slicer.vtkMRMLVolumePropertyNode()
    own.SetName("CT-Bone")
    presets.AddNode(own)
    presets.RemoveNode(presets.GetFirstNodeByName("PA-Hot"))
    assert register_presets(logic) == ["PA-Hot"]
    assert register_presets(logic) == []
    assert logic.GetPresetByName("CT-Bone") is not None and logic.GetPresetByName("PA-Hot") is not None


def test_a_headless_scene_removes_its_cache_folder_when_it_goes():
    import gc

    scene = new_scene()
    folder = Path(scene.GetCacheManager().GetRemoteCacheDirectory())
    assert folder.is_dir()
    del scene
    gc.collect()
    assert not folder.exists()
