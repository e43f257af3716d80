"""Offscreen 3D view screenshots through Slicer's own displayable managers.

A Slicer 3D view is built without Qt: a view node, a VTK renderer and render window, and
the displayable manager group from the 3D view factory (camera and volume rendering
managers), so the picture is what Slicer's 3D view shows for the same nodes.

Offscreen rendering: importing this module sets ``VTK_DEFAULT_OPENGL_WINDOW`` to
``vtkEGLRenderWindow`` unless it is already set, so VTK draws through EGL (a GPU driver, or
Mesa llvmpipe on CPU-only machines) without a display. VTK reads the variable each time a
render window is created, so it only has to be set before the first render. Set it
yourself (e.g. to ``vtkOSOpenGLRenderWindow``) to choose another offscreen backend.
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import time  # noqa: E402  (the environment must be set before VTK rendering classes are used)
from collections.abc import Iterable, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from ..errors import InputError, ResourceError  # noqa: E402
from ..io.common import atomic_outputs  # noqa: E402
from ..io.slicer_scene import get_logic, unique_name  # noqa: E402
from .display import (BMODE_OPACITY_SCALE, BMODE_PRESET, channel_pairs, scale_opacity, shared_fades,  # noqa: E402
                      show_fused, show_volume_rendering)

_DISPLAYABLE_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLVolumeRenderingDisplayableManager")
ZOOM_AFTER_RESET = 1.2  # ResetCamera fits the bounding sphere; a box fills only part of it
FOREGROUND_THRESHOLD = 3  # grey levels (0..255) a pixel must differ from the background by


def _volumes(volume_node: Any, preset: str, extra_volumes: Iterable[Any]) -> list[tuple[Any, str]]:
    """``[(node, preset)]``; extras are nodes (shown with ``preset``) or ``(node, preset)`` pairs."""
    pairs = [(volume_node, preset)]
    for item in extra_volumes:
        pairs.append(tuple(item) if isinstance(item, (tuple, list)) else (item, preset))
    return pairs


def _all_volume_renderings(scene: Any) -> list[Any]:
    cls = "vtkMRMLVolumeRenderingDisplayNode"
    return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]


def _view(scene: Any, background: tuple[float, float, float]) -> Any:
    view = slicer.vtkMRMLViewNode()
    view.SetName(unique_name(scene, "FreehandRecon render view"))
    view.SetLayoutName("FreehandReconRender")
    view.SetBackgroundColor(*background)
    view.SetBackgroundColor2(*background)
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    view.SetOrientationMarkerType(view.OrientationMarkerTypeNone)
    scene.AddNode(view)
    return view


def _remove_view(scene: Any, view: Any) -> None:
    for i in reversed(range(scene.GetNumberOfNodesByClass("vtkMRMLCameraNode"))):
        camera = scene.GetNthNodeByClass(i, "vtkMRMLCameraNode")
        if camera.GetLayoutName() == view.GetLayoutName():
            scene.RemoveNode(camera)
    scene.RemoveNode(view)


def _transparent_below(display: Any) -> float:
    """Intensity up to which the display's scalar opacity is zero (voxels there are invisible)."""
    opacity = display.GetVolumePropertyNode().GetScalarOpacity()
    level = -np.inf
    for i in range(opacity.GetSize()):
        x_y = [0.0] * 4
        opacity.GetNodeValue(i, x_y)
        if x_y[1] > 0:
            break
        level = x_y[0]
    return level


def _content_corners(node: Any, threshold: float) -> np.ndarray:
    """World corners ``[8, 3]`` of the box of voxels brighter than ``threshold`` (the whole grid
    when none is), so the camera frames what is drawn rather than the empty or transparent
    margin of the output grid."""
    a = slicer.util.arrayFromVolume(node)
    mask = a > threshold
    lo, hi = np.zeros(3), np.array(a.shape[::-1], dtype=float) - 1  # (i, j, k)
    if mask.any():
        for axis_ijk, axis_kji in ((0, 2), (1, 1), (2, 0)):
            used = np.flatnonzero(mask.any(axis=tuple(x for x in range(3) if x != axis_kji)))
            lo[axis_ijk], hi[axis_ijk] = used[0], used[-1]
    lo, hi = lo - 0.5, hi + 0.5  # voxel edges
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    to_world = slicer.util.arrayFromVTKMatrix(m)
    parent = node.GetParentTransformNode()
    if parent is not None and parent.IsTransformToWorldLinear():
        w = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(w)
        to_world = slicer.util.arrayFromVTKMatrix(w) @ to_world
    return (corners @ to_world.T)[:, :3]


def _bounds(nodes: list[Any], displays: list[Any]) -> list[float]:
    """World box ``[xmin, xmax, ymin, ymax, zmin, zmax]`` around the visible content of all nodes."""
    pts = np.concatenate([_content_corners(node, _transparent_below(d)) for node, d in zip(nodes, displays)])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return [lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]]


