"""A sweep's geometry read from a sequence browser without its pixels (for the panel's live estimates).

:func:`freehandrecon.io.slicer_sequences.sweep_from_browser` steps the browser through every item and copies every
frame: right for a reconstruction, too slow for a label that follows each change of the panel. Here
each item's image-to-world comes from the sequences' data nodes directly: the image node's IJKToRAS,
then each transform above the image proxy, taken from its own sequence (at the item's index value)
when the browser plays it, else from the static node. The browser is not moved and no frame is read;
the result is a :class:`~freehandrecon.sweep.Sweep` whose frames are a zero-stride view (shape only)
with the same poses and pixel spacing that ``sweep_from_browser`` gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CalibrationError, InputError
from ..io.slicer_scene import matrix_array, new_matrix
from ..io.slicer_sequences import (browser_sequences, check_not_recording, lone_sequence_sweep,
                                   pick_image_sequence, poses_in_image_geometry, sweep_from_pixel_to_world)
from ..sweep import Sweep


def _matrix(getter: Any) -> np.ndarray:
    m = new_matrix()
    getter(m)
    return matrix_array(m)


def _frame_shape(volume: Any, what: str) -> tuple[int, int]:
    image = volume.GetImageData() if volume is not None else None
    if image is None:
        raise InputError(f"The {what} has an item without an image.", "Record or import the frames again.")
    w, h, d = image.GetDimensions()
    if d != 1:
        raise InputError(f"The {what} items are 3D volumes ({d} slices), not 2D frames.",
                         "Pick a sequence of single-slice ultrasound images.")
    return int(h), int(w)


def _data_node(browser: Any, seq: Any, index_value: str, n: int) -> Any:
    """The item of ``seq`` that the browser shows at its item ``n`` (index value ``index_value``)."""
    if seq.GetID() == browser.GetMasterSequenceNode().GetID():
        return seq.GetNthDataNode(n)
    return seq.GetDataNodeAtValue(index_value, False)


def lone_sequence_geometry(seq: Any, pixel_spacing: tuple[float, float] | None = None) -> Sweep:
    """Shape, spacing and (when PLUS embedded them in the IJKToRAS) poses of a lone image sequence."""
    n = seq.GetNumberOfDataNodes()
    if n == 0:
        raise InputError(f"The sequence '{seq.GetName()}' is empty.", "Record or import frames first.")
    shape = _frame_shape(seq.GetNthDataNode(0), f"image sequence '{seq.GetName()}'")
    frames = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (n, *shape))
    return lone_sequence_sweep(seq, frames, pixel_spacing)  # as FreehandReconLogic.readSweep does


def browser_geometry(browser: Any, image_sequence: Any = None,
                     pixel_spacing: tuple[float, float] | None = None) -> Sweep:
    """The sweep of ``browser`` as ``sweep_from_browser`` would read it, minus the pixels (and channels)."""
    scene = browser.GetScene()
    if scene is None:
        raise InputError("The sequence browser is not in an MRML scene.", "Pass a browser node from a scene.")
    check_not_recording(browser)
    sequences = browser_sequences(browser)
    image_seq = pick_image_sequence(browser, sequences, image_sequence)
    master = browser.GetMasterSequenceNode()
    n_frames = browser.GetNumberOfItems()
    if n_frames == 0 or master is None:
        raise InputError(f"The sequence browser '{browser.GetName()}' has no items.", "Record or import frames first.")
    what = f"image sequence '{image_seq.GetName()}'"
    proxy = browser.GetProxyNode(image_seq)
    chain = []  # the transforms above the image proxy, nearest first
    node = proxy.GetParentTransformNode() if proxy is not None else None
    while node is not None:
        if not node.IsLinear():
            raise CalibrationError(f"The transforms above '{proxy.GetName()}' are not linear.",
                                   "Harden or remove the non-linear (grid/b-spline) transform first.")
        played = browser.GetSequenceNode(node)
        if played is not None and not browser.GetPlayback(played):
            played = None
        chain.append((node, played))
        node = node.GetParentTransformNode()
    pixel_to_world = np.empty((n_frames, 4, 4))
    ijk_spacing = np.empty((n_frames, 2))
    shape = None
    for n in range(n_frames):
        value = master.GetNthIndexValue(n)
        image = _data_node(browser, image_seq, value, n)
        if shape is None:
            shape = _frame_shape(image, what)
        ijk = _matrix(image.GetIJKToRASMatrix)
        ijk_spacing[n] = np.linalg.norm(ijk[:3, :2], axis=0)
        to_world = np.eye(4)
        for static, played in chain:
            source = _data_node(browser, played, value, n) if played is not None else static
            to_world = _matrix(source.GetMatrixTransformToParent) @ to_world if source is not None else to_world
        pixel_to_world[n] = to_world @ ijk
    frames = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (n_frames, *shape))
    meta = {"source": "mrml", "browser": browser.GetName(), "image_sequence": image_seq.GetName(),
            "transform_chain": [static.GetName() for static, _ in chain]}
    has_poses = bool(chain)
    if not chain and poses_in_image_geometry(pixel_to_world):  # PLUS EmbeddedTransformToFrame
        has_poses = True
        meta["poses_in_image_geometry"] = True
    return sweep_from_pixel_to_world(frames, {}, pixel_to_world, has_poses, pixel_spacing,
                                     ijk_spacing.mean(axis=0), None, meta)
