"""What the module reads from an MRML scene: the sweep in a sequence browser (or a lone image sequence), with its
calibration, channels and frame-free geometry, the output ROI and the importance mask.

Functions of scene nodes only: what a reconstruction then does with them is :mod:`freehandrecon.logic`'s job.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CalibrationError, InputError

IMAGE_NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


def matrix_array(getter: Callable[[Any], Any]) -> np.ndarray:
    """The 4x4 array a VTK matrix getter (e.g. ``node.GetMatrixTransformToWorld``) fills."""
    import vtk
    from slicer import util

    m = vtk.vtkMatrix4x4()
    getter(m)
    return util.arrayFromVTKMatrix(m)


def to_world(transformNode: Any) -> np.ndarray:
    """The 4x4 transform-to-world matrix of a linear transform node."""
    return matrix_array(transformNode.GetMatrixTransformToWorld)


def roi_axes(roiNode: Any) -> np.ndarray:
    """The ROI's box axes (3x3, columns) in its node (parent) coordinates."""
    from slicer import util

    axes = util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix())[:3, :3]
    return axes / np.maximum(np.linalg.norm(axes, axis=0, keepdims=True), 1e-12)


def node(scene: Any, ref: Any, what: str) -> Any:
    """A node given as a node, an ID or a name."""
    if ref is None or not isinstance(ref, str):
        return ref
    found = scene.GetNodeByID(ref) or scene.GetFirstNodeByName(ref)
    if found is None:
        raise InputError(f"No {what} called '{ref}' in the scene.", f"Pass the {what} node or its exact name.")
    return found


def browser_and_sequence(scene: Any, inputNode: Any, imageSequence: Any = None) -> tuple[Any, Any]:
    """(browser or None, image sequence or None) for a browser or an image sequence input."""
    input_node = node(scene, inputNode, "sequence browser")
    seq = node(scene, imageSequence, "image sequence")
    if input_node is None and seq is None:
        raise InputError("No sweep was given.", "Select a sequence browser (or an image sequence) holding the sweep.")
    if input_node is None:
        input_node = seq
    if input_node.IsA("vtkMRMLSequenceBrowserNode"):
        return input_node, seq
    if input_node.IsA("vtkMRMLSequenceNode"):
        owner = input_node.GetScene()
        for i in range(owner.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
            browser = owner.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
            if browser.IsSynchronizedSequenceNode(input_node.GetID(), True):
                return browser, input_node
        return None, input_node
    raise InputError(f"'{input_node.GetName()}' is a {input_node.GetClassName()}, not a sequence browser or sequence.",
                     "Select the sequence browser of the sweep.")


def read_sweep(scene: Any, inputNode: Any, imageSequence: Any = None,
               pixelSpacingMm: tuple[float, float] | None = None, calibrationNode: Any = None) -> Any:
    """The sweep in a sequence browser (or a lone image sequence) as a :class:`freehandrecon.sweep.Sweep`.

    ``pixelSpacingMm`` overrides the frames' spacing; ``calibrationNode`` (image-to-probe) is
    inserted between the images and the transforms above them, unless it is already there.
    """
    from .io.slicer_sequences import sweep_from_browser

    browser, seq = browser_and_sequence(scene, inputNode, imageSequence)
    if browser is None:
        sweep = _sweep_from_lone_sequence(seq, pixelSpacingMm)
    else:
        if browser.GetScene() is None:
            raise InputError("The sequence browser is not in an MRML scene.", "Pass a browser node from a scene.")
        sweep = sweep_from_browser(browser, image_sequence=seq, pixel_spacing=pixelSpacingMm)
    calibration = node(scene, calibrationNode, "calibration transform")
    if calibration is not None:
        sweep = apply_calibration(sweep, browser, seq, calibration)
    return sweep


def _sweep_from_lone_sequence(seq: Any, pixelSpacingMm: tuple[float, float] | None) -> Any:
    from slicer import util

    from .io.slicer_sequences import lone_sequence_sweep

    if seq.GetDataNodeClassName() not in IMAGE_NODE_CLASSES:
        raise InputError(f"The sequence '{seq.GetName()}' holds {seq.GetDataNodeClassName() or 'nothing'}, "
                         "not images.", "Select the sequence of ultrasound frames.")
    n = seq.GetNumberOfDataNodes()
    if n == 0:
        raise InputError(f"The sequence '{seq.GetName()}' is empty.", "Record or import frames first.")
    frames = np.stack([util.arrayFromVolume(seq.GetNthDataNode(i))[0] for i in range(n)])
    return lone_sequence_sweep(seq, frames, pixelSpacingMm)


def apply_calibration(sweep: Any, browser: Any, seq: Any, calibration: Any) -> Any:
    """Put an image-to-probe calibration between the image and its parent transforms."""
    if not (calibration.IsA("vtkMRMLTransformNode") and calibration.IsLinear()):
        raise CalibrationError(f"The calibration '{calibration.GetName()}' is not a linear transform.",
                               "Select a linear transform (image to probe) as the calibration.")
    if sweep.image_to_world is None:
        raise CalibrationError("A calibration was given but the images have no tracking transform above them.",
                               "Place the image sequence under the probe (tracker) transform, or use "
                               "learned/speckle poses without a calibration.")
    if sweep.metadata.get("poses_in_image_geometry"):
        raise CalibrationError("The frames carry their poses in their image geometry (IJKToRAS), so an "
                               "image-to-probe calibration cannot be put between the image and the probe.",
                               "Leave the calibration empty: embedded poses (PLUS EmbeddedTransformToFrame) "
                               "already include it.")
    if calibration.GetName() in sweep.metadata.get("transform_chain", []):
        logging.info("FreehandRecon: calibration '%s' is already above the images; not applied twice.",
                     calibration.GetName())
        return sweep
    image_seq = seq if seq is not None else browser.GetMasterSequenceNode()
    ijk = matrix_array(image_seq.GetNthDataNode(0).GetIJKToRASMatrix)
    cal = matrix_array(calibration.GetMatrixTransformToParent)
    pixel_to_world = sweep.pixel_to_world() @ np.linalg.inv(ijk) @ cal @ ijk
    lengths = np.linalg.norm(pixel_to_world[:, :3, :2], axis=1).mean(axis=0)
    sx, sy = float(lengths[0]), float(lengths[1])
    image_to_world = pixel_to_world @ np.diag([1.0 / sx, 1.0 / sy, 1.0, 1.0])
    z = np.linalg.norm(image_to_world[:, :3, 2], axis=1)
    image_to_world[:, :3, 2] /= np.where(z > 0, z, 1.0)[:, None]
    meta = dict(sweep.metadata)
    meta["transform_chain"] = [calibration.GetName(), *meta.get("transform_chain", [])]
    return replace(sweep, pixel_spacing=(sx, sy), image_to_world=image_to_world, metadata=meta)


def roi_in_parent_frame(roiNode: Any) -> tuple[Any, Any]:
    """(:class:`freehandrecon.logic.Roi` in the ROI's node coordinates, its parent transform node or None).

    The output grid is built in the parent's frame and the volume placed under that transform, as
    SlicerIGT's Volume Reconstruction does; without a parent the frame is the world.
    """
    if roiNode is None:
        return None, None
    from .logic import Roi

    if not roiNode.IsA("vtkMRMLMarkupsROINode"):
        raise InputError(f"'{roiNode.GetName()}' is a {roiNode.GetClassName()}, not a markups ROI.",
                         "Select a markups ROI (Markups > ROI), or leave the ROI empty for an automatic box.")
    center = [0.0, 0.0, 0.0]
    roiNode.GetCenter(center)
    size = [float(v) for v in roiNode.GetSize()]
    if min(size) <= 0:
        raise InputError(f"The ROI '{roiNode.GetName()}' has zero size {size} mm.",
                         "Give the ROI a size, or leave the ROI empty for an automatic box.")
    parent = roiNode.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise CalibrationError(f"The ROI '{roiNode.GetName()}' is under a non-linear transform.",
                               "Harden or remove the non-linear transform above the ROI.")
    return Roi(tuple(center), tuple(size), roi_axes(roiNode)), parent


def grid_frame(parent: Any) -> np.ndarray | None:
    """World -> the frame of an ROI's parent transform (where the grid is built), or None without a parent."""
    return None if parent is None else np.linalg.inv(to_world(parent))


def browsers(scene: Any) -> list[Any]:
    """The scene's sequence browsers."""
    return [scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))]


