"""Sweeps as Slicer sequences: a sweep <-> a sequence browser of an MRML scene.

A sweep in a scene is what PLUS and SlicerIGT produce: a sequence browser whose master
sequence holds one scalar volume per frame (IJKToRAS = diag(sx, sy, 1), origin 0) and a
synchronized linear transform sequence ``<name>_ImageToReference`` holding the
image-to-world matrices. The image proxy node is placed under the transform proxy node,
so the proxy chain reproduces ``pixel_to_world`` in Slicer's views. Reading goes the
other way through the proxies, so any user-made chain of parent transforms is honoured.

This is the in-memory form of the Slicer sweep files (:mod:`freehandrecon.io.slicer_files`); the scene
(:mod:`freehandrecon.scene`) uses it for browsers the user recorded or loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import geometry
from ..channels import check_channel_timestamps
from ..errors import CalibrationError, InputError
from ..sweep import Sweep, to_grey
from .slicer_scene import (array_from_volume, get_logic, ijk_to_ras, matrix_array, new_matrix, unique_name,
                           update_volume_from_array, vtk_matrix)

ROLE_ATTRIBUTE = "FreehandRecon.Role"        # on sequence nodes: "image", "channel" or "ImageToReference"


CHANNEL_ATTRIBUTE = "FreehandRecon.Channel"  # on channel sequence nodes: the Sweep.channels key


TRANSFORM_SUFFIX = "_ImageToReference"


def _index_values(sweep: Sweep) -> tuple[list[str], str, str]:
    """Index values (strings), index name and unit for a sweep's frames."""
    t = sweep.timestamps
    if t is not None and np.all(np.isfinite(t)) and np.all(np.diff(t) > 0):
        return [repr(float(v)) for v in t], "time", "s"
    # Repeated or missing timestamps cannot index a sequence (equal values replace items).
    return [str(n) for n in range(sweep.num_frames)], "frame", ""


def _image_sequence(scene: Any, frames: np.ndarray, spacing: tuple[float, float], values: Sequence[str],
                    index_name: str, index_unit: str, name: str) -> Any:
    import slicer

    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", unique_name(scene, name))
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(seq.NumericIndex)
    scratch = slicer.vtkMRMLScalarVolumeNode()
    ijk = geometry.pixel_scale_matrix(spacing)
    for n, value in enumerate(values):
        update_volume_from_array(scratch, np.ascontiguousarray(frames[n])[None])
        scratch.SetIJKToRASMatrix(vtk_matrix(ijk))
        seq.SetDataNodeAtValue(scratch, value)
    return seq


def add_transform_sequence(scene: Any, image_to_world: np.ndarray, name: str, browser: Any = None) -> Any:
    """A linear transform sequence of ``[N, 4, 4]`` matrices (transform to parent).

    With ``browser`` it is indexed like the browser's master sequence (frame counts must
    match) and added to it, so a proxy transform node named like the sequence appears.
    Without, it is indexed by frame number.
    """
    import slicer

    mats = geometry.validate_transforms(image_to_world, "image-to-world transforms")
    if browser is not None:
        master = browser.GetMasterSequenceNode()
        if master is None:
            raise InputError(f"The sequence browser '{browser.GetName()}' has no master sequence.",
                             "Add the image sequence to the browser first.")
        if master.GetNumberOfDataNodes() != len(mats):
            raise InputError(f"{len(mats)} transforms for the {master.GetNumberOfDataNodes()} items of browser "
                             f"'{browser.GetName()}'.", "Give exactly one transform per frame of the browser.")
        values = [master.GetNthIndexValue(n) for n in range(len(mats))]
        index_name, index_unit, index_type = master.GetIndexName(), master.GetIndexUnit(), master.GetIndexType()
    else:
        values, index_name, index_unit = [str(n) for n in range(len(mats))], "frame", ""
        index_type = slicer.vtkMRMLSequenceNode.NumericIndex
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", unique_name(scene, name))
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(index_type)
    seq.SetAttribute(ROLE_ATTRIBUTE, "ImageToReference")
    scratch = slicer.vtkMRMLLinearTransformNode()
    for m, value in zip(mats, values):
        scratch.SetMatrixTransformToParent(vtk_matrix(m))
        seq.SetDataNodeAtValue(scratch, value)
    if browser is not None:
        browser.AddSynchronizedSequenceNode(seq)
        get_logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    return seq


