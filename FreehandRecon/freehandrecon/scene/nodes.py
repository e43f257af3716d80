"""Volumes as Slicer MRML nodes: an array and its voxel-to-RAS matrix -> a scalar volume node.

(The scene itself, sweeps as sequence browsers and the Slicer files are in :mod:`freehandrecon.io`:
``slicer_scene``, ``slicer_sequences``, ``slicer_files``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import geometry
from ..errors import CalibrationError, InputError
from ..io.slicer_scene import unique_name, update_volume_from_array, vtk_matrix

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
    update_volume_from_array(node, a)
    node.SetIJKToRASMatrix(vtk_matrix(m))
    node.EndModify(modifying)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
