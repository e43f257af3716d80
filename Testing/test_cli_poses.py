"""Sensorless poses from the command line: estimate-poses, pose files, reconstruct --poses / --poses-file."""

import json

import numpy as np
import pytest

from freehandrecon.commands.main import main
from freehandrecon.io import read_sweep, write_sweep
from freehandrecon.io.pose_file import read_pose_file
from freehandrecon.simulate import random_sweep
from freehandrecon.sweep import Sweep


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    """A short simulated linear sweep with its true poses (forward)."""
    path = tmp_path_factory.mktemp("sim") / "sim.npz"
    write_sweep(random_sweep("site-a", 5, 16, kind="linear", direction=1), path)
    return path


def test_estimate_poses_writes_a_transform_sequence_that_reads_back(sim_file, tmp_path, capsys):
    out = tmp_path / "poses.seq.mha"
    assert main(["--quiet", "estimate-poses", str(sim_file), "--method", "speckle", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 16 and summary["method"] == "speckle"
    assert summary["sweep_direction"] == "forward"
    poses = read_pose_file(out, 16)
    truth = read_sweep(sim_file).image_to_world
    assert np.allclose(poses[0], truth[0], atol=1e-3)  # anchored on the tracked first pose
    # the estimated path runs the same way as the true one (elevational sweep) and is of similar length
    true_step = np.diff(truth[:, :3, 3], axis=0).sum(axis=0)
    est_step = np.diff(poses[:, :3, 3], axis=0).sum(axis=0)
    assert np.dot(true_step, est_step) > 0
    assert 0.5 < np.linalg.norm(est_step) / np.linalg.norm(true_step) < 1.5
    assert "against_tracked" in summary and summary["against_tracked"]["lpe_mm"] < 0.5
    # refuses to overwrite
    assert main(["--quiet", "estimate-poses", str(sim_file), "--method", "speckle", "--out", str(out)]) == 3
    with pytest.raises(Exception, match="15 poses|16 poses"):
        read_pose_file(out, 15)


def test_estimate_poses_to_a_sweep_file_and_reconstruct_from_the_pose_file(sim_file, tmp_path, capsys):
    posed = tmp_path / "posed.npz"
    assert main(["--quiet", "estimate-poses", str(sim_file), "--method", "speckle", "--out", str(posed)]) == 0
    capsys.readouterr()
    sweep = read_sweep(posed)
    assert sweep.num_frames == 16 and sweep.image_to_world is not None
    out = tmp_path / "recon"
    rc = main(["--quiet", "reconstruct", str(sim_file), "--poses-file", str(posed), "--spacing", "0.5",
               "--no-render", "--no-mrb", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["poses"].startswith("file") and report["coverage_fraction"] > 0.05


def test_reconstruct_with_speckle_poses_records_the_estimation(sim_file, tmp_path, capsys):
    out = tmp_path / "speckle"
    rc = main(["--quiet", "reconstruct", str(sim_file), "--poses", "speckle", "--spacing", "0.5", "--no-render",
               "--no-mrb", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["poses"] == "speckle"
    assert report["pose_estimation"]["method"] == "speckle"
    assert report["pose_estimation"]["sweep_direction"] == "forward"
    assert report["coverage_fraction"] > 0.05
    # the input was tracked, so the report says how far the estimate is from the tracker
    assert 0 < report["poses_against_tracked"]["lpe_mm"] < 0.5


def test_unknown_pixel_spacing_is_refused_with_the_fix(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "nospacing.igs.mha"  # PLUS writes ElementSpacing 1 when it does not know the spacing
    write_sweep(Sweep(rng.integers(0, 255, (12, 40, 50), dtype=np.uint8), (1.0, 1.0)), path)
    rc = main(["--quiet", "estimate-poses", str(path), "--method", "speckle", "--out", str(tmp_path / "p.seq.mha")])
    err = capsys.readouterr().err
    assert rc == 2 and "pixel spacing" in err and "--pixel-spacing" in err
    assert not (tmp_path / "p.seq.mha").exists()


def test_poses_file_and_sensorless_method_together_are_refused(sim_file, tmp_path, capsys):
    rc = main(["--quiet", "reconstruct", str(sim_file), "--poses", "speckle", "--poses-file", str(sim_file),
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "Give one of them" in capsys.readouterr().err


def test_calibrate_speckle_then_use_the_curve(tmp_path, capsys):
    calib = tmp_path / "calib.npz"  # a tracked, purely elevational sweep of plain speckle (the calibration phantom)
    write_sweep(random_sweep("site-b", 7, 30, kind="linear", direction=1, structure=False, step_mm=0.1), calib)
    curve = tmp_path / "curve.json"
    assert main(["--quiet", "calibrate-speckle", str(calib), "--out", str(curve)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(curve) and printed["static_patches_left_out"] == 0  # a linear probe: no fan corners
    assert printed["structure_pairs_left_out"] == 0 and printed["warnings"] == []  # plain speckle: nothing to warn of
    check = printed["learned_check"]  # the learned model was run on the calibration sweep with and without it
    assert check["model_name"] == "posenet_sim_v3" and check["frames"] == 30
    assert check["use_curve"] == (check["fdr_with_curve_pct"] <= check["fdr_without_curve_pct"])
    assert json.loads(curve.read_text())["meta"]["learned_check"] == check
    test = tmp_path / "test.npz"
    sweep = random_sweep("site-b", 8, 16, kind="linear", direction=1, structure=False, step_mm=0.25)
    sweep.metadata.pop("settings")  # the estimator must rely on the calibrated curve, not the simulator's
    write_sweep(sweep, test)
    out = tmp_path / "p.npz"
    assert main(["--quiet", "estimate-poses", str(test), "--method", "speckle", "--model", str(curve),
                 "--out", str(out)]) == 0
    est = read_sweep(out).image_to_world
    step = np.linalg.norm(np.diff(est[:, :3, 3], axis=0), axis=1).mean()
    assert abs(step - 0.25) < 0.05, step
    untracked = tmp_path / "untracked.npz"
    write_sweep(Sweep(sweep.frames, sweep.pixel_spacing), untracked)
    assert main(["--quiet", "calibrate-speckle", str(untracked), "--out", str(tmp_path / "c2.json")]) == 2


def test_calibrate_speckle_leaves_out_a_band_without_speckle(tmp_path, capsys):
    """A convex probe's sweep (independent simulator, C5-2v) has no speckle in its shallowest depth band (the corners
    above the fan): calibrate-speckle fits the curve on the other bands and says which depth it left out, as adapt
    does, instead of refusing the sweep."""
    from pathlib import Path

    from freehandrecon.poses.speckle import DecorrelationCurve

    curve = tmp_path / "c52.json"
    src = Path(__file__).parent / "Data" / "independent" / "c52_translation.npz"
    assert main(["--quiet", "calibrate-speckle", str(src), "--out", str(curve), "--no-learned-check"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert any("no speckle at depth 7.0 mm" in w for w in printed["warnings"]), printed["warnings"]
    saved = DecorrelationCurve.load(curve)
    assert saved.meta["bands_without_texture_mm"] == [6.97] and saved.depths_mm.size == 4
    assert saved.depths_mm.min() > 10.0  # the curve holds only bands with speckle
    np.testing.assert_allclose(saved.correlation(np.array([7.0]), np.array([0.5])),
                               saved.correlation(saved.depths_mm[:1], np.array([0.5])))  # nearest band's curve


def test_the_learned_model_follows_its_check_of_a_calibrated_curve(tmp_path, capsys):
    """calibrate-speckle checks the curve with the learned model on its own tracked sweep; the learned estimator
    leaves the curve out of the network's features where it drifted more there, uses it where it did not, and uses
    it with a warning where the check is missing or was made with other weights. A missing model is refused before
    any calibration."""
    from pathlib import Path

    from freehandrecon.poses import IMAGE_CURVE_WARNING, estimate_poses
    from freehandrecon.poses.speckle import DecorrelationCurve

    data = Path(__file__).parent / "Data" / "independent"
    curve = tmp_path / "l11.json"
    assert main(["--quiet", "calibrate-speckle", str(data / "l11_translation.npz"), "--out", str(curve)]) == 0
    check = json.loads(capsys.readouterr().out)["learned_check"]
    assert check["frames"] == 48 and set(check) >= {"fdr_with_curve_pct", "fdr_without_curve_pct", "use_curve"}
    sweep = read_sweep(data / "l11_mixed.npz")
    plain = estimate_poses(sweep, "learned")
    unchecked_curve = DecorrelationCurve.load(curve)
    del unchecked_curve.meta["learned_check"]
    unchecked = estimate_poses(sweep, "learned", curve=unchecked_curve)
    assert IMAGE_CURVE_WARNING in unchecked.warnings and "probe_curve" not in unchecked.info
    assert not np.allclose(unchecked.image_to_world, plain.image_to_world)
    for use in (False, True):
        c = DecorrelationCurve.load(curve)
        c.meta["learned_check"]["use_curve"] = use
        est = estimate_poses(sweep, "learned", curve=c)
        np.testing.assert_array_equal(est.image_to_world, (unchecked if use else plain).image_to_world)
        assert IMAGE_CURVE_WARNING not in est.warnings
        assert est.info["probe_curve"].startswith(f"probe curve {'used' if use else 'not used'} by the learned model")
    other = DecorrelationCurve.load(curve)
    other.meta["learned_check"].update(use_curve=False, model_sha256="0" * 64)  # checked with other weights
    est = estimate_poses(sweep, "learned", curve=other)
    np.testing.assert_array_equal(est.image_to_world, unchecked.image_to_world)
    assert IMAGE_CURVE_WARNING in est.warnings
    assert main(["--quiet", "calibrate-speckle", str(data / "l11_translation.npz"), "--out", str(tmp_path / "n.json"),
                 "--no-learned-check"]) == 0
    assert "learned_check" not in json.loads(capsys.readouterr().out)
    rc = main(["--quiet", "calibrate-speckle", str(data / "l11_translation.npz"), "--out", str(tmp_path / "m.json"),
               "--model", "no_such_model"])
    assert rc in (2, 4) and "posenet_sim_v3" in capsys.readouterr().err and not (tmp_path / "m.json").exists()


def test_learned_poses_use_the_given_probe_curve(tmp_path, capsys):
    """The shipped learned model reads the probe's decorrelation curve (architecture v2): a curve file given with
    --curve is used and recorded; without settings or a curve the typical probe's curve is used; a missing
    curve file is a clear input error."""
    from freehandrecon.poses import learned
    from freehandrecon.poses.speckle import DecorrelationCurve

    sweep = random_sweep("site-b", 9, 20, kind="linear", direction=1)
    curve = DecorrelationCurve.from_settings(sweep.metadata.pop("settings")).save(tmp_path / "probe.json")
    test = tmp_path / "t.npz"
    write_sweep(sweep, test)
    uses_curve = bool(learned.load_model().config.decorrelation_lags)
    sources = []
    for extra in ([], ["--curve", str(curve)]):
        out = tmp_path / f"p{len(extra)}.npz"
        assert main(["--quiet", "estimate-poses", str(test), "--method", "learned", *extra, "--out", str(out)]) == 0
        sources.append(json.loads(capsys.readouterr().out).get("decorrelation_curve"))
    if uses_curve:
        assert sources[0].startswith("default") and "beam model" in sources[1]
    rc = main(["--quiet", "estimate-poses", str(test), "--method", "learned", "--curve", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "x.npz")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_every_documented_command_is_wired_and_has_help(capsys):
    from freehandrecon.commands.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    expected = {"reconstruct", "estimate-poses", "calibrate-speckle", "simulate", "train", "evaluate", "quality",
                "quality-eval", "quality-train", "info", "convert", "bench"}
    assert expected <= set(sub.choices)
    for name in expected:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: freehandrecon" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sensorless_prints_a_row_per_component(capsys):
    assert main(["--quiet", "bench", "sensorless", "--quick"]) == 0
    out = capsys.readouterr().out
    for what in ("learned network, 2 thread(s)", "estimate-poses --method learned", "estimate-poses --method speckle",
                 "quality guard", "simulator"):
        line = next(line for line in out.splitlines() if what in line)
        assert float(line.split("|")[2]) > 0  # a figure, not a timed assertion
