"""Slicer files: image sequences (.seq.nrrd) with their transform sequences (.seq.mha), single nodes, scenes (.mrb).

Volumes ``.nrrd``, image sequences ``.seq.nrrd`` (exact index values), transform sequences ``.seq.mha``
(Slicer's and PLUS's format; Slicer writes matrix elements with 6 significant digits), scenes ``.mrb``,
all through Slicer's own storage nodes. Every write is atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExistsError
from ..sweep import Sweep, check_channel_name
from .common import atomic_outputs, existing_file
from .slicer_scene import get_logic, matrix_array, new_matrix, new_scene, unique_name
from .slicer_sequences import (CHANNEL_ATTRIBUTE, ROLE_ATTRIBUTE, TRANSFORM_SUFFIX, add_transform_sequence,
                               browser_sequences, sweep_from_browser, sweep_to_browser)

CHANNEL_FILE_INFIX = "_channel-"             # <stem>_channel-<name>.seq.nrrd beside <stem>.seq.nrrd


_WRITE_SUFFIXES = {
    "volume": (".nrrd", ".nii", ".nii.gz", ".mha"),
    "image sequence": (".seq.nrrd",),
    "transform sequence": (".seq.mha",),
    "transform": (".h5", ".tfm", ".txt"),
}


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
    return np.array([matrix_array(_transform_to_parent(seq.GetNthDataNode(n))) for n in range(count)]).reshape(-1, 4, 4)


def read_transform_sequence(path: str | os.PathLike) -> np.ndarray:
    """Read a Slicer/PLUS transform sequence file (.seq.mha) -> ``[N, 4, 4]`` matrices."""
    p = existing_file(path, "transform sequence file")
    seq = _read_sequence(new_scene(), p, "vtkMRMLLinearTransformSequenceStorageNode", "transforms")
    if seq.GetNumberOfDataNodes() == 0:
        raise InputError(f"'{p}' holds no transforms.", "Check the file is a transform sequence saved completely.")
    return _transform_matrices(seq)


def _transform_to_parent(node: Any) -> Any:
    m = new_matrix()
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
    for seq in browser_sequences(browser):
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
