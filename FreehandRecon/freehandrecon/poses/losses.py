"""Training losses of the learned pose estimator (torch, differentiable).

Predictions and labels are relative 6-DoF motions ``[..., T, 6]`` = ``[tx, ty, tz (mm), rx, ry,
rz (deg)]`` of frame t+1 in frame t (centre frame, ``R = Rz Ry Rx`` as in
:mod:`freehandrecon.geometry`), divided by the per-DoF ``scales`` of the model.

* :func:`motion_weighted_mae` - per element ``w = max(|y|, floor)`` on the scaled label ``y``,
  ``L = sum(w |p - y|) / sum(w)``. Large motions (which dominate drift) weigh more, while the
  floor keeps near-zero DoFs from being ignored; the normalisation keeps the loss in scaled units.
* :func:`correlation_loss` - ``1 - Pearson(p, y)`` per DoF along the window, averaged over
  DoFs and windows (DCL-Net/MoGLo); DoFs whose label is constant over a window contribute 0.
* :func:`corner_loss` - the 4 corners of the model frame (centre frame, ``+-half_extent`` mm)
  mapped by the ACCUMULATED predicted vs true motions over the window (``A_t = R_0 ... R_t``),
  mean Euclidean distance in mm.
* :func:`drift_rate_loss` - the training analogue of the final drift rate: mean displacement of
  the frame centre and corners under the accumulated predicted vs true motion, divided by the true
  centre path length over the window. Slow sweeps (fans) count as much as fast ones, as they do
  in the drift-rate metric.
* :func:`triplet_loss` - optional margin triplet on pair embeddings: for each anchor the positive
  is the pair with the closest label, the negative the one with the farthest label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossWeights  # noqa: F401 (public here)


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` degrees -> ``[..., 3, 3]`` rotation ``Rz @ Ry @ Rx`` (same as geometry.euler_to_matrix)."""
    a = torch.deg2rad(angles_deg)
    cx, cy, cz = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sx, sy, sz = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    rows = [
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ]
    return torch.stack(rows, -1).view(*a.shape[:-1], 3, 3)


def params_to_matrix(params: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` (mm, degrees) -> ``[..., 4, 4]`` homogeneous rigid matrices."""
    rot = euler_to_matrix(params[..., 3:6])
    top = torch.cat([rot, params[..., :3, None]], -1)
    bottom = torch.zeros(*params.shape[:-1], 1, 4, dtype=params.dtype, device=params.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def accumulate(rel: torch.Tensor) -> torch.Tensor:
    """``[B, T, 4, 4]`` relative motions -> ``[B, T, 4, 4]`` with ``A_t = R_0 @ ... @ R_t``."""
    out = [rel[:, 0]]
    for t in range(1, rel.shape[1]):  # sequential by nature
        out.append(out[-1] @ rel[:, t])
    return torch.stack(out, 1)


def frame_corners(half_extent: tuple[float, float]) -> torch.Tensor:
    """``[4, 4]`` homogeneous corners (rows) of a frame centred at 0 with half sizes ``(hx, hy)`` mm."""
    hx, hy = half_extent
    return torch.tensor([[-hx, -hy, 0, 1], [hx, -hy, 0, 1], [-hx, hy, 0, 1], [hx, hy, 0, 1]], dtype=torch.float32)


def motion_weighted_mae(pred: torch.Tensor, target: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Motion-weighted mean absolute error on scaled parameters (see the module docstring)."""
    w = target.abs().clamp_min(floor)
    return (w * (pred - target).abs()).sum() / w.sum()


def correlation_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 - Pearson`` per DoF along the window axis (-2) of ``[B, T, 6]``, averaged."""
    p = pred - pred.mean(-2, keepdim=True)
    y = target - target.mean(-2, keepdim=True)
    py = (p * y).sum(-2)
    pp, yy = p.pow(2).sum(-2), y.pow(2).sum(-2)
    valid = yy > eps
    r = py / torch.sqrt(pp * yy + eps)
    loss = torch.where(valid, 1 - r, torch.zeros_like(r))
    return loss.sum() / valid.sum().clamp_min(1)


def point_drift(pred_params: torch.Tensor, true_params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distances ``[B, T, P]`` (mm) between homogeneous frame ``points [P, 4]`` mapped by the accumulated
    predicted and true UNSCALED motions ``[B, T, 6]`` (mm, degrees)."""
    a_pred = accumulate(params_to_matrix(pred_params))
    a_true = accumulate(params_to_matrix(true_params))
    return ((a_pred - a_true)[..., :3, :] @ points.to(pred_params).T).norm(dim=-2)


def corner_loss(pred_params: torch.Tensor, true_params: torch.Tensor,
                half_extent: tuple[float, float]) -> torch.Tensor:
    """Mean distance (mm) between frame corners mapped by accumulated predicted and true motions.

    ``pred_params``/``true_params`` are UNSCALED ``[B, T, 6]`` (mm, degrees).
    """
    return point_drift(pred_params, true_params, frame_corners(half_extent)).mean()


def drift_rate_loss(pred_params: torch.Tensor, true_params: torch.Tensor, half_extent: tuple[float, float],
                    eps_mm: float = 0.1) -> torch.Tensor:
    """Window drift rate (see the module docstring) of UNSCALED ``[B, T, 6]`` motions, averaged over windows.

    ``eps_mm`` keeps a motionless window from dividing by zero.
    """
    points = torch.cat([frame_corners(half_extent), torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    err = point_drift(pred_params, true_params, points).mean(-1)      # [B, T] mm
    path = true_params[..., :3].norm(dim=-1).cumsum(-1)               # [B, T] mm travelled by the centre
    return (err.mean(-1) / (path.mean(-1) + eps_mm)).mean()


def triplet_loss(embed: torch.Tensor, labels: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Margin triplet on L2-normalised pair embeddings ``[B, T, F]`` with scaled labels ``[B, T, 6]``."""
    e = F.normalize(embed.reshape(-1, embed.shape[-1]), dim=-1)
    y = labels.reshape(-1, labels.shape[-1])
    if e.shape[0] < 3:
        return e.sum() * 0
    dist_y = torch.cdist(y, y)
    dist_y.fill_diagonal_(float("inf"))
    pos = dist_y.argmin(1)
    dist_y.fill_diagonal_(-1.0)
    neg = dist_y.argmax(1)
    return F.triplet_margin_loss(e, e[pos], e[neg], margin=margin)


def total_loss(out: dict[str, torch.Tensor], target: torch.Tensor, scales: torch.Tensor,
               half_extent: tuple[float, float], weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms for a network output dict and scaled labels ``[B, T, 6]``.

    Returns the loss and the detached value of each term (for logging).
    """
    pred = out["pred"]
    terms = {
        "mae": motion_weighted_mae(pred, target),
        "correlation": correlation_loss(pred, target),
        "corner": corner_loss(pred * scales, target * scales, half_extent),
    }
    if weights.heads:
        terms["heads"] = motion_weighted_mae(out["local"], target) + motion_weighted_mae(out["global"], target)
    if weights.drift_rate:
        terms["drift_rate"] = drift_rate_loss(pred * scales, target * scales, half_extent)
    if weights.triplet and "embed" in out:
        terms["triplet"] = triplet_loss(out["embed"], target)
    loss = sum(getattr(weights, k) * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}
