"""Accuracy metrics for estimated sweep poses (sensorless tracking), pure numpy.

All functions take the true and the estimated image-to-world transforms ``[N, 4, 4]``
(image mm -> world mm, see :mod:`freehandrecon.geometry`), the frame shape ``(H, W)`` in
pixels and the pixel spacing ``(sx, sy)`` mm. Definitions:

* **Points of a frame**: the pixel centres ``(i * sx, j * sy, 0)`` in image mm. Frames
  with at most ``max_points`` pixels use every pixel; larger frames use a regular
  sub-grid of ``nx x ny <= max_points`` pixels that spans the frame from the first to
  the last pixel centre in both directions (``nx / ny`` follows ``W / H``), so the mean
  over the grid is the mean over the frame up to discretisation.
* **GPE** (global pixel error, TUS-REC): for frames ``i = 2..N`` (1-based), the points
  mapped into frame 1 by the true ``inv(T_1) T_i`` and by the estimated ``inv(E_1) E_i``;
  the mean Euclidean distance over all those points and frames (mm).
* **LPE** (local pixel error, TUS-REC): the same with each frame mapped into its previous
  frame (``inv(T_{i-1}) T_i``), mean over frames ``i = 2..N`` (mm).
* **Drift**: both chains are anchored on the true first pose (the estimate becomes
  ``T_1 inv(E_1) E_i``); the drift of frame i is the distance between the true and the
  estimated world position of the frame centre ``((W-1) sx / 2, (H-1) sy / 2, 0)``.
  ``final_drift_mm`` is the drift of the last frame; ``average_drift_mm`` the mean and
  ``max_drift_mm`` the maximum over frames ``2..N`` (the anchored first frame has none).
* **Trajectory length**: the summed distances between consecutive true frame centres;
  **start-end distance**: the distance between the first and last true frame centres.
* **Final drift rates** (percent): final drift / trajectory length
  (``final_drift_rate_length_pct``) and final drift / start-end distance
  (``final_drift_rate_distance_pct``, MoGLo-Net's FDR).
* **Per-DoF errors**: the mean absolute difference of the relative motions
  ``C^-1 inv(T_k) T_{k+1} C`` in the centre frame (:func:`freehandrecon.poses.common.relative_centre`)
  as 6-vectors ``[tx, ty, tz mm, rx, ry, rz deg]`` (``R = Rz Ry Rx``, angle differences
  wrapped to [-180, 180)). ``per_dof_bias`` is the mean SIGNED difference: drift comes mostly from
  biases, and a rotation bias of b radians per frame alone drifts about ``b (N - 2) / 2`` of the length.
* **Drift attribution** (:func:`drift_attribution`): the final drift rate (percent of length) of the
  estimate with one group of its relative motions replaced by the true ones - ``tz``, ``rx``, ``ry``,
  ``rotation`` (rx, ry, rz) and ``in_plane`` (tx, ty, rz) - so the group whose correction lowers it most
  is the one that drifts. ``elevation_step_ratio``: summed estimated over summed true tz (how much the
  elevational steps are over- or under-read; NaN when the true tz sums to under 1 mm).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import geometry
from ..errors import InputError

DOF_NAMES = ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")
_CHUNK_POINTS = 2_000_000  # frames x points handled at once (bounds memory to ~50 MB)


def _check(true: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(true, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if t.ndim != 3 or t.shape[1:] != (4, 4) or e.shape != t.shape:
        raise InputError(f"True and estimated poses must both be [N, 4, 4]; got {t.shape} and {e.shape}.",
                         "Pass one 4x4 image-to-world matrix per frame for both, for the same frames.")
    if t.shape[0] < 2:
        raise InputError(f"Pose metrics need at least 2 frames; got {t.shape[0]}.", "Evaluate a longer sweep.")
    geometry.validate_transforms(t, "true image-to-world transforms")
    geometry.validate_transforms(e, "estimated image-to-world transforms")
    return t, e


def frame_points(frame_shape: tuple[int, int], spacing: tuple[float, float], max_points: int = 4096) -> np.ndarray:
    """Homogeneous image-mm points ``[P, 4]`` of a frame: every pixel centre, or a regular sub-grid
    of at most ``max_points`` spanning the frame (see the module docstring)."""
    h, w = (int(v) for v in frame_shape)
    if h < 1 or w < 1 or max_points < 1:
        raise InputError(f"Frame shape {frame_shape} / max_points {max_points} must be positive.",
                         "Pass frame_shape=(H, W) of the sweep and max_points >= 1.")
    if h * w <= max_points:
        nx, ny = w, h
    else:
        aspect = w / h
        ny = max(1, min(h, int(np.floor(np.sqrt(max_points / aspect)))))
        nx = max(1, min(w, max_points // ny))
    xs = np.linspace(0.0, w - 1.0, nx) * float(spacing[0])
    ys = np.linspace(0.0, h - 1.0, ny) * float(spacing[1])
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    pts = np.zeros((gx.size, 4))
    pts[:, 0], pts[:, 1], pts[:, 3] = gx.ravel(), gy.ravel(), 1.0
    return pts


def frame_centre(frame_shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Homogeneous image-mm position ``[4]`` of the frame centre."""
    h, w = frame_shape
    return np.array([(w - 1) * float(spacing[0]) / 2.0, (h - 1) * float(spacing[1]) / 2.0, 0.0, 1.0])


