"""One orchestration: the Slicer module's reconstruct() and the command line's job run the same logic.

The same sweep (read back from a real slicer-core browser) and the same options through
FreehandReconLogic.reconstruct and through the CLI's request builder + run_reconstruct_job give
voxel-identical volumes on the same grid, for tracked poses, a skip interval, a manual fan and learned poses.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import slicer

from freehandrecon.commands.main import build_parser
from freehandrecon.commands.reconstruct import build_request
from freehandrecon.io.slicer_scene import new_scene
from freehandrecon.io.slicer_sequences import sweep_to_browser
from freehandrecon.logic import ReconstructionRequest, reconstruct_sweep, run_reconstruct_job
from freehandrecon.module_logic import FreehandReconLogic, learnedModelAvailable
from freehandrecon.simulate import random_sweep
from freehandrecon.sweep import Sweep

SPACING = 0.6
FAN = (63.5, -10.0, -25.0, 25.0, 20.0, 140.0)  # apex column, row (px), edge angles (deg), radii (px)


@pytest.fixture(scope="module")
def simulated() -> Sweep:
    return random_sweep("site-b", 4242, num_frames=24, kind="linear")


def _cli_volume(sweep: Sweep, extra: list[str], skip: int, out) -> tuple[np.ndarray, dict]:
    """The command line's request for ``extra`` options (plus a skip interval) through its job: the volume as
    written to volume.nrrd, and the job's report."""
    args = build_parser().parse_args(["reconstruct", "unused.npz", "--out", str(out), "--spacing", str(SPACING),
                                      "--no-render", "--no-mrb", *extra])
    request = replace(build_request(args), skip_interval=skip)
    report = run_reconstruct_job(sweep, request, out, render=False, mrb=False)
    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(out / "volume.nrrd"))
    assert storage.ReadData(node)
    array = slicer.util.arrayFromVolume(node).copy()
    return array, report


def _module_volume(scene, browser, **kwargs) -> tuple[np.ndarray, dict, FreehandReconLogic]:
    logic = FreehandReconLogic(scene)
    volume = logic.reconstruct(browser, spacingMm=SPACING, showIn3D=False, **kwargs)
    return slicer.util.arrayFromVolume(volume).copy(), logic.lastReport, logic


CASES = {
    "tracked": ({}, []),
    "skip 2": ({"skipInterval": 2}, []),
    "manual fan": ({"fanMask": "manual", "fanOriginPx": FAN[:2], "fanAnglesDeg": FAN[2:4], "fanRadiusPx": FAN[4:]},
                   ["--fan", *map(str, FAN)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_module_and_cli_give_the_same_volume(case, simulated, tmp_path):
    scene = new_scene()
    browser = sweep_to_browser(scene, simulated, name="Sim")
    kwargs, extra = CASES[case]
    module_array, module_report, logic = _module_volume(scene, browser, **kwargs)
    sweep = logic.readSweep(browser)  # the very sweep the module read from the scene
    cli_array, cli_report = _cli_volume(sweep, extra, kwargs.get("skipInterval", 1), tmp_path / "out")
    assert cli_report["grid"]["dims_ijk"] == module_report["dims_ijk"]
    np.testing.assert_allclose(cli_report["grid"]["origin_mm"], module_report["origin_mm"], atol=1e-9)
    assert module_array.shape == cli_array.shape and module_array.any()
    np.testing.assert_array_equal(module_array, cli_array)
    assert cli_report["frames"] == module_report["frames"] == len(range(0, simulated.num_frames,
                                                                         kwargs.get("skipInterval", 1)))
    if case == "manual fan":
        assert module_report["fan"]["angles_deg"] == list(FAN[2:4])
        assert cli_report["options"]["fan"]["angles_deg"] == list(FAN[2:4])
        # the fan really masks: without it the same sweep fills more voxels
        assert np.count_nonzero(_module_volume(scene, browser)[0]) > np.count_nonzero(module_array)


def test_module_and_cli_give_the_same_volume_with_learned_poses(simulated, tmp_path):
    assert learnedModelAvailable(), "the shipped pose model is missing"
    scene = new_scene()
    browser = sweep_to_browser(scene, Sweep(simulated.frames, simulated.pixel_spacing), name="Untracked")
    module_array, module_report, logic = _module_volume(scene, browser, poses="learned", skipInterval=2)
    sweep = logic.readSweep(browser)
    assert sweep.image_to_world is None
    cli_array, cli_report = _cli_volume(sweep, ["--poses", "learned"], 2, tmp_path / "out")
    assert cli_report["grid"]["dims_ijk"] == module_report["dims_ijk"]
    np.testing.assert_array_equal(module_array, cli_array)
    assert module_report["quality"]["verdict"] == cli_report["quality"]["verdict"]
    assert module_report["frames"] == cli_report["frames"] == simulated.num_frames // 2


def test_the_library_call_is_the_same_orchestration(simulated):
    """reconstruct_sweep with the module's request fields (skip, fan, grid frame) is what the module ran."""
    scene = new_scene()
    browser = sweep_to_browser(scene, simulated, name="Sim")
    module_array, report, logic = _module_volume(scene, browser, skipInterval=3, fanMask="manual",
                                                 fanOriginPx=FAN[:2], fanAnglesDeg=FAN[2:4], fanRadiusPx=FAN[4:])
    from freehandrecon.fan import FanMask

    fan = FanMask(FAN[:2], FAN[2:4], FAN[4], FAN[5])
    result = reconstruct_sweep(logic.readSweep(browser),
                               ReconstructionRequest(spacing_mm=SPACING, skip_interval=3, fan=fan))
    np.testing.assert_array_equal(result.volume_array(), module_array)
    assert result.sweep.num_frames == report["frames"] == 8


def test_estimated_pose_sequence_has_every_frame_in_world_after_a_skip(simulated):
    """transformSequence adds the estimate for every frame of the browser (in world coordinates), also when only
    every other frame is compounded (it used to add the skipped subset and fail on the browser's frame count)."""
    scene = new_scene()
    browser = sweep_to_browser(scene, Sweep(simulated.frames, simulated.pixel_spacing), name="Untracked")
    logic = FreehandReconLogic(scene)
    logic.reconstruct(browser, poses="learned", spacingMm=SPACING, showIn3D=False, skipInterval=2,
                      transformSequence=True, checkQuality=False)
    seq = logic.lastNodes["transforms"]
    assert seq.GetNumberOfDataNodes() == simulated.num_frames == browser.GetNumberOfItems()
    assert logic.lastReport["frames"] == simulated.num_frames // 2
    reread = logic.readSweep(browser)  # the images now sit under the estimated poses
    assert reread.image_to_world is not None and reread.num_frames == simulated.num_frames


def test_a_model_path_is_checked_only_where_poses_are_estimated(simulated):
    scene = new_scene()
    browser = sweep_to_browser(scene, simulated, name="Sim")
    logic = FreehandReconLogic(scene)
    assert logic.reconstruct(browser, spacingMm=SPACING, showIn3D=False, model="/no/such/model.json") is not None
    from freehandrecon.errors import InputError

    with pytest.raises(InputError, match="model file '/no/such/model.json' does not exist"):
        reconstruct_sweep(simulated, ReconstructionRequest(poses=replace(ReconstructionRequest().poses,
                                                                         method="learned", model="/no/such/model.json")))