def image_sequence_of(browser: Any) -> Any:
    """The browser's image sequence: the one tagged as images, else the master, else the first of images."""
    import vtk

    from .io.slicer_sequences import ROLE_ATTRIBUTE

    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    images = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    images = [s for s in images if s.GetDataNodeClassName() in IMAGE_NODE_CLASSES]
    tagged = [s for s in images if s.GetAttribute(ROLE_ATTRIBUTE) == "image"]
    master = browser.GetMasterSequenceNode()
    if tagged:
        return tagged[0]
    return master if master in images else (images[0] if images else None)


def poses_in_images(image_seq: Any) -> bool:
    """Whether the frames carry their poses in their IJKToRAS (PLUS EmbeddedTransformToFrame)."""
    from .io.slicer_sequences import image_sequence_ijk_to_ras, poses_in_image_geometry

    return poses_in_image_geometry(image_sequence_ijk_to_ras(image_seq))


def images_have_parent(browser: Any, image_seq: Any) -> bool:
    """Whether the images' proxy node sits under a transform."""
    if browser is None:
        return False
    proxy = browser.GetProxyNode(image_seq)
    return proxy is not None and proxy.GetParentTransformNode() is not None


def frame_shape(image_seq: Any) -> tuple[int, int]:
    """(height, width) of the sequence's first frame."""
    dims = image_seq.GetNthDataNode(0).GetImageData().GetDimensions()
    return int(dims[1]), int(dims[0])


def channel_name(channel: Any) -> str:
    """A channel given as its name or as its sequence node."""
    from .io.slicer_sequences import CHANNEL_ATTRIBUTE

    return channel if isinstance(channel, str) else (channel.GetAttribute(CHANNEL_ATTRIBUTE) or channel.GetName())


