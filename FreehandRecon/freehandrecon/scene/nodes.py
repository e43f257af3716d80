"""Sweeps and volumes as real Slicer MRML nodes (through slicer-core), and their files.

A sweep in a scene is what PLUS and SlicerIGT produce: a sequence browser whose master
sequence holds one scalar volume per frame (IJKToRAS = diag(sx, sy, 1), origin 0) and a
synchronized linear transform sequence ``<name>_ImageToReference`` holding the
image-to-world matrices. The image proxy node is placed under the transform proxy node,
so the proxy chain reproduces ``pixel_to_world`` in Slicer's views. Reading goes the
other way through the proxies, so any user-made chain of parent transforms is honoured.

Files: volumes ``.nrrd``, image sequences ``.seq.nrrd`` (exact index values),
transform sequences ``.seq.mha`` (Slicer's and PLUS's format; Slicer writes matrix
elements with 6 significant digits), scenes ``.mrb``. Every write is atomic: the file
appears complete or not at all.

This module (with :mod:`freehandrecon.render`) is the only one that imports ``slicer``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from slicer import util

from .. import geometry
from ..errors import CalibrationError, InputError, OutputExistsError
from ..io.common import atomic_outputs, existing_file
from ..sweep import Sweep, check_channel_name, to_grey

PRESETS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Presets"
PRESETS_FILE = PRESETS_DIR / "FreehandReconPresets.xml"
PRESET_NAMES = ("US-BMode", "PA-Hot", "Doppler-Red")

ROLE_ATTRIBUTE = "FreehandRecon.Role"        # on sequence nodes: "image", "channel" or "ImageToReference"
CHANNEL_ATTRIBUTE = "FreehandRecon.Channel"  # on channel sequence nodes: the Sweep.channels key
TRANSFORM_SUFFIX = "_ImageToReference"
CHANNEL_FILE_INFIX = "_channel-"             # <stem>_channel-<name>.seq.nrrd beside <stem>.seq.nrrd

# Single-file formats only, so that a temporary file can be renamed into place.
_WRITE_SUFFIXES = {
    "volume": (".nrrd", ".nii", ".nii.gz", ".mha"),
    "image sequence": (".seq.nrrd",),
    "transform sequence": (".seq.mha",),
    "transform": (".h5", ".tfm", ".txt"),
}

_LOGICS_ATTRIBUTE = "_freehandrecon_logics"  # module logics kept alive with the scene's Python wrapper


# --- scene --------------------------------------------------------------------------------------

def _slicer_version_string() -> str:
    """'Slicer<major>.<minor>.0 <revision>' for the slicer-core build (its MRML is that Slicer's)."""
    try:
        parts = metadata.version("slicer-core").split(".")
        return f"Slicer{parts[0]}.{parts[1]}.0 {parts[2]}"
    except (metadata.PackageNotFoundError, IndexError):
        return "Slicer5.0.0 0"


def new_scene() -> Any:
    """A vtkMRMLScene with the logics FreehandRecon needs, ready for nodes, files and rendering.

    Registered: application, colour (default colour tables), sequences, volumes, volume
    rendering (presets from FreehandRecon's Resources/Presets), markups (the volume
    rendering ROI) and transforms logics; a cache manager and data IO manager so that
    ``ReadFromMRB`` works. The logics stay alive as long as the scene's Python object.
    """
    scene = slicer.vtkMRMLScene()
    scene.SetVersion(_slicer_version_string())
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    logics: dict[str, Any] = {"application": app, "colors": colors}
    for key, cls in (("sequences", "vtkSlicerSequencesLogic"), ("volumes", "vtkSlicerVolumesLogic"),
                     ("volumerendering", "vtkSlicerVolumeRenderingLogic"), ("markups", "vtkSlicerMarkupsLogic"),
                     ("transforms", "vtkSlicerTransformLogic")):
        logic = getattr(slicer, cls)()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(key, logic)
        logics[key] = logic
    _load_presets(logics["volumerendering"])
    cache_dir = tempfile.mkdtemp(prefix="freehandrecon-mrml-cache-")
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_dir)
    scene.SetCacheManager(cache)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    setattr(scene, _LOGICS_ATTRIBUTE, logics)
    # the cache folder goes with the scene (or at exit), so headless runs leave no temporary folders behind
    weakref.finalize(scene, shutil.rmtree, cache_dir, True)
    return scene


