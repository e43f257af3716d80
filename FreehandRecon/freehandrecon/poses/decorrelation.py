"""Calibrated speckle-decorrelation features for the learned pose network (architecture v2).

Elevational distance is set by the probe's elevation beam, which the images alone cannot reveal:
two probes with the same in-plane speckle can decorrelate at different rates. The v2 network
therefore gets, next to the frames, what the probe's decorrelation curve says (the same
calibration the classical estimator uses, :class:`~freehandrecon.poses.speckle.DecorrelationCurve`).

For every pair (t, t+1) and lag j in ``lags``, frames ``s`` and ``s + j`` with
``s = clamp(t - (j - 1) // 2, 0, N - 1 - j)`` (a span that contains the pair) are aligned in-plane
(lag-1 rigid block matching, composed along the span, applied as an integer shift) and correlated on a ``grid x grid`` grid of
non-overlapping patches of the model input (log-compressed correlation converted to intensity
correlation). Two channels per lag and patch:

* ``rho``: the intensity correlation ``rho_I`` in [0, 1] (0 for flat patches, e.g. padding);
* ``dist``: the curve's elevational distance at the patch depth for that correlation, per frame
  (``distance / j``), in units of :data:`DISTANCE_UNIT_MM`, capped at :data:`MAX_DISTANCE_MM`.

Larger lags bring small steps into the range where the curve is informative; smaller lags keep
large steps from decorrelating fully.

Tissue structure (layers, echogenicity changes, vessel walls) does not decorrelate with elevation
as speckle does: patch correlations level off at a floor instead of falling to zero, so the curve
under-reads. With ``floor_lag`` F, ``2 + len(lags)`` more channels follow: the correlation at lag F
(``rho_far``, the floor where F frames span several beam widths), the curve's effective beam width
at the patch depth (distance where it falls to ``exp(-1/2)``, in :data:`DISTANCE_UNIT_MM`), and per
lag the distance of the floor-corrected correlation ``(rho - rho_far) / (1 - rho_far)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DISTANCE_UNIT_MM = 0.5
MAX_DISTANCE_MM = 3.0


def patch_size(input_size: int, grid: int) -> int:
    """Edge (model pixels) of the square correlation patches."""
    return input_size // grid


def row_depths_mm(frame_shape: tuple[int, int], spacing: tuple[float, float], input_spacing: float,
                  input_size: int, grid: int) -> np.ndarray:
    """Depth below the skin line (mm) of the centre of each patch row of the model input.

    The model input is centred on the frame centre (:func:`common.resample_frames`), so model row r
    lies at ``(H - 1) sy / 2 + (r - (S - 1) / 2) * input_spacing`` mm.
    """
    p = patch_size(input_size, grid)
    centre = (frame_shape[0] - 1) * spacing[1] / 2
    rows = np.arange(grid) * p + (p - 1) / 2
    return centre + (rows - (input_size - 1) / 2) * input_spacing


def curve_for_sweep(sweep, curve=None):
    """The decorrelation curve the learned estimator uses for ``sweep``: the given one (a
    :class:`DecorrelationCurve` or a curve JSON from ``freehandrecon calibrate-speckle``), else the beam
    model of the simulated probe, else the typical-probe curve (:func:`speckle.curve_for` with ``beam_model``)."""
    from .speckle import curve_for

    return curve_for(sweep, curve, beam_model=True)


def model_features(frames: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float], curve, *,
                   input_spacing: float, input_size: int, lags: Sequence[int], floor_lag: int = 0) -> np.ndarray:
    """:func:`elevation_features` of model-input ``frames`` on the network's 1/16 grid, for a sweep whose
    original frames are ``frame_shape`` pixels of ``spacing`` mm."""
    grid = input_size // 16
    depths = row_depths_mm(frame_shape, spacing, input_spacing, input_size, grid)
    return elevation_features(frames, curve, depths, input_spacing=input_spacing, lags=lags, grid=grid,
                              floor_lag=floor_lag)


def _compose(th1, t1, th2, t2):
    """In-plane rigid motions ``x_k = R1 x_{k+1} + t1`` and ``x_{k+1} = R2 x_{k+2} + t2`` -> k+2 in k."""
    import torch

    c, s = torch.cos(th1), torch.sin(th1)
    return th1 + th2, torch.stack([c * t2[:, 0] - s * t2[:, 1], s * t2[:, 0] + c * t2[:, 1]], -1) + t1


def _shifted_correlation(a, b, shift_px, patch: int):
    """Intensity correlation ``[M, g*g]`` of the ``patch``-pixel grid patches of ``b`` with ``a`` shifted by the
    per-pair translation ``shift_px [M, 2]`` (dx, dy; ``B(q) ~ A(q + u)``).

    Pearson correlations at the rounded shift and its four integer neighbours (no resampling:
    interpolating speckle lowers its correlation), converted from log-compressed to intensity
    correlation, and the peak height between them from a separable Gaussian fit, as
    :func:`blockmatch.aligned_correlation` does per patch (this pooled form is several times faster).
    """
    import torch
    import torch.nn.functional as F

    from .blockmatch import _peak_height
    from .speckle import log_to_intensity_correlation

    m, h, w = a.shape
    r = torch.round(shift_px).long().clamp(-h // 2, h // 2)
    pad = int(r.abs().max()) + 1 if m else 1
    ap = F.pad(a[:, None], [pad] * 4, mode="replicate")[:, 0]
    win = torch.empty(m, h + 2, w + 2, dtype=a.dtype)
    keys = r[:, 0] * 100003 + r[:, 1]
    for key in torch.unique(keys):  # a few distinct integer shifts per batch
        sel = (keys == key).nonzero()[:, 0]
        dx, dy = int(r[sel[0], 0]), int(r[sel[0], 1])
        win[sel] = ap[sel, pad + dy - 1:pad + dy + h + 1, pad + dx - 1:pad + dx + w + 1]
    pool = lambda t: F.avg_pool2d(t[:, None], patch)[:, 0].flatten(1)  # noqa: E731
    mb = pool(b)
    vb = (pool(b * b) - mb * mb).clamp_min(0)
    corr = {}
    for oy, ox in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        sa = win[:, 1 + oy:1 + oy + h, 1 + ox:1 + ox + w]
        ma = pool(sa)
        va = (pool(sa * sa) - ma * ma).clamp_min(0)
        den = torch.sqrt(va * vb)
        c = torch.where(den > 1e-12, (pool(sa * b) - ma * mb) / den.clamp_min(1e-12), torch.zeros_like(den))
        corr[oy, ox] = log_to_intensity_correlation(c)
    c0 = corr[0, 0]
    best = torch.stack(list(corr.values())).max(0).values
    height = c0 * _peak_height(corr[-1, 0], c0, corr[1, 0]) * _peak_height(corr[0, -1], c0, corr[0, 1])
    return torch.minimum(torch.maximum(height, best), torch.ones_like(best))


def _rigid_in_plane(a, b, grid, spacing: float):
    """Rigid in-plane motion (theta, t mm) of frames ``b`` in ``a``: one block-matching pass and a weighted
    rigid fit (the first pass of :func:`blockmatch.in_plane_motion`, without its per-patch correlation)."""
    import torch

    from . import blockmatch

    h, w = a.shape[-2:]
    q = torch.as_tensor(grid.centres_px() - [(w - 1) / 2, (h - 1) / 2], dtype=a.dtype) * spacing
    disp, peak = blockmatch.match(blockmatch.extract_patches(a, grid), blockmatch.extract_patches(b, grid))
    qq = q.expand(a.shape[0], -1, -1)
    return blockmatch.fit_rigid(qq, qq + disp * spacing, peak.clamp_min(0) ** 2)


def _distance_by_row(curve, rho: np.ndarray, depths_mm: np.ndarray, grid: int) -> np.ndarray:
    """``curve.distance`` for correlations ``[M, grid * grid]`` whose patch rows lie at ``depths_mm``: the
    curve row of each depth is inverted once (the correlation falls with distance)."""
    out = np.empty(rho.shape, np.float64)
    table = curve._rows(np.asarray(depths_mm, np.float64))  # [grid, D], non-increasing
    dist = curve.distances_mm
    for r in range(grid):
        cols = slice(r * grid, (r + 1) * grid)
        out[:, cols] = np.interp(-rho[:, cols], -table[r], dist)
    return out


def elevation_features(frames: np.ndarray, curve, depths_mm: np.ndarray, *, input_spacing: float,
                       lags: Sequence[int], grid: int, batch: int = 256, per_patch: bool = False,
                       floor_lag: int = 0) -> np.ndarray:
    """Model-input frames ``[N, S, S]`` (float in [0, 1]) -> float32 ``[N-1, C, grid, grid]`` with
    ``C = feature_channels(lags, floor_lag)``.

    ``curve`` is a :class:`DecorrelationCurve` (mm), ``depths_mm`` the depth of each patch row
    (:func:`row_depths_mm`). See the module docstring for the channels. ``per_patch`` aligns every
    patch by the rigid motion at its centre (:func:`blockmatch.aligned_correlation`); otherwise the
    whole frame is shifted by the motion of its centre (about three times faster, ignores rotation).
    """
    import torch

    from . import blockmatch
    from .speckle import log_to_intensity_correlation

    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    n, s = x.shape[0], x.shape[-1]
    if n < 2:
        return np.zeros((0, feature_channels(lags, floor_lag), grid, grid), np.float32)
    p = patch_size(s, grid)
    coarse = blockmatch.patch_grid((s, s), max(1, grid // 2), max(1, grid // 2), size=2 * p, margin=0)
    cells = blockmatch.patch_grid((s, s), grid, grid, size=p, margin=0)
    q = torch.as_tensor(cells.centres_px() - (s - 1) / 2, dtype=torch.float32) * input_spacing  # [P, 2] mm
    th = torch.empty(n - 1)
    tr = torch.empty(n - 1, 2)
    for a in range(0, n - 1, batch):  # lag-1 in-plane motion (frame k+1 in frame k)
        e = min(n - 1, a + batch)
        th[a:e], tr[a:e] = _rigid_in_plane(x[a:e], x[a + 1:e + 1], coarse, input_spacing)
    row_curve = curve.patch_averaged(p * input_spacing)
    all_lags = list(lags) + ([floor_lag] if floor_lag else [])
    out = np.zeros((n - 1, 2 * len(all_lags), grid * grid), np.float32)
    for li, j in enumerate(all_lags):
        j = int(j)
        m = n - j
        if m < 1:  # sweep shorter than the lag: use the longest lag that fits
            j, m = n - 1, 1
        thj, tj = th[:m].clone(), tr[:m].clone()
        for k in range(1, j):
            thj, tj = _compose(thj, tj, th[k:k + m], tr[k:k + m])
        rho = np.empty((m, grid * grid), np.float32)
        if per_patch:
            c, sn = torch.cos(thj)[:, None], torch.sin(thj)[:, None]
            disp = (torch.stack([c * q[:, 0] - sn * q[:, 1], sn * q[:, 0] + c * q[:, 1]], -1) + tj[:, None, :] - q)
            disp = disp / input_spacing
        for a in range(0, m, batch):
            e = min(m, a + batch)
            if per_patch:
                rho[a:e] = blockmatch.aligned_correlation(x[a:e], x[a + j:e + j], cells, disp[a:e],
                                                          log_to_intensity_correlation).numpy()
            else:
                rho[a:e] = _shifted_correlation(x[a:e], x[a + j:e + j], tj[a:e] / input_spacing, p).numpy()
        rho = np.clip(rho, 0.0, 1.0)
        dist = _distance_by_row(row_curve, rho, depths_mm, grid) / j
        idx = np.clip(np.arange(n - 1) - (j - 1) // 2, 0, m - 1)
        out[:, 2 * li] = rho[idx]
        out[:, 2 * li + 1] = np.minimum(dist[idx], MAX_DISTANCE_MM) / DISTANCE_UNIT_MM
    if floor_lag:
        rho_far = out[:, 2 * len(lags)]
        sigma = row_curve.distance(np.full(grid, math.exp(-0.5)), np.asarray(depths_mm, np.float64))
        extra = [rho_far, np.broadcast_to(np.repeat(sigma, grid) / DISTANCE_UNIT_MM, rho_far.shape)]
        for li, j in enumerate(lags):
            rho_c = np.clip((out[:, 2 * li] - rho_far) / np.maximum(1.0 - rho_far, 1e-3), 0.0, 1.0)
            dist = _distance_by_row(row_curve, rho_c, depths_mm, grid) / min(int(j), n - 1)
            extra.append(np.minimum(dist, MAX_DISTANCE_MM) / DISTANCE_UNIT_MM)
        out = np.concatenate([out[:, :2 * len(lags)], np.stack(extra, 1).astype(np.float32)], 1)
    return out.reshape(n - 1, feature_channels(lags, floor_lag), grid, grid)


def mirror_lateral(features: np.ndarray) -> np.ndarray:
    """Features of the laterally mirrored frames (patch columns reversed)."""
    return features[..., ::-1]


def feature_channels(lags: Sequence[int], floor_lag: int = 0) -> int:
    """Number of feature channels for ``lags`` (and ``floor_lag``, 0 for none)."""
    n = len(tuple(lags))
    return 2 * n + ((2 + n) if floor_lag else 0)