def sweep_to_browser(scene: Any, sweep: Sweep, name: str = "Sweep") -> Any:
    """Put a sweep into ``scene`` as a sequence browser (see the module docstring).

    Sequences: ``<name>`` (B-mode frames, master), ``<name>_<channel>`` per extra channel and,
    when the sweep has poses, ``<name>_ImageToReference``. Index values are the timestamps
    (seconds) when they strictly increase, otherwise frame numbers.
    """
    sweep.validate()
    base = unique_name(scene, name)
    values, index_name, index_unit = _index_values(sweep)
    image = _image_sequence(scene, sweep.frames, sweep.pixel_spacing, values, index_name, index_unit, base)
    image.SetAttribute(ROLE_ATTRIBUTE, "image")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", unique_name(scene, f"{base} browser"))
    browser.SetAndObserveMasterSequenceNodeID(image.GetID())
    channel_seqs = []
    for ch, frames in sweep.channels.items():
        seq = _image_sequence(scene, frames, sweep.pixel_spacing, values, index_name, index_unit, f"{base}_{ch}")
        seq.SetAttribute(ROLE_ATTRIBUTE, "channel")
        seq.SetAttribute(CHANNEL_ATTRIBUTE, ch)
        browser.AddSynchronizedSequenceNode(seq)
        channel_seqs.append(seq)
    logic = get_logic(scene, "sequences")
    logic.UpdateProxyNodesFromSequences(browser)
    transform_proxy = None
    if sweep.image_to_world is not None:
        tseq = add_transform_sequence(scene, sweep.image_to_world, f"{base}{TRANSFORM_SUFFIX}", browser)
        transform_proxy = browser.GetProxyNode(tseq)
    for seq in [image, *channel_seqs]:
        proxy = browser.GetProxyNode(seq)
        if transform_proxy is not None:
            proxy.SetAndObserveTransformNodeID(transform_proxy.GetID())
        if proxy.GetDisplayNode() is None:
            proxy.CreateDefaultDisplayNodes()
    browser.SetSelectedItemNumber(0)
    logic.UpdateProxyNodesFromSequences(browser)
    return browser


def _node(scene: Any, ref: Any) -> Any:
    if ref is None or not isinstance(ref, str):
        return ref
    return scene.GetNodeByID(ref) or scene.GetFirstNodeByName(ref)


def is_image_sequence(seq: Any) -> bool:
    return seq.GetDataNodeClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


def browser_sequences(browser: Any) -> list[Any]:
    from vtkmodules.vtkCommonCore import vtkCollection

    collection = vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def pick_image_sequence(browser: Any, sequences: list[Any], image_sequence: Any) -> Any:
    if image_sequence is not None:
        seq = _node(browser.GetScene(), image_sequence)
        if seq is None or all(seq is not s and seq.GetID() != s.GetID() for s in sequences):
            raise InputError(f"The image sequence '{image_sequence}' is not in browser '{browser.GetName()}'.",
                             "Pick one of the browser's own sequences.")
        if not is_image_sequence(seq):
            raise InputError(f"The sequence '{seq.GetName()}' holds {seq.GetDataNodeClassName()} items, not images.",
                             "Pick the sequence of ultrasound frames.")
        return seq
    images = [s for s in sequences if is_image_sequence(s)]
    if not images:
        raise InputError(f"The sequence browser '{browser.GetName()}' has no image (volume) sequence.",
                         "Add the recorded ultrasound frames to the browser, or pick another browser.")
    tagged = [s for s in images if s.GetAttribute(ROLE_ATTRIBUTE) == "image"]
    master = browser.GetMasterSequenceNode()
    if tagged:
        return tagged[0]
    if master is not None and is_image_sequence(master):
        return master
    return images[0]


