"""The probe's elevational gain (``poses/elevation_gain.py``), carried by probe models and fitted by ``adapt``,
and ``evaluate --probe-calibration`` (``lab/probe_transfer.py``).

The independent simulator's sweeps (pymust; never used for training or model selection) stand in for a user's
tracked sweeps of probes the model was not trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.adapt import AdaptOptions, FineTuneOptions, adapt_probe
from freehandrecon.commands import main as cli
from freehandrecon.errors import InputError, ResourceError
from freehandrecon.io import read_sweep
from freehandrecon.model_files import MODEL_DIR, sha256_file
from freehandrecon.poses import common, estimate_poses
from freehandrecon.poses.elevation_gain import fit_elevation_gain, forward_params, with_elevation_gain
from freehandrecon.poses.learned import DEFAULT_MODEL_NAME
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
IND = DATA / "independent"
NWIRE = DATA / "plus" / "NwirePhantomFreehand.igs.mha"
NWIRE_CFG = DATA / "plus" / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml"


def ind(name: str) -> Sweep:
    return read_sweep(IND / f"{name}.npz")


def truth(s: Sweep) -> np.ndarray:
    return common.relative_centre(s.image_to_world, s.frame_shape, s.pixel_spacing)


@pytest.mark.parametrize("name", ["l94_scurve", "l94_translation"])  # a forward and a backward sweep
def test_the_gain_undoes_a_scaled_elevational_step(name):
    s = ind(name)
    direction = common.net_elevation_sign(truth(s))
    assert direction == (1 if name == "l94_scurve" else -1)
    short = with_elevation_gain(truth(s), direction, 0.5)  # an estimate that reads half the step
    np.testing.assert_allclose(forward_params(short, direction)[:, 2], 0.5 * forward_params(truth(s), direction)[:, 2])
    np.testing.assert_allclose(forward_params(short, direction)[:, [0, 1, 3, 4, 5]],
                               forward_params(truth(s), direction)[:, [0, 1, 3, 4, 5]], atol=1e-9)
    gain = fit_elevation_gain([(s, short, direction)])
    assert gain == pytest.approx(2.0, rel=1e-9)
    np.testing.assert_allclose(with_elevation_gain(short, direction, gain), truth(s), atol=1e-9)


def test_a_gain_that_is_no_scale_error_or_a_sweep_without_elevational_motion_is_refused():
    s = ind("l94_scurve")
    with pytest.raises(InputError, match="not a scale error") as info:
        fit_elevation_gain([(s, with_elevation_gain(truth(s), 1, 12.0), 1)])
    assert "fine-tune" in info.value.fix
    still = s.with_poses(np.repeat(s.image_to_world[:1], s.num_frames, axis=0))
    with pytest.raises(InputError, match="too little to calibrate"):
        fit_elevation_gain([(still, truth(s), 1)])


@pytest.fixture
def gained_model(tmp_path) -> Path:
    """A copy of the shipped model whose description carries an elevational gain of 1.5."""
    for suffix in (".json", ".safetensors"):
        shutil.copy(MODEL_DIR / f"{DEFAULT_MODEL_NAME}{suffix}", tmp_path / f"{DEFAULT_MODEL_NAME}{suffix}")
    js = tmp_path / f"{DEFAULT_MODEL_NAME}.json"
    meta = json.loads(js.read_text())
    meta["elevation_gain"] = 1.5
    js.write_text(json.dumps(meta))
    return js


def test_a_model_with_an_elevational_gain_scales_only_the_elevational_step(gained_model):
    s = ind("l11_scurve")
    plain = estimate_poses(s, "learned")
    gained = estimate_poses(s, "learned", model=gained_model)
    assert gained.info["elevation_gain"] == 1.5 and "elevation_gain" not in plain.info
    p, g = forward_params(plain.relative_centre, plain.direction), forward_params(gained.relative_centre, gained.direction)
    np.testing.assert_allclose(g[:, 2], 1.5 * p[:, 2], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g[:, [0, 1, 3, 4, 5]], p[:, [0, 1, 3, 4, 5]], atol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, "x", True])
def test_an_invalid_elevational_gain_is_refused(gained_model, bad):
    from freehandrecon.poses.learned import load_model

    meta = json.loads(gained_model.read_text())
    meta["elevation_gain"] = bad
    gained_model.write_text(json.dumps(meta))
    with pytest.raises(ResourceError, match="invalid elevation_gain") as info:
        load_model(gained_model)
    assert "adapt again" in info.value.fix


# --- adapt: the gain, fitted in seconds, and kept when it drifts less -----------------------------------------

@pytest.mark.parametrize("probe,names,kept", [
    # the L9-4 elevation beam is wider than any trained on: the gain with the fitted curve does best (the shipped
    # model was fine-tuned on phantom-calibrated curves)
    ("l94", ("l94_translation", "l94_scurve", "l94_tilt"), "gain_probe_curve"),
    # convex: since speckle leaves the fan edge out, its tilt and yaw through the fitted curve help here
    ("c52", ("c52_translation", "c52_mixed", "c52_tilt"), "gain_typical_curve_speckle_rotations"),
    # on this L11-5v pair the network's own rotations are the better ones: the gain alone with the typical curve
    ("l11", ("l11_mixed", "l11_tilt"), "gain_typical_curve"),
])
def test_adapt_without_fine_tuning_keeps_the_candidate_that_drifts_least(tmp_path, capsys, probe, names, kept):
    from freehandrecon.poses.metrics import final_drift_rate_length_pct

    files = [str(IND / f"{n}.npz") for n in names]
    assert cli.main(["--quiet", "adapt", *files, "--holdout", "0.5", "--epochs", "0", "--out",
                     str(tmp_path / "probe")]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    learned = report["heldout"]["learned"]
    cands = learned["candidates_pct"]
    assert set(cands) == {"unchanged", "gain_typical_curve", "gain_probe_curve",
                          "gain_typical_curve_speckle_rotations"} and report["steps"] == 0
    assert learned["kept"] == kept
    assert learned["after_pct"] == cands[kept] == min(cands.values()) < learned["before_pct"]
    assert cands["unchanged"] == learned["before_pct"]  # the shipped model: its own (typical) curve
    if probe == "l94":
        assert learned["after_pct"] < 10.0 < 30.0 < learned["before_pct"]
    assert printed["elevation_gain"] == learned["elevation_gain"] == learned["candidate_elevation_gains"][kept]
    meta = json.loads((tmp_path / "probe" / "probe_model.json").read_text())
    assert meta["elevation_gain"] == pytest.approx(learned["elevation_gain"], abs=1e-4)
    assert meta["learned_curve"] == ("probe" if kept == "gain_probe_curve" else "typical") and meta["kept"] == kept
    assert meta["out_of_plane_rotations"] == ("speckle" if kept.endswith("speckle_rotations") else "network")
    assert meta["sha256"] == sha256_file(tmp_path / "probe" / "probe_model.safetensors")
    assert meta["recommended_method"] == report["heldout"]["recommended_method"]
    # the probe model as a user gives it: gain, curve and rotations come with it, and reproduce the held-out figure
    for name in names[1:]:
        s = ind(name)
        est = estimate_poses(s, "learned", model=tmp_path / "probe" / "probe_model.json")
        assert est.info["elevation_gain"] == pytest.approx(learned["elevation_gain"], abs=1e-4)
        assert est.info["decorrelation_curve"].startswith("probe curve") == (meta["learned_curve"] == "probe")
        assert est.info.get("out_of_plane_rotations", "network") == meta["out_of_plane_rotations"]
        fdr = final_drift_rate_length_pct(s.image_to_world, est.image_to_world, s.frame_shape, s.pixel_spacing)
        assert fdr == pytest.approx(learned["per_sweep"]["after"][f"{name}.npz"], abs=0.01)


def test_speckle_rotations_replace_only_tilt_and_yaw(gained_model):
    from freehandrecon.poses.elevation_gain import forward_params as fp

    meta = json.loads(gained_model.read_text())
    meta["out_of_plane_rotations"] = "speckle"
    gained_model.write_text(json.dumps(meta))
    s = ind("l94_tilt")
    net = estimate_poses(s, "learned")
    hybrid = estimate_poses(s, "learned", model=gained_model)
    spk = estimate_poses(s, "speckle")  # the same (default) curve as the hybrid's speckle part
    h, n, k = (fp(e.relative_centre, e.direction) for e in (hybrid, net, spk))
    np.testing.assert_allclose(h[:, 3:5], k[:, 3:5], atol=1e-9)
    np.testing.assert_allclose(h[:, [0, 1, 5]], n[:, [0, 1, 5]], atol=1e-9)
    np.testing.assert_allclose(h[:, 2], 1.5 * n[:, 2], rtol=1e-9, atol=1e-12)
    meta["out_of_plane_rotations"] = "magic"
    gained_model.write_text(json.dumps(meta))
    with pytest.raises(ResourceError, match="unknown out_of_plane_rotations"):
        estimate_poses(s, "learned", model=gained_model)


def test_adapt_without_fine_tuning_refuses_a_sweep_the_gain_cannot_fix(tmp_path):
    # the N-wire phantom is wires in water: no speckle, and the model reads 13x the step: a failure, not a scale
    sweep = read_sweep(NWIRE, plus_config=NWIRE_CFG)
    with pytest.raises(InputError, match="not a scale error") as info:
        adapt_probe([("nwire", sweep)], tmp_path / "probe", AdaptOptions(FineTuneOptions(epochs=0)))
    assert info.value.fix
    assert not list(tmp_path.iterdir())


def test_negative_epochs_are_refused(tmp_path):
    with pytest.raises(InputError, match="epochs at least 0"):
        adapt_probe([("a", ind("l94_scurve"))], tmp_path / "p", AdaptOptions(FineTuneOptions(epochs=-1)))


# --- evaluate --probe-calibration -------------------------------------------------------------------------

def test_calibration_pairs_group_by_probe_and_split_a_lone_sweep_in_halves():
    from freehandrecon.lab.probe_transfer import calibration_pairs

    named = [(n, ind(n)) for n in ("l94_scurve", "l94_tilt", "l11_scurve")]
    pairs = calibration_pairs(named)
    assert [(a, b) for a, _, b, _ in pairs] == [("l94_scurve", "l94_tilt"), ("l94_tilt", "l94_scurve"),
                                                 ("l11_scurve[:24]", "l11_scurve[24:]")]
    assert pairs[2][1].num_frames == 24 and pairs[2][3].num_frames == 24
    np.testing.assert_array_equal(pairs[2][3].frames, named[2][1].frames[24:])
    assert calibration_pairs([("short", ind("l11_scurve").subset(slice(0, 19)))]) == []  # halves of 9 and 10
    real_length = calibration_pairs([("21", ind("l11_scurve").subset(slice(0, 21)))])  # as the real sweeps have
    assert [(a, b) for a, _, b, _ in real_length] == [("21[:10]", "21[10:]")]
    # a user's files carry no probe name: the same frame size and spacing is the same probe setting
    plain = [(n, Sweep(s.frames, s.pixel_spacing, s.image_to_world)) for n, s in named]
    assert [(a, b) for a, _, b, _ in calibration_pairs(plain)] == [(a, b) for a, _, b, _ in pairs]


def test_evaluate_with_probe_calibration_reports_every_pair_and_the_targets(tmp_path, capsys):
    files = [str(IND / f"{n}.npz") for n in ("l94_translation", "l94_scurve")]
    assert cli.main(["--quiet", "evaluate", *files, "--probe-calibration", "--plots", "0", "--out",
                     str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "ev" / "report.json").read_text())["probe_calibration"]
    assert [(r["calibrated_on"], r["estimated"]) for r in result["pairs"]] == [
        ("l94_translation.npz", "l94_scurve.npz"), ("l94_scurve.npz", "l94_translation.npz")]
    for r in result["pairs"]:
        assert 0.5 < r["gain_curve"] < 2.0 and r["learned_curve_gain"] < r["learned"]
    means = result["mean_fdr_length_pct"]
    assert means["learned"] == pytest.approx(np.mean([r["learned"] for r in result["pairs"]]))
    assert result["targets"]["learned_with_curve_and_gain_le_without"] is True
    assert "With the probe's calibration from another sweep of the probe" in out
    for r in result["pairs"]:  # the hybrid variant is measured on every pair
        assert np.isfinite(r["learned_gain_speckle_rotations"])
    for key in ("learned_gain", "learned_curve_gain", "learned_gain_speckle_rotations"):
        assert isinstance(result["targets"][f"{key}_lt_speckle_calibrated"], bool)
    assert "better than speckle with the probe curve" in out and "| mean over 2 pairs |" in out
    for r in result["pairs"]:  # the curve as calibrate-speckle writes it: checked on the calibration sweep
        check = r["curve_check"]
        assert check["use_curve"] == (check["fdr_with_curve_pct"] <= check["fdr_without_curve_pct"])
        assert r["learned_curve"] == pytest.approx(r["learned_curve_unchecked" if check["use_curve"] else "learned"])
    assert set(result["per_probe_mean_fdr_length_pct"]) == {"L9-4"}
    assert isinstance(result["targets"]["learned_with_curve_le_without_every_probe"], bool)
    assert "the same on every probe" in out


@pytest.mark.parametrize("kept,says", [("unchanged", "shipped model unchanged"),
                                       ("gain_typical_curve", "elevational gain of 1.23"),
                                       ("gain_probe_curve", "probe curve and an elevational gain of 1.23"),
                                       ("fine_tuned", "fine-tuned weights")])
def test_the_panel_summary_says_what_adapt_kept_and_recommends(kept, says):
    from freehandrecon.adapt.browsers import adaptation_summary

    report = {"heldout": {"frames": 48, "recommended_method": "speckle",
                          "learned": {"before_pct": 12.88, "after_pct": 11.57, "kept": kept, "elevation_gain": 1.2268},
                          "speckle": {"before_pct": 36.37, "after_pct": 19.74}}, "warnings": []}
    line = adaptation_summary(report)
    assert "12.9 % -> 11.6 %" in line and says in line and "recommended poses for this probe: speckle" in line
