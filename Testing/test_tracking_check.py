"""The tracking check: a tracked sweep whose in-plane motion the images do not show is told apart from one
whose poses are exact, with the angle a calibration error of that size would make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.adapt.checks import check_sweeps
from freehandrecon.io import read_sweep
from freehandrecon.lab.evaluate import run_evaluation, summary_line
from freehandrecon.poses import common
from freehandrecon.poses.tracking_check import check_tracking, describe, tracking_warnings
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"


def ind(name: str) -> Sweep:
    return read_sweep(DATA / "independent" / f"{name}.npz")


def miscalibrated(sweep: Sweep, degrees: float) -> Sweep:
    """``sweep`` as a tracker would report it with an image-to-probe calibration rotated by ``degrees`` about the
    image's lateral axis through its centre: part of every elevational step becomes an axial one."""
    c = common.centre_matrix(sweep.frame_shape, sweep.pixel_spacing)
    e = geometry.params_to_matrix(np.array([0, 0, 0, degrees, 0, 0], np.float64))
    return sweep.with_poses(sweep.image_to_world @ c @ e @ np.linalg.inv(c))


@pytest.mark.parametrize("name", ["l94_translation", "l11_mixed", "c52_tilt"])
def test_exact_poses_agree_with_their_images(name):
    c = check_tracking(ind(name))
    assert c["consistent"], c
    assert c["angle_deg"] < 3.5  # measured 0.1-2.8 on the 12 sweeps of the set; inconsistent from 5
    assert c["in_plane_floor_fdr_pct"] < 5.0
    assert describe(c) is None


@pytest.mark.parametrize("degrees", [8.0, 15.0])
def test_a_rotated_calibration_is_found_with_its_angle(degrees):
    sweep = ind("l94_translation")
    c = check_tracking(miscalibrated(sweep, degrees))
    assert not c["consistent"]
    assert c["angle_deg"] == pytest.approx(degrees, abs=1.5)
    # the images still show (almost) no in-plane motion; the tracked poses move axially by path * sin(angle)
    assert abs(c["image_in_plane_mm"][1]) < 0.3
    assert abs(c["tracked_in_plane_mm"][1]) == pytest.approx(c["elevational_path_mm"] * np.sin(np.radians(degrees)),
                                                             rel=0.1)
    assert c["in_plane_floor_fdr_pct"] > 5.0
    msg = describe(c, "sweep A")
    assert msg.startswith("sweep A's tracked poses") and "calibration" in msg and f"{degrees:.0f} degrees" in msg


def test_the_real_spine_sweeps_tracked_in_plane_motion_is_not_in_its_images():
    # Measured on the bundled PLUS/IGSIO recording: the tracked poses move the image centre 6.7 mm laterally and
    # 7.5 mm axially over 31.6 mm of elevational travel while block matching (and whole-image phase
    # correlation) see under 1 mm.
    sweep = read_sweep(DATA / "igsio" / "SpinePhantomFreehand.igs.mha",
                       plus_config=DATA / "plus" / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    c = check_tracking(sweep)
    assert not c["consistent"]
    assert c["angle_deg"] > 10.0
    assert c["in_plane_floor_fdr_pct"] > 20.0


def test_adapt_warns_about_a_miscalibrated_sweep_and_not_about_an_exact_one():
    good = ind("l94_translation")
    assert not [w for w in check_sweeps([("good", good)]) if "calibration" in w]
    warnings = check_sweeps([("good", good), ("tilted", miscalibrated(good, 12.0))])
    assert len([w for w in warnings if "tracked poses" in w]) == 1
    assert any(w.startswith("tilted's tracked poses") for w in warnings)
    assert tracking_warnings(miscalibrated(good, 12.0), "x")


def test_evaluate_reports_the_tracking_check_per_sweep_and_per_set(tmp_path):
    sweeps = [("exact", ind("l94_translation")), ("tilted", miscalibrated(ind("l94_translation"), 12.0))]
    report = run_evaluation(sweeps, ["speckle"], tmp_path, plots=0)
    checks = {e["name"]: e["tracking_check"] for e in report["sweeps"]}
    assert checks["exact"]["consistent"] and not checks["tilted"]["consistent"]
    assert report["summary"]["tracking_check"]["inconsistent"] == 1
    assert "| tilted |" in report["tracking_markdown"] and "NO |" in report["tracking_markdown"]
    line = summary_line("set", report["summary"])
    assert "not in the images on 1 of 2 sweeps" in line
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"]["tracking_check"]["max_angle_deg"] == pytest.approx(12.0, abs=1.5)


def test_calibrate_speckle_warns_about_a_miscalibrated_sweep(tmp_path):
    from freehandrecon.logic import calibrate_speckle_curve

    good = calibrate_speckle_curve(ind("l94_translation"), tmp_path / "good.json", check_learned=False)
    assert not any("tracked poses" in w for w in good.meta.get("warnings", []))
    bad = calibrate_speckle_curve(miscalibrated(ind("l94_translation"), 12.0), tmp_path / "bad.json",
                                  check_learned=False)
    assert any(w.startswith("The calibration sweep's tracked poses") for w in bad.meta["warnings"])
    saved = json.loads((tmp_path / "bad.json").read_text())
    assert any("calibration" in w for w in saved["meta"]["warnings"])
