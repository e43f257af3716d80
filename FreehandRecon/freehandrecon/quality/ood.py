"""Out-of-distribution scores: Mahalanobis (per-site means, shared shrinkage covariance) on the guard's
features, a feature ensemble over encoder levels, k-nearest-neighbour distance, and AUROC.

Mahalanobis (Lee et al. 2018): with site means ``mu_c`` and one covariance ``Sigma`` of the
site-centred training features, shrunk towards ``(tr S / p) I`` by the Ledoit-Wolf factor, a frame's
distance is ``d(f) = min_c sqrt((f - mu_c)^T Sigma^-1 (f - mu_c))``.

Feature ensemble (the same paper's multi-layer variant): one such distance per feature layer
``l`` (the channel means and standard deviations after each encoder level, the input's
Laplacian-pyramid energies of :mod:`.texture`, and the 128-d latent),
each normalised on held-out in-distribution calibration frames, ``s_l = (d_l - median_l) /
(q99_l - median_l)``, and the frame's OOD score is ``max_l s_l``: a frame is unusual as soon as one
level finds it so (pixel-level texture such as noise shows in the first level and the texture
layer, anatomy and scanner geometry in the deeper ones). kNN: Euclidean distance from the unit-normalised latent to its k-th
nearest unit-normalised training latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage covariance of centred rows ``x [n, p]``; returns ``(Sigma, shrinkage)``."""
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta2 = float(((s - mu * np.eye(p)) ** 2).sum()) / p
    # beta^2 = (1/n^2) sum_i ||x_i x_i^T - S||_F^2 / p, with sum_i ||x_i x_i^T - S||_F^2 = sum_i |x_i|^4 - n ||S||_F^2
    beta2 = (float((x * x).sum(axis=1) @ (x * x).sum(axis=1)) / n - float((s * s).sum())) / (n * p)
    shrink = 0.0 if delta2 <= 0 else float(min(max(beta2, 0.0), delta2) / delta2)
    return shrink * mu * np.eye(p) + (1.0 - shrink) * s, shrink


@dataclass
class LatentStats:
    """Mahalanobis statistics of one feature layer: site means and the shared precision."""

    means: np.ndarray       # [C, p]
    precision: np.ndarray   # [p, p]
    shrinkage: float = 0.0

    def mahalanobis(self, z: np.ndarray) -> np.ndarray:
        """``[N]`` min over sites of the Mahalanobis distance."""
        return self.site_distances(z).min(axis=1)

    def site_distances(self, z: np.ndarray) -> np.ndarray:
        """``[N, C]`` Mahalanobis distance to each site mean."""
        d = np.asarray(z, np.float64)[:, None, :] - self.means[None]
        return np.sqrt(np.maximum(np.einsum("ncp,pq,ncq->nc", d, self.precision, d), 0.0))


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def fit_stats(z: np.ndarray, labels: np.ndarray) -> LatentStats:
    """Class-conditional means and the shared Ledoit-Wolf precision of training features ``z [M, p]``."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    centred = z - means[np.searchsorted(classes, labels)]
    cov, shrink = ledoit_wolf(centred)
    return LatentStats(means, np.linalg.inv(cov), shrink)


@dataclass
class EnsembleStats:
    """Per-layer Mahalanobis statistics, their calibration, and the latent kNN bank."""

    layers: list[LatentStats]
    names: list[str]
    centre: np.ndarray      # [L] median distance of calibration frames per layer
    scale: np.ndarray       # [L] 99th percentile minus median
    bank: np.ndarray        # [M, p] unit-normalised training latents
    k: int = 5

    def layer_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        """``[L, N]`` normalised per-layer distances."""
        d = np.stack([st.mahalanobis(f) for st, f in zip(self.layers, feats)])
        return (d - self.centre[:, None]) / self.scale[:, None]

    def score(self, feats: list[np.ndarray]) -> np.ndarray:
        """``[N]`` OOD score: the largest normalised per-layer distance."""
        return self.layer_scores(feats).max(axis=0)

    def latent_distance(self, feats: list[np.ndarray]) -> np.ndarray:
        """``[N]`` plain Mahalanobis distance on the latent alone (the last layer)."""
        return self.layers[-1].mahalanobis(feats[-1])

    def knn(self, z: np.ndarray) -> np.ndarray:
        """``[N]`` distance of unit-normalised latents to their k-th nearest bank latent."""
        u = _unit(np.asarray(z, np.float64))
        out = np.empty(u.shape[0])
        for s in range(0, u.shape[0], 1024):  # bounded memory
            d2 = np.maximum(2.0 - 2.0 * u[s:s + 1024] @ self.bank.T, 0.0)
            out[s:s + 1024] = np.sqrt(np.partition(d2, self.k - 1, axis=1)[:, self.k - 1])
        return out


def fit_ensemble(train: list[np.ndarray], labels: np.ndarray, calib: list[np.ndarray], names: list[str],
                 k: int = 5) -> EnsembleStats:
    """Fit every layer on training features and normalise it on calibration features (in distribution)."""
    layers = [fit_stats(f, labels) for f in train]
    d = [st.mahalanobis(f) for st, f in zip(layers, calib)]
    centre = np.array([np.median(v) for v in d])
    scale = np.array([max(np.quantile(v, 0.99) - np.median(v), 1e-6) for v in d])
    return EnsembleStats(layers, list(names), centre, scale, _unit(np.asarray(train[-1], np.float64)), int(k))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing their average rank."""
    v = np.asarray(values, np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size)
    _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores where positives (OOD) should score higher (ties count 1/2)."""
    neg = np.asarray(negatives, np.float64).ravel()
    pos = np.asarray(positives, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([neg, pos]))
    r_pos = ranks[neg.size:].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def per_sweep(scores: np.ndarray, sweep: np.ndarray, reduce: str = "median") -> np.ndarray:
    """One score per sweep (median or mean of its frames' scores)."""
    fn = np.median if reduce == "median" else np.mean
    return np.array([fn(scores[sweep == s]) for s in np.unique(sweep)])