def _load_presets(vr_logic: Any) -> None:
    """Make FreehandRecon's presets the logic's presets scene (headless scenes only).

    The logic's own loader wants ``<share>/presets.xml`` and Slicer's CT/MR presets; ours
    are loaded instead. Slicer's automatic choice for 8-bit volumes asks for a preset named
    "US-Fetal" and crashes without one, so US-BMode is also offered under that name.
    """
    vr_logic.SetModuleShareDirectory(str(PRESETS_DIR))
    vr_logic.LoadCustomPresetsScene(str(PRESETS_FILE))  # creates the presets scene ...
    vr_logic.GetPresetsScene().RegisterNodeClass(slicer.vtkMRMLVolumePropertyNode())
    if not vr_logic.LoadCustomPresetsScene(str(PRESETS_FILE)):  # ... which can now read the nodes
        raise InputError(f"Could not read the volume rendering presets '{PRESETS_FILE}'.",
                         "Reinstall FreehandRecon; the file ships in FreehandRecon/Resources/Presets.")
    if vr_logic.GetPresetByName("US-Fetal") is None:
        alias = slicer.vtkMRMLVolumePropertyNode()
        alias.CopyContent(vr_logic.GetPresetByName("US-BMode"))
        alias.SetName("US-Fetal")
        vr_logic.GetPresetsScene().AddNode(alias)


def register_presets(vr_logic: Any) -> list[str]:
    """Add FreehandRecon's presets to a volume rendering logic that has its own (the Slicer app).

    Returns the names added; presets already present by name are left alone.
    """
    presets = vr_logic.GetPresetsScene()
    reader = slicer.vtkMRMLScene()
    reader.RegisterNodeClass(slicer.vtkMRMLVolumePropertyNode())
    reader.SetURL(str(PRESETS_FILE))
    if not reader.Import():
        raise InputError(f"Could not read the volume rendering presets '{PRESETS_FILE}'.",
                         "Reinstall FreehandRecon; the file ships in FreehandRecon/Resources/Presets.")
    added = []
    for i in range(reader.GetNumberOfNodesByClass("vtkMRMLVolumePropertyNode")):
        node = reader.GetNthNodeByClass(i, "vtkMRMLVolumePropertyNode")
        if presets.GetFirstNodeByName(node.GetName()) is None:
            vr_logic.AddPreset(node, None, True)
            added.append(node.GetName())
    return added


def get_logic(scene: Any, name: str) -> Any:
    """The module logic ``name`` ("sequences", "volumerendering", ...) serving ``scene``.

    Scenes from :func:`new_scene` carry their own; inside the Slicer application the
    module's logic is used.
    """
    logics = getattr(scene, _LOGICS_ATTRIBUTE, None)
    if logics and name in logics:
        return logics[name]
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, name):
        return getattr(modules, name).logic()
    raise InputError(f"The MRML scene has no {name} logic (it was not made by freehandrecon.mrml.new_scene()).",
                     "Create the scene with freehandrecon.mrml.new_scene(), or use slicer.mrmlScene in Slicer.")


