"""Offscreen 3D rendering through Slicer's volume rendering displayable manager (EGL)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from freehandrecon.scene import render
from freehandrecon.io.slicer_files import load_mrb, save_mrb
from freehandrecon.io.slicer_scene import get_logic, new_scene
from freehandrecon.scene.nodes import add_volume_node
from freehandrecon.errors import InputError

pytestmark = pytest.mark.render

DATA = Path(__file__).parent / "Data"
SPINE_VOLUME = DATA / "plus" / "vtkVolumeReconstructorTestNNMEANvolumeRef.mha"  # PLUS's compounded spine
SIZE = dict(width=320, height=240)


def blob(shape=(40, 44, 48), peak=255.0) -> np.ndarray:
    k, j, i = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    c = [(s - 1) / 2 for s in shape]
    return peak * np.exp(-(((i - c[2]) / 10) ** 2 + ((j - c[1]) / 8) ** 2 + ((k - c[0]) / 7) ** 2))


def read_png(path: Path) -> np.ndarray:
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    nx, ny, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)


@pytest.fixture(scope="module")
def scene():
    return new_scene()


def test_blob_renders_and_zero_volume_is_background_only(scene, tmp_path):
    spacing = np.diag([0.5, 0.5, 0.5, 1.0])
    bright = add_volume_node(scene, blob().astype(np.uint8), spacing, "Blob")
    stats = render.render_volume_png(scene, bright, tmp_path / "blob.png", **SIZE)
    assert stats["render_window"] == os.environ["VTK_DEFAULT_OPENGL_WINDOW"]
    assert stats["method"] == "vtkMRMLGPURayCastVolumeRenderingDisplayNode"
    assert 0.02 < stats["foreground_fraction"] < 0.9
    assert stats["mean_foreground_intensity"] > 30
    rgb = read_png(tmp_path / "blob.png")
    assert rgb.shape[:2] == (240, 320)
    assert ((rgb[..., :3].max(axis=-1) > render.FOREGROUND_THRESHOLD).mean()
            == pytest.approx(stats["foreground_fraction"]))
    centre = rgb[100:140, 140:180, :3].astype(float)
    assert centre.mean() > 40, "the blob is in the middle of the picture"
    assert np.ptp(centre.mean(axis=(0, 1))) < 10, "US-BMode is grey"

    # Same scene: the blob's rendering stays in the scene but only the asked-for volume is drawn.
    empty = add_volume_node(scene, np.zeros((40, 44, 48), np.uint8), spacing, "Empty")
    stats0 = render.render_volume_png(scene, empty, tmp_path / "empty.png", **SIZE)
    assert stats0["foreground_fraction"] == 0.0 and stats0["mean_intensity"] == 0.0
    assert read_png(tmp_path / "empty.png")[..., :3].max() == 0
    display = get_logic(scene, "volumerendering").GetFirstVolumeRenderingDisplayNode(bright)
    assert display.GetVisibility() and display.GetNumberOfViewNodeIDs() == 0, "restored: visible in every view"
    assert scene.GetNumberOfNodesByClass("vtkMRMLViewNode") == 0, "the render view is removed afterwards"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.png", "empty.png"]


def test_spine_volume_renders(scene, tmp_path):
    reader = vtk.vtkMetaImageReader()
    reader.SetFileName(str(SPINE_VOLUME))
    reader.Update()
    image = reader.GetOutput()
    nx, ny, nz = image.GetDimensions()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    ijk_to_ras = np.diag([*image.GetSpacing(), 1.0])
    ijk_to_ras[:3, 3] = image.GetOrigin()
    node = add_volume_node(scene, array, ijk_to_ras, "Spine")
    stats = render.render_volume_png(scene, node, tmp_path / "spine.png", **SIZE)
    assert stats["foreground_fraction"] > 0.03
    assert stats["mean_foreground_intensity"] > 40


def test_float_photoacoustic_overlay_is_red(scene, tmp_path):
    spacing = np.diag([0.5, 0.5, 0.5, 1.0])
    faint = add_volume_node(scene, blob(peak=40.0).astype(np.uint8), spacing, "FaintBMode")
    pa = add_volume_node(scene, blob(peak=0.8).astype(np.float32), spacing, "PA")  # preset stretched to 0..0.8
    stats = render.render_volume_png(scene, faint, tmp_path / "pa.png", extra_volumes=[(pa, "PA-Hot")],
                                     method="cpu", **SIZE)
    assert stats["presets"] == ["US-BMode", "PA-Hot"]
    assert stats["method"] == "vtkMRMLCPURayCastVolumeRenderingDisplayNode"
    rgb = read_png(tmp_path / "pa.png")[..., :3].astype(float)
    shown = rgb.max(axis=-1) > render.FOREGROUND_THRESHOLD
    assert shown.mean() > 0.02
    red, green, blue = (rgb[..., c][shown].mean() for c in range(3))
    assert red > 2 * green and red > 2 * blue


def test_render_rejects_bad_requests(scene, tmp_path):
    node = add_volume_node(scene, np.ones((4, 4, 4), np.uint8), np.eye(4), "Small")
    with pytest.raises(InputError, match=r"\.png") as err:
        render.render_volume_png(scene, node, tmp_path / "r.jpg", **SIZE)
    assert "Fix:" in str(err.value)
    with pytest.raises(InputError, match="Unknown volume rendering preset"):
        render.render_volume_png(scene, node, tmp_path / "r.png", preset="CT-Bone", **SIZE)
    with pytest.raises(InputError, match="too small"):
        render.render_volume_png(scene, node, tmp_path / "r.png", width=4, height=4)
    with pytest.raises(InputError, match="scalar volume"):
        render.render_volume_png(scene, scene.AddNewNodeByClass("vtkMRMLLinearTransformNode"), tmp_path / "r.png")
    assert not list(tmp_path.iterdir())


def test_rendered_scene_opens_with_volume_rendering(tmp_path):
    scene = new_scene()
    node = add_volume_node(scene, blob().astype(np.float32), np.eye(4), "Result")
    render.render_volume_png(scene, node, tmp_path / "r.png", **SIZE)
    loaded = load_mrb(save_mrb(scene, tmp_path / "scene.mrb"))
    volume = loaded.GetFirstNodeByName("Result")
    display = get_logic(loaded, "volumerendering").GetFirstVolumeRenderingDisplayNode(volume)
    assert display is not None and display.GetVisibility()
    opacity = display.GetVolumePropertyNode().GetScalarOpacity()
    # US-BMode stretched from 0..255 onto the float volume's 0..max
    assert opacity.GetRange()[1] == pytest.approx(float(blob().max()), rel=1e-6)
