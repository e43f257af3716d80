"""Losses and metrics of the two training phases.

* Global term: ``L_glob = 1 - MS-SSIM(x_hat, x)`` (pytorch-msssim, data range 1, 3 x 3 window so
  that 64-pixel frames survive its four down-samplings).
* ROI intensity term: ``L_roi = sum_p m_p |x_hat_p - x_p| / sum_p m_p`` over the ROI mask ``m``.
* ROI edge term: ``L_edge = sum_p m_p |E(x_hat)_p - E(x)_p| / sum_p m_p`` with the normalised
  Sobel magnitude ``E(x) = sqrt(Gx^2 + Gy^2 + eps) / (4 sqrt 2)`` (``4 sqrt 2`` is the largest
  magnitude a [0, 1] image can reach, so ``E`` lies in [0, 1]).
* Phase-2 loss ``L = L_glob + lambda_roi L_roi + lambda_edge L_edge`` with the weights
  initialised from the gradient magnitudes at the last decoder layer ``W`` (``decoder.last``),
  averaged over the first batches of phase 2 (VQGAN-style adaptive weight):

      lambda_k = || dL_glob / dW ||_2 / ( || dL_k / dW ||_2 + 1e-8 ),   k in {roi, edge},

  clipped to [1e-2, 1e4] and then held fixed, so every term starts out pulling the last layer
  equally hard.

ROI MAE and ROI Edge-MAE (metrics) are the same two ROI terms pooled over all ROI pixels of a set.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ...errors import InputError

SOBEL_NORM = 4.0 * math.sqrt(2.0)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
WEIGHT_CLIP = (1e-2, 1e4)


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``1 - MS-SSIM`` averaged over the batch (images ``[B, 1, S, S]`` in [0, 1], S >= 33)."""
    from pytorch_msssim import ms_ssim

    return 1.0 - ms_ssim(x_hat, x, data_range=1.0, win_size=3, size_average=True)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Normalised Sobel gradient magnitude ``[B, 1, S, S]`` in [0, 1] (replicate padding)."""
    k = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].to(x)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt((g * g).sum(dim=1, keepdim=True) + 1e-8) / SOBEL_NORM


def roi_l1(x_hat: torch.Tensor, x: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Mean absolute intensity error over the ROI pixels of the batch (0 when the batch has none)."""
    m = roi.to(x.dtype)
    return ((x_hat - x).abs() * m).sum() / m.sum().clamp_min(1.0)


def roi_edge(x_hat: torch.Tensor, x: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of normalised Sobel magnitudes over the ROI pixels of the batch."""
    m = roi.to(x.dtype)
    return ((sobel_magnitude(x_hat) - sobel_magnitude(x)).abs() * m).sum() / m.sum().clamp_min(1.0)


def grad_norm_at(loss: torch.Tensor, param: torch.Tensor) -> float:
    """``|| d loss / d param ||_2`` without touching ``.grad``."""
    (g,) = torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)
    return 0.0 if g is None else float(g.norm())


def calibrate_weights(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], forward: Callable[[torch.Tensor], torch.Tensor],
                      last: torch.Tensor) -> dict[str, float]:
    """Phase-2 weights ``lambda_roi``, ``lambda_edge`` from gradient magnitudes at ``last`` (see module doc).

    ``batches`` are ``(x, roi)`` pairs; batches without ROI pixels are skipped; :class:`InputError`
    when none has any (the ROI is empty).
    """
    sums = {"global": 0.0, "roi": 0.0, "edge": 0.0}
    used = 0
    for x, roi in batches:
        if not bool(roi.any()):
            continue
        x_hat = forward(x)
        sums["global"] += grad_norm_at(ms_ssim_loss(x_hat, x), last)
        sums["roi"] += grad_norm_at(roi_l1(x_hat, x, roi), last)
        sums["edge"] += grad_norm_at(roi_edge(x_hat, x, roi), last)
        used += 1
    if used == 0:
        raise InputError("The ROI is empty in every calibration batch: the phase-2 loss weights cannot be set.",
                         "Give ROI masks (or a box) that cover structures inside the frames.")
    lo, hi = WEIGHT_CLIP
    out = {f"lambda_{k}": float(min(max(sums["global"] / (sums[k] + 1e-8), lo), hi)) for k in ("roi", "edge")}
    out.update({f"grad_{k}": v / used for k, v in sums.items()})
    return out


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]."""
    mse = ((x_hat - x) ** 2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)
