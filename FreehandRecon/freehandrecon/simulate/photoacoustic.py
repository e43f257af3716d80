"""Photoacoustic (PA) frames co-registered with simulated B-mode frames.

Model, per frame (every step vectorised over frames and pixels):

1. **Absorption**: blood inside the phantom's vessels absorbs light (a per-vessel absorption
   0.6-1.0, arteries and veins differ); the tissue around absorbs a little (``background``).
   The image plane has a finite elevational thickness: the absorber is averaged over the
   receive-only (one-way) elevation profile, ``sqrt(2)`` times the two-way B-mode sigma at each
   depth, with 5-point Gauss-Hermite quadrature.
2. **Fluence** falls with depth below the skin, ``exp(-mu_eff * depth)`` (NIR light, ``mu_eff``
   0.03-0.06 /mm); initial pressure ``p0 = mu_a * fluence``.
3. **Band-limited detection / limited view**: a linear array sees PA waves travelling along the
   beam, so the axial profile of ``p0`` is band-pass filtered (a Gaussian low-pass at the axial
   resolution times a high-pass that keeps a fraction ``dc_fraction`` of the lowest
   frequencies); the envelope of the analytic signal then enhances the top and bottom vessel
   boundaries while the interior stays partly filled, and boundaries parallel to the beam get no
   enhancement. A lateral Gaussian PSF blurs along the rows.
4. **Noise**: complex Gaussian (electronic) noise before the envelope, so the background has a
   Rayleigh floor. The scanner compensates ``compensation`` of the fluence decay (a depth gain,
   which also amplifies deep noise) and scales the sweep to uint8 by its bright signal.

Curvilinear probes use the radial distance from the apex as depth and the radial direction as
the beam (the filtering is still done along image rows, a small-angle approximation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from . import beam
from .sites import AcquisitionSettings

# 5-point Gauss-Hermite rule for E[f(z)], z ~ N(0, sigma^2): nodes in units of sigma, weights sum to 1
_GH_NODES = np.array([-2.8569700138728056, -1.3556261799742659, 0.0, 1.3556261799742659, 2.8569700138728056])
_GH_WEIGHTS = np.array([0.011257411327720689, 0.22207592200561264, 0.5333333333333333, 0.22207592200561264,
                        0.011257411327720689])
EDGE_MM = 0.05  # soft edge of the absorber (avoids aliasing of a hard step on the pixel grid)


def pixel_geometry(settings: AcquisitionSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(depth [H, W] mm, beam [H, W, 2] unit image-(x, y) direction into the tissue, inside [H, W] bool)``.

    Linear probe: depth = row position, beam straight down, every pixel inside. Curvilinear:
    depth = radius from the apex minus the probe radius, beam radial, inside = the fan."""
    h, w = settings.image_size
    sx, sy = settings.pixel_spacing
    jj, ii = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x, y = ii * sx, jj * sy
    if settings.probe == "linear":
        beam_dir = np.zeros((h, w, 2))
        beam_dir[..., 1] = 1.0
        return y, beam_dir, np.ones((h, w), dtype=bool)
    apex = np.array([(w - 1) * sx / 2, -settings.radius_mm])
    dx, dy = x - apex[0], y - apex[1]
    r = np.hypot(dx, dy)
    half = math.radians(settings.sector_deg) / 2
    inside = (np.abs(np.arctan2(dx, dy)) <= half) & (r >= settings.radius_mm) & (r <= settings.radius_mm +
                                                                                 settings.depth_mm)
    return np.maximum(r - settings.radius_mm, 0.0), np.stack([dx / r, dy / r], axis=-1), inside


def frame_points(image_to_world: np.ndarray, settings: AcquisitionSettings) -> np.ndarray:
    """World positions ``[N, H, W, 3]`` (float64) of every pixel of every frame."""
    h, w = settings.image_size
    sx, sy = settings.pixel_spacing
    mats = np.asarray(image_to_world, dtype=np.float64)
    xs, ys = np.arange(w) * sx, np.arange(h) * sy
    r, t = mats[:, :3, :3], mats[:, :3, 3]
    return (t[:, None, None, :] + ys[None, :, None, None] * r[:, None, None, :, 1]
            + xs[None, None, :, None] * r[:, None, None, :, 0])


