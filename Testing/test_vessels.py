"""Vessel evaluation: true masks on a grid, Otsu segmentation, Dice, centre-line distance, the runner
and the ``evaluate-vessels`` command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.compound import OutputGrid
from freehandrecon.errors import InputError, OutputExistsError
from freehandrecon.io import read_sweep
from freehandrecon.model_files import MODEL_DIR
from freehandrecon.poses.learned import DEFAULT_MODEL_NAME
from freehandrecon.sweep import Sweep
from freehandrecon.lab.vessels import (add_parser, centreline_errors, dice, evaluate_sweep, format_table,
    otsu_threshold, score_reconstruction, segment, vessel_mask_volume)

SAMPLE = Path(__file__).parent / "Data" / "paus" / "paus_sample.npz"
GRID = OutputGrid(origin=(-10.0, -10.0, -10.0), spacing=0.5, dims=(41, 41, 41))  # a 20 mm cube around 0
VESSEL = {"point": [0.0, 0.0, 0.0], "direction": [0.0, 0.0, 1.0], "radius": 3.0}  # along world z (= k)


def test_vessel_mask_volume_is_the_cylinder():
    mask = vessel_mask_volume([VESSEL], GRID)
    assert mask.shape == GRID.shape_zyx
    expected = math.pi * 3.0 ** 2 * 20.5 / 0.5 ** 3  # cross-section x length / voxel volume
    assert mask.sum() == pytest.approx(expected, rel=0.05)
    assert mask[20, 20, 20] and not mask[20, 20, 27]  # centre in, 3.5 mm off-axis out
    thinner = vessel_mask_volume([VESSEL], GRID, margin_mm=0.9)  # radius 2.1 mm (off the lattice)
    assert thinner.sum() == pytest.approx(expected * (2.1 / 3.0) ** 2, rel=0.08)
    tilted = vessel_mask_volume([dict(VESSEL, direction=[1.0, 0.0, 1.0])], GRID)  # direction need not be unit
    assert tilted[20, 20, 20] and tilted[30, 20, 30] and not tilted[30, 20, 10]


def test_otsu_dice_and_segment():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(20, 5, 9000), rng.normal(150, 20, 1000)])
    assert 50 < otsu_threshold(values) < 110
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[1:3] = True
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.5) and dice(a, ~a) == 0.0
    assert dice(a, b, region=np.zeros_like(a)) == 1.0  # both empty inside the region
    vol = np.where(vessel_mask_volume([VESSEL], GRID), 200.0, 10.0) + rng.normal(0, 3, GRID.shape_zyx)
    region = np.ones(GRID.shape_zyx, bool)
    seg, thr = segment(vol, region)
    assert 20 < thr < 190 and dice(seg, vessel_mask_volume([VESSEL], GRID)) > 0.99
    seg2, thr2 = segment(vol, region, "fraction", 0.5)
    assert thr2 == pytest.approx(0.5 * vol.max()) and dice(seg2, seg) > 0.99
    with pytest.raises(InputError, match="segmentation rule"):
        segment(vol, region, "watershed")
    with pytest.raises(InputError, match="covers no voxel"):
        segment(vol, np.zeros_like(region))


def test_centreline_error_measures_a_known_shift():
    region = np.ones(GRID.shape_zyx, bool)
    truth = vessel_mask_volume([VESSEL], GRID)
    same = centreline_errors([VESSEL], GRID, truth, region)
    assert same["centreline_mm"] < 0.05 and same["centreline_detected"] == 1.0
    assert same["centreline_samples"] == 41  # one sample per slice of the 20.5 mm line
    shifted = vessel_mask_volume([dict(VESSEL, point=[1.0, 0.0, 0.0])], GRID)  # segmentation 1 mm off in x
    e = centreline_errors([VESSEL], GRID, shifted, region)
    assert e["centreline_mm"] == pytest.approx(1.0, abs=0.08)
    half = region.copy()
    half[:20] = False  # the sweep covered only the upper half of the line
    e = centreline_errors([VESSEL], GRID, shifted & half, half)
    assert 19 <= e["centreline_samples"] <= 21
    missing = truth.copy()
    missing[30:] = False  # vessel not found in the last slices
    e = centreline_errors([VESSEL], GRID, missing, region)
    assert e["centreline_detected"] == pytest.approx(30 / 41, abs=0.03)
    # nothing segmented near the vessel (badly drifted poses): every sample is missed, no crash
    e = centreline_errors([VESSEL], GRID, np.zeros_like(truth), region)
    assert e["centreline_detected"] == 0.0 and e["centreline_samples"] == 41


def test_score_tracked_reconstruction_of_the_sample():
    sweep = read_sweep(SAMPLE)
    from freehandrecon.logic import ReconstructionRequest, reconstruct_sweep

    res = reconstruct_sweep(sweep, ReconstructionRequest(spacing_mm=0.5, channels=("photoacoustic",)))
    pa = res.channels["photoacoustic"]
    score = score_reconstruction(sweep.metadata["vessels"], res.grid, pa.volume, pa.coverage)
    assert score["true_voxels"] > 500
    assert score["dice"] > 0.65 and score["centreline_mm"] < 0.6 and score["centreline_detected"] > 0.9
    wrong = [dict(v, point=(np.asarray(v["point"]) + [0, 0, 4.0]).tolist()) for v in sweep.metadata["vessels"]]
    assert score_reconstruction(wrong, res.grid, pa.volume, pa.coverage)["dice"] < 0.3  # it can fail


def test_evaluate_sweep_rows_and_errors():
    sweep = read_sweep(SAMPLE).subset(slice(0, 40))
    rows = evaluate_sweep(sweep, ("tracked",), spacing_mm=0.6)
    assert rows["tracked"]["compounding"] == "max" and rows["tracked"]["final_drift_mm"] == 0.0
    assert rows["tracked"]["dice"] > 0.5
    rows = evaluate_sweep(sweep, ("learned",), spacing_mm=0.6, model="missing-model.json")
    assert "error" in rows["learned"]  # a method that cannot run is reported, not fatal
    shipped = str(MODEL_DIR / f"{DEFAULT_MODEL_NAME}.safetensors")  # --model names the learned model only
    rows = evaluate_sweep(sweep.subset(slice(0, 20)), ("speckle",), spacing_mm=0.6, model=shipped)
    assert "error" not in rows["speckle"] and rows["speckle"]["final_drift_mm"] > 0.0
    bare = Sweep(sweep.frames, sweep.pixel_spacing, sweep.image_to_world, channels=dict(sweep.channels))
    with pytest.raises(InputError, match="vessel geometry"):
        evaluate_sweep(bare, ("tracked",))


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate-vessels", *argv])


@pytest.mark.slow
def test_evaluate_vessels_command(tmp_path, capsys):
    out = tmp_path / "ev"
    args = _args(["--out", str(out), "--sites", "site-a", "--sweeps", "1", "--frames", "30", "--methods", "tracked"])
    args.quiet = True
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "| tracked | 1 |" in table and "Target (learned poses)" in table
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["rule"] == "otsu" and report["summary"]["tracked"]["dice"] > 0.5
    assert report["sweeps"][0]["seed"] == 20000
    with pytest.raises(OutputExistsError):
        args.func(args)
    with pytest.raises(InputError, match="frames"):
        bad = _args(["--out", str(tmp_path / "b"), "--frames", "3"])
        bad.func(bad)


def test_format_table_reports_missing_methods():
    report = {"summary": {"tracked": {"sweeps": 2, "dice": 0.8, "centreline_mm": 0.2, "centreline_detected": 1.0,
                                      "final_drift_mm": 0.0},
                          "learned": {"error": "no model"}},
              "targets": {"dice_min": 0.7, "centreline_max_mm": 1.0, "learned_met": False}}
    text = format_table(report)
    assert "| tracked | 2 | 0.800 | 0.20 | 100 % | 0.00 |" in text and "no model" in text and "NOT met" in text
    one = dict(report["summary"]["tracked"], sweeps=1)
    report["by_site"] = {"site-a": {"tracked": one}, "site-f": {"tracked": dict(one, dice=0.6)}}
    text = format_table(report)
    assert "| tracked, site-a | 1 | 0.800 |" in text and "| tracked, site-f | 1 | 0.600 |" in text
