"""Live reconstruction inside Slicer: the volume grows while the clinician scans.

The frames come from an image node of the scene: the live image that OpenIGTLinkIF (or any module) updates, or
the proxy image of a sequence browser that is recording or playing. Each time its image data changes, the frame
and its pose (the node's IJKToRAS, which carries the probe pose when PLUS embeds it, composed with the transforms
above the node) go to a :class:`~freehandrecon.live.LiveSession`, the same session ``freehandrecon live`` runs on
OpenIGTLink messages: same grid growth, drop rules, sliding-window sensorless poses and report. Pasting and the
output volume's refresh happen in :meth:`LiveReconstruction.update`, which the panel calls from a timer every
update interval, so the GUI thread only ever does short slices of work.

Start / Stop / Resume / Reset follow SlicerIGT's Volume Reconstruction: Stop keeps the volume and the frames
compounded so far, Resume goes on adding to them, Reset forgets them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import CalibrationError, InputError
from .module_inputs import node as find_node
from .module_inputs import roi_in_parent_frame, to_world

STATES = ("stopped", "running", "paused")


def _image_array(imageNode: Any) -> np.ndarray:
    """The node's current frame ``[H, W]`` (a colour frame is averaged to grey)."""
    from slicer import util

    a = util.arrayFromVolume(imageNode)
    if a.ndim == 4:  # [k, j, i, components]: RGB(A) video frames
        a = a[..., :3].mean(axis=-1).astype(np.float32)
    if a.ndim != 3 or a.shape[0] != 1:
        raise InputError(f"The live image '{imageNode.GetName()}' is a {a.shape[0]}-slice volume, not a 2D frame.",
                         "Select the 2D image that the scanner streams (e.g. 'Image_Reference' from PLUS).")
    return np.ascontiguousarray(a[0])


def _pixel_to_world(imageNode: Any) -> np.ndarray:
    """Pixel index (i, j, 0) -> world mm: IJKToRAS, then the transforms above the node."""
    from slicer import util

    m = util.arrayFromVTKMatrix(_vtk_ijk_to_ras(imageNode))
    parent = imageNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise CalibrationError(f"The live image '{imageNode.GetName()}' is under a non-linear transform.",
                                   "Put the image under the probe's linear transform (e.g. ImageToReference).")
        m = to_world(parent) @ m
    return m


def vtk_modified_event() -> int:
    import vtk

    return vtk.vtkCommand.ModifiedEvent


def _vtk_ijk_to_ras(imageNode: Any) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    imageNode.GetIJKToRASMatrix(m)
    return m