def elevation_offsets(settings: AcquisitionSettings, depth: np.ndarray, one_way: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature offsets ``[5, H, W]`` mm along the elevation axis and their weights ``[5]``."""
    sigma = beam.elevation_sigma_mm(settings, depth) * (math.sqrt(2.0) if one_way else 1.0)
    return _GH_NODES[:, None, None] * sigma[None], _GH_WEIGHTS


def vessel_distances(vessel: dict[str, Any], points: np.ndarray, elevation: np.ndarray, offset: np.ndarray
                     ) -> np.ndarray:
    """Distance ``[N, H, W]`` from ``points + offset * elevation`` to the vessel's centre line.

    ``points [N, H, W, 3]``, ``elevation [N, 3]`` unit elevation axes, ``offset [H, W]`` mm."""
    c = np.asarray(vessel["point"], dtype=np.float64)
    u = np.asarray(vessel["direction"], dtype=np.float64)
    u = u / np.linalg.norm(u)
    d0 = points - c
    along0 = d0 @ u                                   # [N, H, W]
    eu = elevation @ u                                # [N]
    de = np.einsum("nhwc,nc->nhw", d0, elevation)    # d0 . e
    z = offset[None]
    sq = (d0 * d0).sum(axis=-1) + 2.0 * z * de + z * z - (along0 + z * eu[:, None, None]) ** 2
    return np.sqrt(np.maximum(sq, 0.0))


def _soft_inside(r: np.ndarray, radius: float) -> np.ndarray:
    return 0.5 * (1.0 - np.tanh((r - radius) / EDGE_MM))


def _gauss_lowpass(freq: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Fourier transform of a unit-area Gaussian of ``sigma_mm`` at spatial frequencies (cycles/mm)."""
    return np.exp(-2.0 * (math.pi * sigma_mm * freq) ** 2)


def _analytic_filter(p0: np.ndarray, sy: float, axial_sigma_mm: float, low_cut_mm: float, dc_fraction: float
                     ) -> np.ndarray:
    """Band-pass the axial profiles (axis 1) and return the analytic signal (complex)."""
    h = p0.shape[1]
    n = 2 * h  # zero padding: no wrap-around between the top and the bottom of the frame
    spec = np.fft.fft(p0, n=n, axis=1)
    f = np.fft.fftfreq(n, d=sy)
    highpass = dc_fraction + (1.0 - dc_fraction) * (1.0 - np.exp(-(f * low_cut_mm) ** 2))
    resp = _gauss_lowpass(f, axial_sigma_mm) * highpass
    analytic = np.where(f > 0, 2.0, np.where(f == 0, 1.0, 0.0))  # one-sided spectrum -> analytic signal
    return np.fft.ifft(spec * (resp * analytic)[None, :, None], axis=1)[:, :h]


def _lateral_blur(x: np.ndarray, sx: float, sigma_mm: float) -> np.ndarray:
    w = x.shape[2]
    n = 2 * w
    f = np.fft.fftfreq(n, d=sx)
    return np.fft.ifft(np.fft.fft(x, n=n, axis=2) * _gauss_lowpass(f, sigma_mm)[None, None, :], axis=2)[:, :, :w]


def photoacoustic_frames(settings: AcquisitionSettings, image_to_world: np.ndarray, vessels: list[dict[str, Any]],
                         rng: np.random.Generator, *, mu_eff_per_mm: float | None = None,
                         compensation: float = 0.5, dc_fraction: float | None = None,
                         low_cut_mm: float | None = None, background: float = 0.015,
                         noise: float = 0.008) -> tuple[np.ndarray, dict[str, Any]]:
    """PA frames ``uint8 [N, H, W]`` on the B-mode pixel grid and the drawn parameters.

    ``vessels`` are the phantom's vessel dicts (point, direction, radius). Parameters left None are
    drawn from ``rng``; ``noise`` is the noise rms relative to the absorption of blood at the skin.
    """
    mats = np.asarray(image_to_world, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (4, 4):
        raise InputError(f"Poses must be [N, 4, 4], got {mats.shape}.", "Pass one image-to-world matrix per frame.")
    if not 0.0 <= compensation <= 1.0:
        raise InputError(f"Fluence compensation must be in [0, 1], got {compensation}.", "Use e.g. 0.5.")
    sx, sy = settings.pixel_spacing
    mu = float(rng.uniform(0.03, 0.06)) if mu_eff_per_mm is None else float(mu_eff_per_mm)
    dc = float(rng.uniform(0.35, 0.55)) if dc_fraction is None else float(dc_fraction)
    cut = float(rng.uniform(1.5, 3.0)) if low_cut_mm is None else float(low_cut_mm)
    strengths = rng.uniform(0.6, 1.0, len(vessels))
    depth, _, inside = pixel_geometry(settings)
    points = frame_points(mats, settings)
    elev = mats[:, :3, 2] / np.linalg.norm(mats[:, :3, 2], axis=1, keepdims=True)
    offsets, weights = elevation_offsets(settings, depth)
    absorb = np.full(points.shape[:3], background)
    for v, s in zip(vessels, strengths):
        blood = np.zeros(points.shape[:3])
        for z, wgt in zip(offsets, weights):
            blood += wgt * _soft_inside(vessel_distances(v, points, elev, z), float(v["radius"]))
        absorb = np.maximum(absorb, s * blood)  # blood replaces tissue (overlapping vessels: the stronger)
    p0 = absorb * np.exp(-mu * depth)[None]
    lat_mm, ax_mm = beam.image_psf_sigma_mm(settings)
    sig = _lateral_blur(_analytic_filter(p0, sy, ax_mm, cut, dc), sx, lat_mm)
    sig = sig + (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape)) * (noise / math.sqrt(2))
    env = np.abs(sig) * np.exp(compensation * mu * depth)[None]
    # the operator's gain: the bright (vessel) signal of the sweep near the top of the display range
    ref = max(float(np.percentile(env, 99.9)), 8.0 * noise)
    frames = np.clip(np.rint(env / ref * 230.0), 0, 255).astype(np.uint8)
    frames *= inside[None]
    params = {"mu_eff_per_mm": round(mu, 4), "dc_fraction": round(dc, 3), "low_cut_mm": round(cut, 3),
              "compensation": compensation, "noise": noise, "background": background,
              "vessel_absorption": [round(float(s), 3) for s in strengths]}
    return frames, params
