"""Acquisition settings of the simulated scanner, and named "sites" (scanner/hospital setups).

Each site is a distribution of settings (probe, frequency, depth, gain, dynamic range ...).
``TRAIN_SITES`` are for training; ``HELDOUT_SITE`` is a new combination whose every setting
lies inside the span of the training sites, for held-out-site evaluation. ``BLENDED_SITES``
are extra training distributions that fill the gaps between training sites: each sweep blends
the settings drawn from two training sites with the same probe kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import InputError

PROBES = ("linear", "curvilinear")


@dataclass(frozen=True)
class AcquisitionSettings:
    """One scanner setting. Lengths mm, angles degrees, frequency MHz, levels dB.

    ``width_mm`` is the image width of a linear probe; a curvilinear probe has a fan with
    its apex ``radius_mm`` above the skin line and a ``sector_deg`` opening, and its
    image rectangle is the bounding box of the fan (zero outside it).
    """

    probe: str = "linear"
    f0_mhz: float = 7.5
    fractional_bandwidth: float = 0.6
    depth_mm: float = 38.0
    width_mm: float = 38.0
    sector_deg: float = 45.0
    radius_mm: float = 25.0
    image_size: tuple[int, int] = (128, 128)
    elevation_focus_mm: float = 18.0
    elevation_aperture_mm: float = 4.0
    lateral_fnumber: float = 2.0
    gain_db: float = 0.0
    dynamic_range_db: float = 50.0
    noise_db: float = -40.0
    frame_rate_hz: float = 25.0
    sound_speed_m_s: float = 1540.0
    # physics randomisation (defaults: the five training sites' fully developed speckle, plain log compression)
    scatterers_per_cell: float = 10.0  # below ~5: partly developed speckle
    smoothing_px: float = 0.0          # Gaussian speckle-reduction filter on the B-mode image (sigma, pixels)
    gamma: float = 1.0                 # grey-map curve applied after log compression
    grey_levels: float = 256.0         # grey levels left after the display chain (lossy video: fewer)

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise InputError(f"Unknown probe kind '{self.probe}'.", f"Use one of: {', '.join(PROBES)}.")
        h, w = (int(v) for v in self.image_size)
        if h < 8 or w < 8:
            raise InputError(f"Image size {self.image_size} is too small.", "Use at least 8 x 8 pixels, e.g. 128 128.")
        object.__setattr__(self, "image_size", (h, w))
        positive = ("f0_mhz", "fractional_bandwidth", "depth_mm", "width_mm", "sector_deg", "radius_mm",
                    "elevation_focus_mm", "elevation_aperture_mm", "lateral_fnumber", "dynamic_range_db",
                    "frame_rate_hz", "sound_speed_m_s", "scatterers_per_cell", "gamma")
        for name in positive:
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"Acquisition setting {name} must be positive, got {v}.",
                                 "Give a positive, finite value.")
        if not (math.isfinite(float(self.smoothing_px)) and self.smoothing_px >= 0):
            raise InputError(f"smoothing_px must be 0 or more, got {self.smoothing_px}.", "Give 0 for no smoothing.")
        if not 2 <= float(self.grey_levels) <= 256:
            raise InputError(f"grey_levels must be 2..256, got {self.grey_levels}.", "Give 256 for 8-bit images.")

    # --- derived geometry ----------------------------------------------------------
    @property
    def image_width_mm(self) -> float:
        """Width of the image rectangle (for curvilinear: the fan's bounding box)."""
        if self.probe == "linear":
            return float(self.width_mm)
        half = math.radians(self.sector_deg) / 2
        return 2 * (self.radius_mm + self.depth_mm) * math.sin(half)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """``(sx, sy)`` mm per pixel: image width / W columns, depth / H rows."""
        h, w = self.image_size
        return self.image_width_mm / w, self.depth_mm / h

    @property
    def skin_point_mm(self) -> tuple[float, float, float]:
        """Image-mm point where the probe touches the skin (centre of the top edge)."""
        return (self.image_size[1] - 1) * self.pixel_spacing[0] / 2, 0.0, 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AcquisitionSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"Unknown acquisition settings: {', '.join(sorted(unknown))}.",
                             f"Use only: {', '.join(sorted(names))}.")
        kw = dict(d)
        if "image_size" in kw:
            kw["image_size"] = tuple(kw["image_size"])
        return cls(**kw)


