"""`reconstruct --plus-compatible` uses PLUS's output grid: IGSIO fits the extent to the clip rectangle's corners
(not the fan's bounding box), so the CLI's volume.nrrd lands on the IGSIO reference's lattice, voxel for voxel."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.commands.main import main
from freehandrecon.compound import fit_grid, options_from_plus_config
from freehandrecon.errors import InputError
from freehandrecon.io.metaimage import read_metaimage
from freehandrecon.io.plus import sweep_from_plus

DATA = Path(__file__).parent / "Data" / "igsio"
SPINE = DATA / "SpinePhantomFreehand.igs.mha"
NN_LATE = DATA / "Config_VolumeReconstruction_SonixRP_TRUS_D70mm_NN_LATE.xml"
NN_LATE_REF = DATA / "VolumeReconstructorTestNNLATEvolumeRef.mha"


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array [k, j, i] and IJK-to-RAS of a volume file, read back by Slicer's own storage node."""
    import slicer

    from freehandrecon.io.slicer_scene import new_scene

    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVolume(node).copy(), np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def nn_late_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plusgrid") / "nnlate"
    rc = main(["--quiet", "reconstruct", str(SPINE), "--plus-config", str(NN_LATE), "--plus-compatible",
               "--no-render", "--no-mrb", "--out", str(out)])
    assert rc == 0
    return out


def test_plus_compatible_cli_grid_is_igsio_reference_grid(nn_late_run: Path) -> None:
    ref = read_metaimage(NN_LATE_REF)
    report = json.loads((nn_late_run / "report.json").read_text())
    assert report["grid"]["dims_ijk"] == list(ref.dim_size)
    np.testing.assert_allclose(report["grid"]["origin_mm"], ref.offset, atol=1e-3)
    np.testing.assert_allclose(report["grid"]["spacing_mm"], ref.spacing)
    arr, ijk_to_ras = _read_nrrd(nn_late_run / "volume.nrrd")
    assert arr.shape == ref.array.shape
    np.testing.assert_allclose(ijk_to_ras[:3, 3], ref.offset, atol=1e-3)  # PLUS's reference frame is the world


def test_plus_compatible_cli_volume_matches_igsio_reference(nn_late_run: Path) -> None:
    ref = read_metaimage(NN_LATE_REF)
    ours, _ = _read_nrrd(nn_late_run / "volume.nrrd")
    theirs = ref.array.astype(np.int64)
    ours = ours.astype(np.int64)
    filled = (ours > 0) | (theirs > 0)
    assert filled.sum() > 50_000  # 59,975 voxels hold echoes
    within = float((np.abs(ours - theirs)[filled] <= 2).mean())
    assert within >= 0.99, f"{100 * within:.2f} % of filled voxels within 2 grey levels"


def test_plus_compatible_grid_ignores_the_fan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = sweep_from_plus(SPINE, plus_config=NN_LATE)
    opts, spacing = options_from_plus_config(NN_LATE)
    assert opts.fan is not None and opts.clip_rectangle is not None
    plus = fit_grid(sweep, spacing, clip_rectangle=opts.clip_rectangle, fan=opts.fan, plus_compatible=True)
    clip_only = fit_grid(sweep, spacing, clip_rectangle=opts.clip_rectangle)
    around_fan = fit_grid(sweep, spacing, clip_rectangle=opts.clip_rectangle, fan=opts.fan)
    assert plus.dims == clip_only.dims and np.allclose(plus.origin, clip_only.origin)
    assert around_fan.num_voxels < plus.num_voxels  # the default (tighter) box is around the fan
    with pytest.raises(InputError):
        fit_grid(sweep, spacing, clip_rectangle=opts.clip_rectangle, oriented=True, plus_compatible=True)
