"""Ultrasound sweep simulator: training and test data for sensorless pose estimation.

``random_sweep(site, seed)`` is the one-call entry point; the pieces are :mod:`.sites`
(acquisition settings), :mod:`.beam` (PSF and elevation profile), :mod:`.phantom`
(scatterers and structure), :mod:`.trajectory` (freehand poses) and :mod:`.imaging`
(IQ image formation). See ``benchmark_simulator`` for the speed. ``channels=("photoacoustic",
"doppler")`` adds co-registered photoacoustic (:mod:`.photoacoustic`) and Doppler
(:mod:`.doppler`) frames; :func:`random_paus_sweep` is the PAUS preset.
"""

from __future__ import annotations

from typing import Any

# name -> submodule; loaded on first use, so that ``simulate.sites`` (read by the command line at start-up)
# does not import PyTorch through the image formation
_EXPORTS = {
    "SIMULATOR_VERSION": "sweeps", "AcquisitionSettings": "sites", "SITES": "sites", "TRAIN_SITES": "sites",
    "HELDOUT_SITE": "sites", "BLENDED_SITES": "sites", "SITE_NAMES": "sites", "RANDOMISED_SITES": "sites", "KINDS": "trajectory",
    "site_settings": "sites", "make_trajectory": "trajectory", "make_phantom": "phantom", "phantom_for": "sweeps",
    "simulate_sweep": "imaging", "random_sweep": "sweeps", "benchmark_simulator": "sweeps", "Imager": "imaging",
    "Phantom": "phantom", "elevation_sigma_mm": "beam", "theoretical_correlation": "beam",
    "vessel_mask": "phantom", "echogenicity": "phantom", "axial_sigma_mm": "beam", "lateral_sigma_mm": "beam",
    "image_psf_sigma_mm": "beam", "resolution_cell_mm3": "beam", "wavelength_mm": "beam",
    "random_structure": "phantom", "frame_box": "imaging", "scatterer_density": "sweeps", "BASE": "trajectory",
    "CHANNELS": "sweeps", "add_channels": "sweeps", "random_paus_sweep": "sweeps",
    "photoacoustic_frames": "photoacoustic", "doppler_frames": "doppler",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module == "beam":
        from . import beam as loaded
    elif module == "doppler":
        from . import doppler as loaded
    elif module == "imaging":
        from . import imaging as loaded
    elif module == "phantom":
        from . import phantom as loaded
    elif module == "photoacoustic":
        from . import photoacoustic as loaded
    elif module == "sites":
        from . import sites as loaded
    elif module == "sweeps":
        from . import sweeps as loaded
    elif module == "trajectory":
        from . import trajectory as loaded
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(loaded, name)
