"""Quality guard: losses and their calibrated weights, OOD statistics, corruptions, guard files, product checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from freehandrecon.errors import InputError, ResourceError
from freehandrecon.io.plus import sweep_from_plus
from freehandrecon.quality import VERDICTS, check_sweep, guard_available, load_guard
from freehandrecon.quality import data as qdata
from freehandrecon.quality.guard import (MODEL_DIR, Guard, calibrate_thresholds, encode_frames, feature_names,
                                         save_guard)
from freehandrecon.lab.quality.losses import (SOBEL_NORM, calibrate_weights, ms_ssim_loss, roi_edge, roi_l1,
    sobel_magnitude)
from freehandrecon.quality.model import GuardConfig, build_guard
from freehandrecon.quality.ood import auroc, fit_ensemble, fit_stats, ledoit_wolf
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"
SHIPPED = guard_available()
# The guard ships with the package (Resources/Models): a missing one is a failure, not a reason to skip.
needs_shipped = pytest.mark.usefixtures("shipped_guard")


@pytest.fixture
def shipped_guard():
    assert SHIPPED, "the shipped quality guard (Resources/Models) is missing"


# --- losses ---------------------------------------------------------------------------------------------------

def test_sobel_magnitude_is_normalised_and_zero_on_flat_images():
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0
    e = sobel_magnitude(step)
    assert float(e.max()) == pytest.approx(4.0 / SOBEL_NORM, rel=1e-4)  # |Gx| = 1 + 2 + 1 at a unit step
    assert float(e.max()) <= 1.0
    assert float(sobel_magnitude(torch.full((1, 1, 16, 16), 0.3)).max()) < 1e-3


def test_roi_terms_average_over_roi_pixels_only():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = torch.zeros(2, 1, 8, 8)
    x_hat[0, 0, :4] = 0.5      # error inside the ROI
    x_hat[1] = 0.9             # error outside it
    roi = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    roi[0, 0, :2] = True
    assert float(roi_l1(x_hat, x, roi)) == pytest.approx(0.5)
    assert float(roi_l1(x_hat, x, torch.zeros_like(roi))) == 0.0
    assert float(roi_edge(x, x, roi)) == 0.0


def test_loss_weights_are_the_ratio_of_gradient_norms_at_the_last_decoder_layer():
    torch.manual_seed(0)
    net = build_guard(GuardConfig(input_size=64, widths=(4, 4, 4, 4), latent=8))
    x = torch.rand(4, 1, 64, 64)
    roi = torch.zeros(4, 1, 64, 64, dtype=torch.bool)
    roi[:, :, 20:40, 10:30] = True
    last = net.decoder.last.weight
    w = calibrate_weights([(x, roi)], lambda t: net(t)[0], last)
    x_hat = net(x)[0]
    g = [torch.autograd.grad(f, last, retain_graph=True)[0].norm() for f in
         (ms_ssim_loss(x_hat, x), roi_l1(x_hat, x, roi), roi_edge(x_hat, x, roi))]
    assert w["lambda_roi"] == pytest.approx(float(g[0] / g[1]), rel=1e-4)
    assert w["lambda_edge"] == pytest.approx(float(g[0] / g[2]), rel=1e-4)
    with pytest.raises(InputError, match="ROI is empty"):
        calibrate_weights([(x, torch.zeros_like(roi))], lambda t: net(t)[0], last)


# --- OOD statistics --------------------------------------------------------------------------------------------

def test_ledoit_wolf_matches_the_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)) * np.array([1, 2, 3, 1, 1, 0.5])
    x -= x.mean(axis=0)
    cov, shrink = ledoit_wolf(x)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2) / p
    b2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n ** 2 / p
    expected = min(b2, d2) / d2
    assert shrink == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(cov, expected * mu * np.eye(p) + (1 - expected) * s, rtol=1e-9)
    assert 0 < shrink < 1


def test_mahalanobis_uses_the_nearest_site_and_auroc_counts_pairs():
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(10, 1, (200, 3))])
    labels = np.repeat([0, 1], 200)
    stats = fit_stats(z, labels)
    near = stats.mahalanobis(np.array([[0.0, 0, 0], [10.0, 10, 10]]))
    far = stats.mahalanobis(np.array([[5.0, 5, 5], [-8.0, 0, 0]]))
    assert near.max() < 1.0 and far.min() > 4.0
    # the ensemble normalises each layer on calibration data and takes the largest
    noise = rng.normal(0, 1, (400, 2)) * 5
    ens = fit_ensemble([noise, z], labels, [noise[:100], z[:100]], ["a", "latent"])
    layer = ens.layer_scores([noise[:100], z[:100]])
    assert np.allclose(np.median(layer, axis=1), 0.0) and np.allclose(np.quantile(layer, 0.99, axis=1), 1.0)
    probe = [np.array([[0.0, 0.0]]), np.array([[5.0, 5, 5]])]
    assert ens.score(probe)[0] == pytest.approx(ens.layer_scores(probe).max())
    assert ens.knn(np.array([[5.0, -5, 5]])) > ens.knn(np.array([[10.0, 10, 10]]))
    neg, pos = rng.normal(0, 1, 50), rng.normal(1, 1, 40)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(neg, pos) == pytest.approx(brute)
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0 and auroc([1, 1], [1]) == 0.5


def test_texture_layer_is_the_log_laplacian_energy_per_scale_and_rises_most_at_the_finest_for_noise():
    from freehandrecon.quality.texture import EPS, laplacian_energy

    rng = np.random.default_rng(4)
    x = rng.random((3, 16, 16))
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    lap = 4 * x - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]
    got = laplacian_energy(torch.from_numpy(x)[:, None]).numpy()
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got[:, 0], np.log((lap ** 2).mean(axis=(1, 2)) + EPS), rtol=1e-9)
    flat = laplacian_energy(torch.full((1, 1, 16, 16), 0.4, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(flat, np.log(EPS), atol=1e-6)  # a flat frame has no texture
    # smooth structure plus white noise: the finest scale gains far more than the coarsest
    yy, xx = np.mgrid[:64, :64]
    smooth = 0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    noisy = smooth + rng.normal(0, 0.1, smooth.shape)
    e = laplacian_energy(torch.from_numpy(np.stack([smooth, noisy]))[:, None]).numpy()
    gain = e[1] - e[0]
    assert gain[0] > gain[2] + 1.0 and gain[0] > 2.0


# --- data -------------------------------------------------------------------------------------------------------

def test_corruptions_change_frames_and_keep_the_fan():
    rng = np.random.default_rng(3)
    frames = rng.integers(60, 200, (3, 40, 50)).astype(np.uint8)
    frames[:, :, :5] = 0  # outside a fan
    for kind in qdata.CORRUPTIONS:
        bad = qdata.corrupt(frames, kind, np.random.default_rng(0))
        assert bad.shape == frames.shape and bad.dtype == np.uint8
        assert not np.array_equal(bad, frames), kind
        assert not bad[:, :, :5].any(), kind
    assert qdata.corrupt(frames, "saturated-gain", rng)[:, :, 5:].mean() > 220
    assert qdata.corrupt(frames, "no-contact", rng)[:, 20:, 5:].mean() < 30
    with pytest.raises(InputError, match="Unknown corruption"):
        qdata.corrupt(frames, "fog", rng)


def test_guard_frames_resample_any_size_and_roi_errors_are_named():
    x = qdata.guard_frames(np.full((2, 300, 200), 255, np.uint8), (0.1, 0.1))
    assert x.shape == (2, 64, 64)
    # 20 x 30 mm at 0.6 mm/pixel: about 33 x 50 pixels of signal, centred, zero around
    rows = np.flatnonzero(x[0].max(axis=1) > 0.5)
    assert abs(rows.size - 50) <= 1 and abs(np.flatnonzero(x[0].max(axis=0) > 0.5).size - 33) <= 1
    with pytest.raises(InputError, match="empty ROI"):
        qdata.box_roi((100, 80), (200, 10, 20, 20), 3)
    assert qdata.box_roi((100, 80), (10, 10, 20, 5), 3).sum() == 3 * 100
    with pytest.raises(InputError, match="empty"):
        qdata.check_roi(np.zeros((2, 8, 8), bool))
    with pytest.raises(InputError, match="spacing"):
        qdata.guard_frames(np.zeros((1, 8, 8)), (0.0, 1.0))


def test_fetal_phantom_has_a_thin_dark_layer_between_bright_lines():
    sweep = qdata.nt_sweep(seed=5, num_frames=3, site="site-a")
    roi = qdata.nt_roi(sweep)
    assert roi.any() and roi.mean() < 0.1
    frames = sweep.frames.astype(float)
    cols = roi.any(axis=1)  # per frame, columns crossed by the layer
    inside = frames[roi].mean()
    # the lines just above and below the layer (a few pixels out) are much brighter
    below = np.roll(roi, 4, axis=1) & ~roi
    above = np.roll(roi, -4, axis=1) & ~roi
    assert cols.any()
    assert frames[below].mean() > 2 * inside and frames[above].mean() > 2 * inside


def test_framesets_join_with_sweeps_numbered_in_order_and_split_for_calibration():
    from freehandrecon.lab.quality.evaluate import calibration_split

    def part(site: str, sweeps: list[int]) -> qdata.FrameSet:
        n = len(sweeps)
        return qdata.FrameSet(np.zeros((n, 4, 4), np.uint8), np.zeros((n, 4, 4), bool), np.zeros(n, np.int64),
                              np.asarray(sweeps), [site])

    joined = qdata.FrameSet.concat([part("b", [3, 3, 5]), part("a", [0, 1])], ["a", "b"])
    assert joined.sweep.tolist() == [0, 0, 1, 2, 3] and joined.site.tolist() == [1, 1, 1, 0, 0]
    calib, test = calibration_split(joined)
    assert calib.sweep.tolist() == [0, 0, 2] and test.sweep.tolist() == [1, 3]
    with pytest.raises(InputError, match="at least two sweeps"):
        calibration_split(part("a", [0, 0]))


def test_training_refuses_an_empty_roi():
    from freehandrecon.lab.quality.train import TrainConfig, train_guard

    frames = np.zeros((4, 64, 64), np.uint8)
    data = qdata.FrameSet(frames, np.zeros(frames.shape, bool), np.zeros(4, np.int64), np.arange(4), ["a"])
    with pytest.raises(InputError, match="ROI of the training frames is empty"):
        train_guard(data, TrainConfig(epochs1=1, epochs2=1))


# --- guard files ------------------------------------------------------------------------------------------------

def _tiny_guard(tmp_path: Path) -> tuple[Guard, Path]:
    torch.manual_seed(0)
    net = build_guard(GuardConfig(widths=(4, 4, 4, 4), latent=8)).eval()
    rng = np.random.default_rng(0)
    feats, recon = encode_frames(net, rng.random((60, 64, 64)).astype(np.float32))
    stats = fit_ensemble(feats, np.repeat([0, 1, 2], 20), feats, feature_names(net))
    thr = calibrate_thresholds(stats.score(feats), recon)
    _, js = save_guard(net, stats, thr, ["a", "b", "c"], tmp_path, "tiny", phase1_state=net.state_dict())
    return load_guard(js), js


def test_guard_round_trip_and_checksum(tmp_path):
    guard, js = _tiny_guard(tmp_path)
    meta = json.loads(js.read_text())
    assert len(meta["sha256"]) == 64 and meta["sites"] == ["a", "b", "c"] and guard.phase1_state
    sweep = Sweep(frames=np.random.default_rng(1).integers(0, 255, (5, 90, 70), dtype=np.uint8),
                  pixel_spacing=(0.3, 0.4))
    report = check_sweep(sweep, guard=guard)
    again = check_sweep(sweep, guard=load_guard(js))
    np.testing.assert_allclose(report.ood_score, again.ood_score)
    assert report.resampled and report.verdict in VERDICTS and report.num_frames == 5
    json.dumps(report.to_json())
    weights = js.with_suffix(".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ResourceError, match="checksum"):
        load_guard(js)
    weights.unlink()
    with pytest.raises(ResourceError, match="missing"):
        load_guard(js)
    with pytest.raises(ResourceError, match="does not exist"):
        load_guard(tmp_path / "nothing.json")


def test_guard_fitted_without_the_texture_layer_still_loads_and_scores(tmp_path):
    torch.manual_seed(0)
    net = build_guard(GuardConfig(widths=(4, 4, 4, 4), latent=8)).eval()
    feats, recon = encode_frames(net, np.random.default_rng(0).random((60, 64, 64)).astype(np.float32))
    names = feature_names(net)
    assert names[-2:] == ["texture", "latent"] and len(feats) == len(names) and feats[-2].shape == (60, 3)
    keep = [i for i, n in enumerate(names) if n != "texture"]  # the layers of guards written before it
    stats = fit_ensemble([feats[i] for i in keep], np.repeat([0, 1, 2], 20), [feats[i] for i in keep],
                         [names[i] for i in keep])
    thr = calibrate_thresholds(stats.score([feats[i] for i in keep]), recon)
    _, js = save_guard(net, stats, thr, ["a", "b", "c"], tmp_path, "old")
    guard = load_guard(js)
    assert guard.stats.names == [names[i] for i in keep]
    s = guard.score(np.random.default_rng(0).random((60, 64, 64)).astype(np.float32))
    np.testing.assert_allclose(s["ood"], stats.score([feats[i] for i in keep]), atol=1e-4)  # float32 files
    meta = json.loads(js.read_text())
    meta["feature_layers"][0]["name"] = "level9"
    js.write_text(json.dumps(meta))
    with pytest.raises(ResourceError, match="does not fit"):
        load_guard(js)


def test_verdict_follows_the_fraction_of_flagged_frames(tmp_path):
    guard, _ = _tiny_guard(tmp_path)
    sweep = Sweep(frames=np.random.default_rng(2).integers(0, 255, (10, 64, 64), dtype=np.uint8),
                  pixel_spacing=(0.6, 0.6))
    scores = check_sweep(sweep, guard=guard).ood_score
    for thr, verdict in ((scores.max() + 1, "ok"), (np.sort(scores)[-3], "warning"), (scores.min() - 1,
                                                                                     "out-of-distribution")):
        guard.thresholds["ood"] = float(thr)
        r = check_sweep(sweep, guard=guard)
        assert r.verdict == verdict and not r.resampled
        assert (r.verdict == "ok") == (r.message.startswith("Sweep looks like"))
        assert (r.verdict == "ok") != ("freehandrecon adapt" in r.message)  # a flagged sweep is pointed to the fix


# --- the shipped guard -------------------------------------------------------------------------------------------

@needs_shipped
def test_shipped_guard_files_and_card():
    guard = load_guard()
    meta = guard.meta
    assert meta["sites"] == ["site-a", "site-b", "site-c", "site-d", "site-e"]
    assert np.isfinite(guard.thresholds["ood"]) and guard.config.latent == 128
    assert (MODEL_DIR / "QUALITY_GUARD_CARD.md").is_file()
    assert (MODEL_DIR / "quality_guard_v1.safetensors").stat().st_size < 6 * 2**20


@needs_shipped
def test_shipped_guard_accepts_new_in_distribution_sweeps_and_flags_the_unseen_site_and_corruptions():
    from freehandrecon.simulate import random_sweep

    guard = load_guard()
    seen = [random_sweep(site, seed, num_frames=12) for site, seed in (("site-b", 778), ("site-c", 779))]
    for sweep in seen:  # seeds no training, statistics or calibration sweep used
        assert check_sweep(sweep, guard=guard).verdict == "ok"
    unseen = check_sweep(random_sweep("site-f", 782, num_frames=12), guard=guard)
    assert unseen.verdict == "out-of-distribution"
    assert "texture" in guard.stats.names and guard.stats.names[-1] == "latent"
    for kind in ("saturated-gain", "no-contact", "shadowing", "heavy-noise"):
        bad = Sweep(frames=qdata.corrupt(seen[0].frames, kind, np.random.default_rng(0)),
                    pixel_spacing=seen[0].pixel_spacing)
        r = check_sweep(bad, guard=guard)
        assert r.verdict == "out-of-distribution" and r.fraction_out > 0.9, kind


@needs_shipped
def test_shipped_guard_on_the_real_spine_phantom_sweep():
    sweep = sweep_from_plus(SPINE, plus_config=SPINE_CFG)
    r = check_sweep(sweep)
    assert r.num_frames == 21 and r.resampled and np.all(np.isfinite(r.ood_score))
    assert r.verdict in VERDICTS and r.ms_per_frame < 200
    data = json.loads(json.dumps(r.to_json()))
    assert data["input_frame_shape"] == list(sweep.frame_shape) and len(data["ood_score"]) == 21


# --- command line ------------------------------------------------------------------------------------------------

@needs_shipped
def test_quality_command_writes_a_report_and_fails_on_request(tmp_path, capsys):
    from freehandrecon.commands.main import main

    out = tmp_path / "q.json"
    args = ["--quiet", "quality", str(SPINE), "--plus-config", str(SPINE_CFG), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["verdict"] in VERDICTS and report["num_frames"] == 21
    assert "verdict:" in capsys.readouterr().out
    assert main(args) == 3  # exists without --force
    code = main(args + ["--force", "--fail-on", "warning"])
    assert code == (0 if report["verdict"] == "ok" else 5)


def test_quality_command_names_a_damaged_guard(tmp_path, capsys):
    from freehandrecon.commands.main import main

    _, js = _tiny_guard(tmp_path)
    js.with_suffix(".safetensors").write_bytes(b"broken")
    assert main(["--quiet", "quality", str(SPINE), "--plus-config", str(SPINE_CFG), "--guard", str(js)]) == 4
    assert "checksum" in capsys.readouterr().err


@pytest.mark.slow
def test_quality_train_and_eval_run_end_to_end(tmp_path):
    from freehandrecon.lab.quality.command import main

    small = ["--train-sweeps", "1", "--val-sweeps", "2", "--heldout-sweeps", "1", "--anatomy-sweeps", "1",
             "--frames", "8", "--stats-sweeps", "1", "--stats-frames", "4"]
    cache = str(tmp_path / "cache")
    assert main(["--quiet", "quality-train", "--out", str(tmp_path / "g"), "--cache", cache, "--epochs1", "1",
                 "--epochs2", "1", *small]) == 0
    res = json.loads((tmp_path / "g" / "eval.json").read_text())
    assert set(res["ood_auroc"]) == {"heldout-site", *qdata.CORRUPTIONS, "different-anatomy"}
    assert "phase1" in res["reconstruction"]["heldout_site"]
    assert main(["--quiet", "quality-eval", "--guard", str(tmp_path / "g" / "quality_guard_v1.json"), "--cache",
                 cache, "--out", str(tmp_path / "e"), *small]) == 0
    assert (tmp_path / "e" / "eval.md").read_text().count("|") > 20


def test_ledoit_wolf_shrinkage_is_clamped_to_one():
    """Spikes along the axes: the sample covariance is nearly (tr S / p) I but each outer product is far from
    it, so the unclamped shrinkage beta^2 / delta^2 is about 19; clamped to 1 the covariance must be exactly
    the scaled identity, never a negative mix of S."""
    a = np.array([1.0, 1.1, 0.9, 1.05])
    x = np.concatenate([np.diag(a), -np.diag(a)])  # centred: every row has its negative
    cov, shrink = ledoit_wolf(x)
    s = x.T @ x / len(x)
    assert shrink == 1.0
    np.testing.assert_allclose(cov, np.trace(s) / 4 * np.eye(4), atol=1e-12)
    many = np.random.default_rng(0).normal(size=(5000, 3)) * [1.0, 2.0, 3.0]  # plenty of samples: little shrinkage
    _, small = ledoit_wolf(many - many.mean(axis=0))
    assert 0.0 <= small < 0.05


def test_knn_takes_the_kth_neighbour_not_the_next():
    """Bank latents at known angles from the query: with k=3 the score is the 3rd smallest chord distance."""
    from freehandrecon.quality.ood import EnsembleStats

    angles = np.deg2rad([10.0, 20.0, 30.0, 40.0, 50.0])
    bank = np.c_[np.cos(angles), np.sin(angles), np.zeros(5)]
    ens = EnsembleStats(layers=[], names=[], centre=np.zeros(0), scale=np.ones(0), bank=bank, k=3)
    d = ens.knn(np.array([[1.0, 0.0, 0.0]]))
    assert d[0] == pytest.approx(2 * np.sin(np.deg2rad(30.0) / 2))  # chord to the 30-degree latent
