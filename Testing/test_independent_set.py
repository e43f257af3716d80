"""The independent validation set (Testing/Data/independent, made with pymust by freehandrecon.lab.independent_sim):
every sweep loads, has exact rigid poses from its plan, and its vessel lumens are dark where the poses put them;
the set cannot reach training; ``evaluate --set`` finds it. pymust itself is not needed here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.lab.evaluate import set_sweeps, summary_line
from freehandrecon.io import read_sweep
from freehandrecon.lab import independent_sim as lab

ROOT = Path(__file__).resolve().parents[1]
SET_DIR = ROOT / "Testing" / "Data" / "independent"
FILES = sorted(SET_DIR.glob("*.npz"))
PACKAGE = ROOT / "FreehandRecon" / "freehandrecon"


def test_the_set_is_committed_with_its_readme():
    assert len(FILES) >= 4, f"expected independent sweeps in {SET_DIR}, found {len(FILES)}"
    readme = (SET_DIR / "README.md").read_text()
    assert "never used for training or model selection" in readme
    assert "BSD-3" in readme
    for f in FILES:
        assert f.stem in readme, f"{f.name} is not described in the README"
        assert f.stat().st_size < 1_000_000


@pytest.fixture(scope="module", params=[f.name for f in FILES] or ["none"])
def sweep(request):
    if request.param == "none":
        pytest.fail(f"no sweeps in {SET_DIR}")
    return read_sweep(SET_DIR / request.param)


def test_sweep_loads_as_uint8_bmode_with_provenance(sweep):
    meta = sweep.metadata
    assert sweep.frames.dtype == np.uint8 and sweep.num_frames >= 48
    assert meta["simulator"].startswith("pymust ")
    assert meta["purpose"] == lab.PURPOSE
    pr = lab.PROBES[meta["probe"]]
    assert sweep.frame_shape == (pr.size, pr.size)
    assert sweep.pixel_spacing == (pr.spacing_mm, pr.spacing_mm)
    assert meta["sweep_direction"] in (1, -1)
    # B-mode, not blank: most imaged pixels carry signal; outside a convex probe's fan is zero
    mask = lab.fan_mask(pr)
    assert (sweep.frames[:, mask] > 0).mean() > 0.9
    assert not sweep.frames[:, ~mask].any()
    assert pr.convex == (~mask).any()


def test_poses_are_exact_rigid_and_those_of_the_plan(sweep):
    t = sweep.image_to_world
    rot = t[:, :3, :3]
    assert np.allclose(rot @ np.transpose(rot, (0, 2, 1)), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    assert np.allclose(t[:, 3], [0, 0, 0, 1])
    sp = lab.plan(sweep.metadata["name"])
    poses, phantom, _ = lab.sweep_setup(sp)  # pure numpy: the plan alone gives the poses and the phantom
    assert np.allclose(t, poses, atol=1e-12)
    vessels = sweep.metadata["phantom"]["vessels"]
    assert np.allclose([v["point"] for v in vessels], [v["point"] for v in phantom.vessels])
    rel = geometry.matrix_to_params(geometry.relative_transforms(t))
    if sp.trajectory == "translation":  # exactly step_mm along the elevation axis, nothing else
        assert np.allclose(rel, [0, 0, sp.direction * sp.step_mm, 0, 0, 0], atol=1e-9)
    elif sp.trajectory == "tilt":  # and the probe fans by tilt_deg over the sweep
        assert np.isclose(rel[:, 3].sum(), sp.tilt_deg, atol=1e-6)


def test_vessel_lumens_are_dark_where_the_poses_put_them(sweep):
    chk = lab.lumen_check(sweep)
    assert chk["passed"], chk
    assert chk["measurements"] >= sweep.num_frames  # both vessels seen in most frames
    # the check has teeth: the same frames with a mirrored lateral axis (a wrong convention) fail it
    w = (sweep.frame_shape[1] - 1) * sweep.pixel_spacing[0]
    mirror = np.diag([-1.0, 1.0, -1.0, 1.0])
    mirror[0, 3] = w
    wrong = lab.lumen_check(sweep, sweep.image_to_world @ mirror)
    assert not wrong["passed"] and wrong["median_ratio"] > chk["median_ratio"] + 0.2, (chk, wrong)


def test_lumen_check_rejects_a_sweep_without_phantom(sweep):
    from freehandrecon.errors import InputError
    from freehandrecon.sweep import Sweep

    with pytest.raises(InputError, match="phantom"):
        lab.lumen_check(Sweep(frames=sweep.frames, pixel_spacing=sweep.pixel_spacing,
                              image_to_world=sweep.image_to_world))


def test_training_cannot_reach_the_set():
    """Grep-level: nothing that trains (pose model or quality guard) or simulates training data names the set
    or the lab package."""
    paths = sorted((PACKAGE / "lab" / "train").rglob("*.py")) + sorted((PACKAGE / "simulate").rglob("*.py"))
    paths += [PACKAGE / "lab" / "quality" / "train.py", PACKAGE / "quality" / "data.py"]
    paths += sorted((PACKAGE / "adapt").rglob("*.py"))  # fine-tuning on the user's sweeps
    assert len(paths) > 5 and all(p.is_file() for p in paths)
    pattern = re.compile(r"Data/independent|independent_sim|lab\.evaluate|\"independent\"")
    for p in paths:
        hits = [line for line in p.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{p.relative_to(ROOT)} references the independent set: {hits}"


def test_lab_module_does_not_need_pymust():
    code = ("import sys; import freehandrecon.lab.independent_sim as m; import freehandrecon.commands.main as c; "
            "c.build_parser(); print('pymust' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "FreehandRecon"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_evaluate_finds_the_sets():
    files = set_sweeps("independent")
    assert [f for _, f, _ in files] == FILES
    real = set_sweeps("real")
    assert [f.name for _, f, _ in real] == ["SpinePhantomFreehand.igs.mha", "BoneUltrasound_L14.igs.mha"]
    assert all(c is not None and c.exists() for _, _, c in real)


def test_the_real_soft_tissue_sweep_reads_with_its_plus_calibration():
    """The second real set sweep (PLUS BoneUltrasound_L14): tracked frames with speckle, placed in mm by the image
    calibration of its PLUS config (0.085 mm pixels), moving about 0.5 mm per frame mostly out of plane."""
    import numpy as np

    from freehandrecon.poses import common

    (_, path, config), = [r for r in set_sweeps("real") if r[1].name == "BoneUltrasound_L14.igs.mha"]
    sweep = read_sweep(path, plus_config=config)
    assert sweep.frames.shape == (21, 616, 820) and sweep.image_to_world is not None
    assert np.allclose(sweep.pixel_spacing, 0.0854, atol=2e-4)
    steps = np.linalg.norm(np.diff(sweep.image_to_world[:, :3, 3], axis=0), axis=1)
    assert 8.0 < steps.sum() < 12.0 and steps.max() < 1.5
    rel = common.relative_centre(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
    assert np.abs(rel[:, 2, 3]).mean() > np.abs(rel[:, 0, 3]).mean()  # elevational motion dominates
    assert not common.check_speckle(sweep.frames)  # no warning: textured frames


def test_evaluate_cli_on_the_independent_set(tmp_path, capsys):
    from freehandrecon.commands.main import main

    root = tmp_path / "data"
    (root / "independent").mkdir(parents=True)
    translation = next(f for f in FILES if read_sweep(f).metadata["trajectory"] == "translation")
    shutil.copy(translation, root / "independent" / translation.name)
    rc = main(["--quiet", "evaluate", "--set", "independent", "--data-root", str(root), "--methods", "speckle",
               "--plots", "0", "--out", str(tmp_path / "out")])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = report["summary"]
    assert summary["sweeps"] == 1 and summary["pure_translations"] == 1
    speckle = summary["methods"]["speckle"]
    assert speckle["tilt_abs_bias_deg_per_frame_pure_translation"] == pytest.approx(
        abs(speckle["tilt_bias_deg_per_frame_pure_translation"]))  # one sweep: |mean| = mean |.|
    assert speckle["tilt_bias_deg_per_frame_pure_translation"] == pytest.approx(
        report["sweeps"][0]["results"]["speckle"]["per_dof_bias"]["rx_deg"], abs=1e-4)
    # no motion at all drifts by the whole start-end distance: 100 % of it
    assert summary["no_motion"]["fdr_distance_pct"] == pytest.approx(100.0, abs=0.01)
    assert summary_line("independent", summary) in printed
    assert f"| {translation.stem} | speckle |" in printed
    assert report["settings"] == {"mode": "set", "set": "independent",
                                  "inputs": [str(root / "independent" / translation.name)]}


def test_evaluate_set_refuses_files_too(tmp_path):
    from freehandrecon.commands.main import main

    rc = main(["--quiet", "evaluate", str(FILES[0]), "--set", "independent", "--out", str(tmp_path / "o")])
    assert rc != 0


def test_convex_geometry_table_is_pymusts():
    """The committed convex sweeps are checked without pymust through a table of its element geometry; where
    pymust is installed the table must equal what it computes."""
    import importlib.util

    if importlib.util.find_spec("pymust") is None:
        assert set(lab.CONVEX_GEOMETRY) == {n for n, p in lab.PROBES.items() if p.convex}
        return
    for name, values in lab.CONVEX_GEOMETRY.items():
        p = lab.PROBES[name].param()
        _, _, the, h = p.getElementPositions()
        assert np.allclose(values, (float(p.radius) * 1e3, float(np.ravel(h)[0]) * 1e3, float(np.abs(the).max())))


PHANTOM_FILES = sorted((SET_DIR / "phantom").glob("*.npz"))


@pytest.mark.parametrize("path", PHANTOM_FILES, ids=[p.stem for p in PHANTOM_FILES])
def test_phantom_calibration_sweeps_are_plain_speckle_on_the_plan(path):
    """independent/phantom: one slow straight sweep of a speckle phantom per probe (the calibration a user would
    record), with the plan's exact poses; no vessel, no layer, and speckle finds next to no structure in it."""
    from freehandrecon.poses import speckle

    sweep = read_sweep(path)
    meta = sweep.metadata
    sp = lab.plan(meta["name"])
    assert not sp.structure and sp in lab.PHANTOM_PLAN and meta["purpose"] == lab.PURPOSE
    assert meta["phantom"]["vessels"] == [] and meta["phantom"]["layer"] is None
    poses, phantom, _ = lab.sweep_setup(sp)
    assert np.allclose(sweep.image_to_world, poses, atol=1e-12) and phantom.layer is None
    rel = geometry.matrix_to_params(geometry.relative_transforms(sweep.image_to_world))
    assert np.allclose(rel, [0, 0, sp.direction * sp.step_mm, 0, 0, 0], atol=1e-9)
    _, info = speckle.estimate_relative(sweep)
    assert info["structure_patches_fraction"] < 0.02, info
    assert path.stat().st_size < 1_000_000 and path.stem in (SET_DIR / "README.md").read_text()


def test_every_probe_of_the_set_has_a_phantom_sweep():
    probes = {read_sweep(f).metadata["probe"] for f in FILES}
    assert probes == {read_sweep(f).metadata["probe"] for f in PHANTOM_FILES}
