"""`freehandrecon train`: data records and windows, label transforms, a tiny run that learns, resume,
export, tracked-file input and a 2-process torchrun (gloo)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.errors import InputError
from freehandrecon.poses import common, learned
from freehandrecon.lab.train import datasets
from freehandrecon.lab.train.command import add_parser, options_from_args

DATA = Path(__file__).parent / "Data"
TINY = ["--input-size", "64", "--widths", "8", "8", "16", "16", "--window", "4", "--frames", "16",
        "--sites", "site-a", "--train-seeds", "0", "2", "--val-seeds", "10000", "10001", "--batch-size", "4",
        "--warmup-steps", "2", "--drift-sweeps", "1", "--threads", "2"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--quiet", "train", *argv])
    args.argv = list(argv)
    return args


# --- label transforms --------------------------------------------------------------------------------

def _random_params(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1, (n, 6)) * [0.2, 0.2, 0.1, 1.0, 1.0, 1.0]
    p[:, 2] += 0.4
    return p


def test_reverse_params_is_the_mirrored_inverse_chain():
    p = _random_params(6)
    r = datasets.reverse_params(p)
    assert np.allclose(datasets.reverse_params(r), p, atol=1e-5)
    assert (r[:, 2] > 0).all()  # a reversed forward window is canonicalised forward again
    chain = geometry.accumulate(geometry.params_to_matrix(p))
    back = geometry.accumulate(common.mirror_elevation(geometry.params_to_matrix(r)))
    # reversed chain, mirrored back, runs from the last frame to the first
    assert np.allclose(back[-1], np.linalg.inv(chain[-1]), atol=1e-6)


def test_lateral_flip_signs_match_the_reflection():
    p = _random_params(4, 1)
    f = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped = geometry.matrix_to_params(f @ geometry.params_to_matrix(p) @ f)
    assert np.allclose(flipped, p * datasets.FLIP_SIGNS, atol=1e-9)


# --- records, splits, windows ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_records(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    recs = datasets.simulated_records(["site-a"], [0, 1], 16, datasets.TRAJECTORY_KINDS, 0.3, 64, cache)
    return recs, cache


def test_simulated_records_are_cached_and_forward_canonical(sim_records):
    recs, cache = sim_records
    from freehandrecon.simulate import SIMULATOR_VERSION

    # the simulator version is in the name, so a newer simulator never reads an older one's sweeps
    assert sorted(p.name for p in cache.glob("*.npz")) == [
        f"site-a_s{s}_n16_{datasets.sim_kind(s, datasets.TRAJECTORY_KINDS)}_sim{SIMULATOR_VERSION}.npz" for s in (0, 1)]
    for r in recs:
        assert r.frames.dtype == np.uint8 and r.frames.shape == (16, 64, 64)
        assert r.params.shape == (15, 6) and r.params[:, 2].sum() > 0
    again = datasets.simulated_records(["site-a"], [0, 1], 16, datasets.TRAJECTORY_KINDS, 0.3, 64, cache)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(recs, again))


def test_simulated_records_from_worker_processes_are_the_same(sim_records, tmp_path):
    """train --workers N simulates and prepares the sweeps in N processes: the records (frames, labels and the
    curve-mix decorrelation features) and their order are those of one process; the cache is shared."""
    recs, cache = sim_records
    kw = dict(lags=(1, 2), curve_mix=(0.5, 0.3, 0.2))
    one = datasets.simulated_records(["site-a", "site-c"], [0, 1], 16, datasets.TRAJECTORY_KINDS, 0.3, 64, cache, **kw)
    seen = []
    two = datasets.simulated_records(["site-a", "site-c"], [0, 1], 16, datasets.TRAJECTORY_KINDS, 0.3, 64, cache,
                                     progress=lambda stage, f: seen.append((stage, f)), workers=2, **kw)
    kinds = {s: datasets.sim_kind(s, datasets.TRAJECTORY_KINDS) for s in (0, 1)}
    assert [r.name for r in two] == [r.name for r in one] == [
        f"{site}/seed{s}/{kinds[s]}" for s in (0, 1) for site in ("site-a", "site-c")]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.params, b.params)
        np.testing.assert_allclose(a.decor.astype(np.float32), b.decor.astype(np.float32), atol=2e-3)
    assert seen[-1] == ("simulate", 1.0) and len(seen) == 4
    assert len(list(cache.glob("site-c_*.npz"))) == 2  # the workers wrote the new sweeps to the shared cache


def test_window_dataset_is_deterministic_per_epoch(sim_records):
    recs, _ = sim_records
    scales = datasets.label_scales(recs)
    ds = datasets.WindowDataset(recs, 4, 10, scales, seed=3)
    x, y, d = ds[2]
    assert x.shape == (5, 64, 64) and y.shape == (4, 6) and 0 <= x.min() and x.max() <= 1
    assert d.shape == (0,)  # v1 records carry no decorrelation features
    assert np.array_equal(ds[2][0], x)
    ds.set_epoch(1)
    assert any(not np.array_equal(ds[i][0], datasets.WindowDataset(recs, 4, 10, scales, seed=3)[i][0])
               for i in range(10))
    with pytest.raises(InputError, match="window"):
        datasets.WindowDataset(recs, 40, 10, scales)


def test_split_by_group_holds_out_whole_groups():
    recs = [datasets.SweepRecord(f"f{i}", f"subject{i % 5}", np.zeros((3, 2, 2), np.uint8), np.zeros((2, 6)), 1,
                                 np.tile(np.eye(4), (3, 1, 1)), (2, 2), (1.0, 1.0)) for i in range(20)]
    train, val = datasets.split_records(recs, 0.3)
    assert train and val
    assert not {r.group for r in train} & {r.group for r in val}


def test_tracked_file_records_and_group_keys():
    path = DATA / "plus" / "NwirePhantomFreehand.igs.mha"
    cfg = DATA / "plus" / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml"
    (rec,) = datasets.file_records([path], "subject", 0.3, 64, {"plus_config": cfg})
    assert rec.group == "plus"  # parent folder
    assert rec.frames.shape == (97, 64, 64) and rec.params.shape == (96, 6)
    assert np.isfinite(rec.params).all()
    from freehandrecon.sweep import Sweep

    s = Sweep(np.zeros((2, 4, 4), np.uint8), metadata={"subject": "P7"})
    assert datasets.group_key(s, path, "subject") == "P7"
    assert datasets.group_key(s, path, "file") == path.name


def test_option_errors():
    with pytest.raises(InputError, match="multiple of 32"):
        options_from_args(_args("--out", "x", "--input-size", "100"))
    with pytest.raises(InputError, match="window"):
        options_from_args(_args("--out", "x", "--window", "1"))
    with pytest.raises(InputError, match="--ema"):
        options_from_args(_args("--out", "x", "--ema", "1.5"))
    with pytest.raises(InputError, match="negative"):
        options_from_args(_args("--out", "x", "--drift-rate-weight", "-1"))
    with pytest.raises(InputError, match="--chain"):
        options_from_args(_args("--out", "x", "--chain", "0"))
    with pytest.raises(InputError, match="needs --init"):
        options_from_args(_args("--out", "x", "--rescale-outputs"))


def test_extra_sweeps_draw_their_steps_from_the_given_range(tmp_path):
    from freehandrecon.lab.train.trainer import load_records

    cache = tmp_path / "cache"
    opts = options_from_args(_args(*TINY, "--cache", str(cache), "--out", str(tmp_path / "x"),
                                   "--extra-seeds", "5", "7", "--extra-steps", "0.05", "0.08"))
    train, val = load_records(opts, True, lambda: None)
    extra = [r for r in train if "/step0.05-0.08" in r.name]
    assert len(train) == 4 and len(extra) == 2 and len(val) == 1
    for r in extra:
        step = np.linalg.norm(r.params[:, :3], axis=1).mean()
        assert 0.04 < step < 0.09, (r.name, step)  # mostly elevational; fans and tilts move the centre a little less
    plain = [r for r in train if r not in extra]
    assert all(np.linalg.norm(r.params[:, :3], axis=1).mean() > 0.08 for r in plain if r.name.endswith("linear"))
    assert sorted(p.name for p in cache.glob("*step*")) == ["site-a_s5_n16_linear_step0.05-0.08_sim2.npz",
                                                             "site-a_s6_n16_fan_step0.05-0.08_sim2.npz"]
    assert datasets.sim_step("site-a", 5, (0.05, 0.08)) == datasets.sim_step("site-a", 5, (0.05, 0.08))
    with pytest.raises(InputError, match="--extra-steps"):
        options_from_args(_args("--out", "x", "--extra-steps", "0.5", "0.1"))
    with pytest.raises(InputError, match="--extra-seeds"):
        options_from_args(_args("--out", "x", "--extra-seeds", "7", "7"))


def test_curve_mix_gives_each_sweep_a_phantom_calibrated_beam_or_typical_curve(tmp_path):
    """Each simulated sweep's curve kind is fixed by its settings and seed; the phantom kind is a curve calibrated
    on a simulated speckle phantom of the same probe (close to, not equal to, the beam model)."""
    from freehandrecon.poses import speckle
    from freehandrecon.simulate import random_sweep

    sweeps = [random_sweep("site-random-linear", seed, num_frames=2) for seed in range(12)]
    kinds = [datasets.mixed_curve(s, (0.0, 0.5, 0.5))[1] for s in sweeps]
    assert kinds == [datasets.mixed_curve(s, (0.0, 0.5, 0.5))[1] for s in sweeps]  # deterministic
    assert set(kinds) == {"beam", "typical"}
    assert {datasets.mixed_curve(s, (0.0, 0.0, 1.0))[1] for s in sweeps} == {"typical"}
    curve, kind = datasets.mixed_curve(sweeps[0], (1.0, 0.0, 0.0))
    assert kind == "phantom" and curve.source == speckle.CALIBRATED_SOURCE
    beam = speckle.DecorrelationCurve.from_settings(sweeps[0].metadata["settings"])
    ratio = curve.distance(np.full(curve.depths_mm.size, 0.5), curve.depths_mm) / beam.distance(
        np.full(curve.depths_mm.size, 0.5), curve.depths_mm)
    assert np.all((ratio > 0.5) & (ratio < 2.0)) and not np.allclose(ratio, 1.0), ratio
    cache = tmp_path / "cache"  # with a cache folder the phantom's curve is kept and read back, not simulated again
    first, _ = datasets.mixed_curve(sweeps[0], (1.0, 0.0, 0.0), cache)
    (kept,) = cache.glob("phantom_curve_*.json")
    np.testing.assert_array_equal(first.rho, curve.rho)
    kept.write_text(json.dumps(dict(json.loads(kept.read_text()), source="read from the cache")))
    assert datasets.mixed_curve(sweeps[0], (1.0, 0.0, 0.0), cache)[0].source == "read from the cache"
    kept.write_text("{broken")  # a broken entry is made again
    np.testing.assert_array_equal(datasets.mixed_curve(sweeps[0], (1.0, 0.0, 0.0), cache)[0].rho, curve.rho)
    for bad in ((0.5, 0.5), (0.5, 0.3, 0.3), (0.55, 0.25, 0.2), (-0.1, 0.6, 0.5)):
        with pytest.raises(InputError, match="--curve-mix"):
            datasets.check_curve_mix(bad)
    opts = options_from_args(_args("--out", "x", "--curve-mix", "0.5", "0.3", "0.2"))
    assert opts.curve_mix == (0.5, 0.3, 0.2) and opts.recipe()["curve_mix"] == (0.5, 0.3, 0.2)


def test_chain_windows_cut_a_chain_into_windows_that_share_their_end_frames():
    import torch

    from freehandrecon.lab.train.trainer import chain_windows

    b, w, k = 2, 3, 4
    x = torch.arange(b * (k * w + 1), dtype=torch.float32).view(b, k * w + 1, 1, 1).expand(-1, -1, 5, 5)
    y = torch.arange(b * k * w * 6, dtype=torch.float32).view(b, k * w, 6)
    d = torch.arange(b * k * w * 2, dtype=torch.float32).view(b, k * w, 2, 1, 1)
    xw, yw, dw = chain_windows(x, y, d, w, k)
    assert xw.shape == (b * k, w + 1, 5, 5) and yw.shape == (b * k, w, 6) and dw.shape == (b * k, w, 2, 1, 1)
    for i in range(b):
        for j in range(k):
            # window j of chain i holds frames j*w .. j*w + w and the pairs between them
            assert torch.equal(xw[i * k + j, :, 0, 0], x[i, j * w:j * w + w + 1, 0, 0])
            assert torch.equal(yw[i * k + j], y[i, j * w:(j + 1) * w])
            assert torch.equal(dw[i * k + j], d[i, j * w:(j + 1) * w])
    # the chain's predictions come back in order: windows reshaped to [B, K*W, 6] give the labels again
    assert torch.equal(yw.reshape(y.shape), y)
    assert chain_windows(x, y, None, w, k)[2] is None


def test_rescaled_outputs_predict_the_same_motions():
    import torch

    from freehandrecon.poses.network import PoseNetConfig, build_pose_net, rescale_outputs

    torch.manual_seed(0)
    net = build_pose_net(PoseNetConfig(input_size=64, widths=(8, 8, 16, 16), window=4)).eval()
    x = torch.rand(2, 5, 64, 64)
    old = np.array([0.5, 0.07, 0.6, 0.4, 2.1, 0.2])
    new = np.array([0.4, 0.08, 0.7, 0.4, 0.6, 0.2])
    with torch.no_grad():
        before = net(x)["pred"].numpy() * old
        rescale_outputs(net, old, new)
        after = net(x)["pred"].numpy() * new
    assert np.allclose(before, after, atol=1e-5) and np.abs(before).max() > 1e-3
    with pytest.raises(ValueError, match="positive"):
        rescale_outputs(net, old, -new)


# --- training runs ---------------------------------------------------------------------------------

def test_tiny_run_learns_exports_and_resumes(tmp_path):
    from freehandrecon.lab.train.trainer import train

    out = tmp_path / "run"
    base = [*TINY, "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "12", "--lr", "3e-3", "--no-augment",
            "--name", "tiny"]
    common_args = [*base, "--out", str(out)]
    summary = train(options_from_args(_args(*common_args, "--epochs", "3")))
    hist = summary["history"]
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    assert "val_final_drift_rate_length_pct" in hist[-1]
    m = learned.load_model(out / "tiny.json")
    meta = m.meta
    assert meta["recipe"]["epochs"] == 3 and meta["command"].startswith("freehandrecon train")
    assert "val_loss" in meta["metrics"]["validation"]
    rows = (out / "log.jsonl").read_text().splitlines()
    # resume: continue the same run to 4 epochs
    summary2 = train(options_from_args(_args(*common_args, "--epochs", "4", "--resume")))
    assert [r["epoch"] for r in summary2["history"]] == [1, 2, 3, 4]
    assert len((out / "log.jsonl").read_text().splitlines()) == len(rows) + 1
    with pytest.raises(InputError, match="does not exist"):
        train(options_from_args(_args(*base, "--out", str(tmp_path / "new"), "--resume")))


def test_a_time_budget_stops_after_the_epoch_that_passes_it_and_exports(tmp_path, capsys):
    """--time-budget (for a lent GPU's fixed minutes): the run stops after the first epoch that ends past the budget
    and exports the best checkpoint; without one, every epoch runs."""
    from freehandrecon.lab.train.trainer import train

    args = [*TINY, "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "2", "--epochs", "5", "--name", "t"]
    summary = train(options_from_args(_args(*args, "--out", str(tmp_path / "b"), "--time-budget", "0.01")))
    assert [r["epoch"] for r in summary["history"]] == [1]
    assert '"event": "time_budget"' in capsys.readouterr().out
    assert learned.load_model(tmp_path / "b" / "t.json").meta["recipe"]["time_budget"] == 0.01
    assert len(train(options_from_args(_args(*args, "--epochs", "2", "--out", str(tmp_path / "c"))))["history"]) == 2
    with pytest.raises(InputError, match="not positive"):
        options_from_args(_args(*args, "--out", str(tmp_path / "d"), "--time-budget", "0"))
    with pytest.raises(InputError, match="below 1"):
        options_from_args(_args(*args, "--out", str(tmp_path / "d"), "--workers", "0"))


def test_export_last_takes_the_final_epoch_not_the_lowest_validation_loss(tmp_path):
    """A continuation stage whose validation loss never goes below its first epoch's would export that epoch;
    --export last takes the end of the schedule instead."""
    from freehandrecon.lab.train.trainer import train

    args = [*TINY, "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "3", "--epochs", "3", "--lr", "3e-3",
            "--name", "t"]
    summary = train(options_from_args(_args(*args, "--out", str(tmp_path / "last"), "--export", "last")))
    meta = learned.load_model(tmp_path / "last" / "t.json").meta
    assert meta["exported_from"] == "last.pt" and meta["trained_epochs"] == 3
    assert meta["metrics"]["validation"]["epoch"] == 3 and meta["recipe"]["export"] == "last"
    assert meta["metrics"]["validation"]["val_loss"] == summary["history"][-1]["val_loss"]
    train(options_from_args(_args(*args, "--out", str(tmp_path / "best"))))
    best = learned.load_model(tmp_path / "best" / "t.json").meta
    assert best["exported_from"] == "best.pt" and best["recipe"]["export"] == "best"
    with pytest.raises(SystemExit):
        _args(*args, "--out", str(tmp_path / "x"), "--export", "first")


def test_v2_run_from_a_v1_model_keeps_its_start_and_exports_v2(tmp_path):
    from freehandrecon.lab.train.trainer import train

    cache = ["--cache", str(tmp_path / "cache"), "--steps-per-epoch", "3", "--epochs", "1"]
    train(options_from_args(_args(*TINY, *cache, "--out", str(tmp_path / "v1"), "--name", "v1")))
    v2 = [*TINY, *cache, "--out", str(tmp_path / "v2"), "--name", "v2", "--decorrelation-lags", "2", "1",
          "--decorrelation-floor-lag", "4", "--init", str(tmp_path / "v1" / "v1.json")]
    summary = train(options_from_args(_args(*v2)))
    m = learned.load_model(tmp_path / "v2" / "v2.json")
    assert m.config.decorrelation_lags == (1, 2) and m.config.decorrelation_floor_lag == 4
    assert m.meta["config"]["architecture"] == "moglo-lite-v2" and m.meta["recipe"]["init"] == "v1.json"
    assert np.allclose(m.scales, learned.load_model(tmp_path / "v1" / "v1.json").scales)
    assert np.isfinite(summary["history"][0]["val_loss"])
    with pytest.raises(InputError, match="cannot be combined"):
        options_from_args(_args(*v2, "--resume"))
    with pytest.raises(InputError, match="below 1"):
        options_from_args(_args(*TINY, "--out", str(tmp_path / "x"), "--decorrelation-lags", "0"))


def test_chained_run_from_a_model_with_rescaled_outputs(tmp_path):
    from freehandrecon.lab.train.trainer import train

    cache = ["--cache", str(tmp_path / "cache"), "--steps-per-epoch", "3", "--epochs", "1"]
    train(options_from_args(_args(*TINY, *cache, "--out", str(tmp_path / "a"), "--name", "a")))
    start = learned.load_model(tmp_path / "a" / "a.json")
    wrong_scales = start.scales * np.array([1.0, 1.0, 1.0, 1.0, 4.0, 1.0])  # as if fitted to much larger yaws
    learned.save_model(start.net, wrong_scales, tmp_path / "a", "wide")
    args = [*TINY, *cache, "--out", str(tmp_path / "b"), "--name", "b", "--init", str(tmp_path / "a" / "wide.json"),
            "--rescale-outputs", "--chain", "2", "--batch-size", "2", "--drift-rate-weight", "0.5"]
    summary = train(options_from_args(_args(*args)))
    assert np.isfinite(summary["history"][0]["drift_rate"]) and summary["history"][0]["drift_rate"] > 0
    b = learned.load_model(tmp_path / "b" / "b.json")
    assert b.meta["recipe"]["chain"] == 2 and b.meta["recipe"]["rescale_outputs"] is True
    # the new scales are the training data's (run "a" fitted its own to the same data), not the start model's
    assert np.allclose(b.scales, start.scales, rtol=1e-4)
    assert not np.allclose(b.scales, wrong_scales, rtol=1e-2)


def test_ema_run_saves_the_averaged_weights_and_resumes_both(tmp_path):
    import torch

    from freehandrecon.lab.train.trainer import train

    out = tmp_path / "ema"
    args = [*TINY, "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "4", "--out", str(out), "--name", "e",
            "--ema", "0.9", "--drift-rate-weight", "0.5"]
    summary = train(options_from_args(_args(*args, "--epochs", "1")))
    assert "drift_rate" in summary["history"][0]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    # the saved (and exported) weights are the average, which differs from the raw weights being trained
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and "bn" not in k)
    assert not torch.equal(ckpt["model"][key], ckpt["raw_model"][key])
    exported = learned.load_model(out / "e.json").net.state_dict()[key]
    assert torch.allclose(exported.float(), ckpt["model"][key].float(), atol=1e-6)
    summary2 = train(options_from_args(_args(*args, "--epochs", "2", "--resume")))
    assert [r["epoch"] for r in summary2["history"]] == [1, 2]
    assert learned.load_model(out / "e.json").meta["recipe"]["ema"] == 0.9


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "freehandrecon.lab.train", *TINY, "--threads", "1", "--cache", str(tmp_path / "cache"),
           "--out", str(out), "--epochs", "1", "--steps-per-epoch", "3", "--quiet", "--name", "ddp"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "ddp.safetensors").exists() and (out / "last.pt").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 writes
    meta = json.loads((out / "ddp.json").read_text())
    assert meta["trained_epochs"] == 1
