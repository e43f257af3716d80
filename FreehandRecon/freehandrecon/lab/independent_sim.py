"""An independent validation set made with pymust (SIMUS), never used for training or model selection.

Our own simulator (:mod:`freehandrecon.simulate`) is the training ground; this module makes sweeps with a
different physics code so that a pose estimator's accuracy is judged on images it was not tuned to.
SIMUS computes the RF echoes element by element in 3-D, with the elevation lens of the probe (PARAM.height is
the element height, PARAM.focus the elevation focus), from point scatterers; the images are beamformed with
pymust's delay-and-sum matrix, envelope-detected and log-compressed to 8 bits.

A sweep here is:

* a probe (:data:`PROBES`: two linear arrays and one convex array with a fan mask, each with its own centre
  frequency, bandwidth and elevation aperture/focus), one zero-delay transmit (a plane wave for the linear
  arrays, a diverging wave for the convex one) per frame;
* a fixed 3-D phantom shared by all its frames (:func:`make_phantom`): random scatterers with an amplitude map
  (smoothly varying background speckle, anechoic cylindrical vessels, a bright thin specular layer);
* exact poses from a known trajectory (:func:`make_poses`): ``image_to_world`` per frame in our conventions
  (pixel (col, row) -> image mm (col*sx, row*sy, 0) -> world mm), built about the skin contact point as
  :mod:`freehandrecon.simulate.trajectory` does (image x -> R, depth -> -S, elevation -> A);
* per frame, the scatterers of the phantom within +-``slab_mm`` of the frame plane (in the image frame given by
  ``inv(image_to_world)``) are handed to SIMUS.

Generation is slow (tens of CPU seconds a frame), so every frame's envelope is cached as it is made
(``<cache>/<sweep>/frame_XXX.npz``) and a run resumes where the last one stopped. :func:`assemble_sweep` turns a
complete cache into a sweep file (uint8 B-mode); :func:`lumen_check` checks a sweep's poses against its
phantom (vessel lumens dark where the poses put them).

Command line: ``python -m freehandrecon.lab.independent_sim {plan,measure,generate,assemble,check}`` or
``freehandrecon simulate-independent ...``. Needs the optional extra ``lab`` (``pip install pymust``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import geometry
from ..errors import InputError
from ..sweep import Sweep

DEFAULT_CACHE = Path("lab_cache") / "independent"
DEFAULT_OUT = Path("Testing") / "Data" / "independent"
PURPOSE = "independent validation only: never used for training or model selection"
GENERATOR_VERSION = 1  # bump when a plan entry would give different frames; part of the cache key
SOUND_SPEED = 1540.0
DYNAMIC_RANGE_DB = 50.0
BASE = np.array([[1.0, 0.0, 0.0, 0.0],   # image x -> R, image depth y -> -S, elevation z -> A
                 [0.0, 0.0, 1.0, 0.0],
                 [0.0, -1.0, 0.0, 0.0],
                 [0.0, 0.0, 0.0, 1.0]])


# --- probes --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """A probe for SIMUS and its pixel grid.

    ``base`` names pymust's preset (``pymust.getparam``); the other fields override it. ``top_mm`` is the
    probe depth (z, mm below the array or the convex chord) of pixel row 0; ``slab_mm`` the half thickness
    of the scatterer slab around the frame plane (at least half the element height, so the near field is
    whole); ``elements`` overrides the number of elements (None: the preset's).
    """

    name: str
    base: str
    fc_mhz: float
    bandwidth_pct: float
    elevation_height_mm: float
    elevation_focus_mm: float
    spacing_mm: float
    size: int = 128
    top_mm: float = 1.0
    slab_mm: float = 3.0
    elements: int | None = None
    scatterers: int = 7000
    frequency_step: float = 1.0

    def param(self) -> Any:
        """The pymust PARAM structure of this probe."""
        import pymust

        p = pymust.getparam(self.base)
        p.fc = self.fc_mhz * 1e6
        p.bandwidth = float(self.bandwidth_pct)
        p.height = self.elevation_height_mm * 1e-3
        p.focus = self.elevation_focus_mm * 1e-3
        if self.elements is not None:
            p.Nelements = int(self.elements)
        if p.get("radius") is None:
            p.radius = np.inf
        if p.get("width") is None:
            p.width = p.pitch - p.kerf
        p.fs = 4 * p.fc
        n_el = int(p.Nelements)
        p.TXapodization = (0.5 * (1 - np.cos(2 * np.pi * np.clip(np.minimum(np.arange(n_el), n_el - 1 - np.arange(n_el))
                                                                   / (0.125 * (n_el - 1)), 0, 0.5)))).reshape(1, -1)
        p.c = SOUND_SPEED
        p.attenuation = 0.0
        return p

    @property
    def convex(self) -> bool:
        return self.base.upper().startswith("C")


PROBES = {
    # 7.6 MHz linear, 5 mm elevation aperture focused at 18 mm; 25.6 x 25.6 mm frames
    "L11-5v": Probe("L11-5v", "L11-5v", 7.6, 77.0, 5.0, 18.0, spacing_mm=0.2, top_mm=1.0, slab_mm=3.0,
                     scatterers=7000, frequency_step=1.25),
    # 5 MHz linear, 6 mm elevation aperture focused at 28 mm; 32 x 32 mm frames
    "L9-4": Probe("L9-4", "L9-4/38", 5.0, 65.0, 6.0, 28.0, spacing_mm=0.25, top_mm=1.0, slab_mm=3.5,
                   scatterers=8000, frequency_step=1.25),
    # 3.57 MHz convex (R 49.6 mm, 64 elements: a 37-degree fan), 10 mm elevation aperture focused at
    # 45 mm; 57.6 x 57.6 mm frames with zeros outside the fan
    "C5-2v": Probe("C5-2v", "C5-2v", 3.57, 79.0, 10.0, 45.0, spacing_mm=0.45, top_mm=0.0, slab_mm=5.0,
                   elements=64, scatterers=12000, frequency_step=1.0),
}


def probe(name: str) -> Probe:
    if name not in PROBES:
        raise InputError(f"Unknown probe '{name}'.", f"Use one of: {', '.join(PROBES)}.")
    return PROBES[name]


# (radius mm, apothem mm, half fan angle rad) of the convex probes, as pymust 0.1.9's element layout gives them
# (Testing/test_independent_set.py compares them with pymust where it is installed), so that the committed sweeps'
# fan masks and checks need no pymust.
CONVEX_GEOMETRY = {"C5-2v": (49.57, 47.009477432522154, 0.32281763215141673)}


def _element_geometry(pr: Probe) -> tuple[float, float, float]:
    """(radius, apothem, half fan angle in rad) in mm of a convex probe, from pymust's element layout."""
    if importlib.util.find_spec("pymust") is None and pr.name in CONVEX_GEOMETRY:
        return CONVEX_GEOMETRY[pr.name]
    p = pr.param()
    xe, ze, the, h = p.getElementPositions()
    return float(p.radius) * 1e3, float(np.ravel(h)[0]) * 1e3, float(np.abs(the).max())


def pixel_probe_coords(pr: Probe, oversample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Probe-frame (x lateral, z depth) mm of the pixel centres, ``[H*o, W*o]`` each (``o`` sub-pixels)."""
    n, s, o = pr.size, pr.spacing_mm, int(oversample)
    sub = (np.arange(n * o) + 0.5) / o - 0.5  # sub-pixel centres in pixel units
    x = (sub - (n - 1) / 2) * s
    z = pr.top_mm + sub * s
    return np.meshgrid(x, z)


def fan_mask(pr: Probe, oversample: int = 1) -> np.ndarray:
    """Pixels inside the imaged region: all for a linear probe, the sector below the arc for a convex one."""
    x, z = pixel_probe_coords(pr, oversample)
    if not pr.convex:
        return np.ones(x.shape, dtype=bool)
    radius, apothem, half = _element_geometry(pr)
    r = np.hypot(x, z + apothem)
    ang = np.arctan2(x, z + apothem)
    return (r >= radius + 0.5) & (np.abs(ang) <= half)


def skin_point_mm(pr: Probe) -> np.ndarray:
    """The probe's skin contact point in image mm (centre of the array face)."""
    centre_col = (pr.size - 1) / 2 * pr.spacing_mm
    face_z = 0.0
    if pr.convex:
        radius, apothem, _ = _element_geometry(pr)
        face_z = radius - apothem  # the arc's apex lies above the chord
    return np.array([centre_col, face_z - pr.top_mm, 0.0])


def image_to_probe_mm(pr: Probe, pts_image: np.ndarray) -> np.ndarray:
    """Image mm ``[..., 3]`` -> probe mm ``[..., 3]`` as (x lateral, y elevation, z depth)."""
    x = pts_image[..., 0] - (pr.size - 1) / 2 * pr.spacing_mm
    z = pts_image[..., 1] + pr.top_mm
    return np.stack([x, pts_image[..., 2], z], axis=-1)


# --- trajectories ------------------------------------------------------------------------------

TRAJECTORIES = ("translation", "tilt", "s-curve", "mixed")


def _smooth(n: int, rng: np.random.Generator, cycles: float = 1.2) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    y = np.zeros(n)
    for _ in range(3):
        y += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.3, cycles) * t + rng.uniform(0, 2 * np.pi))
    y -= y[0]
    peak = np.abs(y).max()
    return y / peak if peak > 0 else y


