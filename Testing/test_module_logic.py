"""The Slicer module's logic (freehandrecon.slicer_logic) on slicer-core's real MRML scene, headless.

The module file itself needs Slicer's Qt/ScriptedLoadableModule (absent here); its logic class does not.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

from freehandrecon import geometry, mrml
from freehandrecon.compound import CompoundOptions
from freehandrecon.errors import CalibrationError, Cancelled, InputError, ResourceError
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.logic import ReconstructionRequest, reconstruct_sweep
from freehandrecon.slicer_logic import SAMPLES, FreehandReconLogic, file_sha256, learnedModelAvailable, sample
from freehandrecon.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


@pytest.fixture
def scene(monkeypatch):
    """A fresh scene installed as slicer.mrmlScene (as in Slicer), removed afterwards."""
    s = mrml.new_scene()
    monkeypatch.setattr(slicer, "mrmlScene", s, raising=False)
    return s


@pytest.fixture(scope="module")
def plus_sweep() -> Sweep:
    return sweep_from_plus(SPINE, plus_config=SPINE_CFG)


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def ijk_to_ras(volume) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def poses_available() -> bool:
    try:
        from freehandrecon.poses import estimate_poses  # noqa: F401
    except ImportError:
        return False
    return True


# --- sample data ----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", SAMPLES, ids=lambda s: s.sampleName)
def test_sample_files_exist_small_and_match_their_checksums(entry):
    assert entry.path.is_file(), entry.path
    assert entry.path.stat().st_size < 5 * 2**20
    assert file_sha256(entry.path) == entry.sha256
    assert entry.checksum == f"SHA256:{entry.sha256}" and entry.path.as_uri().startswith("file://")


def test_sample_loads_into_a_browser_with_the_plus_frames_and_poses(scene, plus_sweep):
    logic = FreehandReconLogic()
    browser = logic.loadSample("FreehandReconSpinePhantom")
    assert browser.GetName() == sample("FreehandReconSpinePhantom").browserName
    assert browser.GetNumberOfItems() == 21
    sweep = logic.readSweep(browser)
    np.testing.assert_array_equal(sweep.frames, plus_sweep.frames)
    np.testing.assert_allclose(sweep.pixel_spacing, plus_sweep.pixel_spacing, rtol=1e-9)
    # the transform sequence keeps 6 significant digits
    np.testing.assert_allclose(sweep.pixel_to_world(), plus_sweep.pixel_to_world(), atol=1e-3)
    np.testing.assert_allclose(sweep.timestamps, plus_sweep.timestamps, atol=1e-6)


def test_unknown_sample_and_damaged_sample_are_refused(scene, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="FreehandReconSpinePhantom"):
        FreehandReconLogic().loadSample("NoSuchSample")
    import freehandrecon.slicer_logic as sl

    damaged = tmp_path / SAMPLES[0].fileName
    damaged.write_bytes(SAMPLES[0].path.read_bytes()[:1000])
    monkeypatch.setattr(sl, "SAMPLE_DATA_DIR", tmp_path)
    with pytest.raises(InputError, match="checksum"):
        FreehandReconLogic().loadSample()


# --- tracked reconstruction -----------------------------------------------------------------------

def test_tracked_reconstruction_matches_the_core_and_adds_the_expected_nodes(scene, plus_sweep):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    stages = []
    volume = logic.reconstruct(browser, poses="tracked", spacingMm=0.5, progress=lambda s, f: stages.append((s, f)))
    assert stages and stages[-1] == ("B-mode", 1.0)
    assert volume.GetName() == "SpinePhantom_Volume"
    array = slicer.util.arrayFromVolume(volume)
    core = reconstruct_sweep(plus_sweep, ReconstructionRequest(spacing_mm=0.5, options=CompoundOptions()))
    assert array.shape == core.grid.shape_zyx == (105, 106, 147)
    np.testing.assert_allclose(ijk_to_ras(volume), core.grid.ijk_to_world(), atol=2e-3)
    np.testing.assert_allclose(volume.GetSpacing(), (0.5, 0.5, 0.5))
    reference = core.volume_array()
    # poses from the scene differ by <= 0.0005 mm: a handful of boundary voxels may land elsewhere
    assert np.mean(array == reference) > 0.995
    assert np.corrcoef(array.ravel(), reference.ravel())[0, 1] > 0.99
    assert abs(float(array.mean()) - float(reference.mean())) < 0.05
    coverage = slicer.util.arrayFromVolume(logic.lastNodes["coverage"])
    assert logic.lastNodes["coverage"].GetName() == "SpinePhantom_Volume_Coverage"
    assert 0.2 < np.count_nonzero(coverage) / coverage.size < 0.25
    assert float(array[coverage > 0].mean()) > 3 * float(array[coverage == 0].mean() + 1)
    display = logic.lastNodes["display"]
    assert display.GetVisibility() and display.GetVolumePropertyNode() is not None
    report = logic.lastReport
    assert report["frames"] == 21 and report["dims_ijk"] == [147, 106, 105]
    assert abs(report["memory_estimate_mb"] - logic.memoryEstimateMb(browser, 0.5)) < 0.5


def test_new_output_nodes_and_unchanged_browser(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    before = node_count(scene)
    logic.reconstruct(browser, spacingMm=1.0, coverage=False, showIn3D=False)
    # one volume with its display node (and nothing else)
    assert node_count(scene) - before == 2
    assert "coverage" not in logic.lastNodes
    logic.reconstruct(browser, spacingMm=1.0, showIn3D=False)
    assert scene.GetFirstNodeByName("SpinePhantom_Volume_1") is not None  # never silently reuses a user's node


def test_replacing_a_chosen_output_volume(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    target = mrml.add_volume_node(scene, np.full((3, 4, 5), 7, np.uint8), np.eye(4), "MyOutput")
    before = node_count(scene)
    volume = logic.reconstruct(browser, spacingMm=1.0, outputVolumeNode="MyOutput", coverage=False, showIn3D=False)
    assert volume is target and volume.GetName() == "MyOutput"
    assert slicer.util.arrayFromVolume(volume).shape == (53, 54, 74)
    assert node_count(scene) == before  # replaced in place, no new node
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Labels")
    with pytest.raises(InputError, match="not a scalar volume"):
        logic.reconstruct(browser, outputVolumeNode=label)


def test_cancel_leaves_the_scene_and_the_chosen_output_unchanged(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    target = mrml.add_volume_node(scene, np.arange(60, dtype=np.uint8).reshape(3, 4, 5), np.eye(4), "Keep")
    content = slicer.util.arrayFromVolume(target).copy()
    matrix = ijk_to_ras(target)
    names = [scene.GetNthNode(i).GetName() for i in range(node_count(scene))]
    calls = []

    def cancel_after_first_progress() -> bool:
        return bool(calls)

    with pytest.raises(Cancelled):
        logic.reconstruct(browser, spacingMm=0.3, outputVolumeNode=target, progress=lambda s, f: calls.append(s),
                          shouldCancel=cancel_after_first_progress)
    assert calls, "the run was not under way when cancelled"
    assert [scene.GetNthNode(i).GetName() for i in range(node_count(scene))] == names
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(target), content)
    np.testing.assert_array_equal(ijk_to_ras(target), matrix)
    assert browser.GetSelectedItemNumber() == 0


def test_failure_leaves_the_scene_unchanged(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Huge")
    roi.SetCenter(0, 0, 0)
    roi.SetSize(20000, 20000, 20000)
    before = node_count(scene)
    with pytest.raises(ResourceError, match="spacing"):
        logic.reconstruct(browser, spacingMm=0.05, roiNode=roi)
    assert node_count(scene) == before


def test_roi_defines_the_output_box(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
    roi.SetCenter(-40.0, 190.0, 45.0)
    roi.SetSize(20.0, 30.0, 10.0)
    volume = logic.reconstruct(browser, spacingMm=1.0, roiNode=roi, showIn3D=False)
    assert slicer.util.arrayFromVolume(volume).shape == (10, 30, 20)
    centre = ijk_to_ras(volume) @ np.array([9.5, 14.5, 4.5, 1.0])
    np.testing.assert_allclose(centre[:3], (-40.0, 190.0, 45.0), atol=1e-6)
    assert 1.0 < logic.memoryEstimateMb(browser, 1.0, roiNode=roi) < logic.memoryEstimateMb(browser, 1.0) + 1


def test_memory_estimate_is_plausible_and_scales_with_spacing(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    coarse = logic.memoryEstimateMb(browser, 1.0)
    fine = logic.memoryEstimateMb(browser, 0.5)
    voxels_mb = 147 * 106 * 105 / 2**20
    assert 16 * voxels_mb < fine < 64 * voxels_mb  # a few float accumulators per voxel
    finer = logic.memoryEstimateMb(browser, 0.25)
    # fixed costs (one chunk of frames) cancel in the differences; the voxel part grows 8x per halving
    assert 6 < (finer - fine) / (fine - coarse) < 10
    assert logic.memoryEstimateMb(browser, 0.5, fillHoles="normalized") > fine


# --- bad input ------------------------------------------------------------------------------------

def test_browser_without_images_is_refused(scene):
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Empty")
    tseq = mrml.add_transform_sequence(scene, np.repeat(np.eye(4)[None], 3, axis=0), "OnlyTransforms")
    browser.SetAndObserveMasterSequenceNodeID(tseq.GetID())
    logic = FreehandReconLogic()
    with pytest.raises(InputError, match="no image"):
        logic.reconstruct(browser)
    assert "no image" in logic.checkInputs(types.SimpleNamespace(inputBrowser=browser))


def test_untracked_sweep_needs_sensorless_poses(scene):
    frames = np.random.default_rng(0).integers(0, 255, (6, 20, 30), dtype=np.uint8)
    browser = mrml.sweep_to_browser(scene, Sweep(frames, (0.2, 0.2)), name="Free")
    logic = FreehandReconLogic()
    before = node_count(scene)
    with pytest.raises(CalibrationError, match="no tracking"):
        logic.reconstruct(browser, poses="tracked")
    message = logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, poses="tracked"))
    assert "learned or speckle" in message
    assert logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, poses="speckle")) is None
    assert poses_available(), "freehandrecon.poses does not import (a broken build must fail, not skip)"
    assert node_count(scene) == before


def test_bad_options_are_named(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    for kwargs, word in (({"poses": "gps"}, "pose source"), ({"interpolation": "cubic"}, "interpolation"),
                         ({"compounding": "median"}, "compounding"), ({"fillHoles": "magic"}, "hole filling"),
                         ({"fanMask": "yes"}, "fan mask"), ({"device": "tpu"}, "device"),
                         ({"preset": "CT-Bone"}, "preset"), ({"sweepDirection": "up"}, "sweep direction")):
        with pytest.raises(InputError, match=word):
            logic.reconstruct(browser, **kwargs)
    with pytest.raises(InputError, match="No sweep"):
        logic.reconstruct(None)
    with pytest.raises(InputError, match="No sequence browser called"):
        logic.reconstruct("NoSuchBrowser")


def test_missing_model_file_is_named(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    with pytest.raises(InputError, match="model file"):
        logic.reconstruct(browser, poses="learned", model="/no/such/model.safetensors")
    with pytest.raises(InputError, match="decorrelation curve file"):
        logic.estimatePoses(browser, method="learned", curve="/no/such/curve.json")


def test_check_inputs_explains_what_is_missing(scene):
    logic = FreehandReconLogic()
    assert "Select the sweep" in logic.checkInputs(types.SimpleNamespace())
    browser = logic.loadSample()
    ok = dict(inputBrowser=browser, poses="tracked", spacingMm=0.5, outputVolume=None)
    assert logic.checkInputs(types.SimpleNamespace(**ok)) is None
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Labels")
    assert "labelmap" in logic.checkInputs(types.SimpleNamespace(**{**ok, "outputVolume": labels}))
    assert "model file" in logic.checkInputs(types.SimpleNamespace(**{**ok, "poses": "learned",
                                                                       "modelPath": Path("/no/such.safetensors")}))
    assert logic.checkInputs(types.SimpleNamespace(**{**ok, "poses": "learned", "modelPath": Path()})) is None
    assert "pixel spacing" in logic.checkInputs(types.SimpleNamespace(**{**ok, "overridePixelSpacing": True,
                                                                         "pixelSpacingXMm": 0.0,
                                                                         "pixelSpacingYMm": 0.1}))


# --- inputs: lone image sequence, calibration, channels -------------------------------------------

def test_lone_image_sequence_is_read_without_poses(scene):
    frames = np.random.default_rng(1).integers(0, 255, (5, 16, 24), dtype=np.uint8)
    browser = mrml.sweep_to_browser(scene, Sweep(frames, (0.3, 0.2)), name="Lone")
    image_seq = browser.GetMasterSequenceNode()
    scene.RemoveNode(browser)
    sweep = FreehandReconLogic().readSweep(None, imageSequence=image_seq)
    np.testing.assert_array_equal(sweep.frames, frames)
    assert sweep.pixel_spacing == pytest.approx((0.3, 0.2)) and sweep.image_to_world is None
    override = FreehandReconLogic().readSweep(image_seq, pixelSpacingMm=(0.5, 0.5))
    assert override.pixel_spacing == (0.5, 0.5)


def test_calibration_goes_between_the_images_and_their_transforms(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    plain = logic.readSweep(browser)
    shift = np.eye(4)
    shift[:3, 3] = (10.0, 0.0, 0.0)  # 10 mm along the image x axis (image mm)
    cal = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToProbe")
    cal.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    moved = logic.readSweep(browser, calibrationNode=cal)
    expected = plain.pixel_to_world()[:, :3, 3] + plain.image_to_world[:, :3, 0] * 10.0
    np.testing.assert_allclose(moved.pixel_to_world()[:, :3, 3], expected, atol=1e-9)
    np.testing.assert_allclose(moved.pixel_spacing, plain.pixel_spacing)
    # a calibration already in the chain is not applied twice
    again = logic.readSweep(browser, calibrationNode="SpinePhantom_ImageToReference")
    np.testing.assert_allclose(again.pixel_to_world(), plain.pixel_to_world())


def test_channels_are_reconstructed_on_request(scene):
    rng = np.random.default_rng(2)
    n = 8
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = np.arange(n) * 0.5
    sweep = Sweep(rng.integers(0, 255, (n, 20, 30), dtype=np.uint8), (0.5, 0.5), poses,
                  channels={"photoacoustic": rng.integers(0, 255, (n, 20, 30), dtype=np.uint8)})
    browser = mrml.sweep_to_browser(scene, sweep, name="PA")
    logic = FreehandReconLogic()
    logic.reconstruct(browser, spacingMm=0.5, channels=[], showIn3D=False)
    assert logic.lastReport["channels"] == []
    pa = scene.GetFirstNodeByName("PA_photoacoustic")
    logic.reconstruct(browser, spacingMm=0.5, channels=[pa], showIn3D=False)
    channel = logic.lastNodes["channel:photoacoustic"]
    assert channel.GetName() == "PA_Volume_photoacoustic"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(channel)[:, :, :],
                                  sweep.channels["photoacoustic"].astype(np.uint8))
    with pytest.raises(InputError, match="not an image channel"):
        logic.reconstruct(browser, channels=["doppler"])


@pytest.mark.slow
def test_estimated_poses_become_a_synchronised_transform_sequence(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    seq = logic.estimatePoses(browser, method="speckle")
    assert seq.GetNumberOfDataNodes() == browser.GetNumberOfItems() == 21
    assert browser.IsSynchronizedSequenceNode(seq.GetID())


# --- the README's console snippet ------------------------------------------------------------------

def readme_snippet(marker: str) -> str | None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r".*?\n```python\n(.*?)```", readme, re.S)
    return match.group(1) if match else None


def test_readme_console_snippet_runs_headless(scene, monkeypatch):
    snippet = readme_snippet("<!-- module-console-snippet")
    assert snippet is not None, "README.md lost its module console snippet (the <!-- module-console-snippet marker)"
    # slicer-core has no slicer.app, so its getModuleLogic cannot find the module; in Slicer it returns the
    # module widget's logic, an instance of this same class on slicer.mrmlScene.
    monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: FreehandReconLogic() if name == "FreehandRecon"
                        else pytest.fail(f"snippet asks for module {name}"))
    namespace = {"slicer": slicer}
    exec(compile(snippet, "README.md", "exec"), namespace)
    volume = namespace["volumeNode"]
    assert volume.IsA("vtkMRMLScalarVolumeNode") and slicer.util.arrayFromVolume(volume).max() > 0
    sensorless = readme_snippet("<!-- module-sensorless-snippet")
    if sensorless is not None and learnedModelAvailable():
        exec(compile(sensorless, "README.md", "exec"), namespace)
        assert namespace["transformSequence"].GetNumberOfDataNodes() == 21


def test_geometry_of_volume_matches_grid_convention(scene):
    """IJK (0,0,0) of the output is the grid origin, with axes scaled by the spacing (RAS, no flips)."""
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    volume = logic.reconstruct(browser, spacingMm=2.0, showIn3D=False)
    m = ijk_to_ras(volume)
    np.testing.assert_allclose(m[:3, :3], 2.0 * np.eye(3))
    np.testing.assert_allclose(m[:3, 3], logic.lastReport["origin_mm"])
    assert geometry.validate_transforms(m[None]).shape == (1, 4, 4)


# --- quality guard ("Check sweep") ----------------------------------------------------------------

def _tiny_guard_file(tmp_path: Path) -> Path:
    import torch

    from freehandrecon.quality.guard import calibrate_thresholds, encode_frames, feature_names, save_guard
    from freehandrecon.quality.model import GuardConfig, build_guard
    from freehandrecon.quality.ood import fit_ensemble

    torch.manual_seed(0)
    net = build_guard(GuardConfig(widths=(4, 4, 4, 4), latent=8)).eval()
    feats, recon = encode_frames(net, np.random.default_rng(0).random((40, 64, 64)).astype(np.float32))
    stats = fit_ensemble(feats, np.repeat([0, 1], 20), feats, feature_names(net))
    _, js = save_guard(net, stats, calibrate_thresholds(stats.score(feats), recon), ["a", "b"], tmp_path, "g")
    return js


def test_check_sweep_adds_a_table_and_a_plot_of_the_score_against_frame(scene, tmp_path):
    from freehandrecon.quality import VERDICTS

    logic = FreehandReconLogic()
    browser = logic.loadSample("FreehandReconSpinePhantom")
    before = node_count(scene)
    report = logic.checkSweep(browser, guard=str(_tiny_guard_file(tmp_path)))
    assert report.num_frames == 21 and report.verdict in VERDICTS and logic.lastQuality is report
    table = logic.lastNodes["qualityTable"]
    assert table.IsA("vtkMRMLTableNode") and table.GetNumberOfRows() == 21
    assert table.GetColumnName(1) == "OOD score"
    np.testing.assert_allclose([table.GetTable().GetValue(i, 1).ToDouble() for i in range(21)], report.ood_score)
    assert table.GetAttribute("FreehandRecon.QualityVerdict") == report.verdict
    chart = logic.lastNodes["qualityChart"]
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetXColumnName() == "Frame" and series.GetYColumnName() == "OOD score"
    assert node_count(scene) == before + 4  # table, chart, two series
    assert (logic.qualityWarning(report) == "") == (report.verdict == "ok")


def test_check_sweep_with_a_damaged_guard_is_refused_and_adds_nothing(scene, tmp_path):
    logic = FreehandReconLogic()
    browser = logic.loadSample("FreehandReconSpinePhantom")
    js = _tiny_guard_file(tmp_path)
    js.with_suffix(".safetensors").write_bytes(b"x")
    before = node_count(scene)
    with pytest.raises(ResourceError, match="checksum"):
        logic.checkSweep(browser, guard=str(js))
    assert node_count(scene) == before


def test_learned_reconstruction_runs_the_guard_first_and_records_it(scene):
    from freehandrecon.slicer_logic import qualityGuardAvailable

    assert learnedModelAvailable() and qualityGuardAvailable(), "the shipped pose model or quality guard is missing"
    from freehandrecon.simulate import random_sweep

    sweep = random_sweep("site-b", 4242, num_frames=40, kind="linear")
    browser = mrml.sweep_to_browser(scene, Sweep(sweep.frames, sweep.pixel_spacing), name="Sim")
    logic = FreehandReconLogic()
    logic.reconstruct(browser, poses="learned", spacingMm=0.5, showIn3D=False, coverage=False)
    quality = logic.lastReport["quality"]
    assert quality["verdict"] == logic.lastQuality.verdict and quality["num_frames"] == 40
    assert "qualityTable" not in logic.lastNodes  # reconstruct records the check; the panel's button adds nodes


def test_paus_sweep_reconstructs_every_channel_and_shows_them_fused_in_3d(scene):
    from freehandrecon.io import read_sweep

    paus = read_sweep(Path(__file__).parent / "Data" / "paus" / "paus_sample.npz")
    assert {"photoacoustic", "doppler"} <= set(paus.channels)
    browser = mrml.sweep_to_browser(scene, paus, name="PAUS")
    logic = FreehandReconLogic(scene)
    volume = logic.reconstruct(browser, poses="tracked", spacingMm=0.5, showIn3D=True)
    nodes = logic.lastNodes
    pa, doppler = nodes["channel:photoacoustic"], nodes["channel:doppler"]
    assert slicer.util.arrayFromVolume(pa).shape == slicer.util.arrayFromVolume(volume).shape
    assert float(slicer.util.arrayFromVolume(pa).max()) > 0
    vr = mrml.get_logic(scene, "volumerendering")
    for node in (volume, pa, doppler):  # B-mode and both channels rendered in the same 3D view
        display = vr.GetFirstVolumeRenderingDisplayNode(node)
        assert display is not None and display.GetVisibility()
    # each channel gets its own colour preset, not the B-mode grey
    colours = {n.GetName(): vr.GetFirstVolumeRenderingDisplayNode(n).GetVolumePropertyNode().GetVolumeProperty()
               .GetRGBTransferFunction().GetColor(200.0) for n in (volume, pa)}
    grey, hot = colours[volume.GetName()], colours[pa.GetName()]
    assert abs(grey[0] - grey[2]) < 0.05 and hot[0] - hot[2] > 0.3
