"""Sub-pixel block matching of consecutive ultrasound frames and rigid in-plane motion fits (torch).

Frames are split into a grid of square patches. For each pair (frame k, frame k+1) and patch,
the normalised FFT cross-correlation of the Hann-windowed, zero-mean patches gives the
displacement ``u`` with ``B(q) ~ A(q + u)`` (A = frame k, B = frame k+1): the position in frame
k of the speckle seen at ``q`` in frame k+1. The integer peak is refined with a three-point
Gaussian fit per axis (parabolic where the correlation is not positive). A weighted 2D
Procrustes fit of ``q -> q + u`` over the patch centres gives the in-plane rotation and
translation (mm, about the frame centre); frame k is then warped onto frame k+1 and matched
again to remove the sub-pixel bias of the first pass. Everything is vectorised over pairs and
patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PatchGrid:
    """Square patches: top-left pixel ``(y0, x0)`` each ``[P]``, edge ``size`` pixels, grid ``(rows, cols)``."""

    y0: np.ndarray
    x0: np.ndarray
    size: int
    rows: int
    cols: int

    def centres_px(self) -> np.ndarray:
        """Patch centres ``[P, 2]`` as (column, row) pixel coordinates."""
        half = (self.size - 1) / 2.0
        return np.stack([self.x0 + half, self.y0 + half], axis=1).astype(np.float64)


def patch_grid(frame_shape: tuple[int, int], rows: int = 5, cols: int = 5, size: int | None = None,
               margin: int = 4) -> PatchGrid:
    """A ``rows x cols`` grid of square patches spread evenly over the frame (overlapping if needed),
    ``margin`` pixels away from the frame edges so that displaced patches stay inside the frame.

    ``size`` defaults to the largest even edge that tiles the shorter direction, at most 64 px.
    """
    h, w = frame_shape
    hh, ww = h - 2 * margin, w - 2 * margin
    if size is None:
        size = int(min(hh // rows, ww // cols, 64))
        size -= size % 2
    size = int(min(size, hh, ww))
    if size < 8:
        raise ValueError(f"frames of {w}x{h} pixels are too small for a {rows}x{cols} patch grid")
    ys = np.round(np.linspace(margin, h - margin - size, rows)).astype(int)
    xs = np.round(np.linspace(margin, w - margin - size, cols)).astype(int)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return PatchGrid(gy.ravel(), gx.ravel(), size, rows, cols)


def extract_patches(frames: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """``[M, H, W]`` -> ``[M, P, size, size]`` (a gather, no copy per patch in Python)."""
    s = grid.size
    iy = torch.as_tensor(grid.y0)[:, None] + torch.arange(s)[None]  # [P, s]
    ix = torch.as_tensor(grid.x0)[:, None] + torch.arange(s)[None]
    return frames[:, iy[:, :, None], ix[:, None, :]]


def _hann(size: int, dtype: torch.dtype) -> torch.Tensor:
    w = torch.hann_window(size, periodic=False, dtype=dtype)
    return w[:, None] * w[None, :]


def _subpixel(c_m: torch.Tensor, c_0: torch.Tensor, c_p: torch.Tensor) -> torch.Tensor:
    """Peak offset in (-0.5, 0.5) from three samples: Gaussian fit if all positive, else parabolic."""
    eps = 1e-12
    pos = (c_m > eps) & (c_0 > eps) & (c_p > eps)
    lm, l0, lp = (torch.log(torch.clamp(v, min=eps)) for v in (c_m, c_0, c_p))
    den_g = lm - 2 * l0 + lp
    den_p = c_m - 2 * c_0 + c_p
    gauss = 0.5 * (lm - lp) / torch.where(den_g.abs() > eps, den_g, torch.full_like(den_g, -eps))
    para = 0.5 * (c_m - c_p) / torch.where(den_p.abs() > eps, den_p, torch.full_like(den_p, -eps))
    return torch.clamp(torch.where(pos, gauss, para), -0.5, 0.5)


def match(a: torch.Tensor, b: torch.Tensor, max_shift: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacements ``[..., 2]`` (dx, dy pixels) and peak NCC ``[...]`` of patches ``a``/``b`` ``[..., s, s]``.

    ``B(q) ~ A(q + u)``; the search is limited to ``|u| <= max_shift`` (default ``s // 4``).
    """
    s = a.shape[-1]
    max_shift = s // 4 if max_shift is None else int(max_shift)
    win = _hann(s, a.dtype)
    a = (a - a.mean(dim=(-2, -1), keepdim=True)) * win
    b = (b - b.mean(dim=(-2, -1), keepdim=True)) * win
    norm = torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1))).clamp_min(1e-12)
    corr = torch.fft.irfft2(torch.fft.rfft2(a) * torch.conj(torch.fft.rfft2(b)), s=(s, s))
    corr = corr / norm[..., None, None]
    corr = torch.fft.fftshift(corr, dim=(-2, -1))  # zero shift at index s // 2
    c0 = s // 2
    lo, hi = c0 - max_shift, c0 + max_shift + 1
    window = corr[..., lo:hi, lo:hi]
    flat = window.reshape(*window.shape[:-2], -1)
    peak, idx = flat.max(dim=-1)
    n = hi - lo
    iy, ix = idx // n + lo, idx % n + lo
    # neighbours of the peak (clamped inside the correlation map)
    iym, iyp = (iy - 1).clamp(0, s - 1), (iy + 1).clamp(0, s - 1)
    ixm, ixp = (ix - 1).clamp(0, s - 1), (ix + 1).clamp(0, s - 1)
    g = lambda yy, xx: torch.gather(corr.reshape(*corr.shape[:-2], -1), -1,  # noqa: E731
                                    (yy * s + xx)[..., None])[..., 0]
    dy = _subpixel(g(iym, ix), peak, g(iyp, ix))
    dx = _subpixel(g(iy, ixm), peak, g(iy, ixp))
    disp = torch.stack([ix - c0 + dx, iy - c0 + dy], dim=-1).to(a.dtype)
    return disp, peak