def channel_keys(sweep: Any, channels: Any) -> tuple[str, ...] | None:
    """The sweep's channel names for ``channels`` (sequence nodes or names; None: every channel)."""
    if channels is None:
        return None
    keys = []
    for ch in channels:
        key = channel_name(ch)
        if key not in sweep.channels:
            raise InputError(f"The sequence '{key}' is not an image channel of the sweep's browser.",
                             "Add the photoacoustic/Doppler sequence to the sweep's sequence browser "
                             "(Sequences module), with one frame per B-mode frame.")
        keys.append(key)
    return tuple(keys)


def importance_mask(scene: Any, value: Any, compounding: str) -> np.ndarray | None:
    """The importance weights [H, W] from a node, a node name, an image file or an array (checked against the
    frames by the logic), or None; refuses a mask without importance compounding and the reverse."""
    mask = None
    if isinstance(value, np.ndarray):
        mask = value
    elif value is None or (isinstance(value, (str, Path)) and str(value) in ("", ".")):
        mask = None
    elif isinstance(value, Path) or (isinstance(value, str) and Path(value).is_file()):
        if not Path(value).is_file():
            raise InputError(f"The importance mask file '{value}' does not exist.",
                             "Give an image file (e.g. PNG) of the frame size, or a volume node.")
        from .io.mask_image import read_mask_image

        mask = read_mask_image(Path(value))
    else:
        from slicer import util

        volume = node(scene, value, "importance mask volume")
        if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.GetImageData() is None:
            raise InputError(f"The importance mask '{volume.GetName()}' is not an image volume.",
                             "Select an image (volume node) of the frame size as the importance mask.")
        mask = util.arrayFromVolume(volume)
        if mask.shape[0] != 1:
            raise InputError(f"The importance mask '{volume.GetName()}' has {mask.shape[0]} slices, not one.",
                             "Select a single 2D image of the frame size.")
        mask = mask[0]
    if compounding == "importance" and mask is None:
        raise InputError("Compounding 'importance' needs an importance mask.",
                         "Select the importance mask image (same size as the frames), or choose another "
                         "compounding mode.")
    if mask is not None and compounding != "importance":
        raise InputError(f"An importance mask was given but the compounding mode is '{compounding}'.",
                         "Choose compounding 'importance' to weight pixels by the mask, or leave the mask out.")
    return mask


class GeometryCache:
    """Frame-free sweeps (zero-stride frames, real poses) read from the scene, for the panel's live estimates;
    one input at a time, reread when its sequences, items or the transforms above the images change."""

    def __init__(self) -> None:
        self._entry: dict[str, tuple[tuple, Any]] = {}

    def get(self, scene: Any, browserNode: Any, imageSequence: Any = None,
            pixelSpacingMm: tuple[float, float] | None = None, calibrationNode: Any = None) -> tuple[Any, list[str]]:
        """(the frame-free sweep, the names of the browser's other image sequences: the channels a
        reconstruction would add by default)."""
        from .io.slicer_sequences import CHANNEL_ATTRIBUTE, browser_sequences, is_image_sequence
        from .scene.browser import browser_geometry, lone_sequence_geometry

        browser, seq = browser_and_sequence(scene, browserNode, imageSequence)
        calibration = node(scene, calibrationNode, "calibration transform")
        key_node = browser if browser is not None else seq
        spacing = None if pixelSpacingMm is None else tuple(float(v) for v in pixelSpacingMm)
        stamp = (_geometry_stamp(browser, seq), seq.GetID() if seq is not None else None, spacing,
                 None if calibration is None else (calibration.GetID(), calibration.GetMTime()))
        cached = self._entry.get(key_node.GetID())
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if browser is None:
            light = lone_sequence_geometry(seq, spacing)
            others: list[str] = []
        else:
            light = browser_geometry(browser, seq, spacing)
            image_name = light.metadata["image_sequence"]
            others = [s.GetAttribute(CHANNEL_ATTRIBUTE) or s.GetName() for s in browser_sequences(browser)
                      if is_image_sequence(s) and s.GetName() != image_name]
        if calibration is not None:
            light = apply_calibration(light, browser, seq, calibration)
        value = (light, others)
        self._entry = {key_node.GetID(): (stamp, value)}  # one sweep at a time: the panel's
        return value


def _geometry_stamp(browser: Any, seq: Any) -> tuple:
    """Changes when the browser's items, sequences or the transforms above the images change."""
    import vtk

    if browser is None:
        return (seq.GetMTime(), seq.GetNumberOfDataNodes())
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    seqs = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    parents = []
    for s in seqs:  # static transforms above the proxies change the poses too
        proxy = browser.GetProxyNode(s)
        parent = proxy.GetParentTransformNode() if proxy is not None and proxy.IsA("vtkMRMLTransformableNode") \
            else None
        while parent is not None:
            parents.append((parent.GetID(), parent.GetMTime()))
            parent = parent.GetParentTransformNode()
    return (browser.GetNumberOfItems(), tuple(s.GetID() for s in seqs), tuple(s.GetMTime() for s in seqs),
            tuple(parents))
