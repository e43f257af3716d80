"""Refit the quality guard's statistics to one probe: same autoencoder, new Mahalanobis statistics.

The shipped guard says whether a sweep looks like the *simulated training sites*; after adaptation
the question is whether it looks like *this probe's* adaptation sweeps. The network is kept; per
feature layer the mean and the Ledoit-Wolf covariance are refitted on the adaptation frames (one
class, "probe"). Consecutive frames are nearly identical, so the normalisation (median and 99th
percentile of in-distribution distances) and the frame threshold come from out-of-fold distances
over contiguous blocks of frames, not from the frames each fit has seen.
"""

from __future__ import annotations

import numpy as np

from ..quality.data import guard_frames
from ..quality.guard import Guard, calibrate_thresholds, encode_frames, feature_names, select_layers
from ..quality.ood import EnsembleStats, fit_stats
from ..sweep import Sweep

FOLDS = 4
SITE = "probe"


def _features(guard: Guard, sweeps: list[Sweep]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    cfg = guard.config
    x = np.concatenate([guard_frames(s.frames, s.pixel_spacing, cfg.input_spacing, cfg.input_size) for s in sweeps])
    feats, recon = encode_frames(guard.net, x)
    block = np.concatenate([np.arange(s.num_frames) * FOLDS // s.num_frames for s in sweeps])  # contiguous folds
    return select_layers(feats, feature_names(guard.net), guard.stats.names), recon, block


def refit_guard(guard: Guard, sweeps: list[Sweep]) -> Guard:
    """A copy of ``guard`` whose statistics, normalisation and thresholds describe the frames of ``sweeps``."""
    feats, recon, fold = _features(guard, sweeps)
    n = recon.shape[0]
    labels = np.zeros(n, dtype=int)
    oof = np.zeros((len(feats), n))
    for k in range(FOLDS):
        test = fold == k
        if not test.any() or test.all():
            continue
        for i, f in enumerate(feats):
            oof[i, test] = fit_stats(f[~test], labels[~test]).mahalanobis(f[test])
    centre = np.median(oof, axis=1)
    scale = np.maximum(np.quantile(oof, 0.99, axis=1) - centre, 1e-6)
    layers = [fit_stats(f, labels) for f in feats]
    latent = np.asarray(feats[-1], np.float64)
    bank = latent / np.maximum(np.linalg.norm(latent, axis=1, keepdims=True), 1e-12)
    stats = EnsembleStats(layers, list(guard.stats.names), centre, scale, bank, int(min(guard.stats.k, n - 1)))
    oof_score = ((oof - centre[:, None]) / scale[:, None]).max(axis=0)
    base = guard.thresholds
    thresholds = calibrate_thresholds(oof_score, recon, warning_fraction=base.get("warning_fraction", 0.1),
                                      ood_fraction=base.get("ood_fraction", 0.5))
    meta = dict(guard.meta, sites=[SITE])
    return Guard(guard.net, stats, thresholds, [SITE], meta, guard.path, None)