def unique_name(scene: Any, name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, ... whichever no node in ``scene`` has yet."""
    if not name or not str(name).strip():
        raise InputError("A node name must not be empty.", "Give a name such as 'Sweep' or 'Reconstruction'.")
    # Scene's own GenerateUniqueName counts calls, not nodes; this one only avoids names in use.
    candidate, k = str(name), 0
    while scene.GetFirstNodeByName(candidate) is not None:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    return util.vtkMatrixFromArray(np.asarray(array, dtype=np.float64))


def _array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return util.arrayFromVTKMatrix(matrix)


def _ijk_to_ras(volume: Any) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return _array(m)


# --- volumes ------------------------------------------------------------------------------------

def _volume_array(array_kji: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(array_kji)
    if a.ndim != 3:
        raise InputError(f"The {what} must be a 3D array [k, j, i]; got shape {a.shape}.",
                         "Pass one scalar volume as [slices, rows, columns].")
    if min(a.shape) < 1:
        raise InputError(f"The {what} is empty (shape {a.shape}).", "Check the grid; every axis needs a voxel.")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    elif not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"The {what} has unsupported type {a.dtype}.", "Convert it to uint8, int16 or float32.")
    return np.ascontiguousarray(a)


def _check_ijk_to_ras(ijk_to_ras: np.ndarray) -> np.ndarray:
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if m.shape != (4, 4):
        raise CalibrationError(f"IJKToRAS must be a 4x4 matrix; got shape {m.shape}.",
                               "Pass the voxel-to-world matrix of the grid (spacing and direction included).")
    geometry.validate_transforms(m[None], "IJKToRAS matrix")
    if not np.allclose(m[3], (0, 0, 0, 1)):
        raise CalibrationError(f"IJKToRAS has last row {m[3].tolist()}; expected [0, 0, 0, 1].",
                               "Pass an affine matrix.")
    return m


def add_volume_node(scene: Any, array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str,
                    replace: Any = None) -> Any:
    """Put a ``[k, j, i]`` array with its voxel-to-RAS matrix into a scalar volume node.

    A new node gets a unique name (a user's node is never silently reused). Passing
    ``replace=node`` is explicit permission to update that node in place (name kept).
    """
    a = _volume_array(array_kji, "volume array")
    m = _check_ijk_to_ras(ijk_to_ras)
    if replace is not None:
        is_volume = hasattr(replace, "IsA") and replace.IsA("vtkMRMLScalarVolumeNode")
        if not is_volume or replace.IsA("vtkMRMLLabelMapVolumeNode"):
            label = replace.GetName() if hasattr(replace, "GetName") else repr(replace)
            raise InputError(f"Cannot replace '{label}': it is not a scalar volume node.",
                             "Choose a scalar volume as the output, or let FreehandRecon create a new one.")
        if replace.GetScene() is not scene:
            raise InputError(f"The volume '{replace.GetName()}' to replace is not in this scene.",
                             "Pick an output volume from the same scene.")
        node = replace
    else:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", unique_name(scene, name))
    modifying = node.StartModify()
    util.updateVolumeFromArray(node, a)
    node.SetIJKToRASMatrix(_matrix(m))
    node.EndModify(modifying)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --- sequences and browsers ---------------------------------------------------------------------

def _index_values(sweep: Sweep) -> tuple[list[str], str, str]:
    """Index values (strings), index name and unit for a sweep's frames."""
    t = sweep.timestamps
    if t is not None and np.all(np.isfinite(t)) and np.all(np.diff(t) > 0):
        return [repr(float(v)) for v in t], "time", "s"
    # Repeated or missing timestamps cannot index a sequence (equal values replace items).
    return [str(n) for n in range(sweep.num_frames)], "frame", ""


def _image_sequence(scene: Any, frames: np.ndarray, spacing: tuple[float, float], values: Sequence[str],
                    index_name: str, index_unit: str, name: str) -> Any:
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", unique_name(scene, name))
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(seq.NumericIndex)
    scratch = slicer.vtkMRMLScalarVolumeNode()
    ijk = geometry.pixel_scale_matrix(spacing)
    for n, value in enumerate(values):
        util.updateVolumeFromArray(scratch, np.ascontiguousarray(frames[n])[None])
        scratch.SetIJKToRASMatrix(_matrix(ijk))
        seq.SetDataNodeAtValue(scratch, value)
    return seq


def add_transform_sequence(scene: Any, image_to_world: np.ndarray, name: str, browser: Any = None) -> Any:
    """A linear transform sequence of ``[N, 4, 4]`` matrices (transform to parent).

    With ``browser`` it is indexed like the browser's master sequence (frame counts must
    match) and added to it, so a proxy transform node named like the sequence appears.
    Without, it is indexed by frame number.
    """
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
        scratch.SetMatrixTransformToParent(_matrix(m))
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


def _is_image_sequence(seq: Any) -> bool:
    return seq.GetDataNodeClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


def _browser_sequences(browser: Any) -> list[Any]:
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _pick_image_sequence(browser: Any, sequences: list[Any], image_sequence: Any) -> Any:
    if image_sequence is not None:
        seq = _node(browser.GetScene(), image_sequence)
        if seq is None or all(seq is not s and seq.GetID() != s.GetID() for s in sequences):
            raise InputError(f"The image sequence '{image_sequence}' is not in browser '{browser.GetName()}'.",
                             "Pick one of the browser's own sequences.")
        if not _is_image_sequence(seq):
            raise InputError(f"The sequence '{seq.GetName()}' holds {seq.GetDataNodeClassName()} items, not images.",
                             "Pick the sequence of ultrasound frames.")
        return seq
    images = [s for s in sequences if _is_image_sequence(s)]
    if not images:
        raise InputError(f"The sequence browser '{browser.GetName()}' has no image (volume) sequence.",
                         "Add the recorded ultrasound frames to the browser, or pick another browser.")
    tagged = [s for s in images if s.GetAttribute(ROLE_ATTRIBUTE) == "image"]
    master = browser.GetMasterSequenceNode()
    if tagged:
        return tagged[0]
    if master is not None and _is_image_sequence(master):
        return master
    return images[0]


def _frame(proxy: Any, what: str) -> np.ndarray:
    a = util.arrayFromVolume(proxy)
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
    from ..channels import check_channel_timestamps

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
    sequences = _browser_sequences(browser)
    image_seq = _pick_image_sequence(browser, sequences, image_sequence)
    channel_seqs = [s for s in sequences if _is_image_sequence(s) and s.GetID() != image_seq.GetID()]
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
            ijk_spacing[n] = np.linalg.norm(_ijk_to_ras(image_proxy)[:3, :2], axis=0)
            parent = image_proxy.GetParentTransformNode()
            if parent is None:
                has_poses = False
                pixel_to_world[n] = _ijk_to_ras(image_proxy)
                continue
            any_parent = True
            if not parent.IsTransformToWorldLinear():
                raise CalibrationError(f"The transforms above '{image_proxy.GetName()}' are not linear.",
                                       "Harden or remove the non-linear (grid/b-spline) transform first.")
            to_world = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(to_world)
            pixel_to_world[n] = _array(to_world) @ _ijk_to_ras(image_proxy)
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
    return np.array([_ijk_to_ras(image_seq.GetNthDataNode(n))
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


# --- files --------------------------------------------------------------------------------------

def _kind(node: Any) -> str:
    if node.IsA("vtkMRMLSequenceNode"):
        cls = node.GetDataNodeClassName()
        if cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
            return "image sequence"
        if cls == "vtkMRMLLinearTransformNode":
            return "transform sequence"
        return f"sequence of {cls or 'nothing'}"
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return "volume"
    if node.IsA("vtkMRMLTransformNode"):
        return "transform"
    return node.GetClassName()


def _write(node: Any, path: Path, compress: bool = True) -> None:
    """Write ``node`` to exactly ``path`` with Slicer's storage node for that file type."""
    kind = _kind(node)
    suffixes = _WRITE_SUFFIXES.get(kind)
    name = path.name.lower()
    if suffixes is None:
        raise InputError(f"Cannot save '{node.GetName()}': saving a {kind} is not supported here.",
                         "Save volumes, image sequences, transform sequences or transforms.")
    if not any(name.endswith(s) for s in suffixes) or (kind == "volume" and name.endswith(".seq.nrrd")):
        raise InputError(f"Cannot save the {kind} '{node.GetName()}' as '{path.name}'.",
                         f"Use a file name ending in {' or '.join(suffixes)}.")
    scene = node.GetScene()
    storage = node.GetStorageNode()
    if storage is None or not storage.SupportedFileType(str(path)):
        storage = node.CreateDefaultStorageNode()
        if scene is not None:
            scene.AddNode(storage)
            storage.UnRegister(None)  # the scene holds it now (CreateDefaultStorageNode returned a new reference)
            node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    storage.SetUseCompression(bool(compress))
    if not storage.WriteData(node):
        raise InputError(f"Slicer could not write the {kind} '{node.GetName()}' to '{path}'.",
                         "Check the folder is writable and has free space.")


def save_node(node: Any, path: str | os.PathLike) -> Path:
    """Save a volume (.nrrd, .nii[.gz], .mha), image sequence (.seq.nrrd), transform sequence
    (.seq.mha) or transform (.h5, .tfm, .txt) atomically; returns the path.

    An existing file is replaced (callers check for overwrites). The node's storage node
    then points at ``path``, as after saving in Slicer.
    """
    target = Path(path)
    with atomic_outputs(target) as (tmp,):
        _write(node, tmp)
    node.GetStorageNode().SetFileName(str(target.absolute()))
    return target


@contextmanager
def _keep_cwd() -> Iterator[None]:
    """Restore the working directory: a failed ReadFromMRB leaves it in a deleted temp folder."""
    cwd = os.getcwd()
    try:
        yield
    finally:
        os.chdir(cwd)


def save_mrb(scene: Any, path: str | os.PathLike) -> Path:
    """Save the whole scene as a Medical Reality Bundle (.mrb) that opens in 3D Slicer; atomic."""
    target = Path(path)
    if target.suffix.lower() != ".mrb":
        raise InputError(f"A scene bundle must end in .mrb, not '{target.name}'.", "Use a name like scene.mrb.")
    with atomic_outputs(target) as (tmp,), _keep_cwd():
        if not scene.WriteToMRB(str(tmp)):
            raise InputError(f"Slicer could not write the scene bundle '{target}'.",
                             "Check the folder is writable and has free space.")
    return target


def load_mrb(path: str | os.PathLike) -> Any:
    """Read a .mrb scene bundle into a new scene (see :func:`new_scene`)."""
    p = existing_file(path, "scene bundle")
    scene = new_scene()
    with _keep_cwd():
        ok = scene.ReadFromMRB(str(p.resolve()))
    if not ok:
        raise InputError(f"'{p}' is not a readable Slicer scene bundle (.mrb).",
                         "Check the file is a complete .mrb saved by 3D Slicer or FreehandRecon.")
    return scene


def _seq_stem(path: Path) -> str:
    name = path.name
    if not name.lower().endswith(".seq.nrrd"):
        raise InputError(f"'{name}' is not an image sequence file name.", "Use a name ending in .seq.nrrd.")
    return name[: -len(".seq.nrrd")]


def _read_sequence(scene: Any, path: Path, storage_class: str, name: str) -> Any:
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", unique_name(scene, name))
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    if not storage.ReadData(seq):
        raise InputError(f"Slicer could not read the sequence file '{path}'.",
                         "Check the file is complete and was saved by 3D Slicer, PLUS or FreehandRecon.")
    return seq


def read_seq_nrrd(path: str | os.PathLike, transforms_path: str | os.PathLike | None = None,
                  pixel_spacing: tuple[float, float] | None = None) -> Sweep:
    """Read an image sequence file (.seq.nrrd) and, when present, its transform sequence.

    ``transforms_path`` defaults to ``<stem>_ImageToReference.seq.mha`` (or any
    ``<stem>_ImageToReference.seq.*``) beside the image file; channel files
    ``<stem>_channel-<name>.seq.nrrd`` beside it become channels. Without transforms the
    sweep has no poses. Poses follow :func:`sweep_from_browser` (image IJKToRAS, then the
    transform), so a frame origin or direction in the file is honoured.
    """
    p = existing_file(path, "image sequence file")
    stem = _seq_stem(p)
    if transforms_path is None:
        found = sorted(p.parent.glob(f"{stem}{TRANSFORM_SUFFIX}.seq.*"))
        tpath = found[0] if found else None
    else:
        tpath = existing_file(transforms_path, "transform sequence file")
    scene = new_scene()
    image = _read_sequence(scene, p, "vtkMRMLVolumeSequenceStorageNode", stem)
    if image.GetNumberOfDataNodes() == 0:
        raise InputError(f"'{p}' holds no frames.", "Check the file is an image sequence saved completely.")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", unique_name(scene, f"{stem} browser"))
    browser.SetAndObserveMasterSequenceNodeID(image.GetID())
    channel_seqs = []
    for cpath in sorted(p.parent.glob(f"{stem}{CHANNEL_FILE_INFIX}*.seq.nrrd")):
        ch = check_channel_name(cpath.name[len(stem) + len(CHANNEL_FILE_INFIX): -len(".seq.nrrd")], str(cpath))
        seq = _read_sequence(scene, cpath, "vtkMRMLVolumeSequenceStorageNode", f"{stem}_{ch}")
        seq.SetAttribute(CHANNEL_ATTRIBUTE, ch)
        browser.AddSynchronizedSequenceNode(seq)
        channel_seqs.append(seq)
    logic = get_logic(scene, "sequences")
    logic.UpdateProxyNodesFromSequences(browser)
    if tpath is not None:
        mats = _transform_matrices(_read_sequence(scene, tpath, "vtkMRMLLinearTransformSequenceStorageNode",
                                                  "read transforms"))
        count = len(mats)
        if count != image.GetNumberOfDataNodes():
            raise InputError(f"'{tpath.name}' has {count} transforms but '{p.name}' has "
                             f"{image.GetNumberOfDataNodes()} frames.",
                             "Pair the image file with the transform file saved with it, or pass transforms_path.")
        tseq = add_transform_sequence(scene, mats, f"{stem}{TRANSFORM_SUFFIX}", browser)
        proxy = browser.GetProxyNode(tseq)
        for seq in [image, *channel_seqs]:
            browser.GetProxyNode(seq).SetAndObserveTransformNodeID(proxy.GetID())
    sweep = sweep_from_browser(browser, image_sequence=image, pixel_spacing=pixel_spacing)
    sweep.metadata.update(source=str(p), transforms_file=None if tpath is None else str(tpath))
    if tpath is None:
        sweep.metadata["no_poses_reason"] = (f"no transform file {stem}{TRANSFORM_SUFFIX}.seq.mha beside it "
                                             f"in '{p.parent}'")
    return sweep


def _transform_matrices(seq: Any) -> np.ndarray:
    """``[N, 4, 4]`` transform-to-parent matrices of a transform sequence, in item order
    (not by index value: the .seq.mha reader rounds timestamps to milliseconds)."""
    count = seq.GetNumberOfDataNodes()
    return np.array([_array(_transform_to_parent(seq.GetNthDataNode(n))) for n in range(count)]).reshape(-1, 4, 4)


def read_transform_sequence(path: str | os.PathLike) -> np.ndarray:
    """Read a Slicer/PLUS transform sequence file (.seq.mha) -> ``[N, 4, 4]`` matrices."""
    p = existing_file(path, "transform sequence file")
    seq = _read_sequence(new_scene(), p, "vtkMRMLLinearTransformSequenceStorageNode", "transforms")
    if seq.GetNumberOfDataNodes() == 0:
        raise InputError(f"'{p}' holds no transforms.", "Check the file is a transform sequence saved completely.")
    return _transform_matrices(seq)


def _transform_to_parent(node: Any) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(m)
    return m


def seq_nrrd_paths(sweep: Sweep, path: str | os.PathLike) -> list[Path]:
    """The files :func:`write_seq_nrrd` writes for ``sweep`` at ``path``."""
    p = Path(path)
    stem = _seq_stem(p)
    paths = [p]
    if sweep.image_to_world is not None:
        paths.append(p.with_name(f"{stem}{TRANSFORM_SUFFIX}.seq.mha"))
    paths += [p.with_name(f"{stem}{CHANNEL_FILE_INFIX}{ch}.seq.nrrd") for ch in sweep.channels]
    return paths


def write_seq_nrrd(sweep: Sweep, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write a sweep as Slicer files: ``<stem>.seq.nrrd`` (frames, timestamps as index values),
    ``<stem>_ImageToReference.seq.mha`` (poses; transform name "ImageToReference") and
    ``<stem>_channel-<name>.seq.nrrd`` per channel. All files appear together or none.
    """
    paths = seq_nrrd_paths(sweep, path)
    for ch in sweep.channels:
        if not ch or any(c in ch for c in "/\\:*?\"<>|"):
            raise InputError(f"Channel name '{ch}' cannot be part of a file name.", "Rename the channel.")
    existing = [str(q) for q in paths if q.exists()]
    if existing and not force:
        raise OutputExistsError(f"{', '.join(existing)} already exist(s).",
                                "Choose another file name or pass force=True (--force) to overwrite.")
    scene = new_scene()
    browser = sweep_to_browser(scene, sweep, name="Sweep")
    by_role: dict[str, Any] = {}
    for seq in _browser_sequences(browser):
        role = seq.GetAttribute(ROLE_ATTRIBUTE)
        by_role[f"channel:{seq.GetAttribute(CHANNEL_ATTRIBUTE)}" if role == "channel" else role] = seq
    nodes = [by_role["image"]]
    if sweep.image_to_world is not None:
        tseq = by_role["ImageToReference"]
        tseq.SetName("ImageToReference")  # the PLUS transform name written into the file
        nodes.append(tseq)
    nodes += [by_role[f"channel:{ch}"] for ch in sweep.channels]
    with atomic_outputs(*paths) as temps:
        for node, tmp in zip(nodes, temps):
            _write(node, tmp)
    return paths


# --- volume rendering display -------------------------------------------------------------------

def _stretch_preset(prop_node: Any, high: float) -> None:
    """Map a preset's 0..255 intensity axis onto 0..``high`` (few nodes; not a per-voxel loop)."""
    scale = high / 255.0
    color, opacity = prop_node.GetColor(), prop_node.GetScalarOpacity()
    for i in range(color.GetSize()):
        v = [0.0] * 6
        color.GetNodeValue(i, v)
        v[0] *= scale
        color.SetNodeValue(i, v)
    for i in range(opacity.GetSize()):
        v = [0.0] * 4
        opacity.GetNodeValue(i, v)
        v[0] *= scale
        opacity.SetNodeValue(i, v)
    prop_node.SetEffectiveRange(0.0, high)


RENDERING_METHODS = {"gpu": "vtkMRMLGPURayCastVolumeRenderingDisplayNode",
                     "cpu": "vtkMRMLCPURayCastVolumeRenderingDisplayNode"}


def show_volume_rendering(scene: Any, volume_node: Any, preset: str = "US-BMode", method: str | None = None,
                          rescale: bool | None = None) -> Any:
    """Give ``volume_node`` a visible volume rendering display node with a FreehandRecon preset.

    Presets ("US-BMode", "PA-Hot", "Doppler-Red") are defined on 0..255; with ``rescale``
    (default: any volume that is not 8-bit) they are stretched onto 0..max of the volume,
    so float or 16-bit reconstructions look the same. ``method``: "gpu" or "cpu" ray casting, or None for
    the volume rendering logic's default (in Slicer: the user's choice in Application Settings > Volume
    rendering; GPU ray casting when none is set); an existing display node is then kept whatever its method.
    Returns the display node (reused if the volume already has one).
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.GetImageData() is None:
        raise InputError("Volume rendering needs a scalar volume node with image data.",
                         "Pass the reconstructed volume node (mrml.add_volume_node returns one).")
    if method is not None and method not in RENDERING_METHODS:
        raise InputError(f"Unknown volume rendering method '{method}'.", "Use 'gpu' or 'cpu' (or None for the default).")
    logic = get_logic(scene, "volumerendering")
    preset_node = logic.GetPresetByName(preset)
    if preset_node is None:
        raise InputError(f"Unknown volume rendering preset '{preset}'.", f"Use one of {', '.join(PRESET_NAMES)}.")
    display = logic.GetFirstVolumeRenderingDisplayNode(volume_node)
    if display is not None and method is not None and not display.IsA(RENDERING_METHODS[method]):
        scene.RemoveNode(display)
        display = None
    if display is None:
        # None: the logic's DefaultRenderingMethod (set from the application settings in Slicer)
        display = logic.CreateVolumeRenderingDisplayNode(None if method is None else RENDERING_METHODS[method])
        scene.AddNode(display)
        display.UnRegister(None)  # the scene holds it now
        volume_node.AddAndObserveDisplayNodeID(display.GetID())
        logic.UpdateDisplayNodeFromVolumeNode(display, volume_node)
    prop = display.GetVolumePropertyNode()
    prop.Copy(preset_node)
    wanted = f"{volume_node.GetName()} {preset}"
    if prop.GetName() != wanted:
        prop.SetName(unique_name(scene, wanted))
    image = volume_node.GetImageData()
    high = float(image.GetScalarRange()[1])
    if rescale is None:
        rescale = image.GetScalarType() != vtk.VTK_UNSIGNED_CHAR
    if rescale and high > 0:
        _stretch_preset(prop, high)
    display.SetVisibility(True)
    return display