def _frame(proxy: Any, what: str) -> np.ndarray:
    a = array_from_volume(proxy)
    if a.shape[0] != 1:
        raise InputError(f"The {what} items are 3D volumes ({a.shape[0]} slices), not 2D frames.",
                         "Pick a sequence of single-slice ultrasound images.")
    return a[0]


def _timestamps(browser: Any, count: int) -> np.ndarray | None:
    master = browser.GetMasterSequenceNode()
    if master is None or master.GetIndexType() != master.NumericIndex:
        return None
    if master.GetIndexName() != "time" and master.GetIndexUnit() != "s":
        return None
    try:
        return np.array([float(master.GetNthIndexValue(n)) for n in range(count)])
    except ValueError:
        return None


def _check_channel_index(image_seq: Any, seq: Any) -> None:
    """Channel items must sit at the image items' index values (timestamps), frame by frame."""
    if seq.GetIndexType() != seq.NumericIndex or image_seq.GetIndexType() != image_seq.NumericIndex:
        return
    try:
        values = [[float(s.GetNthIndexValue(n)) for n in range(s.GetNumberOfDataNodes())] for s in (image_seq, seq)]
    except ValueError:
        return
    check_channel_timestamps(np.array(values[0]), np.array(values[1]), seq.GetName())


def sweep_from_browser(browser: Any, image_sequence: Any = None,
                       pixel_spacing: tuple[float, float] | None = None) -> Sweep:
    """Read a sweep back from a sequence browser through its proxy nodes.

    For each browser item, pixel-to-world is the image proxy's IJKToRAS followed by all its
    parent transforms to world (as Slicer's Volume Reconstruction does), so any chain of
    (sequence or static) linear transforms works. ``pixel_spacing`` (mm) defaults to the
    column lengths of pixel-to-world (mean over frames), so a scale inside a calibration
    transform is found too. Other image sequences of the browser become channels. With no
    transform above the image the sweep has no poses (``image_to_world`` None).
    """
    scene = browser.GetScene() if browser is not None else None
    if scene is None:
        raise InputError("The sequence browser is not in an MRML scene.", "Pass a browser node from a scene.")
    check_not_recording(browser)
    sequences = browser_sequences(browser)
    image_seq = pick_image_sequence(browser, sequences, image_sequence)
    channel_seqs = [s for s in sequences if is_image_sequence(s) and s.GetID() != image_seq.GetID()]
    n_frames = browser.GetNumberOfItems()
    for seq in channel_seqs:
        if seq.GetNumberOfDataNodes() != image_seq.GetNumberOfDataNodes():
            raise InputError(f"Channel sequence '{seq.GetName()}' has {seq.GetNumberOfDataNodes()} frames but the "
                             f"image sequence '{image_seq.GetName()}' has {image_seq.GetNumberOfDataNodes()}.",
                             "Record or import the channels together so that every frame has a partner, or remove "
                             "the extra sequence from the browser.")
        _check_channel_index(image_seq, seq)
    logic = get_logic(scene, "sequences")
    logic.UpdateProxyNodesFromSequences(browser)
    image_proxy = browser.GetProxyNode(image_seq)
    channel_proxies = {(s.GetAttribute(CHANNEL_ATTRIBUTE) or s.GetName()): browser.GetProxyNode(s)
                       for s in channel_seqs}
    selected = browser.GetSelectedItemNumber()
    frames = channels = None
    pixel_to_world = np.zeros((n_frames, 4, 4))
    ijk_spacing = np.zeros((n_frames, 2))
    chain: list[str] = []
    has_poses = True
    any_parent = False
    try:
        for n in range(n_frames):
            browser.SetSelectedItemNumber(n)
            logic.UpdateProxyNodesFromSequences(browser)
            frame = _frame(image_proxy, f"image sequence '{image_seq.GetName()}'")
            if frames is None:
                frames = np.empty((n_frames, *frame.shape), dtype=frame.dtype)
                channels = {k: None for k in channel_proxies}
            if frame.shape != frames.shape[1:]:
                raise InputError(f"Frame {n} of '{image_seq.GetName()}' is {frame.shape[1]}x{frame.shape[0]} pixels "
                                 f"but frame 0 is {frames.shape[2]}x{frames.shape[1]}.",
                                 "Resample the frames to one size before reconstruction.")
            frames[n] = frame
            for key, proxy in channel_proxies.items():
                c = _frame(proxy, f"channel sequence '{key}'")
                if channels[key] is None:
                    channels[key] = np.empty((n_frames, *c.shape), dtype=c.dtype)
                if c.shape != channels[key].shape[1:]:
                    raise InputError(f"Frame {n} of channel '{key}' changes size.", "Resample the channel frames.")
                channels[key][n] = c
            ijk_spacing[n] = np.linalg.norm(ijk_to_ras(image_proxy)[:3, :2], axis=0)
            parent = image_proxy.GetParentTransformNode()
            if parent is None:
                has_poses = False
                pixel_to_world[n] = ijk_to_ras(image_proxy)
                continue
            any_parent = True
            if not parent.IsTransformToWorldLinear():
                raise CalibrationError(f"The transforms above '{image_proxy.GetName()}' are not linear.",
                                       "Harden or remove the non-linear (grid/b-spline) transform first.")
            to_world = new_matrix()
            parent.GetMatrixTransformToWorld(to_world)
            pixel_to_world[n] = matrix_array(to_world) @ ijk_to_ras(image_proxy)
            if n == 0:
                node = parent
                while node is not None:
                    chain.append(node.GetName())
                    node = node.GetParentTransformNode()
    finally:
        browser.SetSelectedItemNumber(selected)
        logic.UpdateProxyNodesFromSequences(browser)
    if frames is None:
        raise InputError(f"The sequence browser '{browser.GetName()}' has no items.", "Record or import frames first.")
    embedded = not any_parent and poses_in_image_geometry(pixel_to_world)
    meta = {"source": "mrml", "browser": browser.GetName(), "image_sequence": image_seq.GetName(),
            "transform_chain": chain}
    if embedded:  # PLUS EmbeddedTransformToFrame: each frame's pose is its IJKToRAS
        has_poses = True
        meta["poses_in_image_geometry"] = True
    return sweep_from_pixel_to_world(frames, channels or {}, pixel_to_world, has_poses, pixel_spacing,
                                      ijk_spacing.mean(axis=0), _timestamps(browser, n_frames), meta)


