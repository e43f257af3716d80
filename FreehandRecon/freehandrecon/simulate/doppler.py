"""Power and colour Doppler frames co-registered with simulated B-mode frames.

Model (vectorised over frames and pixels):

* **Flow**: laminar (Poiseuille) flow along each vessel, ``v(r) = v_max (1 - r^2 / R^2)``, with a
  per-vessel peak speed 100-400 mm/s and a random direction along the vessel.
* **Beam**: the Doppler beam runs along the image beam (straight down for linear probes, radial
  for curvilinear ones), steered in-plane by ``steer_deg`` (linear arrays steer the colour box,
  typically 15-20 degrees). The axial velocity is ``v . b`` (towards the probe positive), i.e.
  ``|v| cos(angle between vessel and beam)``.
* **Wall filter**: a high-pass on the slow-time signal; it passes the fraction
  ``1 - exp(-(v_eff / v_wall)^2)`` of the blood power, where ``v_eff`` is the axial speed widened by
  transit-time broadening (``broadening`` times the speed across the beam), so flow nearly
  across the beam stays faintly visible in power mode, as on scanners.
* **Power**: blood power times the wall-filter fraction, averaged over the receive elevation
  thickness (as in :mod:`.photoacoustic`), blurred by the Doppler resolution (twice the B-mode
  axial width: longer pulses), with speckle fluctuation of an ensemble of ``ensemble`` pulses
  (Gamma distributed) and a noise floor. Pixels below the colour threshold (``threshold_db`` above
  the noise) are zero, as the scanner's colour gate does.
* ``mode="power"``: uint8, log-compressed power over ``dynamic_range_db`` above the threshold.
  ``mode="colour"``: float32 mean axial velocity in mm/s, wrapped at the Nyquist velocity
  (aliasing), zero where the power is below the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from . import beam
from .photoacoustic import _lateral_blur, elevation_offsets, frame_points, pixel_geometry, vessel_distances
from .sites import AcquisitionSettings

MODES = ("power", "colour")


def _blur(x: np.ndarray, sx: float, sy: float, lat_mm: float, ax_mm: float) -> np.ndarray:
    """Separable Gaussian blur of real ``[N, H, W]`` (lateral along W, axial along H)."""
    y = _lateral_blur(x.astype(np.complex128), sx, lat_mm)
    h = y.shape[1]
    f = np.fft.fftfreq(2 * h, d=sy)
    y = np.fft.ifft(np.fft.fft(y, n=2 * h, axis=1) * np.exp(-2.0 * (math.pi * ax_mm * f) ** 2)[None, :, None],
                    axis=1)[:, :h]
    return y.real


def doppler_frames(settings: AcquisitionSettings, image_to_world: np.ndarray, vessels: list[dict[str, Any]],
                   rng: np.random.Generator, *, mode: str = "power", steer_deg: float = 20.0,
                   wall_mm_s: float = 15.0, broadening: float = 0.15, nyquist_mm_s: float = 300.0,
                   ensemble: int = 8, noise_db: float = -25.0, threshold_db: float = 9.0,
                   dynamic_range_db: float = 20.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Doppler frames on the B-mode pixel grid (see the module docstring) and the drawn parameters.

    Power levels are relative to the blood power; ``noise_db`` is the noise floor, the colour gate
    opens ``threshold_db`` above it."""
    if mode not in MODES:
        raise InputError(f"Unknown Doppler mode '{mode}'.", f"Use one of: {', '.join(MODES)}.")
    if ensemble < 1:
        raise InputError(f"The Doppler ensemble must hold at least 1 pulse, got {ensemble}.", "Use e.g. 8.")
    mats = np.asarray(image_to_world, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (4, 4):
        raise InputError(f"Poses must be [N, 4, 4], got {mats.shape}.", "Pass one image-to-world matrix per frame.")
    sx, sy = settings.pixel_spacing
    speeds = rng.uniform(100.0, 400.0, len(vessels)) * rng.choice([-1.0, 1.0], len(vessels))
    depth, beam2d, inside = pixel_geometry(settings)
    st = math.radians(steer_deg)
    bx = beam2d[..., 0] * math.cos(st) + beam2d[..., 1] * math.sin(st)  # in-plane rotation of the beam
    by = -beam2d[..., 0] * math.sin(st) + beam2d[..., 1] * math.cos(st)
    # world beam direction per frame and pixel: b = bx * x_axis + by * y_axis
    xa = mats[:, :3, 0] / np.linalg.norm(mats[:, :3, 0], axis=1, keepdims=True)
    ya = mats[:, :3, 1] / np.linalg.norm(mats[:, :3, 1], axis=1, keepdims=True)
    points = frame_points(mats, settings)
    elev = mats[:, :3, 2] / np.linalg.norm(mats[:, :3, 2], axis=1, keepdims=True)
    offsets, weights = elevation_offsets(settings, depth)
    power = np.zeros(points.shape[:3])
    vel_sum = np.zeros(points.shape[:3])
    for v, vmax in zip(vessels, speeds):
        u = np.asarray(v["direction"], dtype=np.float64)
        u = u / np.linalg.norm(u)
        cos_t = (xa @ u)[:, None, None] * bx[None] + (ya @ u)[:, None, None] * by[None]  # [N, H, W]
        sin_t = np.sqrt(np.maximum(1.0 - cos_t * cos_t, 0.0))
        radius = float(v["radius"])
        for z, wgt in zip(offsets, weights):
            r = vessel_distances(v, points, elev, z)
            lumen = r < radius
            speed = vmax * np.clip(1.0 - (r / radius) ** 2, 0.0, 1.0)
            v_ax = -speed * cos_t  # beam points into the tissue; towards the probe is positive
            v_eff2 = v_ax * v_ax + (broadening * speed * sin_t) ** 2
            passed = lumen * (1.0 - np.exp(-v_eff2 / wall_mm_s ** 2))
            power += wgt * passed
            vel_sum += wgt * passed * v_ax
    lat_mm, ax_mm = beam.image_psf_sigma_mm(settings)
    power = np.maximum(_blur(power, sx, sy, lat_mm, 2.0 * ax_mm), 0.0)
    vel_sum = _blur(vel_sum, sx, sy, lat_mm, 2.0 * ax_mm)
    noise = 10.0 ** (noise_db / 10.0)
    speckle = rng.gamma(ensemble, 1.0 / ensemble, power.shape)
    measured = power * speckle + noise * rng.gamma(ensemble, 1.0 / ensemble, power.shape)
    gate = (measured > noise * 10.0 ** (threshold_db / 10.0)) & inside[None]
    params = {"mode": mode, "peak_speed_mm_s": [round(float(s), 1) for s in speeds], "steer_deg": steer_deg,
              "wall_mm_s": wall_mm_s, "broadening": broadening, "noise_db": noise_db, "threshold_db": threshold_db}
    if mode == "colour":
        velocity = vel_sum / np.maximum(power, 1e-12)
        velocity = velocity + rng.normal(0.0, 0.05 * nyquist_mm_s, velocity.shape)  # estimator jitter
        wrapped = (velocity + nyquist_mm_s) % (2 * nyquist_mm_s) - nyquist_mm_s   # aliasing
        params["nyquist_mm_s"] = nyquist_mm_s
        return np.where(gate, wrapped, 0.0).astype(np.float32), params
    level_db = 10.0 * np.log10(np.maximum(measured, 1e-12)) - (noise_db + threshold_db)
    grey = np.clip(1.0 + 254.0 * level_db / dynamic_range_db, 0.0, 255.0)
    params["dynamic_range_db"] = dynamic_range_db
    return np.where(gate, np.rint(grey), 0.0).astype(np.uint8), params
