"""The reconstruction logic on a real slicer-core MRML scene: nodes, cancel, channels."""


import numpy as np
import pytest

from freehandrecon.errors import Cancelled, InputError
from freehandrecon.logic import ReconstructionLogic, ReconstructionRequest, reconstruct_sweep
from freehandrecon.sweep import Sweep


def box_sweep(n=30, channels=True) -> Sweep:
    """A translation sweep through a bright box; photoacoustic channel = a smaller box."""
    frames = np.full((n, 40, 50), 20, np.uint8)
    frames[:, 10:30, 15:35] = 180
    pa = np.zeros((n, 40, 50), np.float32)
    pa[:, 18:22, 23:27] = 1.0
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = np.arange(n) * 0.5
    return Sweep(frames, (0.5, 0.5), poses, channels={"photoacoustic": pa} if channels else {})


def scene_node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_reconstruct_adds_volume_coverage_and_channel_nodes():
    import slicer

    logic = ReconstructionLogic()
    nodes, result = logic.reconstruct(box_sweep(), ReconstructionRequest(spacing_mm=0.5), name="Box")
    vol = slicer.util.arrayFromVolume(nodes["volume"])
    assert vol.dtype == np.uint8 and vol.shape == (30, 40, 50)
    assert vol[:, 10:30, 15:35].min() == 180 and vol[:, :5, :5].max() == 20
    cov = slicer.util.arrayFromVolume(nodes["coverage"])
    assert (cov > 0).all()
    pa = slicer.util.arrayFromVolume(nodes["channel:photoacoustic"])
    assert pa[:, 18:22, 23:27].min() == pytest.approx(1.0) and pa.sum() == pytest.approx(30 * 16)
    ijk_to_ras = np.zeros((4, 4))
    import vtk

    m = vtk.vtkMatrix4x4()
    nodes["volume"].GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, result.grid.ijk_to_world(), atol=1e-9)


def test_new_nodes_never_reuse_a_users_node_name():
    logic = ReconstructionLogic()
    user = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Box")
    nodes, _ = logic.reconstruct(box_sweep(channels=False), ReconstructionRequest(spacing_mm=1.0), name="Box")
    assert nodes["volume"].GetID() != user.GetID()
    assert user.GetImageData() is None, "the user's node must stay untouched"


def test_replace_volume_updates_the_given_node_in_place():
    logic = ReconstructionLogic()
    first, _ = logic.reconstruct(box_sweep(channels=False), ReconstructionRequest(spacing_mm=1.0), name="Box")
    again, _ = logic.reconstruct(box_sweep(channels=False), ReconstructionRequest(spacing_mm=0.5), name="Box",
                                 replace_volume=first["volume"])
    assert again["volume"].GetID() == first["volume"].GetID()
    assert again["volume"].GetSpacing() == pytest.approx((0.5, 0.5, 0.5))


def test_cancel_leaves_the_scene_as_it_was():
    logic = ReconstructionLogic()
    before = scene_node_ids(logic.scene)
    with pytest.raises(Cancelled):
        logic.reconstruct(box_sweep(), ReconstructionRequest(spacing_mm=0.5), should_cancel=lambda: True)
    assert scene_node_ids(logic.scene) == before


def test_unknown_channel_is_refused():
    with pytest.raises(InputError, match="no channel 'doppler'"):
        reconstruct_sweep(box_sweep(), ReconstructionRequest(channels=("doppler",)))


def test_progress_reports_reach_one():
    seen = []
    reconstruct_sweep(box_sweep(), ReconstructionRequest(spacing_mm=1.0),
                      progress=lambda stage, f: seen.append((stage, f)))
    stages = {s for s, _ in seen}
    assert {"B-mode", "photoacoustic"} <= stages
    assert max(f for s, f in seen if s == "B-mode") == pytest.approx(1.0)