def make_poses(kind: str, frames: int, step_mm: float, direction: int, rng: np.random.Generator,
               pivot_mm: np.ndarray, tilt_deg: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """``[N, 4, 4]`` exact image-to-world poses and the drawn trajectory parameters.

    The probe's skin contact point (``pivot_mm``, image mm) moves along a path and the probe turns about it:
    ``image_to_world = BASE @ T(path) @ Rz Ry Rx @ T(-pivot)``; elevation is the probe's z, so +z motion
    is "forward" (``direction`` +1). ``translation``: pure elevational translation, ``step_mm`` per frame.
    ``tilt``: the same translation while the probe tilts (fans) about its lateral axis by ``tilt_deg`` over
    the sweep. ``s-curve``: a lateral S (1.5-3 mm) while sweeping, yaw following it. ``mixed``: varying
    speed, lateral and axial drift, small rotations about all axes.
    """
    if kind not in TRAJECTORIES:
        raise InputError(f"Unknown trajectory '{kind}'.", f"Use one of: {', '.join(TRAJECTORIES)}.")
    n, d = int(frames), float(direction)
    k = np.arange(n, dtype=np.float64)
    path, ang = np.zeros((n, 3)), np.zeros((n, 3))
    info: dict[str, Any] = {"step_mm": step_mm}
    if kind == "translation":
        path[:, 2] = d * step_mm * k
    elif kind == "tilt":
        path[:, 2] = d * step_mm * k
        ang[:, 0] = tilt_deg * (k / (n - 1) - 0.5)
        info["tilt_deg_over_sweep"] = tilt_deg
    elif kind == "s-curve":
        path[:, 2] = d * step_mm * k
        amp = float(rng.uniform(1.5, 3.0))
        t = k / (n - 1)
        path[:, 0] = amp * np.sin(2 * np.pi * t)
        slope = np.gradient(path[:, 0]) / step_mm
        peak = float(np.abs(slope).max())
        ang[:, 1] = min(6.0, float(np.rad2deg(np.arctan(0.5 * peak)))) * slope / peak  # yaw follows the path
        info.update(lateral_amplitude_mm=round(amp, 3), max_yaw_deg=round(float(np.abs(ang[:, 1]).max()), 3))
    else:
        speed = 1.0 + 0.35 * _smooth(n, rng, 2.0)
        path[:, 2] = d * step_mm * np.concatenate([[0.0], np.cumsum(speed[1:])])
        path[:, 0] = rng.uniform(-3.0, 3.0) * _smooth(n, rng)
        path[:, 1] = rng.uniform(-0.8, 0.8) * _smooth(n, rng)
        ang[:, 0] = rng.uniform(-8.0, 8.0) * _smooth(n, rng)
        ang[:, 1] = rng.uniform(-5.0, 5.0) * _smooth(n, rng)
        ang[:, 2] = rng.uniform(-3.0, 3.0) * _smooth(n, rng)
    m = geometry.params_to_matrix(np.concatenate([path, ang], axis=1))
    to_pivot = np.eye(4)
    to_pivot[:3, 3] = -np.asarray(pivot_mm, dtype=np.float64)
    return BASE[None] @ m @ to_pivot[None], info


# --- phantom ---------------------------------------------------------------------------------

@dataclass
class Phantom:
    """World-mm scatterers with amplitudes, and the structures that shaped them (for the lumen check)."""

    points: np.ndarray      # [P, 3] world mm
    amplitude: np.ndarray   # [P] reflection coefficients
    vessels: list           # dicts: point, direction (unit), radius_mm (anechoic cylinders)
    layer: dict | None      # point, normal (unit), thickness_mm, gain (bright specular layer); None: none
    density_per_mm3: float


def _region_volume_mm3(pr: Probe) -> float:
    """Volume of the per-frame scatterer region (imaged area plus margins, times the slab)."""
    m = _margin_mask(pr)
    return float(m.sum()) * pr.spacing_mm ** 2 * 2 * pr.slab_mm


def _margin_mm(pr: Probe) -> float:
    return 1.5 if not pr.convex else 2.5


def _margin_mask(pr: Probe) -> np.ndarray:
    """Pixels (on a grid extended by the margin) whose neighbourhood scatterers go to SIMUS."""
    pad = int(np.ceil(_margin_mm(pr) / pr.spacing_mm))
    big = Probe(**dict(asdict(pr), size=pr.size + 2 * pad, top_mm=pr.top_mm - pad * pr.spacing_mm))
    mask = fan_mask(big)
    if pr.convex:  # widen the sector by the margin
        x, z = pixel_probe_coords(big)
        radius, apothem, half = _element_geometry(pr)
        r, ang = np.hypot(x, z + apothem), np.arctan2(x, z + apothem)
        mask = (r >= radius + 0.05) & (np.abs(ang) <= half + _margin_mm(pr) / (r + 1e-9))
    x, z = pixel_probe_coords(big)
    return mask & (z >= 0.05)


def make_phantom(pr: Probe, poses: np.ndarray, rng: np.random.Generator, scatterers_per_frame: int,
                 structure: bool = True) -> Phantom:
    """A fixed phantom covering every frame's slab, with ``scatterers_per_frame`` expected per frame.
    ``structure=False``: plain speckle of uniform echogenicity (a speckle calibration phantom)."""
    density = scatterers_per_frame / _region_volume_mm3(pr)
    n, s = pr.size, pr.spacing_mm
    span = (n - 1) * s
    pad = _margin_mm(pr) + pr.slab_mm + 1.0
    corners = np.array([[x, y, z, 1.0] for x in (-pad, span + pad) for y in (-pad - pr.top_mm, span + pad)
                        for z in (-pad, pad)])
    world = np.einsum("nab,pb->npa", poses, corners)[..., :3].reshape(-1, 3)
    lo, hi = world.min(axis=0), world.max(axis=0)
    count = int(rng.poisson(density * float(np.prod(hi - lo))))
    pts = rng.uniform(lo, hi, (count, 3))
    if not structure:
        return Phantom(points=pts, amplitude=rng.standard_normal(count), vessels=[], layer=None,
                       density_per_mm3=float(density))
    # background: Gaussian amplitudes under a smooth echogenicity map (0.6-1.4)
    field = np.zeros(count)
    for _ in range(4):
        kvec = rng.normal(size=3)
        kvec *= 2 * np.pi / rng.uniform(6.0, 15.0) / np.linalg.norm(kvec)
        field += np.cos(pts @ kvec + rng.uniform(0, 2 * np.pi))
    amp = rng.standard_normal(count) * (1.0 + 0.1 * field)
    # structures, placed in the first frame's image and carried to world
    first = poses[0]

    def to_world(p_img: Sequence[float], is_dir: bool = False) -> np.ndarray:
        v = np.array([*p_img, 0.0 if is_dir else 1.0])
        return (first @ v)[:3]

    d0 = max(0.0, float(skin_point_mm(pr)[1]))
    depth_span = span - d0
    radius_big = float(np.clip(0.085 * span, 1.6, 4.5))
    radius_small = float(np.clip(0.06 * span, 1.2, 3.0))
    lateral_room = 0.22 if not pr.convex else 0.12
    vessels = []
    # vessel 1 runs along the sweep (elevation); vessel 2 crosses it obliquely (20 deg in the lateral-elevation plane)
    v1 = to_world([span * (0.5 - lateral_room), d0 + 0.62 * depth_span, 0.0])
    vessels.append({"point": v1, "direction": to_world([0.0, 0.0, 1.0], True), "radius_mm": radius_big})
    ang = np.deg2rad(rng.choice([-1.0, 1.0]) * 20.0)
    v2 = to_world([span * (0.5 + lateral_room), d0 + 0.40 * depth_span, 0.0])
    vessels.append({"point": v2, "direction": to_world([np.sin(ang), 0.0, np.cos(ang)], True),
                    "radius_mm": radius_small})
    for v in vessels:
        v["direction"] = v["direction"] / np.linalg.norm(v["direction"])
        rel = pts - v["point"]
        dist = np.linalg.norm(rel - np.outer(rel @ v["direction"], v["direction"]), axis=1)
        amp[dist < v["radius_mm"]] = 0.0
    # a bright specular layer (a thin plane, inclined 6 degrees laterally) at 80 % depth
    tilt = np.deg2rad(6.0)
    normal_img = np.array([np.sin(tilt), -np.cos(tilt), 0.0])
    layer = {"point": to_world([span / 2, d0 + 0.8 * depth_span, 0.0]),
             "normal": to_world(normal_img, True), "thickness_mm": 0.5, "gain": 4.0}
    dl = (pts - layer["point"]) @ layer["normal"]
    amp[np.abs(dl) < layer["thickness_mm"] / 2] *= layer["gain"]
    # denser scatterers in the layer so that it is a continuous bright line
    extra = int(rng.poisson(2.0 * density * float(np.prod(hi - lo)) * layer["thickness_mm"] / (hi - lo).max()))
    if extra:
        e = rng.uniform(lo, hi, (extra, 3))
        e -= np.outer((e - layer["point"]) @ layer["normal"], layer["normal"])
        e += np.outer(rng.uniform(-0.25, 0.25, extra), layer["normal"])
        pts = np.concatenate([pts, e])
        amp = np.concatenate([amp, layer["gain"] * rng.standard_normal(extra)])
    keep = amp != 0.0
    return Phantom(points=pts[keep], amplitude=amp[keep], vessels=vessels, layer=layer,
                   density_per_mm3=float(density))


def frame_scatterers(pr: Probe, image_to_world: np.ndarray, phantom: Phantom) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's scatterers near one frame in probe metres ``[P, 3]`` (x, y elevation, z) and their
    amplitudes: within +-slab of the plane and inside the (margin-widened) imaged region."""
    inv = np.linalg.inv(image_to_world)
    p_img = phantom.points @ inv[:3, :3].T + inv[:3, 3]
    near = np.abs(p_img[:, 2]) <= pr.slab_mm
    p_img, amp = p_img[near], phantom.amplitude[near]
    probe_mm = image_to_probe_mm(pr, p_img)
    pad = int(np.ceil(_margin_mm(pr) / pr.spacing_mm))
    mask = _margin_mask(pr)
    col = np.rint(probe_mm[:, 0] / pr.spacing_mm + (pr.size - 1) / 2 + pad).astype(int)
    row = np.rint((probe_mm[:, 2] - pr.top_mm) / pr.spacing_mm + pad).astype(int)
    inside = (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    inside[inside] = mask[row[inside], col[inside]]
    return probe_mm[inside] * 1e-3, amp[inside]


# --- imaging ---------------------------------------------------------------------------------

class Imager:
    """SIMUS + delay-and-sum for one probe; the DAS matrix is built once and reused for every frame."""

    OVERSAMPLE = 2

    def __init__(self, pr: Probe, frequency_step: float | None = None) -> None:
        import pymust

        self.probe = pr
        self.frequency_step = float(frequency_step or pr.frequency_step)
        self.param = pr.param()
        self.delays = np.zeros((1, int(self.param.Nelements)))
        x, z = pixel_probe_coords(pr, self.OVERSAMPLE)
        xe, ze, _, _ = self.param.getElementPositions()
        far = float(np.hypot(np.abs(x).max() * 1e-3 + np.abs(xe).max(), z.max() * 1e-3))
        self.samples = int(np.ceil(self.param.fs * (z.max() * 1e-3 + far) / SOUND_SPEED)) + 64
        self.shape = x.shape
        self.param.fnumber = None  # pymust then picks it from the element directivity (default: full aperture)
        das = pymust.dasmtx(1j * np.array([self.samples, int(self.param.Nelements)]), x * 1e-3, z * 1e-3,
                            self.delays, self.param).tocoo()
        self.das = self._apodize(das, x.flatten(order="F") * 1e-3, z.flatten(order="F") * 1e-3).tocsr()
        self.mask = fan_mask(pr)

    def _apodize(self, das: Any, x: np.ndarray, z: np.ndarray) -> Any:
        """Hann receive apodization across each point's f-number aperture (pymust's DAS matrix sums the
        aperture unweighted, whose -13 dB side lobes fill anechoic lumens with clutter)."""
        xe, ze, the, _ = (np.ravel(v) for v in self.param.getElementPositions())
        e = das.col // self.samples
        half = np.arctan(1 / 2 / float(self.param.fnumber))  # the aperture's half angle seen from the point
        dx, dz = x[das.row] - xe[e], z[das.row] - ze[e]
        off = np.arcsin(np.clip(dx / np.maximum(np.hypot(dx, dz), 1e-12), -1, 1)) - the[e]
        das.data = das.data * (0.5 * (1 + np.cos(np.pi * np.clip(off / half, -1, 1))))
        return das

    def envelope(self, pts_m: np.ndarray, amp: np.ndarray) -> np.ndarray:
        """Envelope image ``[H, W]`` float32 (linear scale; zero outside the fan) of scatterers in probe metres."""
        import pymust

        opt = pymust.utils.Options()
        opt.dBThresh = -40  # one-way spectrum threshold: -80 dB pulse-echo
        opt.ElementSplitting = 1  # elements narrower than ~1.5 wavelengths: far field from ~0.5 mm on
        # >1 shortens SIMUS's time window (2 maxD / c / step): 1.25 still holds the deepest echoes of the linear
        # probes (envelopes correlate 0.9999 with step 1); the convex probe needs 1
        opt.FrequencyStep = self.frequency_step
        opt.WaitBar = False
        x, y, z = (pts_m[:, i].reshape(1, -1).astype(np.float64) for i in range(3))
        old = logging.root.manager.disable
        logging.disable(logging.WARNING)  # pymust warns (with a malformed call) whenever FrequencyStep > 1
        try:
            rf, _ = pymust.simus(x, y, z, amp.reshape(1, -1).astype(np.float64), self.delays, self.param, opt)
        finally:
            logging.disable(old)
        rf = np.asarray(rf, dtype=np.float64)
        if rf.shape[0] < self.samples:
            rf = np.concatenate([rf, np.zeros((self.samples - rf.shape[0], rf.shape[1]))])
        iq = pymust.rf2iq(rf[: self.samples], self.param)
        beam = (self.das @ iq.flatten(order="F")).reshape(self.shape, order="F")
        env = np.abs(beam)
        o = self.OVERSAMPLE
        env = env.reshape(self.probe.size, o, self.probe.size, o).mean(axis=(1, 3))
        return np.where(self.mask, env, 0.0).astype(np.float32)


# --- plan, cache, generation ---------------------------------------------------------------------

@dataclass(frozen=True)
class SweepPlan:
    name: str
    probe: str
    trajectory: str
    frames: int
    step_mm: float
    direction: int
    seed: int
    tilt_deg: float = 0.0
    structure: bool = True  # False: a speckle calibration phantom (no vessels, no layer, uniform echogenicity)

    def scatterers(self, override: int | None = None) -> int:
        """Expected scatterers per frame: ``override`` or the probe's own count."""
        return int(override) if override else probe(self.probe).scatterers

    def frequency_step(self, override: float | None = None) -> float:
        """SIMUS frequency-step factor: ``override`` or the probe's own."""
        return float(override) if override else probe(self.probe).frequency_step

    def key(self, scatterers_per_frame: int | None, frequency_step: float | None) -> str:
        """Hash of everything that determines the frames (so a stale cache is never reused)."""
        fields = {k: v for k, v in asdict(self).items() if not (k == "structure" and v)}  # keys made before it stay
        blob = json.dumps([fields, asdict(probe(self.probe)), self.scatterers(scatterers_per_frame),
                           self.frequency_step(frequency_step),
                           GENERATOR_VERSION], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


# Ordered so that the first four cover every probe and both pure translation and tilt.
PLAN = (
    SweepPlan("l11_translation", "L11-5v", "translation", 48, 0.25, +1, 101),
    SweepPlan("c52_tilt", "C5-2v", "tilt", 48, 0.3, +1, 102, tilt_deg=20.0),
    SweepPlan("l94_translation", "L9-4", "translation", 48, 0.35, -1, 103),
    SweepPlan("l11_scurve", "L11-5v", "s-curve", 48, 0.3, -1, 104),
    SweepPlan("c52_translation", "C5-2v", "translation", 48, 0.15, -1, 105),
    SweepPlan("l94_tilt", "L9-4", "tilt", 48, 0.25, +1, 106, tilt_deg=15.0),
    SweepPlan("l11_mixed", "L11-5v", "mixed", 48, 0.3, +1, 107),
    SweepPlan("l94_scurve", "L9-4", "s-curve", 48, 0.2, +1, 108),
    SweepPlan("c52_mixed", "C5-2v", "mixed", 48, 0.3, -1, 109),
    SweepPlan("l11_tilt", "L11-5v", "tilt", 48, 0.4, -1, 110, tilt_deg=25.0),
    SweepPlan("l94_mixed", "L9-4", "mixed", 48, 0.4, -1, 111),
    SweepPlan("l11_translation_fine", "L11-5v", "translation", 48, 0.1, +1, 112),
)
# Calibration sweeps, not validation sweeps: one slow straight sweep of a speckle phantom per probe, as a user would
# record with `calibrate-speckle` / `adapt` (written to Testing/Data/independent/phantom/).
PHANTOM_PLAN = (
    SweepPlan("l11_phantom", "L11-5v", "translation", 32, 0.2, +1, 201, structure=False),
    SweepPlan("l94_phantom", "L9-4", "translation", 32, 0.2, +1, 202, structure=False),
    SweepPlan("c52_phantom", "C5-2v", "translation", 32, 0.25, +1, 203, structure=False),
)
DEFAULT_SCATTERERS = None  # each probe's own count (Probe.scatterers)
DEFAULT_FREQUENCY_STEP = None  # each probe's own (Probe.frequency_step)


def plan(name: str) -> SweepPlan:
    for p in PLAN + PHANTOM_PLAN:
        if p.name == name:
            return p
    raise InputError(f"No sweep '{name}' in the plan.",
                     f"Use one of: {', '.join(p.name for p in PLAN + PHANTOM_PLAN)}.")


def sweep_setup(sp: SweepPlan, scatterers_per_frame: int | None = None) -> tuple[np.ndarray, Phantom, dict[str, Any]]:
    """Poses, phantom and trajectory parameters of a planned sweep (deterministic from its seed)."""
    pr = probe(sp.probe)
    rng = np.random.default_rng(np.random.SeedSequence([sp.seed, GENERATOR_VERSION]))
    poses, info = make_poses(sp.trajectory, sp.frames, sp.step_mm, sp.direction, rng, skin_point_mm(pr),
                             sp.tilt_deg)
    phantom = make_phantom(pr, poses, rng, sp.scatterers(scatterers_per_frame), structure=sp.structure)
    return poses, phantom, info


def cache_dir(cache: Path, sp: SweepPlan) -> Path:
    return Path(cache) / sp.name


def cached_frames(cache: Path, sp: SweepPlan, key: str) -> list[int]:
    """Indices of the frames of ``sp`` already cached with this ``key``."""
    out = []
    for k in range(sp.frames):
        f = cache_dir(cache, sp) / f"frame_{k:03d}.npz"
        if f.exists():
            try:
                with np.load(f) as z:
                    if str(z["key"]) == key:
                        out.append(k)
            except (OSError, ValueError, KeyError):
                pass  # a truncated file: made again
    return out


def generate(sweeps: Iterable[SweepPlan], cache: Path, scatterers_per_frame: int | None = DEFAULT_SCATTERERS,
             frequency_step: float | None = DEFAULT_FREQUENCY_STEP, max_frames: int | None = None,
             log: Any = print) -> int:
    """Simulate and cache every missing frame of ``sweeps`` in order; returns the number of frames made.

    Each frame is written atomically as ``<cache>/<sweep>/frame_XXX.npz`` (envelope, key, scatterer count,
    wall and CPU seconds), so the run can stop at any time and resume.
    """
    made = 0
    imagers: dict[str, Imager] = {}
    for sp in sweeps:
        key = sp.key(scatterers_per_frame, frequency_step)
        done = set(cached_frames(cache, sp, key))
        if len(done) == sp.frames:
            continue
        poses, phantom, _ = sweep_setup(sp, scatterers_per_frame)
        d = cache_dir(cache, sp)
        d.mkdir(parents=True, exist_ok=True)
        if sp.probe not in imagers:
            imagers = {sp.probe: Imager(probe(sp.probe), sp.frequency_step(frequency_step))}  # keep one DAS matrix in memory
        imager = imagers[sp.probe]
        for k in range(sp.frames):
            if k in done:
                continue
            if max_frames is not None and made >= max_frames:
                return made
            t0, c0 = time.perf_counter(), time.process_time()
            pts, amp = frame_scatterers(probe(sp.probe), poses[k], phantom)
            env = imager.envelope(pts, amp)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            tmp = d / f"frame_{k:03d}.tmp.npz"
            np.savez(tmp, envelope=env, key=np.array(key), scatterers=np.array(len(amp)),
                     wall_s=np.array(wall), cpu_s=np.array(cpu), image_to_world=poses[k])
            tmp.replace(d / f"frame_{k:03d}.npz")
            made += 1
            log(f"{sp.name} frame {k + 1}/{sp.frames}: {len(amp)} scatterers, {wall:.1f} s wall, {cpu:.1f} s CPU")
    return made


def _depth_index(pr: Probe) -> np.ndarray:
    """Per pixel, an integer depth bin (rows for linear probes, radial distance for convex ones)."""
    x, z = pixel_probe_coords(pr)
    if not pr.convex:
        return np.rint((z - pr.top_mm) / pr.spacing_mm).astype(int)
    _, apothem, _ = _element_geometry(pr)
    r = np.hypot(x, z + apothem)
    return np.rint((r - r.min()) / pr.spacing_mm).astype(int)


def to_bmode(envelopes: np.ndarray, pr: Probe, dynamic_range_db: float = DYNAMIC_RANGE_DB) -> np.ndarray:
    """Envelopes ``[N, H, W]`` -> uint8 B-mode: a depth gain (per depth bin, the median over the sweep,
    smoothed: what a TGC does), one reference level for the whole sweep, log compression to
    ``dynamic_range_db``; zero outside the fan."""
    mask = fan_mask(pr)
    depth = _depth_index(pr)
    env = np.asarray(envelopes, dtype=np.float64)
    bins = depth[mask]
    vals = env[:, mask]
    nb = int(bins.max()) + 1
    med = np.zeros(nb)
    for b in np.unique(bins):  # a few hundred bins
        med[b] = np.median(vals[:, bins == b])
    valid = med > 0
    med = np.interp(np.arange(nb), np.flatnonzero(valid), med[valid])
    kernel = np.ones(9) / 9.0
    smooth = np.convolve(np.pad(med, 4, mode="edge"), kernel, mode="valid")
    gain = np.zeros(mask.shape)
    gain[mask] = 1.0 / smooth[bins]
    norm = env * gain[None]
    ref = float(np.percentile(norm[:, mask], 99.5))
    db = 20 * np.log10(np.maximum(norm / ref, 1e-12))
    out = np.clip((db + dynamic_range_db) / dynamic_range_db * 255.0, 0, 255)
    out[:, ~mask] = 0
    return np.rint(out).astype(np.uint8)


def assemble_sweep(sp: SweepPlan, cache: Path, scatterers_per_frame: int | None = DEFAULT_SCATTERERS,
                   frequency_step: float | None = DEFAULT_FREQUENCY_STEP) -> Sweep:
    """The finished sweep (uint8 B-mode, exact poses, provenance metadata) from a complete cache."""
    import importlib.metadata

    key = sp.key(scatterers_per_frame, frequency_step)
    done = cached_frames(cache, sp, key)
    if len(done) != sp.frames:
        raise InputError(f"Sweep '{sp.name}' has {len(done)} of {sp.frames} frames cached in {cache}.",
                         "Run `python -m freehandrecon.lab.independent_sim generate` until it completes.")
    poses, phantom, info = sweep_setup(sp, scatterers_per_frame)
    envs, counts, walls, cpus = [], [], [], []
    for k in range(sp.frames):
        with np.load(cache_dir(cache, sp) / f"frame_{k:03d}.npz") as z:
            envs.append(z["envelope"])
            counts.append(int(z["scatterers"]))
            walls.append(float(z["wall_s"]))
            cpus.append(float(z["cpu_s"]))
            if not np.allclose(z["image_to_world"], poses[k], atol=1e-9):
                raise InputError(f"Cached frame {k} of '{sp.name}' was made with other poses.",
                                 "Delete that sweep's cache folder and generate it again.")
    pr = probe(sp.probe)
    frames = to_bmode(np.stack(envs), pr)
    p = pr.param()
    meta = {
        "purpose": PURPOSE,
        "simulator": f"pymust {importlib.metadata.version('pymust')}",
        "generator": f"freehandrecon.lab.independent_sim v{GENERATOR_VERSION}",
        "name": sp.name, "probe": sp.probe, "trajectory": sp.trajectory, "seed": sp.seed,
        "sweep_direction": sp.direction, "trajectory_params": info,
        "probe_params": {"preset": pr.base, "fc_mhz": pr.fc_mhz, "bandwidth_pct": pr.bandwidth_pct,
                         "elements": int(p.Nelements), "pitch_mm": float(p.pitch) * 1e3,
                         "radius_mm": float(p.radius) * 1e3 if np.isfinite(p.radius) else None,
                         "elevation_height_mm": pr.elevation_height_mm,
                         "elevation_focus_mm": pr.elevation_focus_mm, "transmit": "one zero-delay transmit "
                         "(plane wave for linear, diverging wave for convex)", "fs_mhz": float(p.fs) / 1e6},
        "image": {"size": pr.size, "spacing_mm": pr.spacing_mm, "top_mm": pr.top_mm, "fan_mask": pr.convex,
                  "dynamic_range_db": DYNAMIC_RANGE_DB, "beamforming": "pymust.dasmtx 2x oversampled, |IQ| "
                  "averaged 2x2", "skin_point_mm": skin_point_mm(pr).tolist()},
        "phantom": {"vessels": [{k: np.asarray(v).tolist() if k != "radius_mm" else v for k, v in ves.items()}
                                for ves in phantom.vessels],
                    "layer": None if phantom.layer is None else {
                        k: np.asarray(v).tolist() if k in ("point", "normal") else v for k, v in phantom.layer.items()},
                    "density_per_mm3": round(phantom.density_per_mm3, 4), "slab_mm": pr.slab_mm},
        "scatterers_per_frame_mean": int(np.mean(counts)),
        "frequency_step": sp.frequency_step(frequency_step),
        "cpu_seconds_per_frame_mean": round(float(np.mean(cpus)), 2),
        "wall_seconds_per_frame_mean": round(float(np.mean(walls)), 2),
    }
    return Sweep(frames=frames, pixel_spacing=(pr.spacing_mm, pr.spacing_mm), image_to_world=poses, metadata=meta)


# --- the pose check ------------------------------------------------------------------------------

def lumen_check(sweep: Sweep, image_to_world: np.ndarray | None = None) -> dict[str, Any]:
    """Are the vessel lumens dark where the poses put them?

    For every frame and vessel of ``sweep.metadata["phantom"]`` the pixels are mapped to world mm
    (``image_to_world``, the sweep's own poses by default) and split by their distance ``d`` to the vessel's
    centre line: lumen ``d < 0.6 r``, surrounding ring ``1.5 r < d < 2.5 r`` (inside the fan, away from the
    other vessel and the bright layer). ``ratio`` is mean(lumen) / mean(ring) per frame and vessel where
    both have enough pixels; ``passed`` needs a median ratio below 0.75 and 90 % of the ratios below 0.85
    (a single unfocused transmit leaves side-lobe clutter in the lumens: about 0.5-0.65 with the right poses,
    about 1 with wrong ones).
    """
    meta = sweep.metadata.get("phantom")
    if not meta or "vessels" not in meta:
        raise InputError("The sweep has no phantom description (metadata['phantom']['vessels']).",
                         "Check a sweep made by freehandrecon.lab.independent_sim.")
    poses = sweep.image_to_world if image_to_world is None else np.asarray(image_to_world, dtype=np.float64)
    frames = sweep.frames.astype(np.float64)
    n, h, w = frames.shape
    sx, sy = sweep.pixel_spacing
    jj, ii = np.mgrid[0:h, 0:w]
    pix = np.stack([ii * sx, jj * sy, np.zeros_like(ii, dtype=float), np.ones_like(ii, dtype=float)], -1).reshape(-1, 4)
    image_meta = sweep.metadata.get("image", {})
    if image_meta.get("fan_mask") and sweep.metadata.get("probe") in PROBES:
        valid = fan_mask(PROBES[sweep.metadata["probe"]]).reshape(-1)
    else:
        valid = np.ones(h * w, dtype=bool)
    layer = meta.get("layer")
    ratios: list[float] = []
    per_vessel: list[list[float]] = [[] for _ in meta["vessels"]]
    for k in range(n):
        world = pix @ poses[k].T
        world = world[:, :3]
        dists = []
        for v in meta["vessels"]:
            a, u = np.asarray(v["point"]), np.asarray(v["direction"])
            rel = world - a
            dists.append(np.linalg.norm(rel - np.outer(rel @ u, u), axis=1) / v["radius_mm"])
        ok = valid.copy()
        if layer:
            dl = np.abs((world - np.asarray(layer["point"])) @ np.asarray(layer["normal"]))
            ok &= dl > layer["thickness_mm"] + 1.5
        img = frames[k].reshape(-1)
        for vi, d in enumerate(dists):
            others = np.ones_like(ok)
            for vj, d2 in enumerate(dists):
                if vj != vi:
                    others &= d2 > 2.5
            lumen = ok & (d < 0.6)
            ring = ok & others & (d > 1.5) & (d < 2.5)
            if lumen.sum() >= 6 and ring.sum() >= 20:
                r = float(img[lumen].mean() / max(img[ring].mean(), 1e-9))
                ratios.append(r)
                per_vessel[vi].append(r)
    arr = np.asarray(ratios)
    median = float(np.median(arr)) if arr.size else float("nan")
    frac = float((arr < 0.85).mean()) if arr.size else 0.0
    return {"measurements": int(arr.size), "median_ratio": median, "fraction_below_0.85": frac,
            "per_vessel_median": [float(np.median(v)) if v else None for v in per_vessel],
            "passed": bool(arr.size >= n // 2 and median < 0.75 and frac >= 0.9)}


# --- command line ----------------------------------------------------------------------------

def _select(names: Sequence[str] | None) -> list[SweepPlan]:
    if not names or list(names) == ["all"]:
        return list(PLAN)
    return [plan(n) for n in names]


def measure(probes: Sequence[str], scatterers_per_frame: int | None, frequency_step: float | None, log: Any = print) -> dict:
    """CPU and wall seconds of one frame per probe (first frame of the probe's first planned sweep)."""
    out = {}
    for name in probes:
        sp = next(p for p in PLAN if p.probe == name)
        poses, phantom, _ = sweep_setup(sp, scatterers_per_frame)
        t0 = time.perf_counter()
        imager = Imager(probe(name), sp.frequency_step(frequency_step))
        t_das = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        pts, amp = frame_scatterers(probe(name), poses[0], phantom)
        imager.envelope(pts, amp)
        out[name] = {"scatterers": int(len(amp)), "wall_s": round(time.perf_counter() - t0, 2),
                     "cpu_s": round(time.process_time() - c0, 2), "das_matrix_s": round(t_das, 2)}
        log(f"{name}: {out[name]}")
    return out


def _add_arguments(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="frame cache (default: %(default)s)")
    common.add_argument("--scatterers", type=int, default=DEFAULT_SCATTERERS,
                        help="expected scatterers per frame (default: each probe's own: "
                        + ", ".join(f"{k} {v.scatterers}" for k, v in PROBES.items()) + ")")
    common.add_argument("--frequency-step", type=float, default=DEFAULT_FREQUENCY_STEP,
                        help="SIMUS frequency-step factor (default: each probe's own: "
                        + ", ".join(f"{k} {v.frequency_step}" for k, v in PROBES.items()) + ")")
    p = sub.add_parser("plan", help="list the planned sweeps and how many frames are cached", parents=[common])
    p.set_defaults(lab_func=_cmd_plan)
    p = sub.add_parser("measure", help="time one frame per probe", parents=[common])
    p.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES), help="probes to time")
    p.set_defaults(lab_func=lambda a: measure(a.probes, a.scatterers, a.frequency_step) and 0)
    p = sub.add_parser("generate", help="simulate and cache missing frames (resumes)", parents=[common])
    p.add_argument("--sweeps", nargs="+", metavar="NAME", help="planned sweeps (default: all, in plan order)")
    p.add_argument("--max-frames", type=int, help="stop after this many new frames")
    p.set_defaults(lab_func=lambda a: generate(_select(a.sweeps), a.cache, a.scatterers, a.frequency_step,
                                               a.max_frames) and 0)
    p = sub.add_parser("assemble", help="write finished sweeps (uint8 .npz) and check their poses", parents=[common])
    p.add_argument("--sweeps", nargs="+", metavar="NAME", help="planned sweeps (default: every complete one)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing sweep files")
    p.set_defaults(lab_func=_cmd_assemble)
    p = sub.add_parser("check", help="lumen check of sweep files (poses against phantom)")
    p.add_argument("files", nargs="+", type=Path, help="sweep files (.npz) made by this module")
    p.set_defaults(lab_func=_cmd_check)


def _cmd_plan(a: argparse.Namespace) -> int:
    for sp in PLAN:
        n = len(cached_frames(a.cache, sp, sp.key(a.scatterers, a.frequency_step)))
        print(f"{sp.name:22s} {sp.probe:7s} {sp.trajectory:12s} {sp.frames} frames, {sp.step_mm} mm/frame, "
              f"dir {sp.direction:+d}, tilt {sp.tilt_deg} deg: {n}/{sp.frames} cached")
    return 0


def _cmd_assemble(a: argparse.Namespace) -> int:
    from ..io.npz import write_npz

    a.out.mkdir(parents=True, exist_ok=True)
    chosen = _select(a.sweeps) if a.sweeps else [
        sp for sp in PLAN if len(cached_frames(a.cache, sp, sp.key(a.scatterers, a.frequency_step))) == sp.frames]
    bad = 0
    for sp in chosen:
        sw = assemble_sweep(sp, a.cache, a.scatterers, a.frequency_step)
        if not sp.structure:  # a speckle phantom: no vessel to check the poses against
            print(f"{sp.name}: speckle phantom (no lumen check)")
        else:
            chk = lumen_check(sw)
            status = "PASS" if chk["passed"] else "FAIL"
            print(f"{sp.name}: lumen check {status} (median lumen/ring {chk['median_ratio']:.2f}, "
                  f"{chk['measurements']} measurements)")
            if not chk["passed"]:
                bad += 1
                continue
        write_npz(sw, a.out / f"{sp.name}.npz", force=a.force, compress=True)
    print(describe(sorted(a.out.glob("*.npz"))))
    return 1 if bad else 0


def describe(files: Iterable[Path]) -> str:
    """A Markdown table of sweep files made here (for the set's README)."""
    from ..io.npz import read_npz

    lines = ["| sweep | probe | trajectory | frames | step mm/frame | direction | tilt deg | scatterers/frame "
             "| CPU s/frame | lumen/ring |", "|---" * 10 + "|"]
    for f in files:
        sw = read_npz(f)
        m = sw.metadata
        sp = plan(m["name"])
        ratio = f"{lumen_check(sw)['median_ratio']:.2f}" if sp.structure else "- (no vessels)"
        lines.append(f"| {m['name']} | {m['probe']} | {m['trajectory']} | {sw.num_frames} | {sp.step_mm} | "
                     f"{sp.direction:+d} | {sp.tilt_deg if sp.trajectory == 'tilt' else '-'} | "
                     f"{m['scatterers_per_frame_mean']} | {m['cpu_seconds_per_frame_mean']} | {ratio} |")
    return "\n".join(lines)


def _cmd_check(a: argparse.Namespace) -> int:
    from ..io.npz import read_npz

    bad = 0
    for f in a.files:
        chk = lumen_check(read_npz(f))
        bad += not chk["passed"]
        print(f"{f}: {'PASS' if chk['passed'] else 'FAIL'} {json.dumps(chk)}")
    return 1 if bad else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``freehandrecon simulate-independent ...`` (research: builds the independent validation set)."""
    p = sub.add_parser("simulate-independent",
                       help="research: build the independent (pymust) validation set; never for training",
                       description=__doc__.split("\n\n")[0])
    inner = p.add_subparsers(dest="lab_command", required=True, metavar="STEP",
                             help="plan, measure, generate, assemble or check")
    _add_arguments(inner)
    p.set_defaults(func=lambda a: a.lab_func(a) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m freehandrecon.lab.independent_sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="STEP",
                                help="plan, measure, generate, assemble or check")
    _add_arguments(sub)
    args = parser.parse_args(argv)
    return int(args.lab_func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
