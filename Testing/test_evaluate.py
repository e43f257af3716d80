"""freehandrecon evaluate: report, plots and the real-data path."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.lab import evaluate
from freehandrecon.errors import InputError, OutputExistsError
from freehandrecon.simulate import random_sweep

DATA = Path(__file__).parent / "Data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    return parser


def _check_png(path: Path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    assert img[..., :3].std() > 0.01  # something was drawn


def test_simulated_speckle_report_and_plots(tmp_path):
    sweeps = [(f"s{i}", random_sweep("site-f", 10000 + i, 14, kind=kind)) for i, kind in enumerate(("linear", "mixed"))]
    out = tmp_path / "eval"
    report = evaluate.run_evaluation(sweeps, ["speckle"], out, plots=1)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["methods"] == ["speckle"] and len(on_disk["sweeps"]) == 2
    r = on_disk["sweeps"][0]["results"]["speckle"]
    for key in ("gpe_mm", "lpe_mm", "final_drift_mm", "final_drift_rate_length_pct", "final_drift_rate_distance_pct",
                "average_drift_mm", "max_drift_mm", "trajectory_length_mm", "start_end_distance_mm", "per_dof_mae",
                "frames_per_second", "drift_mm"):
        assert key in r, key
    assert len(r["drift_mm"]) == 14 and r["frames_per_second"] > 0
    agg = on_disk["aggregate"]["speckle"]
    assert agg["lpe_mm"]["mean"] == pytest.approx(np.mean([s["results"]["speckle"]["lpe_mm"] for s in on_disk["sweeps"]]),
                                                  rel=1e-3)
    assert on_disk["targets"]["learned_lpe_le_0.1mm"] is None and on_disk["targets"]["all_met"] is False
    assert "| speckle |" in report["table_markdown"] and "| speckle |" in report["attribution_markdown"]
    assert set(r["final_drift_rate_length_pct_with_true"]) == {"tz", "rx", "ry", "rotation", "in_plane"}
    assert agg["fdr_length_pct_with_true_tz"]["mean"] == pytest.approx(
        np.mean([s["results"]["speckle"]["final_drift_rate_length_pct_with_true"]["tz"] for s in on_disk["sweeps"]]),
        rel=1e-3)
    assert sorted(on_disk["plots"]) == ["errors_s0.png", "trajectory_s0.png"]
    for name in on_disk["plots"]:
        _check_png(out / name)
    with pytest.raises(OutputExistsError):
        evaluate.run_evaluation(sweeps, ["speckle"], out)


def test_bad_methods_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="Unknown method"):
        evaluate.run_evaluation([], ["magic"], tmp_path)
    with pytest.raises(InputError, match="no sweep"):
        evaluate.run_evaluation([], ["speckle"], tmp_path)


def test_targets_are_checked_from_the_numbers():
    agg = {"learned": {"final_drift_rate_length_pct": {"mean": 4.0}, "lpe_mm": {"mean": 0.08},
                       "frames_per_second": {"mean": 250.0}},
           "speckle": {"final_drift_rate_length_pct": {"mean": 7.0}}}
    t = evaluate.check_targets(agg)
    assert t["learned_fdr_length_le_5pct"] and t["learned_lpe_le_0.1mm"] and t["learned_ge_200_frames_per_s"]
    assert t["learned_fdr_2x_lower_than_speckle"] is False and t["all_met"] is False
    assert "NOT met" in evaluate.targets_text(t, agg)


def test_cli_on_real_tracked_sweep(tmp_path, capsys):
    out = tmp_path / "real"
    args = _parser().parse_args(["--quiet", "evaluate", str(DATA / "plus" / "NwirePhantomFreehand.igs.mha"),
                                 "--plus-config",
                                 str(DATA / "plus" / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml"),
                                 "--methods", "speckle", "--out", str(out), "--plots", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| speckle |" in printed and "not evaluated" in printed
    report = json.loads((out / "report.json").read_text())
    r = report["sweeps"][0]["results"]["speckle"]
    assert report["settings"]["mode"] == "files" and r["frames"] == 97
    assert np.isfinite(r["gpe_mm"]) and r["trajectory_length_mm"] > 0
    assert "default" in r["info"]["curve"]  # a real file carries no probe settings
    _check_png(out / "trajectory_NwirePhantomFreehand.igs.mha.png")
    with pytest.raises(OutputExistsError):
        args.func(args)


def _entry(name, fdr, verdict, median_ood):
    return {"name": name, "results": {"learned": {"final_drift_rate_length_pct": fdr}},
            "guard": {"verdict": verdict, "fraction_out": 1.0 if verdict != "ok" else 0.0, "median_ood": median_ood}}


def test_guard_vs_error_counts_verdicts_against_the_drift():
    from freehandrecon.lab.guard_vs_error import guard_lines, guard_table, guard_vs_error, spearman

    mixed = [_entry("good-ok", 3.0, "ok", 0.5), _entry("good-flagged", 4.0, "out-of-distribution", 2.5),
             _entry("bad-flagged", 30.0, "warning", 2.0), _entry("bad-ok", 25.0, "ok", 0.2)]
    s = guard_vs_error(mixed)
    assert (s["sweeps"], s["failing"]) == (4, 2)
    assert (s["flagged_and_failing"], s["flagged_but_good"], s["ok_but_failing"], s["ok_and_good"]) == (1, 1, 1, 1)
    assert s["targets"] == {"good_not_flagged": False, "failing_flagged": False}
    assert s["auroc_median_ood_for_failure"] == pytest.approx(0.25)  # of 4 (failing, good) pairs, 2.0 > 0.5 only
    text = guard_lines(s)
    assert text.count("NOT met") == 2 and "AUROC of the median OOD score for failure 0.25" in text
    assert "| bad-ok | 25 | ok | 0 | 0.20 |" in guard_table(mixed)

    ideal = [_entry("a", 2.0, "ok", 0.1), _entry("b", 5.0, "ok", 0.4), _entry("c", 40.0, "out-of-distribution", 3.0)]
    s = guard_vs_error(ideal)
    assert s["auroc_median_ood_for_failure"] == 1.0 and s["spearman_median_ood_vs_fdr"] == pytest.approx(1.0)
    assert s["targets"] == {"good_not_flagged": True, "failing_flagged": True}
    only_good = guard_vs_error(ideal[:2])
    assert only_good["targets"]["failing_flagged"] is None and np.isnan(only_good["auroc_median_ood_for_failure"])
    assert spearman([1, 2, 3, 4], [10, 9, 8, 7]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_evaluate_guard_and_the_typical_curve_on_simulated_sweeps(tmp_path, capsys):
    out = tmp_path / "eval"
    args = _parser().parse_args(["--quiet", "evaluate", "--sweeps", "2", "--frames", "24", "--methods", "learned",
                                 "speckle", "--curve", "typical", "--guard", "--plots", "0", "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "The quality guard against the learned poses' drift:" in printed
    assert "a sweep whose learned poses fail is flagged" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["curve"] == "typical"
    for e in report["sweeps"]:
        assert e["guard"]["verdict"] in ("ok", "warning", "out-of-distribution")
        assert 0.0 <= e["guard"]["fraction_out"] <= 1.0 and np.isfinite(e["guard"]["median_ood"])
        # a simulated sweep's own probe curve is the default; --curve typical replaced it in both estimators
        assert "default" in e["results"]["speckle"]["info"]["curve"]
        assert "default" in e["results"]["learned"]["info"]["decorrelation_curve"]
    g = report["guard_vs_error"]
    assert g["sweeps"] == 2 and g["flagged_and_failing"] + g["flagged_but_good"] + g["ok_but_failing"] + \
        g["ok_and_good"] == 2


def test_the_phantom_curve_is_calibrated_per_simulated_sweep_and_refused_for_files(tmp_path):
    """--curve phantom: each simulated sweep is scored with the curve calibrated on a simulated speckle phantom of its
    own probe (a calibrated curve, not the beam model), the same one for the same seed; files and sets are refused
    before any work (they have no probe settings to simulate)."""
    from freehandrecon.lab.phantom_curve import phantom_calibrated_curve

    out = tmp_path / "eval"
    args = _parser().parse_args(["--quiet", "evaluate", "--sites", "site-random-linear", "site-a", "--sweeps", "1",
                                 "--frames", "12", "--methods", "speckle", "--curve", "phantom", "--plots", "0",
                                 "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["curve"] == "phantom"
    sweep = random_sweep("site-a", evaluate.DEFAULT_SEED, 12)
    curve = evaluate.phantom_curve_for(sweep)
    assert curve.meta["patch_height_mm"] > 0  # calibrated from images, not a beam model
    again = phantom_calibrated_curve(sweep.metadata["settings"], evaluate.DEFAULT_SEED + 777)
    np.testing.assert_array_equal(curve.rho, again.rho)
    for e in report["sweeps"]:
        assert "calibrated" in e["results"]["speckle"]["info"]["curve"]
    bad = _parser().parse_args(["--quiet", "evaluate", "--set", "independent", "--curve", "phantom", "--out",
                                str(tmp_path / "o")])
    with pytest.raises(InputError, match="needs simulated sweeps"):
        bad.func(bad)
    assert not (tmp_path / "o").exists()


def test_guard_needs_the_learned_method_and_a_bad_curve_fails_first(tmp_path):
    sweeps = [("s", random_sweep("site-f", 10000, 12))]
    with pytest.raises(InputError, match="Add learned"):
        evaluate.run_evaluation(sweeps, ["speckle"], tmp_path / "o", guard=True)
    args = _parser().parse_args(["--quiet", "evaluate", "--sweeps", "1", "--curve", str(tmp_path / "missing.json"),
                                 "--out", str(tmp_path / "o2")])
    with pytest.raises(InputError, match="does not exist"):
        args.func(args)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_phantom_calibration_pairs_each_sweep_with_its_probes_phantom(tmp_path):
    """--probe-calibration phantom: every sweep is calibrated on its probe's speckle-phantom sweep; a probe without
    one, a set other than the independent one, or a missing phantom folder is refused before any work."""
    from freehandrecon.lab.probe_transfer import phantom_pairs

    def tagged(probe: str, seed: int):
        s = random_sweep("site-f", seed, 4)
        s.metadata["probe"] = probe
        return s

    named = [("a1", tagged("A", 1)), ("b1", tagged("B", 2)), ("a2", tagged("A", 3))]
    phantoms = [("a_phantom", tagged("A", 4)), ("b_phantom", tagged("B", 5))]
    pairs = phantom_pairs(named, phantoms)
    assert [(p, n) for p, _, n, _ in pairs] == [("a_phantom", "a1"), ("b_phantom", "b1"), ("a_phantom", "a2")]
    with pytest.raises(InputError, match="probe 'B'"):
        phantom_pairs(named, phantoms[:1])
    args = _parser().parse_args(["--quiet", "evaluate", "--sweeps", "1", "--probe-calibration", "phantom",
                                 "--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match="needs --set independent"):
        args.func(args)
    root = tmp_path / "data"
    (root / "independent").mkdir(parents=True)
    src = sorted((DATA / "independent").glob("*.npz"))[0]
    (root / "independent" / src.name).write_bytes(src.read_bytes())
    args = _parser().parse_args(["--quiet", "evaluate", "--set", "independent", "--data-root", str(root),
                                 "--probe-calibration", "phantom", "--out", str(tmp_path / "o2")])
    with pytest.raises(InputError, match="No speckle-phantom calibration sweeps"):
        args.func(args)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    assert _parser().parse_args(["evaluate", "--probe-calibration", "--out", "x"]).probe_calibration == "other"
