"""The Slicer module's logic (freehandrecon.module_logic) on slicer-core's real MRML scene, headless.

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

from freehandrecon import geometry
from freehandrecon.io.slicer_scene import get_logic, new_scene
from freehandrecon.io.slicer_sequences import add_transform_sequence, sweep_to_browser
from freehandrecon.scene.nodes import add_volume_node
from freehandrecon.compound import CompoundOptions
from freehandrecon.errors import CalibrationError, Cancelled, InputError, OutputExistsError, ResourceError
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.logic import ReconstructionRequest, reconstruct_sweep
from freehandrecon.module_inputs import image_sequence_of
from freehandrecon.module_logic import SAMPLES, FreehandReconLogic, file_sha256, learnedModelAvailable, sample
from freehandrecon.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


@pytest.fixture
def scene(monkeypatch):
    """A fresh scene installed as slicer.mrmlScene (as in Slicer), removed afterwards."""
    s = new_scene()
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
    import freehandrecon.module_logic as sl

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
    target = add_volume_node(scene, np.full((3, 4, 5), 7, np.uint8), np.eye(4), "MyOutput")
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
    target = add_volume_node(scene, np.arange(60, dtype=np.uint8).reshape(3, 4, 5), np.eye(4), "Keep")
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
    # the whole reconstruction's peak (frames, scene, writers: ~100 MB fixed); from 0.5 mm down the voxels rule
    coarse = logic.memoryEstimateMb(browser, 0.5)
    fine = logic.memoryEstimateMb(browser, 0.25)
    voxels_mb = 294 * 212 * 209 / 2**20
    assert 16 * voxels_mb < fine < 64 * voxels_mb  # a few float accumulators and node arrays per voxel
    finer = logic.memoryEstimateMb(browser, 0.125)
    # fixed costs cancel in the differences; the voxel part grows 8x per halving
    assert 6 < (finer - fine) / (fine - coarse) < 10
    # hole filling's work arrays: at 0.25 mm the node stage still sets the peak (the numba engine finishes in
    # its accumulators), at 0.125 mm normalized filling does
    assert logic.memoryEstimateMb(browser, 0.25, fillHoles="normalized") >= fine
    assert logic.memoryEstimateMb(browser, 0.125, fillHoles="normalized") > finer


# --- bad input ------------------------------------------------------------------------------------

def test_browser_without_images_is_refused(scene):
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Empty")
    tseq = add_transform_sequence(scene, np.repeat(np.eye(4)[None], 3, axis=0), "OnlyTransforms")
    browser.SetAndObserveMasterSequenceNodeID(tseq.GetID())
    logic = FreehandReconLogic()
    with pytest.raises(InputError, match="no image"):
        logic.reconstruct(browser)
    assert "no image" in logic.checkInputs(types.SimpleNamespace(inputBrowser=browser))


def test_untracked_sweep_needs_sensorless_poses(scene):
    frames = np.random.default_rng(0).integers(0, 255, (6, 20, 30), dtype=np.uint8)
    browser = sweep_to_browser(scene, Sweep(frames, (0.2, 0.2)), name="Free")
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
    browser = sweep_to_browser(scene, Sweep(frames, (0.3, 0.2)), name="Lone")
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
    browser = sweep_to_browser(scene, sweep, name="PA")
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


def test_calibrate_speckle_from_a_tracked_browser_writes_a_checked_curve(scene, tmp_path):
    """The console's calibrateSpeckle: a tracked browser -> the curve JSON with the learned model's check, used by
    estimatePoses; an existing file is kept unless overwrite; an untracked browser is refused before any work."""
    assert poses_available(), "freehandrecon.poses does not import (a broken build must fail, not skip)"
    from freehandrecon.io import read_sweep
    from freehandrecon.poses.speckle import DecorrelationCurve

    logic = FreehandReconLogic()
    browser = sweep_to_browser(scene, read_sweep(DATA / "independent" / "l94_translation.npz"), name="L94")
    out = tmp_path / "curve.json"
    summary = logic.calibrateSpeckle(browser, out)
    check = summary["learned_check"]
    assert summary["frames"] == 48 and check["frames"] == 48
    assert check["use_curve"] == (check["fdr_with_curve_pct"] <= check["fdr_without_curve_pct"])
    assert DecorrelationCurve.load(out).meta["learned_check"] == check
    with pytest.raises(OutputExistsError, match="exists"):
        logic.calibrateSpeckle(browser, out)
    assert logic.calibrateSpeckle(browser, out, overwrite=True, checkLearned=False)["learned_check"] is None
    untracked = sweep_to_browser(scene, Sweep(read_sweep(DATA / "independent" / "l94_mixed.npz").frames, (0.2, 0.2)),
                                 name="Untracked")
    with pytest.raises(InputError, match="no tracked poses"):
        logic.calibrateSpeckle(untracked, tmp_path / "u.json")
    assert not (tmp_path / "u.json").exists()
    seq = logic.estimatePoses(browser, method="learned", curve=str(out))
    assert seq.GetNumberOfDataNodes() == 48


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
    from freehandrecon.module_logic import qualityGuardAvailable

    assert learnedModelAvailable() and qualityGuardAvailable(), "the shipped pose model or quality guard is missing"
    from freehandrecon.simulate import random_sweep

    sweep = random_sweep("site-b", 4242, num_frames=40, kind="linear")
    browser = sweep_to_browser(scene, Sweep(sweep.frames, sweep.pixel_spacing), name="Sim")
    logic = FreehandReconLogic()
    logic.reconstruct(browser, poses="learned", spacingMm=0.5, showIn3D=False, coverage=False)
    quality = logic.lastReport["quality"]
    assert quality["verdict"] == logic.lastQuality.verdict and quality["num_frames"] == 40
    assert "qualityTable" not in logic.lastNodes  # reconstruct records the check; the panel's button adds nodes


def test_paus_sweep_reconstructs_every_channel_and_shows_them_fused_in_3d(scene):
    from freehandrecon.io import read_sweep

    paus = read_sweep(Path(__file__).parent / "Data" / "paus" / "paus_sample.npz")
    assert {"photoacoustic", "doppler"} <= set(paus.channels)
    browser = sweep_to_browser(scene, paus, name="PAUS")
    logic = FreehandReconLogic(scene)
    volume = logic.reconstruct(browser, poses="tracked", spacingMm=0.5, showIn3D=True)
    nodes = logic.lastNodes
    pa, doppler = nodes["channel:photoacoustic"], nodes["channel:doppler"]
    assert slicer.util.arrayFromVolume(pa).shape == slicer.util.arrayFromVolume(volume).shape
    assert float(slicer.util.arrayFromVolume(pa).max()) > 0
    vr = get_logic(scene, "volumerendering")
    for node in (volume, pa, doppler):  # B-mode and both channels rendered in the same 3D view
        display = vr.GetFirstVolumeRenderingDisplayNode(node)
        assert display is not None and display.GetVisibility()
    # each channel gets its own colour preset, not the B-mode grey
    colours = {n.GetName(): vr.GetFirstVolumeRenderingDisplayNode(n).GetVolumePropertyNode().GetVolumeProperty()
               .GetRGBTransferFunction().GetColor(200.0) for n in (volume, pa)}
    grey, hot = colours[volume.GetName()], colours[pa.GetName()]
    assert abs(grey[0] - grey[2]) < 0.05 and hot[0] - hot[2] > 0.3


# --- the panel's live memory estimate: geometry only, the selected channels, calibration, spacing override ---

def _two_channel_browser(scene):
    rng = np.random.default_rng(5)
    n = 12
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = np.arange(n) * 1.0
    frames = lambda: rng.integers(0, 255, (n, 40, 60), dtype=np.uint8)  # noqa: E731
    sweep = Sweep(frames(), (0.5, 0.5), poses, channels={"photoacoustic": frames(), "doppler": frames()})
    return sweep_to_browser(scene, sweep, name="Two")


def test_memory_estimate_counts_only_the_selected_channels(scene):
    browser = _two_channel_browser(scene)
    logic = FreehandReconLogic()
    bmode = logic.memoryEstimateMb(browser, 0.5, channels=[])
    one = logic.memoryEstimateMb(browser, 0.5, channels=[scene.GetFirstNodeByName("Two_doppler")])
    every = logic.memoryEstimateMb(browser, 0.5)  # None: every extra image sequence, as reconstruct does
    # each channel (same frames, same compounding) adds the same: its compounding, result and node
    assert 0 < bmode < one < every and every - one == pytest.approx(one - bmode, rel=1e-3)
    logic.reconstruct(browser, spacingMm=0.5, channels=[scene.GetFirstNodeByName("Two_doppler")], showIn3D=False)
    assert logic.lastReport["channels"] == ["doppler"]
    assert logic.lastReport["memory_estimate_mb"] == pytest.approx(one, abs=0.5)


def test_memory_estimate_reads_geometry_only_and_leaves_the_browser_alone(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    from freehandrecon.scene.browser import browser_geometry

    proxy = browser.GetProxyNode(scene.GetFirstNodeByName("SpinePhantom"))

    light = browser_geometry(browser)
    full = logic.readSweep(browser)
    assert light.frames.strides == (0, 0, 0) and light.frame_shape == full.frame_shape == (616, 820)
    np.testing.assert_allclose(light.image_to_world, full.image_to_world, atol=1e-12)
    assert light.pixel_spacing == full.pixel_spacing
    browser.SetSelectedItemNumber(7)
    get_logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    before = (proxy.GetMTime(), proxy.GetImageData().GetMTime(), browser.GetMTime())
    logic.memoryEstimateMb(browser, 0.5)
    assert (proxy.GetMTime(), proxy.GetImageData().GetMTime(), browser.GetMTime()) == before
    assert browser.GetSelectedItemNumber() == 7


def test_memory_estimate_honours_the_calibration(scene):
    from freehandrecon.compound import fit_grid
    from freehandrecon.logic import ReconstructionRequest, job_memory_bytes

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    turn = np.eye(4)
    turn[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # a quarter turn about the image x axis (a tilt)
    cal = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToProbe")
    cal.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(turn))
    plain = logic.memoryEstimateMb(browser, 0.25, channels=[])  # 0.25 mm: the voxels, not fixed costs, rule
    turned = logic.memoryEstimateMb(browser, 0.25, channels=[], calibrationNode=cal)
    full = logic.readSweep(browser, calibrationNode=cal)
    expected = job_memory_bytes(full, ReconstructionRequest(spacing_mm=0.25), fit_grid(full, 0.25),
                                [CompoundOptions()], []) / 2**20
    assert turned == pytest.approx(expected) and abs(turned - plain) > 0.2 * plain


def test_memory_estimate_reads_the_pixel_spacing_override_as_the_reconstruction_does(scene):
    """The estimate takes the override through the reconstruction's own geometry code, so it predicts the run:
    for a lone image sequence the frames' spacing is the override, and with an ROI the box is the ROI's."""
    from freehandrecon.scene import browser as browser_geometry

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    override = logic.memoryEstimateMb(browser, 1.0, channels=[], pixelSpacingMm=(0.2, 0.2))
    logic.reconstruct(browser, spacingMm=1.0, channels=[], pixelSpacingMm=(0.2, 0.2), showIn3D=False)
    assert abs(logic.lastReport["memory_estimate_mb"] - override) < 0.5
    light = browser_geometry.browser_geometry(browser, pixel_spacing=(0.2, 0.2))
    full = logic.readSweep(browser, pixelSpacingMm=(0.2, 0.2))
    assert light.pixel_spacing == full.pixel_spacing == (0.2, 0.2)
    np.testing.assert_allclose(light.image_to_world, full.image_to_world, atol=1e-12)
    images = scene.GetFirstNodeByName("SpinePhantom")
    lone = browser_geometry.lone_sequence_geometry(images, (0.3, 0.25))
    assert lone.pixel_spacing == logic.readSweep(images, pixelSpacingMm=(0.3, 0.25)).pixel_spacing == (0.3, 0.25)


def test_missing_dependencies_here_is_empty_and_checks_the_pose_source():
    logic = FreehandReconLogic()
    assert logic.missingDependencies("learned", checkQuality=True) == []
    with pytest.raises(InputError):
        logic.missingDependencies("magic")


# --- issue 18: scene handling and SlicerIGT Volume Reconstruction parity ------------------------------

def _embedded_pose_browser(scene, sweep: Sweep, name: str):
    """A browser whose frames carry their poses in their IJKToRAS (PLUS EmbeddedTransformToFrame), no parent."""
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    scratch = slicer.vtkMRMLScalarVolumeNode()
    for n, pixel_to_world in enumerate(sweep.pixel_to_world()):
        slicer.util.updateVolumeFromArray(scratch, np.ascontiguousarray(sweep.frames[n])[None])
        scratch.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(pixel_to_world))
        seq.SetDataNodeAtValue(scratch, str(n))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    get_logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    return browser


def test_a_recording_browser_is_refused_instead_of_reading_one_live_frame(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    browser.SetRecordingActive(True)
    before = node_count(scene)
    with pytest.raises(InputError, match="'SpinePhantom browser' is recording; stop recording first"):
        logic.reconstruct(browser, spacingMm=2.0, showIn3D=False)
    assert "is recording" in logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, poses="tracked"))
    assert node_count(scene) == before
    browser.SetRecordingActive(False)
    assert logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, poses="tracked")) is None


def test_poses_embedded_in_the_frames_ijk_to_ras_reconstruct_like_parent_transforms(scene, plus_sweep):
    parent = sweep_to_browser(scene, plus_sweep, name="Parent")
    embedded = _embedded_pose_browser(scene, plus_sweep, "Embedded")
    logic = FreehandReconLogic(scene)
    assert logic.checkInputs(types.SimpleNamespace(inputBrowser=embedded, poses="tracked")) is None
    read = logic.readSweep(embedded)
    assert read.metadata.get("poses_in_image_geometry")
    np.testing.assert_allclose(read.pixel_to_world(), plus_sweep.pixel_to_world(), atol=1e-9)
    a = logic.reconstruct(parent, spacingMm=0.5, showIn3D=False, coverage=False)
    b = logic.reconstruct(embedded, spacingMm=0.5, showIn3D=False, coverage=False)
    np.testing.assert_allclose(ijk_to_ras(b), ijk_to_ras(a), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(b), slicer.util.arrayFromVolume(a))
    # the same frames with one shared geometry stay untracked
    flat = sweep_to_browser(scene, Sweep(plus_sweep.frames, plus_sweep.pixel_spacing), name="Flat")
    assert "learned or speckle" in logic.checkInputs(types.SimpleNamespace(inputBrowser=flat, poses="tracked"))
    cal = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Cal")
    with pytest.raises(CalibrationError, match="image geometry"):
        logic.readSweep(embedded, calibrationNode=cal)


def test_volume_rendering_uses_the_default_rendering_method(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    vr = get_logic(scene, "volumerendering")
    vr.SetDefaultRenderingMethod("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
    logic.reconstruct(browser, spacingMm=2.0, coverage=False)
    assert logic.lastNodes["display"].IsA("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
    vr.SetDefaultRenderingMethod("vtkMRMLGPURayCastVolumeRenderingDisplayNode")
    logic.reconstruct(browser, spacingMm=2.0, coverage=False)
    assert logic.lastNodes["display"].IsA("vtkMRMLGPURayCastVolumeRenderingDisplayNode")


def test_quality_nodes_are_added_only_after_a_successful_reconstruction(scene, tmp_path):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    report = logic.checkSweep(browser, guard=str(_tiny_guard_file(tmp_path)), addNodes=False)
    names = [scene.GetNthNode(i).GetName() for i in range(node_count(scene))]
    calls = []
    with pytest.raises(Cancelled):
        logic.reconstruct(browser, spacingMm=1.0, qualityReport=report, qualityNodes=True,
                          progress=lambda s, f: calls.append(s), shouldCancel=lambda: bool(calls))
    assert [scene.GetNthNode(i).GetName() for i in range(node_count(scene))] == names
    logic.reconstruct(browser, spacingMm=2.0, qualityReport=report, qualityNodes=True, showIn3D=False)
    table = logic.lastNodes["qualityTable"]
    assert table.GetName() == "SpinePhantom_Quality" and table.GetNumberOfRows() == 21
    assert logic.lastReport["quality"]["verdict"] == report.verdict


def test_reconstructing_twice_into_one_output_reuses_its_coverage_node(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    volume = logic.reconstruct(browser, spacingMm=2.0, showIn3D=False)
    coverage = logic.lastNodes["coverage"]
    count = node_count(scene)
    again = logic.reconstruct(browser, spacingMm=1.0, outputVolumeNode=volume, showIn3D=False)
    assert again is volume and logic.lastNodes["coverage"] is coverage
    assert node_count(scene) == count
    assert slicer.util.arrayFromVolume(coverage).shape == slicer.util.arrayFromVolume(volume).shape
    assert volume.GetNodeReference("FreehandRecon.Coverage") is coverage
    covs = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert sum("_Coverage" in n for n in covs) == 1


def test_sequence_selectors_refuse_and_hide_transform_sequences(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    transforms = next(collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())
                      if collection.GetItemAsObject(i).GetDataNodeClassName() == "vtkMRMLLinearTransformNode")
    images = image_sequence_of(browser)
    message = logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, imageSequence=transforms))
    assert "not images" in message and "SpinePhantom_ImageToReference" in message
    assert "not images" in logic.checkInputs(types.SimpleNamespace(inputBrowser=browser, channelSequence=transforms))
    hidden = logic.nonImageSequenceIDs()
    assert transforms.GetID() in hidden and images.GetID() not in hidden


def test_fit_roi_adds_one_visible_bounds_roi_around_the_sweep_and_reuses_it(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    auto = logic.reconstruct(browser, spacingMm=0.5, showIn3D=False, coverage=False)
    origin, dims = np.array(logic.lastReport["origin_mm"]), np.array(logic.lastReport["dims_ijk"])
    count = node_count(scene)
    roi = logic.fitRoi(browser)
    assert roi.GetName() == "SpinePhantom_Bounds" and roi.GetDisplayNode().GetVisibility()
    center, size = np.array(roi.GetCenter()), np.array(roi.GetSize())
    np.testing.assert_allclose(center - size / 2, origin, atol=1e-6)  # the automatic box, from the same corners
    np.testing.assert_allclose(size, (dims - 1) * 0.5, atol=0.5)
    assert node_count(scene) > count
    count = node_count(scene)
    roi.SetSize(*(size / 2))
    assert logic.fitRoi(browser) is roi and node_count(scene) == count  # refitted, not duplicated
    np.testing.assert_allclose(roi.GetSize(), size, atol=1e-9)
    boxed = logic.reconstruct(browser, spacingMm=0.5, roiNode=roi, showIn3D=False, coverage=False)
    assert boxed is not auto
    assert np.abs(np.array(slicer.util.arrayFromVolume(boxed).shape[::-1]) - dims).max() <= 1
    flat = sweep_to_browser(scene, Sweep(np.zeros((3, 8, 8), np.uint8), (0.1, 0.1)), name="Untracked")
    with pytest.raises(InputError, match="no poses"):
        logic.fitRoi(flat)


def test_output_goes_under_the_roi_parent_transform_along_the_roi_axes(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    angle = np.deg2rad(30.0)
    t = np.eye(4)
    t[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    t[:3, 3] = (5.0, -3.0, 2.0)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "RoiParent")
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(t))
    local_center = np.linalg.inv(t) @ np.array([-40.0, 190.0, 45.0, 1.0])
    child = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Child")
    child.SetCenter(*local_center[:3])
    child.SetSize(30.0, 40.0, 20.0)
    child.SetAndObserveTransformNodeID(parent.GetID())
    world = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "World")  # the same box, in world coordinates
    object_to_world = t.copy()
    object_to_world[:3, 3] = (-40.0, 190.0, 45.0)
    world.GetObjectToNodeMatrix().DeepCopy(slicer.util.vtkMatrixFromArray(object_to_world))
    world.SetSize(30.0, 40.0, 20.0)
    np.testing.assert_allclose(world.GetCenter(), (-40.0, 190.0, 45.0))
    a = logic.reconstruct(browser, spacingMm=1.0, roiNode=child, showIn3D=False)
    assert a.GetParentTransformNode() is parent
    assert logic.lastNodes["coverage"].GetParentTransformNode() is parent
    np.testing.assert_allclose(ijk_to_ras(a)[:3, :3], np.eye(3), atol=1e-9)  # the ROI's axes in its parent frame
    b = logic.reconstruct(browser, spacingMm=1.0, roiNode=world, showIn3D=False)
    assert b.GetParentTransformNode() is None
    np.testing.assert_allclose(t @ ijk_to_ras(a), ijk_to_ras(b), atol=1e-6)
    va, vb = slicer.util.arrayFromVolume(a), slicer.util.arrayFromVolume(b)
    assert va.shape == vb.shape == (20, 40, 30) and vb.max() > 0
    assert np.mean(va == vb) > 0.999


def test_anisotropic_output_spacing(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    volume = logic.reconstruct(browser, spacingMm=(0.5, 1.0, 2.0), showIn3D=False, coverage=False)
    np.testing.assert_allclose(volume.GetSpacing(), (0.5, 1.0, 2.0))
    assert logic.lastReport["dims_ijk"][0] == 147 and logic.lastReport["spacing_mm"] == [0.5, 1.0, 2.0]
    assert logic.memoryEstimateMb(browser, (0.5, 1.0, 2.0)) < logic.memoryEstimateMb(browser, 0.5)
    params = types.SimpleNamespace(inputBrowser=browser, spacingMm=0.5, anisotropicSpacing=True, spacingYMm=1.0,
                                   spacingZMm=2.0)
    assert logic.optionsFromParameters(params)["spacingMm"] == (0.5, 1.0, 2.0)
    assert logic.checkInputs(params) is None
    for bad in ((0.5, 0.0, 1.0), (1.0, 2.0), "fine"):
        with pytest.raises(InputError, match="spacing"):
            logic.reconstruct(browser, spacingMm=bad)


def test_clip_rectangle_manual_fan_and_skip_interval(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    full = logic.reconstruct(browser, spacingMm=1.0, showIn3D=False)
    full_coverage = logic.lastReport["coverage_fraction"]
    clip = (200, 50, 300, 400)
    clipped = logic.reconstruct(browser, spacingMm=1.0, clipRectangle=clip, showIn3D=False)
    core = reconstruct_sweep(logic.readSweep(browser), ReconstructionRequest(spacing_mm=1.0, options=CompoundOptions(
        clip_rectangle=clip)))
    array = slicer.util.arrayFromVolume(clipped)
    assert array.shape == core.grid.shape_zyx and array.size < slicer.util.arrayFromVolume(full).size
    np.testing.assert_array_equal(array, core.volume_array())
    assert logic.lastReport["clip_rectangle"] == list(clip)
    logic.reconstruct(browser, spacingMm=1.0, fanMask="manual", fanAnglesDeg=(-20.0, 20.0), showIn3D=False)
    fan = logic.lastReport["fan"]
    assert fan["angles_deg"] == [-20.0, 20.0] and fan["origin_px"] == [409.5, 0.0]
    assert logic.lastReport["coverage_fraction"] < full_coverage
    with pytest.raises(InputError, match="fan mask is 'none'"):
        logic.reconstruct(browser, fanAnglesDeg=(-20.0, 20.0))
    with pytest.raises(InputError, match="edge angles"):
        logic.reconstruct(browser, fanMask="manual")
    logic.reconstruct(browser, spacingMm=1.0, skipInterval=2, showIn3D=False)
    assert logic.lastReport["frames"] == 11 and logic.lastReport["skip_interval"] == 2
    assert logic.lastReport["coverage_fraction"] < full_coverage
    with pytest.raises(InputError, match="skip interval"):
        logic.reconstruct(browser, skipInterval=0)
    params = types.SimpleNamespace(inputBrowser=browser, useClipRectangle=True, clipXPx=200, clipYPx=50,
                                   clipWidthPx=300, clipHeightPx=400, fanMask="manual", fanAngleLeftDeg=-20.0,
                                   fanAngleRightDeg=20.0, fanOriginXPx=-1.0, fanRadiusStopPx=0.0, skipInterval=2)
    options = logic.optionsFromParameters(params)
    assert options == {"spacingMm": 1.0, "skipInterval": 2, "clipRectangle": clip, "fanAnglesDeg": (-20.0, 20.0),
                       "fanOriginPx": None, "fanRadiusPx": None}
    assert logic.checkInputs(params) is None
    assert "angles" in logic.checkInputs(types.SimpleNamespace(**{**vars(params), "fanAngleLeftDeg": -95.0}))


def test_importance_mask_weights_the_pixels(scene):
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    roi = logic.fitRoi(browser)
    mask = np.zeros((616, 820), np.uint8)
    mask[:, 410:] = 255  # the right half counts fully, the left half not at all
    mask_node = add_volume_node(scene, mask[None], np.eye(4), "ImportanceMask")
    weighted = logic.reconstruct(browser, spacingMm=1.0, roiNode=roi, compounding="importance",
                                 importanceMask=mask_node, showIn3D=False)
    weighted_cov = slicer.util.arrayFromVolume(logic.lastNodes["coverage"]).copy()
    assert logic.lastReport["importance_mask"] is True
    right = logic.reconstruct(browser, spacingMm=1.0, roiNode=roi, clipRectangle=(410, 0, 410, 616), showIn3D=False)
    right_cov = slicer.util.arrayFromVolume(logic.lastNodes["coverage"])
    np.testing.assert_array_equal(weighted_cov > 0, right_cov > 0)
    a, b = slicer.util.arrayFromVolume(weighted), slicer.util.arrayFromVolume(right)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(InputError, match="needs an importance mask"):
        logic.reconstruct(browser, compounding="importance")
    with pytest.raises(InputError, match="compounding mode is 'mean'"):
        logic.reconstruct(browser, importanceMask=mask_node)
    with pytest.raises(InputError, match="Importance mask is"):
        logic.reconstruct(browser, compounding="importance", importanceMask=np.ones((10, 10)))
    assert "importance mask" in logic.checkInputs(types.SimpleNamespace(inputBrowser=browser,
                                                                        compounding="importance"))


def test_reconstruction_report_and_event_for_other_modules(scene):
    import json

    from freehandrecon import module_logic

    assert module_logic.ReconstructionFinishedEvent == vtk.vtkCommand.UserEvent + 18002
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    params = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "FreehandRecon config A")
    params.SetAttribute("ModuleName", "FreehandRecon")
    seen = []
    params.AddObserver(module_logic.ReconstructionFinishedEvent,
                       lambda caller, event: seen.append(json.loads(caller.GetAttribute("FreehandRecon.Report"))))
    with pytest.raises(Cancelled):
        logic.reconstruct(browser, parameterNode=params, shouldCancel=lambda: True)
    assert seen == []
    volume = logic.reconstruct(browser, spacingMm=2.0, parameterNode=params, showIn3D=False)
    assert len(seen) == 1 and seen[0]["frames"] == 21 and seen[0]["output_volume"] == volume.GetName()
    assert json.loads(volume.GetAttribute("FreehandRecon.Report")) == seen[0]
    assert params.GetAttribute("FreehandRecon.OutputVolumeID") == volume.GetID()


def test_geometry_only_reading_matches_the_full_read_for_embedded_poses_and_lone_sequences(scene, plus_sweep):
    from freehandrecon.scene import browser as browser_geometry

    logic = FreehandReconLogic(scene)
    embedded = _embedded_pose_browser(scene, plus_sweep, "Embedded")
    light, full = browser_geometry.browser_geometry(embedded), logic.readSweep(embedded)
    assert light.metadata.get("poses_in_image_geometry") and light.frame_shape == full.frame_shape
    np.testing.assert_allclose(light.pixel_to_world(), full.pixel_to_world(), atol=1e-12)
    images = embedded.GetMasterSequenceNode()
    lone, lone_full = browser_geometry.lone_sequence_geometry(images), logic.readSweep(images)
    np.testing.assert_allclose(lone.pixel_to_world(), lone_full.pixel_to_world(), atol=1e-12)
    assert logic.memoryEstimateMb(embedded, 1.0, channels=[]) == pytest.approx(
        logic.memoryEstimateMb(sweep_to_browser(scene, plus_sweep, name="Parent"), 1.0, channels=[]), rel=1e-6)