def _gl_renderer(window: Any) -> str:
    for line in window.ReportCapabilities().splitlines():
        if line.lower().startswith("opengl renderer string"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _image_stats(rgb: np.ndarray, background: tuple[float, float, float]) -> dict[str, float]:
    bg = np.asarray(background, dtype=np.float64) * 255.0
    diff = np.abs(rgb.astype(np.float64) - bg).max(axis=-1)
    foreground = diff > FOREGROUND_THRESHOLD
    grey = rgb.astype(np.float64).mean(axis=-1)
    return {"foreground_fraction": float(foreground.mean()),
            "mean_intensity": float(grey.mean()),
            "mean_foreground_intensity": float(grey[foreground].mean()) if foreground.any() else 0.0}


def render_volume_png(scene: Any, volume_node: Any, path: str | os.PathLike, width: int = 800, height: int = 600,
                      preset: str = "US-BMode", extra_volumes: Iterable[Any] = (), *,
                      background: tuple[float, float, float] = (0.0, 0.0, 0.0), azimuth: float = 30.0,
                      elevation: float = 20.0, method: str = "gpu",
                      opacity_scale: dict[str, float] | None = None) -> dict[str, Any]:
    """Render ``volume_node`` (and ``extra_volumes``) in an offscreen Slicer 3D view to a PNG.

    The volumes get volume rendering display nodes with the named presets (see
    :func:`freehandrecon.scene.display.show_volume_rendering`; they stay in the scene, so a saved
    scene opens with the same rendering); other volume renderings are hidden for the
    picture only. The camera is reset to the box of visible (not fully transparent)
    voxels, then turned by ``azimuth``/``elevation`` degrees from Slicer's default view.
    ``opacity_scale`` maps volume node IDs to a factor on their display's scalar opacity
    (e.g. a faint B-mode around photoacoustic vessels, see :mod:`freehandrecon.scene.display`).
    The PNG is written atomically. Returns image statistics: ``foreground_fraction``
    (pixels differing from the background colour), ``mean_intensity`` (0..255),
    ``mean_foreground_intensity``, plus size, seconds and the OpenGL renderer used.
    """
    t0 = time.perf_counter()
    if int(width) < 16 or int(height) < 16:
        raise InputError(f"A {width}x{height} pixel picture is too small.", "Use at least 16x16 pixels, e.g. 800x600.")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InputError(f"The render is written as PNG; '{target.name}' does not end in .png.",
                         "Use a name like render.png.")
    pairs = _volumes(volume_node, preset, extra_volumes)
    displays = [show_volume_rendering(scene, node, p, method=method) for node, p in pairs]
    if opacity_scale:
        for (node, _), display in zip(pairs, displays):
            if node.GetID() in opacity_scale:
                scale_opacity(display, float(opacity_scale[node.GetID()]))
    # Only the requested volumes: hide other volume renderings for this picture.
    hidden = [d for d in _all_volume_renderings(scene) if d.GetVisibility() and
              all(d.GetID() != own.GetID() for own in displays)]
    for d in hidden:
        d.SetVisibility(False)
    view = _view(scene, background)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(width), int(height))
    window.SetMultiSamples(0)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    group = None
    try:
        if not window.SupportsOpenGL():
            raise ResourceError(
                f"VTK cannot open an offscreen OpenGL context ({window.GetClassName()}).",
                "Install Mesa's EGL/OpenGL libraries (or a GPU driver), or set VTK_DEFAULT_OPENGL_WINDOW to an "
                "offscreen window class that works here; or skip the picture (--no-render).")
        for display in displays:
            display.AddViewNodeID(view.GetID())
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(get_logic(scene, "application"))
        for name in _DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        group = factory.InstantiateDisplayableManagers(renderer)
        group.SetMRMLDisplayableNode(view)
        box = _bounds([node for node, _ in pairs], displays)
        camera = renderer.GetActiveCamera()
        renderer.ResetCamera(box)
        camera.Azimuth(azimuth)
        camera.Elevation(elevation)
        camera.OrthogonalizeViewUp()
        renderer.ResetCamera(box)
        camera.Zoom(ZOOM_AFTER_RESET)
        renderer.ResetCameraClippingRange(box)
        window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        nx, ny, _ = image.GetDimensions()
        rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)[..., :3]
        with atomic_outputs(target) as (tmp,):
            writer = vtk.vtkPNGWriter()
            writer.SetInputData(image)
            writer.SetFileName(str(tmp))
            writer.Write()
        stats = _image_stats(rgb, background)
        stats.update(path=str(target), width=nx, height=ny, seconds=round(time.perf_counter() - t0, 3),
                     gl_renderer=_gl_renderer(window), render_window=window.GetClassName(),
                     method=displays[0].GetClassName(), presets=[p for _, p in pairs])
        return stats
    finally:
        for display in displays:
            display.RemoveViewNodeID(view.GetID())  # no view list again: visible in every view
        if group is not None:
            group.SetMRMLDisplayableNode(None)
        _remove_view(scene, view)
        for d in hidden:
            d.SetVisibility(True)
        window.Finalize()


def render_fused_png(scene: Any, bmode_node: Any, channel_nodes: Mapping[str, Any] | list[Any],
                     path: str | os.PathLike, *, bmode_opacity: float = BMODE_OPACITY_SCALE,
                     **render_kw: Any) -> dict[str, Any]:
    """Write the fused 3D view (B-mode grey + photoacoustic hot / Doppler red) to a PNG offscreen;
    returns :func:`render_volume_png`'s statistics."""
    pairs = channel_pairs(channel_nodes)
    if not pairs:
        raise InputError("A fused picture needs at least one channel volume (photoacoustic or Doppler).",
                         "Reconstruct a sweep that has extra channels, or use render_volume_png for B-mode alone.")
    show_fused(scene, bmode_node, channel_nodes, bmode_opacity=bmode_opacity,
               method=render_kw.get("method", "gpu"))
    # render_volume_png re-applies the presets; fade the B-mode again after it did, then draw
    scales = {bmode_node.GetID(): bmode_opacity}
    scales.update({node.GetID(): scale for (node, _), scale in shared_fades(pairs).items()})
    return render_volume_png(scene, bmode_node, path, preset=BMODE_PRESET, extra_volumes=pairs,
                             opacity_scale=scales, **render_kw)