# Each site: fixed values or (low, high) uniform ranges. All keep pixel spacing within 0.2-0.45 mm at 128 x 128.
SITES: dict[str, dict[str, Any]] = {
    # general-purpose linear probe, mid frequency
    "site-a": {"probe": "linear", "f0_mhz": (7.0, 8.5), "fractional_bandwidth": (0.6, 0.75), "depth_mm": (32, 40),
               "width_mm": (38, 42), "elevation_focus_mm": (16, 20), "elevation_aperture_mm": (4.0, 4.5),
               "lateral_fnumber": (1.8, 2.2), "gain_db": (-3, 3), "dynamic_range_db": (50, 60),
               "noise_db": (-45, -38)},
    # lower-frequency linear probe, deeper
    "site-b": {"probe": "linear", "f0_mhz": (5.0, 6.0), "fractional_bandwidth": (0.55, 0.7), "depth_mm": (44, 52),
               "width_mm": (36, 40), "elevation_focus_mm": (22, 28), "elevation_aperture_mm": (5.0, 6.0),
               "lateral_fnumber": (2.0, 2.5), "gain_db": (-2, 5), "dynamic_range_db": (45, 55),
               "noise_db": (-42, -35)},
    # abdominal-style curvilinear probe
    "site-c": {"probe": "curvilinear", "f0_mhz": (3.0, 4.0), "fractional_bandwidth": (0.55, 0.7),
               "depth_mm": (42, 48), "radius_mm": (25, 28), "sector_deg": (38, 42),
               "elevation_focus_mm": (26, 32), "elevation_aperture_mm": (7.0, 8.0), "lateral_fnumber": (2.2, 2.8),
               "gain_db": (-4, 2), "dynamic_range_db": (55, 65), "noise_db": (-40, -34)},
    # high-frequency small-parts linear probe
    "site-d": {"probe": "linear", "f0_mhz": (10.0, 12.0), "fractional_bandwidth": (0.65, 0.8), "depth_mm": (26, 30),
               "width_mm": (27, 31), "elevation_focus_mm": (12, 15), "elevation_aperture_mm": (3.5, 4.0),
               "lateral_fnumber": (1.8, 2.2), "gain_db": (-3, 3), "dynamic_range_db": (55, 65),
               "noise_db": (-45, -40)},
    # micro-convex probe, mid frequency
    "site-e": {"probe": "curvilinear", "f0_mhz": (4.5, 5.5), "fractional_bandwidth": (0.6, 0.75),
               "depth_mm": (34, 40), "radius_mm": (20, 23), "sector_deg": (46, 52),
               "elevation_focus_mm": (18, 24), "elevation_aperture_mm": (5.0, 6.0), "lateral_fnumber": (2.0, 2.5),
               "gain_db": (-2, 4), "dynamic_range_db": (48, 58), "noise_db": (-42, -36)},
    # held out: a linear probe at a frequency/depth/gain combination no training site has,
    # every value inside the training span
    "site-f": {"probe": "linear", "f0_mhz": (6.2, 6.8), "fractional_bandwidth": (0.6, 0.7), "depth_mm": (40, 44),
               "width_mm": (33, 36), "elevation_focus_mm": (19, 23), "elevation_aperture_mm": (4.5, 5.0),
               "lateral_fnumber": (2.0, 2.3), "gain_db": (2, 4), "dynamic_range_db": (58, 62),
               "noise_db": (-40, -36)},
}
# Training-only, physics randomised (issue 17): instead of five scanners, every sweep draws its own probe physics
# from wide ranges: centre frequency and bandwidth, elevation focus and aperture (hence the depth profile of
# elevational decorrelation), lateral F-number, partly to fully developed speckle, speckle-reduction smoothing,
# grey map and grey-level loss. The ranges are set from published probe specifications, not from any
# evaluation sweep; they are never used for evaluation.
RANDOMISED_SITES: dict[str, dict[str, Any]] = {
    "site-random-linear": {"probe": "linear", "f0_mhz": (5.0, 13.0), "fractional_bandwidth": (0.4, 0.95),
                           "depth_mm": (26, 56), "width_mm": (28, 44), "elevation_focus_mm": (10, 35),
                           "elevation_aperture_mm": (2.5, 7.0), "lateral_fnumber": (1.2, 3.5), "gain_db": (-6, 6),
                           "dynamic_range_db": (40, 75), "noise_db": (-50, -30), "scatterers_per_cell": (1.5, 20.0),
                           "smoothing_px": (0.0, 1.5), "gamma": (0.6, 1.6), "grey_levels": (32, 256)},
    "site-random-convex": {"probe": "curvilinear", "f0_mhz": (2.5, 6.0), "fractional_bandwidth": (0.4, 0.9),
                           "depth_mm": (34, 48), "radius_mm": (18, 28), "sector_deg": (36, 46),
                           "elevation_focus_mm": (20, 45), "elevation_aperture_mm": (5.0, 10.0),
                           "lateral_fnumber": (1.5, 3.5), "gain_db": (-6, 6), "dynamic_range_db": (40, 75),
                           "noise_db": (-48, -30), "scatterers_per_cell": (1.5, 20.0), "smoothing_px": (0.0, 1.5),
                           "gamma": (0.6, 1.6), "grey_levels": (32, 256)},
}
TRAIN_SITES: tuple[str, ...] = ("site-a", "site-b", "site-c", "site-d", "site-e")
HELDOUT_SITE = "site-f"

