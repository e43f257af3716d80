"""Live reconstruction in the Slicer scene (module_live): frames arrive by changing an image node, as OpenIGTLinkIF
updates the live image; the volume grows in the output node. Real slicer-core MRML, the real spine sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freehandrecon.compound import fit_grid
from freehandrecon.errors import InputError
from freehandrecon.io import read_sweep
from freehandrecon.io.slicer_scene import new_scene, vtk_matrix
from freehandrecon.logic import ReconstructionRequest, Roi, reconstruct_sweep
from freehandrecon.module_live import LiveReconstruction
from freehandrecon.module_logic import FreehandReconLogic
from freehandrecon.scene.nodes import add_volume_node

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
PLUS_CONFIG = DATA / "plus" / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"


@pytest.fixture(scope="module")
def spine():
    return read_sweep(SPINE, plus_config=PLUS_CONFIG)


def _roi_node(scene, grid):
    top = grid.origin + (np.asarray(grid.dims) - 1) * grid.spacing
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "LiveBox")
    roi.SetCenter(*((grid.origin + top) / 2))
    roi.SetSize(*(top - grid.origin + grid.spacing))
    return roi


def _offline(spine, roi_node, frames=slice(None)):
    center, size = [0.0] * 3, [float(v) for v in roi_node.GetSize()]
    roi_node.GetCenter(center)
    request = ReconstructionRequest(spacing_mm=1.0, roi=Roi(tuple(center), tuple(size), np.eye(3)))
    return reconstruct_sweep(spine.subset(frames), request).volume_array()


def _send(scene, node, frame, pixel_to_world, parent=None, image_to_world=None):
    """What OpenIGTLinkIF does when a frame arrives: the pose first (a transform above, or IJKToRAS), then the image."""
    if parent is not None:
        parent.SetMatrixTransformToParent(vtk_matrix(image_to_world))
    return add_volume_node(scene, frame[None], pixel_to_world, "Image_Reference", replace=node)


def _within_one(a, b):
    return float(np.mean(np.abs(a.astype(np.int32) - b.astype(np.int32)) <= 1))


def test_embedded_poses_grow_the_volume_as_frames_arrive(spine):
    """PLUS with EmbeddedTransformToFrame: the pose is in each frame's IJKToRAS; the result equals offline."""
    scene = new_scene()
    p2w = spine.pixel_to_world()
    image = add_volume_node(scene, spine.frames[0][None], p2w[0], "Image_Reference")
    roi = _roi_node(scene, fit_grid(spine, 1.0))
    live = FreehandReconLogic(scene).liveReconstruction(image, spacingMm=1.0, roiNode=roi)  # the console's way in
    live.start()
    assert live.state == "running"
    for i in range(10):
        _send(scene, image, spine.frames[i], p2w[i])
    volume = live.update()
    assert volume is not None and live.status["frames_used"] == 10
    assert volume.GetDisplayNode() is not None and any(  # shown in 3D from the first update
        volume.GetNthDisplayNode(k).IsA("vtkMRMLVolumeRenderingDisplayNode") for k in range(volume.GetNumberOfDisplayNodes()))
    part = np.asarray(volume.GetImageData().GetPointData().GetScalars()).reshape(live.lastResult.volume.shape)
    assert _within_one(part, _offline(spine, roi, slice(0, 10))) >= 0.999
    for i in range(10, spine.num_frames):
        _send(scene, image, spine.frames[i], p2w[i])
    out = live.stop()
    assert out is volume and live.state == "paused"  # the same output node, updated in place
    final = np.asarray(out.GetImageData().GetPointData().GetScalars()).reshape(live.lastResult.volume.shape)
    assert live.status["frames_used"] == spine.num_frames and live.status["frames_dropped"] == 0
    assert _within_one(final, _offline(spine, roi)) >= 0.999
    assert "21 frames in the volume" in live.statusText()


def test_stop_resume_reset_and_a_transform_above_the_image(spine):
    """Poses from the transform above the image (ImageToReference); frames while stopped are not added; Resume
    goes on; Reset forgets everything."""
    scene = new_scene()
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToReference")
    spacing = np.diag([*spine.pixel_spacing, 1.0, 1.0])
    image = add_volume_node(scene, spine.frames[0][None], spacing, "Image_Reference")
    image.SetAndObserveTransformNodeID(parent.GetID())
    roi = _roi_node(scene, fit_grid(spine, 1.0))
    output = add_volume_node(scene, np.zeros((2, 2, 2), np.uint8), np.eye(4), "MyLiveVolume")
    live = LiveReconstruction(scene, image, output, spacingMm=1.0, roiNode=roi, showIn3D=False)
    with pytest.raises(InputError, match="nothing to resume|no live reconstruction to resume"):
        live.resume()
    live.start()
    for i in range(8):
        _send(scene, image, spine.frames[i], spacing, parent, spine.image_to_world[i])
    live.stop()
    for i in range(8, 12):  # scanning on while stopped: not compounded
        _send(scene, image, spine.frames[i], spacing, parent, spine.image_to_world[i])
    live.update()
    assert live.status["frames_used"] == 8 and live.status["frames_received"] == 8
    live.resume()
    for i in range(12, spine.num_frames):
        _send(scene, image, spine.frames[i], spacing, parent, spine.image_to_world[i])
    out = live.stop()
    assert out.GetID() == output.GetID() and out.GetName() == "MyLiveVolume"
    frames = np.r_[0:8, 12:spine.num_frames]
    got = np.asarray(out.GetImageData().GetPointData().GetScalars()).reshape(live.lastResult.volume.shape)
    assert _within_one(got, _offline(spine, roi, frames)) >= 0.999
    live.reset()
    assert live.state == "stopped" and live.status["frames_used"] == 0


def test_a_frame_of_another_size_is_dropped_and_counted(spine):
    scene = new_scene()
    p2w = spine.pixel_to_world()
    image = add_volume_node(scene, spine.frames[0][None], p2w[0], "Image_Reference")
    live = LiveReconstruction(scene, image, spacingMm=2.0)  # no ROI: a box around the first frames, grown
    live.start()
    for i in range(3):
        _send(scene, image, spine.frames[i], p2w[i])
    _send(scene, image, spine.frames[3][:100, :100], p2w[3])
    _send(scene, image, spine.frames[4], p2w[4])
    live.stop()
    st = live.status
    assert st["frames_used"] == 4 and st["dropped_by_reason"]["wrong_size"] == 1
    assert st["grid"]["auto_growing"] is True


def test_bad_inputs_are_refused_before_anything_starts(spine):
    scene = new_scene()
    with pytest.raises(InputError, match="No live image"):
        LiveReconstruction(scene, None)
    image = add_volume_node(scene, spine.frames[0][None], np.eye(4), "Image_Reference")
    with pytest.raises(InputError, match="model file"):
        LiveReconstruction(scene, image, poses="learned", model="/nonexistent/model.safetensors")
    with pytest.raises(InputError, match="interpolation"):
        LiveReconstruction(scene, image, interpolation="cubic")
    with pytest.raises(InputError, match="preset"):
        LiveReconstruction(scene, image, preset="Rainbow")