def _pixel_errors(rel_true: np.ndarray, rel_est: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per-frame mean distance ``[M]`` between points mapped by ``rel_true`` and ``rel_est`` ``[M, 4, 4]``."""
    diff = (rel_true - rel_est)[:, :3, :]  # (A - B) p, linear in p: one product instead of two
    out = np.empty(diff.shape[0])
    step = max(1, _CHUNK_POINTS // max(1, points.shape[0]))
    for s in range(0, diff.shape[0], step):  # chunks of frames bound the memory of [frames, 3, P]
        d = diff[s:s + step] @ points.T
        out[s:s + step] = np.linalg.norm(d, axis=1).mean(axis=1)
    return out


def gpe_per_frame(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
                  max_points: int = 4096) -> np.ndarray:
    """Global pixel error of each frame ``2..N`` (``[N-1]`` mm), see the module docstring."""
    t, e = _check(true, est)
    rt = np.linalg.inv(t[0]) @ t[1:]
    re = np.linalg.inv(e[0]) @ e[1:]
    return _pixel_errors(rt, re, frame_points(frame_shape, spacing, max_points))


def lpe_per_frame(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
                  max_points: int = 4096) -> np.ndarray:
    """Local pixel error of each frame ``2..N`` in its previous frame (``[N-1]`` mm)."""
    t, e = _check(true, est)
    return _pixel_errors(geometry.relative_transforms(t), geometry.relative_transforms(e),
                         frame_points(frame_shape, spacing, max_points))


def gpe(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
        max_points: int = 4096) -> float:
    """TUS-REC global pixel error (mm): mean over frames 2..N and their points (module docstring)."""
    return float(gpe_per_frame(true, est, frame_shape, spacing, max_points).mean())


def lpe(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
        max_points: int = 4096) -> float:
    """TUS-REC local pixel error (mm): mean over frames 2..N of the error in the previous frame."""
    return float(lpe_per_frame(true, est, frame_shape, spacing, max_points).mean())


def centre_positions(poses: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """World positions ``[N, 3]`` of the frame centres."""
    return (np.asarray(poses, dtype=np.float64) @ frame_centre(frame_shape, spacing))[:, :3]


def anchored(true: np.ndarray, est: np.ndarray) -> np.ndarray:
    """The estimated chain moved rigidly so that its first pose equals the true first pose."""
    t, e = _check(true, est)
    return t[0] @ np.linalg.inv(e[0]) @ e


def drift_per_frame(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int],
                    spacing: tuple[float, float]) -> np.ndarray:
    """Centre drift ``[N]`` mm of every frame with both chains anchored on the true first pose."""
    t, _ = _check(true, est)
    ct = centre_positions(t, frame_shape, spacing)
    ce = centre_positions(anchored(true, est), frame_shape, spacing)
    return np.linalg.norm(ct - ce, axis=1)


def trajectory_length_mm(true: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float]) -> float:
    """Summed distance between consecutive true frame centres (mm)."""
    c = centre_positions(true, frame_shape, spacing)
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())


def start_end_distance_mm(true: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float]) -> float:
    """Distance between the first and the last true frame centres (mm)."""
    c = centre_positions(true, frame_shape, spacing)
    return float(np.linalg.norm(c[-1] - c[0]))


def _rate(value: float, base: float) -> float:
    return float(100.0 * value / base) if base > 1e-9 else float("nan")


def final_drift_mm(true, est, frame_shape, spacing) -> float:
    """Drift of the last frame centre (mm)."""
    return float(drift_per_frame(true, est, frame_shape, spacing)[-1])


def final_drift_rate_length_pct(true, est, frame_shape, spacing) -> float:
    """Final drift as a percentage of the true trajectory length (NaN for a motionless sweep)."""
    return _rate(final_drift_mm(true, est, frame_shape, spacing), trajectory_length_mm(true, frame_shape, spacing))


def final_drift_rate_distance_pct(true, est, frame_shape, spacing) -> float:
    """Final drift as a percentage of the true start-end distance (MoGLo-Net's FDR; NaN if it is 0)."""
    return _rate(final_drift_mm(true, est, frame_shape, spacing), start_end_distance_mm(true, frame_shape, spacing))


def average_drift_mm(true, est, frame_shape, spacing) -> float:
    """Mean centre drift over frames 2..N (mm)."""
    return float(drift_per_frame(true, est, frame_shape, spacing)[1:].mean())


def max_drift_mm(true, est, frame_shape, spacing) -> float:
    """Largest centre drift over the sweep (mm)."""
    return float(drift_per_frame(true, est, frame_shape, spacing).max())


def relative_params_centre(poses: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Relative motions in the centre frame as 6-vectors ``[N-1, 6]`` (mm, degrees)."""
    from .common import relative_centre

    return geometry.matrix_to_params(relative_centre(poses, frame_shape, spacing))


def _dof_difference(pt: np.ndarray, pe: np.ndarray) -> np.ndarray:
    """Estimated minus true relative 6-vectors, angle differences wrapped to [-180, 180)."""
    d = pe - pt
    d[:, 3:] = (d[:, 3:] + 180.0) % 360.0 - 180.0
    return d


def _by_dof(values: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(DOF_NAMES, values)}


def _relative_pair(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int],
                   spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return relative_params_centre(true, frame_shape, spacing), relative_params_centre(est, frame_shape, spacing)


def per_dof_errors(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int],
                   spacing: tuple[float, float]) -> dict[str, float]:
    """Mean absolute error per degree of freedom of the relative centre-frame motions."""
    d = _dof_difference(*_relative_pair(*_check(true, est), frame_shape, spacing))
    return _by_dof(np.abs(d).mean(axis=0))


def per_dof_bias(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int],
                 spacing: tuple[float, float]) -> dict[str, float]:
    """Mean signed error per degree of freedom of the relative centre-frame motions."""
    d = _dof_difference(*_relative_pair(*_check(true, est), frame_shape, spacing))
    return _by_dof(d.mean(axis=0))


ATTRIBUTION_GROUPS: dict[str, tuple[int, ...]] = {
    "tz": (2,), "rx": (3,), "ry": (4,), "rotation": (3, 4, 5), "in_plane": (0, 1, 5)}


def _attribution(true: np.ndarray, pt: np.ndarray, pe: np.ndarray, frame_shape: tuple[int, int],
                 spacing: tuple[float, float]) -> dict[str, Any]:
    from .common import absolute_from_centre

    rates = {}
    for name, idx in ATTRIBUTION_GROUPS.items():
        p = pe.copy()
        p[:, list(idx)] = pt[:, list(idx)]
        fixed = absolute_from_centre(geometry.params_to_matrix(p), frame_shape, spacing, true[0])
        rates[name] = final_drift_rate_length_pct(true, fixed, frame_shape, spacing)
    true_tz = float(pt[:, 2].sum())
    ratio = float(pe[:, 2].sum() / true_tz) if abs(true_tz) >= 1.0 else float("nan")
    return {"final_drift_rate_length_pct_with_true": rates, "elevation_step_ratio": ratio}


def drift_attribution(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int],
                      spacing: tuple[float, float]) -> dict[str, Any]:
    """Final drift rate (% of length) with each :data:`ATTRIBUTION_GROUPS` group of the estimate's relative
    motions replaced by the true ones, and the elevational step ratio (see the module docstring)."""
    t, e = _check(true, est)
    return _attribution(t, *_relative_pair(t, e, frame_shape, spacing), frame_shape, spacing)


def evaluate_poses(true: np.ndarray, est: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
                   *, max_points: int = 4096, per_frame: bool = False) -> dict[str, Any]:
    """All metrics of the module docstring in one plain-JSON dict.

    With ``per_frame`` the dict also holds lists ``drift_mm`` ``[N]``, ``gpe_per_frame_mm`` and
    ``lpe_per_frame_mm`` ``[N-1]`` (frames 2..N) for plotting.
    """
    t, e = _check(true, est)
    g = gpe_per_frame(t, e, frame_shape, spacing, max_points)
    loc = lpe_per_frame(t, e, frame_shape, spacing, max_points)
    drift = drift_per_frame(t, e, frame_shape, spacing)
    length = trajectory_length_mm(t, frame_shape, spacing)
    distance = start_end_distance_mm(t, frame_shape, spacing)
    pt, pe = _relative_pair(t, e, frame_shape, spacing)  # relative motions once, for every per-DoF figure
    d = _dof_difference(pt, pe)
    out: dict[str, Any] = {
        "frames": int(t.shape[0]),
        "gpe_mm": float(g.mean()),
        "lpe_mm": float(loc.mean()),
        "final_drift_mm": float(drift[-1]),
        "final_drift_rate_length_pct": _rate(float(drift[-1]), length),
        "final_drift_rate_distance_pct": _rate(float(drift[-1]), distance),
        "average_drift_mm": float(drift[1:].mean()),
        "max_drift_mm": float(drift.max()),
        "trajectory_length_mm": length,
        "start_end_distance_mm": distance,
        "per_dof_mae": _by_dof(np.abs(d).mean(axis=0)),
        "per_dof_bias": _by_dof(d.mean(axis=0)),
        **_attribution(t, pt, pe, frame_shape, spacing),
    }
    if per_frame:
        out["drift_mm"] = drift.tolist()
        out["gpe_per_frame_mm"] = g.tolist()
        out["lpe_per_frame_mm"] = loc.tolist()
    return out
