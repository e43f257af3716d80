"""The VTK-free NRRD writer of live snapshots: Slicer's own reader gives back the array and the voxel-to-RAS
matrix that MRML's storage node would have written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freehandrecon.errors import InputError
from freehandrecon.io.nrrd_volume import write_volume_nrrd


def _read(path: Path):
    from slicer import util

    from freehandrecon.io.slicer_scene import new_scene

    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    m = np.eye(4)
    import vtk

    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    for r in range(4):
        for c in range(4):
            m[r, c] = vm.GetElement(r, c)
    return util.arrayFromVolume(node).copy(), m


def _oblique_matrix() -> np.ndarray:
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.5, 0.7, 1.2])
    m[:3, 3] = [-12.5, 30.0, 4.25]
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
@pytest.mark.parametrize("level", [1, 0])
def test_slicer_reads_what_mrml_would_have_written(tmp_path, dtype, level):
    from freehandrecon.io.slicer_files import save_node
    from freehandrecon.io.slicer_scene import new_scene
    from freehandrecon.scene.nodes import add_volume_node

    rng = np.random.default_rng(0)
    vol = (rng.random((5, 7, 9)) * 200).astype(dtype)  # [k, j, i], three different sizes
    m = _oblique_matrix()
    ours = write_volume_nrrd(tmp_path / "ours.nrrd", vol, m, compression_level=level)
    node = add_volume_node(new_scene(), vol, m, "V")
    theirs = save_node(node, tmp_path / "mrml.nrrd")
    a, ma = _read(ours)
    b, mb = _read(theirs)
    assert a.dtype == b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ma, m, atol=1e-9)
    np.testing.assert_allclose(ma, mb, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_bad_input_names_the_problem_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match=r"\.nrrd"):
        write_volume_nrrd(tmp_path / "v.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(InputError, match="4x4 matrix"):
        write_volume_nrrd(tmp_path / "v.nrrd", np.zeros((2, 2), np.float32), np.eye(4))
    assert list(tmp_path.iterdir()) == []
