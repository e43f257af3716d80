"""Beam model: point-spread-function widths and the elevation profile that drives decorrelation.

All profiles are two-way (pulse-echo) *amplitude* Gaussians ``exp(-u^2 / (2 sigma^2))``.

* Axial: Gaussian pulse envelope whose spectrum has full width at half maximum
  ``fractional_bandwidth * f0``: ``sigma_axial = 2.355 c / (4 pi B f0)``.
* Lateral: a Gaussian-beam focus ``sigma_lateral = lambda F# / pi`` (constant in depth: dynamic
  receive focusing at a fixed F-number).
* Elevation: a Gaussian beam from a lens-focused aperture D with focus F. One-way waist
  ``w0 = 2 lambda F / (pi D)``, Rayleigh range ``zR = pi w0^2 / lambda``; the two-way amplitude
  width is half the one-way 1/e^2 radius: ``sigma_e(d) = (w0/2) sqrt(1 + ((d - F) / zR)^2)``:
  narrowest at the elevation focus, wider near the skin and deep.

The image grid plays the scanner's IQ decimation: a demodulation low-pass of ``0.5`` pixel
(sigma) is added in quadrature to the in-plane widths so the speckle is sampled without aliasing.
"""

from __future__ import annotations

import math

import numpy as np

from .sites import AcquisitionSettings

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
BILINEAR_SIGMA_PX = math.sqrt(1.0 / 6.0)  # standard deviation of the bilinear (tent) splat kernel, pixels
DEMODULATION_SIGMA_PX = 0.5


def wavelength_mm(s: AcquisitionSettings) -> float:
    """Wavelength in mm (c in m/s / 1000 = mm/us; divided by MHz)."""
    return s.sound_speed_m_s / 1000.0 / s.f0_mhz


def wavenumber_per_mm(s: AcquisitionSettings) -> float:
    """``k0 = 2 pi / lambda`` in rad/mm (the echo phase is ``2 k0 * axial distance``)."""
    return 2.0 * math.pi / wavelength_mm(s)


def axial_sigma_mm(s: AcquisitionSettings) -> float:
    """Physical two-way axial envelope sigma (mm), from the bandwidth."""
    c = s.sound_speed_m_s / 1000.0
    return FWHM_PER_SIGMA * c / (4.0 * math.pi * s.fractional_bandwidth * s.f0_mhz)


def lateral_sigma_mm(s: AcquisitionSettings) -> float:
    """Physical two-way lateral amplitude sigma (mm) at the receive focus."""
    return wavelength_mm(s) * s.lateral_fnumber / math.pi


def image_psf_sigma_mm(s: AcquisitionSettings) -> tuple[float, float]:
    """``(lateral, axial)`` sigma of the in-plane PSF of the displayed image (mm), including the
    demodulation low-pass matched to the pixel grid (see the module docstring)."""
    sx, sy = s.pixel_spacing
    lat = math.hypot(lateral_sigma_mm(s), DEMODULATION_SIGMA_PX * sx)
    ax = math.hypot(axial_sigma_mm(s), DEMODULATION_SIGMA_PX * sy)
    return lat, ax


def elevation_beam(s: AcquisitionSettings) -> tuple[float, float]:
    """``(w0, zR)``: one-way waist radius and Rayleigh range (mm) of the elevation Gaussian beam."""
    lam = wavelength_mm(s)
    w0 = 2.0 * lam * s.elevation_focus_mm / (math.pi * s.elevation_aperture_mm)
    return w0, math.pi * w0 * w0 / lam


def elevation_sigma_mm(s: AcquisitionSettings, depth_mm: np.ndarray | float) -> np.ndarray:
    """Sigma (mm) of the two-way elevation amplitude profile ``b(z) = exp(-z^2 / (2 sigma^2))``
    at ``depth_mm`` below the skin (along the beam)."""
    w0, z_r = elevation_beam(s)
    d = np.asarray(depth_mm, dtype=np.float64)
    return 0.5 * w0 * np.sqrt(1.0 + ((d - s.elevation_focus_mm) / z_r) ** 2)


def theoretical_correlation(s: AcquisitionSettings, depth_mm: np.ndarray | float,
                            distance_mm: np.ndarray | float) -> np.ndarray:
    """Expected correlation coefficient of the envelope *intensity* |IQ|^2 between two parallel
    image planes ``distance_mm`` apart in elevation, at ``depth_mm``.

    For fully developed speckle the IQ signal is circular complex Gaussian; its correlation is
    ``int b(z) b(z-d) dz / int b^2 = exp(-d^2 / (4 sigma^2))`` and the intensity correlation is its
    squared magnitude (Siegert relation): ``exp(-d^2 / (2 sigma^2))``. Testing/test_simulate.py checks
    that the simulated images follow it.
    """
    sig = elevation_sigma_mm(s, depth_mm)
    d = np.asarray(distance_mm, dtype=np.float64)
    return np.exp(-d * d / (2.0 * sig * sig))


def resolution_cell_mm3(s: AcquisitionSettings, depth_mm: np.ndarray | float) -> np.ndarray:
    """Resolution cell volume (mm^3) at a depth: the box of the full widths at half maximum of the
    lateral, axial (image PSF) and elevation amplitude profiles. The number of scatterers in it
    sets how fully developed the speckle is."""
    lat, ax = image_psf_sigma_mm(s)
    return FWHM_PER_SIGMA ** 3 * lat * ax * elevation_sigma_mm(s, depth_mm)