class LiveReconstruction:
    """A live reconstruction of ``imageNode``'s frames into ``outputVolumeNode`` (see the module docstring).

    Settings as :meth:`freehandrecon.module_logic.FreehandReconLogic.reconstruct`: ``spacingMm``,
    ``interpolation``, ``compounding``, ``roiNode`` (none: a box around the first frames, grown as the probe
    moves, within ``maxMemoryGb``), ``clipRectangle``, ``poses`` ("tracked", "learned" or "speckle"; sensorless
    poses use the pixel spacing of the node and a sliding window of frames, so a frame reaches the volume some
    frames after it arrived), ``model``, ``device``. The output volume (created when None) is replaced in place
    at every :meth:`update`.
    """

    def __init__(self, scene: Any, imageNode: Any, outputVolumeNode: Any = None, *, spacingMm: Any = 1.0,
                 interpolation: str = "nearest", compounding: str = "mean", fillHoles: str = "none",
                 roiNode: Any = None, clipRectangle: tuple[int, int, int, int] | None = None, poses: str = "tracked",
                 model: Any = None, device: str = "cpu", maxMemoryGb: float | None = None,
                 gridMarginMm: float = 20.0, name: str = "LiveReconstruction", showIn3D: bool = True,
                 preset: str = "US-BMode") -> None:
        from .live import LiveRequest, LiveSession
        from .logic import CompoundOptions, HoleFilling, PoseRequest, check_spacing_mm, checked_pose_request

        self.scene = scene
        self.imageNode = find_node(scene, imageNode, "live image")
        if self.imageNode is None or not self.imageNode.IsA("vtkMRMLVolumeNode"):
            raise InputError("No live image node was given.",
                             "Select the image the scanner streams (OpenIGTLinkIF) or a recording browser's image.")
        self.outputVolumeNode = find_node(scene, outputVolumeNode, "output volume")
        roi, self.roiParent = roi_in_parent_frame(find_node(scene, roiNode, "ROI"))
        max_bytes = None if maxMemoryGb is None else int(float(maxMemoryGb) * 2**30)
        options = CompoundOptions(interpolation=interpolation, compounding=compounding, clip_rectangle=clipRectangle,
                                  hole_filling=HoleFilling(method=fillHoles), device=device,
                                  max_memory_bytes=max_bytes)
        options.validate()
        pose_request = checked_pose_request(PoseRequest(method=poses, model=model, device=device,
                                                        check_quality=False))
        self.request = LiveRequest(spacing_mm=check_spacing_mm(spacingMm), options=options, roi=roi,
                                   poses=pose_request, snapshot_every_s=0, grid_margin_mm=float(gridMarginMm))
        self._session_class = LiveSession
        self.session = LiveSession(self.request)
        self.name, self.showIn3D, self.preset = name, bool(showIn3D), preset
        if self.showIn3D:
            from .io.slicer_scene import PRESET_NAMES

            if preset not in PRESET_NAMES:
                raise InputError(f"Unknown volume rendering preset '{preset}'.", f"Use one of {', '.join(PRESET_NAMES)}.")
        self.state = "stopped"
        self._observers: list[int] = []
        self._pending = False
        self._last_key = None
        self._shown = False
        self._started = False
        self._to_grid = None if self.roiParent is None else np.linalg.inv(to_world(self.roiParent))

    # --- control ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a new reconstruction: frames from now on are compounded (earlier ones are forgotten)."""
        self.reset()
        self._observe()
        self.state = "running"
        self._started = True

    def stop(self) -> Any:
        """Stop adding frames; compound what has arrived, fill holes as asked, update the output. Returns it."""
        self._unobserve()
        self.session.finish_frames()
        self.state = "paused" if self._started else "stopped"
        return self.update(final=True)

    def resume(self) -> None:
        """Go on adding frames to the volume so far."""
        if not self._started:
            raise InputError("There is no live reconstruction to resume.", "Press Start first.")
        self._observe()
        self.state = "running"

    def reset(self) -> None:
        """Forget every frame (the output volume keeps its last content until the next update)."""
        self._unobserve()
        self.session = self._session_class(self.request)
        self.state = "stopped"
        self._started = False

    def cleanup(self) -> None:
        """Remove the observer (the panel calls it when the scene closes or the module is reloaded)."""
        self._unobserve()

    # --- frames -------------------------------------------------------------------------------
    def _observe(self) -> None:
        if not self._observers:
            node = self._image_node = self.imageNode
            self._observers = [node.AddObserver(node.ImageDataModifiedEvent, self._onImageDataModified),
                               node.AddObserver(vtk_modified_event(), self._onNodeModified)]

    def _unobserve(self) -> None:
        for tag in self._observers:
            self._image_node.RemoveObserver(tag)
        self._observers = []
        self._pending = False

    def _onImageDataModified(self, caller: Any = None, event: Any = None) -> None:
        # Inside a StartModify/EndModify block (OpenIGTLinkIF sets pixels and IJKToRAS together) the pose may not
        # be set yet: take the frame when the block ends (ModifiedEvent). Otherwise take it now.
        if self.imageNode.GetDisableModifiedEvent():
            self._pending = True
        else:
            self.addCurrentFrame()

    def _onNodeModified(self, caller: Any = None, event: Any = None) -> None:
        if self._pending:
            self._pending = False
            self.addCurrentFrame()

    def addCurrentFrame(self) -> None:
        """Queue the image node's current frame with its current pose (called on every image change; a frame whose
        pixels did not change since the last one, e.g. a second event of the same update, is not queued twice)."""
        arrival = time.perf_counter()
        data = self.imageNode.GetImageData()
        key = None if data is None else (data.GetAddressAsString("vtkImageData"), data.GetMTime(),
                                          data.GetPointData().GetScalars().GetMTime())
        if key is None or key == self._last_key:
            return
        self._last_key = key
        frame = _image_array(self.imageNode)
        p2w = _pixel_to_world(self.imageNode)
        if self._to_grid is not None:  # the grid is the ROI's parent frame
            p2w = self._to_grid @ p2w
        self.session.add_frame(frame, p2w, arrival, arrival)

    # --- output -------------------------------------------------------------------------------
    def update(self, final: bool = False) -> Any:
        """Compound the frames queued since the last update and refresh the output volume (and its coverage in
        ``coverageNode``); ``final``: with hole filling. Returns the output volume node (None before any frame)."""
        from .scene.nodes import add_volume_node

        self.session.paste()
        rec = self.session.rec
        if rec is None or rec.frames_added == 0:
            return self.outputVolumeNode
        result = rec.result() if final else rec.snapshot()
        dtype = self.session.dtype
        vol = result.volume_as(dtype) if np.issubdtype(dtype, np.integer) else result.volume
        created = self.outputVolumeNode is None
        self.outputVolumeNode = add_volume_node(self.scene, vol, result.grid.ijk_to_world(), self.name,
                                                replace=self.outputVolumeNode)
        if created and self.roiParent is not None:
            self.outputVolumeNode.SetAndObserveTransformNodeID(self.roiParent.GetID())
        if self.showIn3D and not self._shown:  # once: later updates replace the pixels under the same rendering
            from .scene.display import show_in_3d

            show_in_3d(self.scene, self.outputVolumeNode, self.preset)
            self._shown = True
        self.lastResult = result
        return self.outputVolumeNode

    @property
    def status(self) -> dict[str, Any]:
        """Counts for the panel: state, frames received / used / dropped, frames per second, grid."""
        s = self.session
        rep = s.report("live in Slicer", self.state != "running")
        return {"state": self.state, "frames_received": s.received, "frames_used": s.used,
                "frames_dropped": rep["frames_dropped"], "dropped_by_reason": rep["dropped_by_reason"],
                "frames_per_second": rep["frames_per_second"], "latency_ms": rep["latency_ms"],
                "grid": rep["grid"], "warnings": list(s.warnings)}

    def statusText(self) -> str:
        """One line for the panel."""
        st = self.status
        grid = st["grid"]
        size = "-" if grid is None else " x ".join(map(str, grid["dims_ijk"]))
        fps = st["frames_per_second"]
        return (f"{st['state'].capitalize()}: {st['frames_used']} frames in the volume ({size} voxels), "
                f"{st['frames_dropped']} dropped" + (f", {fps:.0f} frames/s" if fps else "") + ".")