# Training-only: per sweep, one pair of same-probe training sites is picked, settings are drawn from
# each, and every numeric setting is interpolated with one weight t ~ U(0, 1). This models scanners
# "between" the training sites (the held-out site's ranges were not used to choose the pairs; its
# combination is not on any blend, e.g. its width is narrower than site-a/b blends give). Paired sites
# have the same probe, hence the same setting names.
BLENDED_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "site-blend": (("site-a", "site-b"), ("site-a", "site-d"), ("site-b", "site-d"), ("site-c", "site-e")),
}
SITE_NAMES: tuple[str, ...] = (*SITES, *BLENDED_SITES, *RANDOMISED_SITES)


def check_site(site: str) -> None:
    """:class:`InputError` naming the known sites when ``site`` is neither in SITES nor BLENDED_SITES."""
    if site not in SITE_NAMES:
        raise InputError(f"Unknown simulation site '{site}'.", f"Use one of: {', '.join(SITE_NAMES)}.")


def _draw(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in sorted(spec):  # sorted: the draw order (hence the result) never depends on dict order
        v = spec[name]
        values[name] = float(rng.uniform(*v)) if isinstance(v, tuple) else v
    return values


def site_settings(site: str, rng: np.random.Generator,
                  image_size: tuple[int, int] = (128, 128)) -> AcquisitionSettings:
    """Draw one :class:`AcquisitionSettings` from the site's ranges (for a blended site: a blend of two
    training sites' draws, see :data:`BLENDED_SITES`)."""
    check_site(site)
    if site in SITES or site in RANDOMISED_SITES:
        return AcquisitionSettings(image_size=tuple(image_size), **_draw({**SITES, **RANDOMISED_SITES}[site], rng))
    pairs = BLENDED_SITES[site]
    first, second = pairs[int(rng.integers(len(pairs)))]
    a, b = _draw(SITES[first], rng), _draw(SITES[second], rng)
    t = float(rng.uniform(0.0, 1.0))
    values = {name: va if isinstance(va, str) else (1.0 - t) * va + t * b[name] for name, va in a.items()}
    return AcquisitionSettings(image_size=tuple(image_size), **values)