def check_not_recording(browser: Any) -> None:
    """Refuse a browser that is recording: Slicer does not update its proxy nodes then, so every item
    would read as the same live frame."""
    if browser is not None and browser.GetRecordingActive():
        raise InputError(f"The browser '{browser.GetName()}' is recording; stop recording first.",
                         "Press the stop-recording button in the Sequences toolbar (or call "
                         "browser.SetRecordingActive(False)), then reconstruct.")


def poses_in_image_geometry(ijk_to_ras: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether ``[N, 4, 4]`` per-frame IJKToRAS matrices place the frames differently (a pose per frame, as
    PLUS writes with EmbeddedTransformToFrame), rather than only differing in pixel spacing."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if len(m) < 2:
        return False
    cols = m[:, :3, :3]
    directions = cols / np.maximum(np.linalg.norm(cols, axis=1, keepdims=True), 1e-12)
    origins = m[:, :3, 3]
    scale = max(1.0, float(np.abs(origins).max()))
    return bool(np.ptp(directions, axis=0).max() > tol or np.ptp(origins, axis=0).max() > tol * scale)


def image_sequence_ijk_to_ras(image_seq: Any) -> np.ndarray:
    """``[N, 4, 4]`` IJKToRAS of every item of an image sequence, read from the items (not the proxy)."""
    return np.array([ijk_to_ras(image_seq.GetNthDataNode(n))
                     for n in range(image_seq.GetNumberOfDataNodes())]).reshape(-1, 4, 4)


def _grey(frames: np.ndarray, what: str, meta: dict[str, Any]) -> np.ndarray:
    if frames.ndim == 4:
        meta.setdefault("warnings", []).append(f"{what} were colour; converted to grey.")
        return to_grey(frames)
    return frames


def sweep_from_pixel_to_world(frames: np.ndarray, channels: dict[str, np.ndarray], pixel_to_world: np.ndarray,
                               has_poses: bool, pixel_spacing: tuple[float, float] | None,
                               image_spacing: np.ndarray, timestamps: np.ndarray | None,
                               meta: dict[str, Any]) -> Sweep:
    """A sweep from frames and their ``[N, 4, 4]`` pixel-to-world matrices (``has_poses`` False: no poses)."""
    frames = _grey(frames, "Image frames", meta)
    channels = {k: _grey(v, f"Channel '{k}' frames", meta) for k, v in channels.items()}
    if pixel_spacing is None:
        lengths = np.linalg.norm(pixel_to_world[:, :3, :2], axis=1).mean(axis=0)
        # Rigid transforms above the image: keep the image's own spacing, free of the
        # rounding of transforms read from files (6 significant digits in .seq.mha).
        if np.allclose(lengths, image_spacing, rtol=1e-4, atol=0):
            lengths = image_spacing
        pixel_spacing = (float(lengths[0]), float(lengths[1]))
    sweep_spacing = tuple(float(v) for v in pixel_spacing)
    image_to_world = None
    if has_poses:
        sx, sy = sweep_spacing
        if not (sx > 0 and sy > 0):
            raise InputError(f"Pixel spacing must be positive, got ({sx}, {sy}) mm.", "Give the true spacing in mm.")
        image_to_world = pixel_to_world @ np.diag([1.0 / sx, 1.0 / sy, 1.0, 1.0])
        # The third column only acts on z = 0; keep it a unit normal.
        z = np.linalg.norm(image_to_world[:, :3, 2], axis=1)
        image_to_world[:, :3, 2] /= np.where(z > 0, z, 1.0)[:, None]
    return Sweep(frames=frames, pixel_spacing=sweep_spacing, image_to_world=image_to_world,
                 timestamps=timestamps, channels=channels, metadata=meta)


def lone_sequence_sweep(seq: Any, frames: np.ndarray, pixel_spacing: tuple[float, float] | None = None) -> Sweep:
    """A sweep of a lone image sequence's ``frames`` (real pixels, or a zero-stride stand-in for geometry only):
    posed when PLUS embedded the poses in each frame's IJKToRAS (EmbeddedTransformToFrame), else unposed with
    the first frame's spacing (or ``pixel_spacing``)."""
    ijk = image_sequence_ijk_to_ras(seq)
    meta = {"source": "mrml", "image_sequence": seq.GetName(), "transform_chain": []}
    if poses_in_image_geometry(ijk):
        meta["poses_in_image_geometry"] = True
        return sweep_from_pixel_to_world(frames, {}, ijk, True, pixel_spacing,
                                         np.linalg.norm(ijk[:, :3, :2], axis=1).mean(axis=0), None, meta)
    if pixel_spacing is None:
        pixel_spacing = tuple(float(v) for v in np.linalg.norm(ijk[0, :3, :2], axis=0))
    return Sweep(frames=frames, pixel_spacing=pixel_spacing, metadata=meta)