def fit_rigid(q: torch.Tensor, p: torch.Tensor, w: torch.Tensor, iterations: int = 2,
              huber_mm: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 2D Procrustes ``p ~ R(theta) q + t`` for ``q, p [M, P, 2]``, ``w [M, P]``.

    Returns ``theta [M]`` (radians, counter-clockwise from +x towards +y) and ``t [M, 2]``.
    A few Huber-reweighted iterations limit the pull of patches without speckle.
    """
    weights = w.clamp_min(0)
    for it in range(iterations + 1):
        ws = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        qm = (ws[..., None] * q).sum(dim=-2)
        pm = (ws[..., None] * p).sum(dim=-2)
        qc, pc = q - qm[..., None, :], p - pm[..., None, :]
        dot = (ws * (qc * pc).sum(-1)).sum(-1)
        cross = (ws * (qc[..., 0] * pc[..., 1] - qc[..., 1] * pc[..., 0])).sum(-1)
        theta = torch.atan2(cross, dot)
        c, s = torch.cos(theta), torch.sin(theta)
        rq = torch.stack([c[..., None] * q[..., 0] - s[..., None] * q[..., 1],
                          s[..., None] * q[..., 0] + c[..., None] * q[..., 1]], dim=-1)
        t = pm - (ws[..., None] * rq).sum(dim=-2)
        if it == iterations:
            break
        resid = torch.linalg.norm(rq + t[..., None, :] - p, dim=-1)
        weights = w.clamp_min(0) * torch.where(resid > huber_mm, huber_mm / resid.clamp_min(1e-12),
                                               torch.ones_like(resid))
    return theta, t


def warp_rigid(frames: torch.Tensor, theta: torch.Tensor, t: torch.Tensor, spacing: tuple[float, float]) -> torch.Tensor:
    """Resample frames ``[M, H, W]`` at ``R(theta) q + t`` (centre-frame mm) for every pixel q (bilinear).

    The result shows frame k in the coordinates of frame k+1 when ``(theta, t)`` maps k+1 into k.
    """
    m, h, w = frames.shape
    sx, sy = spacing
    dtype = frames.dtype
    xs = (torch.arange(w, dtype=dtype) - (w - 1) / 2) * sx
    ys = (torch.arange(h, dtype=dtype) - (h - 1) / 2) * sy
    qy, qx = torch.meshgrid(ys, xs, indexing="ij")
    c, s = torch.cos(theta)[:, None, None].to(dtype), torch.sin(theta)[:, None, None].to(dtype)
    px = c * qx - s * qy + t[:, 0, None, None].to(dtype)
    py = s * qx + c * qy + t[:, 1, None, None].to(dtype)
    # to normalised grid coordinates (align_corners=True: -1 and 1 are the outer pixel centres)
    gx = px / (sx * (w - 1) / 2)
    gy = py / (sy * (h - 1) / 2)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(frames[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def patch_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``[...]`` of patches ``a``/``b`` ``[..., s, s]`` (0 where either is flat)."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    num = (a * b).sum(dim=(-2, -1))
    den = torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1)))
    return torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.zeros_like(num))


def _peak_height(c_m: torch.Tensor, c_0: torch.Tensor, c_p: torch.Tensor) -> torch.Tensor:
    """Height of the Gaussian through three samples, as a factor on ``c_0`` (1 when the fit fails)."""
    eps = 1e-6
    ok = (c_m > eps) & (c_0 > eps) & (c_p > eps)
    lm, l0, lp = (torch.log(torch.clamp(v, min=eps)) for v in (c_m, c_0, c_p))
    den = lp + lm - 2 * l0
    ok = ok & (den < -eps)
    gain = torch.exp(-(lp - lm) ** 2 / (8 * torch.where(ok, den, -torch.ones_like(den))))
    return torch.where(ok, gain.clamp(1.0, 1.5), torch.ones_like(gain))


def aligned_correlation(a: torch.Tensor, b: torch.Tensor, grid: PatchGrid, disp_px: torch.Tensor,
                        transform=None) -> torch.Tensor:
    """Peak correlation ``[M, P]`` of the patches of ``b`` with ``a`` displaced by ``disp_px [M, P, 2]``.

    Pearson correlations are computed exactly at the 3x3 integer shifts around the displacement,
    with no resampling (interpolating speckle smooths it and lowers its correlation); ``transform``
    (e.g. log-image -> intensity correlation) is applied to them, and the peak height between them
    is interpolated with a separable Gaussian fit (exact for a Gaussian correlation function).
    """
    m, h, w = a.shape
    s = grid.size
    r = torch.round(disp_px).long()  # [M, P, 2]
    pb = extract_patches(b, grid)
    ar = torch.arange(s)
    y0 = torch.as_tensor(grid.y0)[None, :]
    x0 = torch.as_tensor(grid.x0)[None, :]
    batch = torch.arange(m)[:, None, None, None]
    corr = torch.empty(3, 3, m, len(grid.y0), dtype=a.dtype)
    for dy in (-1, 0, 1):  # 9 gathers, each vectorised over pairs and patches
        for dx in (-1, 0, 1):
            ys = (y0 + r[..., 1] + dy).clamp(0, h - s)
            xs = (x0 + r[..., 0] + dx).clamp(0, w - s)
            pa = a[batch, (ys[..., None] + ar)[..., :, None], (xs[..., None] + ar)[..., None, :]]
            corr[dy + 1, dx + 1] = patch_correlation(pa, pb)
    if transform is not None:
        corr = transform(corr)
    # the displacement is sub-pixel accurate, so the peak lies within half a pixel of the centre sample
    # (or the estimate is poor): interpolate around the centre, never below the best sample
    c0 = corr[1, 1]
    best = corr.reshape(9, m, -1).max(0).values
    height = c0 * _peak_height(corr[0, 1], c0, corr[2, 1]) * _peak_height(corr[1, 0], c0, corr[1, 2])
    return torch.minimum(torch.maximum(height, best), torch.ones_like(best))


@dataclass
class InPlaneResult:
    """In-plane motion of frame k+1 in frame k (centre frame) and the aligned per-patch correlation."""

    theta: torch.Tensor  # [M] radians about +z
    t: torch.Tensor  # [M, 2] mm (x lateral, y axial)
    rho: torch.Tensor  # [M, P] peak Pearson correlation of frame k+1 with frame k (aligned_correlation)
    peak: torch.Tensor  # [M, P] FFT NCC peak of the first pass (patch reliability)
    disp_mm: torch.Tensor  # [M, P, 2] patch displacements of the final pass (mm)


def in_plane_motion(a: torch.Tensor, b: torch.Tensor, grid: PatchGrid, spacing: tuple[float, float],
                    refine: bool = True, transform=None, patch_weight: torch.Tensor | None = None) -> InPlaneResult:
    """Rigid in-plane motion mapping frames ``b`` (k+1) into ``a`` (k), both ``[M, H, W]``, plus the
    per-patch correlation after compensating it (see the module docstring and :func:`aligned_correlation`).
    ``patch_weight`` ``[P]`` multiplies each patch's weight in the rigid fit (0 leaves a patch out)."""
    h, w = a.shape[-2:]
    sx, sy = spacing
    scale = torch.tensor([sx, sy], dtype=a.dtype)
    q = torch.as_tensor((grid.centres_px() - [(w - 1) / 2, (h - 1) / 2]), dtype=a.dtype) * scale  # [P, 2] mm
    pb = extract_patches(b, grid)
    disp, peak = match(extract_patches(a, grid), pb)
    weight = peak.clamp_min(0) ** 2
    if patch_weight is not None:
        weight = weight * patch_weight.to(weight.dtype)
    qq = q.expand(a.shape[0], -1, -1)
    theta, t = fit_rigid(qq, qq + disp * scale, weight)
    if refine:
        warped = warp_rigid(a, theta, t, spacing)
        pw = extract_patches(warped, grid)
        resid, _ = match(pw, pb, max_shift=2)
        resid_mm = resid * scale
        # the speckle at q in k+1 sits at q + resid in the warped frame, i.e. at R (q + resid) + t in frame k
        qr = qq + resid_mm
        c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        pk = torch.stack([c * qr[..., 0] - s * qr[..., 1], s * qr[..., 0] + c * qr[..., 1]], dim=-1) + t[:, None, :]
        theta, t = fit_rigid(qq, pk, weight)
        disp_mm = pk - qq
    else:
        disp_mm = disp * scale
    # displacement the rigid fit predicts at each patch centre, in pixels, for the aligned correlation
    c, s_ = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    pred = torch.stack([c * qq[..., 0] - s_ * qq[..., 1], s_ * qq[..., 0] + c * qq[..., 1]], dim=-1) + t[:, None, :]
    rho = aligned_correlation(a, b, grid, (pred - qq) / scale, transform)
    return InPlaneResult(theta, t, rho, peak, disp_mm)
