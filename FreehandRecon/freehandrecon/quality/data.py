"""Guard inputs: frames resampled to a fixed grid, ROI masks, simulated sites, corruptions, other anatomy.

* **Guard input.** Every frame is brought to ``GUARD_SPACING`` mm per pixel (isotropic) and
  centre-cropped or zero-padded to ``GUARD_SIZE`` x ``GUARD_SIZE`` pixels with
  :func:`freehandrecon.poses.common.resample_frames` (the same resampling as the pose model's
  input), so frames of any size and spacing are accepted: the guard sees the central
  38.4 x 38.4 mm of the image at 0.6 mm per pixel (the field of view of the pose model's input).
* **ROI.** A boolean mask per frame on the guard grid, from vessel geometry (simulated sites),
  from a thin-layer geometry (the fetal-like phantom), from a user mask or from a pixel box.
  The ROI is anatomy agnostic: the losses only see the mask.
* **Data sets** (:class:`FrameSet`) hold uint8 guard frames, ROI masks, the site index and the
  sweep index of each frame; simulated sweeps are cached as ``.npz`` in a folder.
* **Corruptions** turn in-distribution frames into out-of-distribution ones: probe lifted (no
  contact), saturated gain, acoustic shadowing, heavy noise. :func:`nt_sweep` simulates a
  different anatomy: a fetal-like phantom with a thin hypoechoic layer between two bright lines
  (the nuchal-translucency case) under amniotic fluid.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..poses import common
from ..sweep import Sweep

GUARD_SPACING = 0.6   # mm per guard pixel: 64 pixels span 38.4 mm, the field the pose model sees
GUARD_SIZE = 64       # guard frames are GUARD_SIZE x GUARD_SIZE
VESSEL_ROI_MARGIN_MM = 0.8  # the vessel ROI includes the wall: radius + this margin
CORRUPTIONS = ("no-contact", "saturated-gain", "shadowing", "heavy-noise")


def guard_frames(frames: np.ndarray, spacing: tuple[float, float], spacing_mm: float = GUARD_SPACING,
                 size: int = GUARD_SIZE) -> np.ndarray:
    """Frames ``[N, H, W]`` (any size, dtype, spacing) -> float32 ``[N, size, size]`` in [0, 1]."""
    f = np.asarray(frames)
    if f.ndim != 3 or f.shape[0] == 0 or min(f.shape[1:]) < 2:
        raise InputError(f"Frames of shape {f.shape} cannot be checked.", "Give a sweep of [N, H, W] frames, N >= 1.")
    if not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise InputError(f"Pixel spacing {spacing} is not positive.", "Give the true pixel spacing in mm.")
    return common.resample_frames(f, spacing, spacing_mm, size)


def mask_to_guard(mask: np.ndarray, spacing: tuple[float, float], spacing_mm: float = GUARD_SPACING,
                  size: int = GUARD_SIZE) -> np.ndarray:
    """Boolean masks ``[N, H, W]`` on the native grid -> boolean ``[N, size, size]`` on the guard grid."""
    m = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
    return common.resample_frames(m, spacing, spacing_mm, size) >= 0.5


def box_roi(frame_shape: tuple[int, int], box: Sequence[int], num_frames: int) -> np.ndarray:
    """A pixel box ``(x0, y0, w, h)`` as a boolean ROI ``[N, H, W]``; :class:`InputError` when it is empty."""
    h, w = frame_shape
    x0, y0, bw, bh = (int(v) for v in box)
    mask = np.zeros((h, w), dtype=bool)
    mask[max(0, y0):max(0, y0 + bh), max(0, x0):max(0, x0 + bw)] = True
    if not mask.any():
        raise InputError(f"The ROI box {tuple(box)} does not overlap the {w} x {h} pixel frames (empty ROI).",
                         f"Give x0 y0 width height inside 0..{w - 1} x 0..{h - 1} with positive width and height.")
    return np.broadcast_to(mask, (num_frames, h, w)).copy()


def check_roi(roi: np.ndarray, what: str = "the ROI") -> np.ndarray:
    """Refuse an ROI with no pixel at all (ROI losses and metrics would be undefined)."""
    r = np.asarray(roi, dtype=bool)
    if not r.any():
        raise InputError(f"{what[0].upper() + what[1:]} is empty: no pixel is inside it.",
                         "Give a mask or box that covers the structure of interest inside the frames "
                         "(after resampling to the guard grid: the central 38.4 x 38.4 mm).")
    return r


# --- data sets -----------------------------------------------------------------------------------------------

@dataclass
class FrameSet:
    """Guard frames with ROI masks and group labels."""

    frames: np.ndarray            # uint8 [M, S, S] guard input * 255
    roi: np.ndarray               # bool [M, S, S]
    site: np.ndarray              # int64 [M] index into ``sites``
    sweep: np.ndarray             # int64 [M] sweep index (frames of one sweep share it)
    sites: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def float_frames(self) -> np.ndarray:
        return self.frames.astype(np.float32) / 255.0

    def subset(self, keep: np.ndarray) -> "FrameSet":
        return FrameSet(self.frames[keep], self.roi[keep], self.site[keep], self.sweep[keep], list(self.sites))

    @staticmethod
    def concat(sets: Sequence["FrameSet"], sites: list[str]) -> "FrameSet":
        """Join sets, re-indexing sites by name into ``sites`` and sweeps as 0, 1, 2 ... in order."""
        frames, roi, site, sweep, offset = [], [], [], [], 0
        for s in sets:
            frames.append(s.frames)
            roi.append(s.roi)
            site.append(np.array([sites.index(s.sites[i]) for i in s.site], dtype=np.int64).reshape(-1))
            _, local = np.unique(s.sweep, return_inverse=True)  # order-preserving: sweep ids are sorted
            sweep.append(local.reshape(-1).astype(np.int64) + offset)
            offset += int(local.max()) + 1 if len(s) else 0
        return FrameSet(np.concatenate(frames), np.concatenate(roi), np.concatenate(site), np.concatenate(sweep),
                        list(sites))


def sweep_to_frameset(sweep: Sweep, roi: np.ndarray | None, site: str, sweep_index: int = 0) -> FrameSet:
    """One sweep (native frames, native ROI or None) -> a :class:`FrameSet` on the guard grid."""
    x = guard_frames(sweep.frames, sweep.pixel_spacing)
    r = (mask_to_guard(roi, sweep.pixel_spacing) if roi is not None
         else np.zeros(x.shape, dtype=bool))
    n = x.shape[0]
    return FrameSet(np.round(x * 255).astype(np.uint8), r, np.zeros(n, np.int64), np.full(n, sweep_index, np.int64),
                    [site])


def vessel_roi(sweep: Sweep, margin_mm: float = VESSEL_ROI_MARGIN_MM) -> np.ndarray:
    """Native-grid ROI of a simulated sweep: pixels inside a vessel or its wall."""
    from ..simulate import vessel_mask

    vessels = sweep.metadata.get("vessels", [])
    if not vessels:
        return np.zeros(sweep.frames.shape, dtype=bool)
    return vessel_mask(vessels, sweep.pixel_to_world(), sweep.frame_shape, margin_mm=-margin_mm)


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(repr(keys).encode())]))


def simulated_sweeps(sites: Sequence[str], seeds: Sequence[int], num_frames: int, cache: Path | None = None,
                     progress: Callable[[str, float], None] | None = None, stage: str = "simulate"
                     ) -> list[tuple[str, Sweep]]:
    """``(site, random_sweep(site, seed, num_frames))`` for every site and seed (cached)."""
    from ..simulate import random_sweep
    from ..simulate.cache import cached_sweep

    out, jobs = [], [(s, int(k)) for s in sites for k in seeds]
    for j, (site, seed) in enumerate(jobs):
        out.append((site, cached_sweep(cache, f"{site}_q{seed}_n{num_frames}",
                                       lambda site=site, seed=seed: random_sweep(site, seed, num_frames=num_frames))))
        if progress is not None:
            progress(stage, (j + 1) / len(jobs))
    return out


def frameset_of(sweeps: Sequence[tuple[str, Sweep]], sites: Sequence[str]) -> FrameSet:
    """Guard frames with vessel ROIs of ``(site, sweep)`` pairs."""
    return FrameSet.concat([sweep_to_frameset(sw, vessel_roi(sw), site, j) for j, (site, sw) in enumerate(sweeps)],
                           list(sites))


# --- corruptions ---------------------------------------------------------------------------------------------

def _fan(frames: np.ndarray) -> np.ndarray:
    """Pixels that are ever non-zero (the imaging fan of a curvilinear probe; everything for a linear one)."""
    return (frames > 0).any(axis=0)


def corrupt(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A corrupted copy of uint8 native frames ``[N, H, W]`` (kind from :data:`CORRUPTIONS`)."""
    f = np.asarray(frames).astype(np.float32)
    n, h, w = f.shape
    fan = _fan(np.asarray(frames))
    rows = np.arange(h, dtype=np.float32)[None, :, None]
    if kind == "no-contact":
        # probe lifted: no echo from tissue, only the noise floor and reverberations of the lens/air gap
        period = rng.uniform(0.05, 0.1) * h
        decay = rng.uniform(0.1, 0.25) * h
        bands = 150.0 * np.exp(-rows / decay) * (np.cos(2 * np.pi * rows / period) > 0.8)
        out = bands + np.abs(rng.normal(0.0, 12.0, f.shape))
    elif kind == "saturated-gain":
        out = f + rng.uniform(90.0, 140.0)   # +20-30 dB of a 50-60 dB display range
    elif kind == "shadowing":
        # a strong reflector (bone, stone, gas) and the dark shadow below it
        width = int(rng.uniform(0.3, 0.6) * w)
        x0 = int(rng.integers(0, w - width + 1))
        y0 = int(rng.uniform(0.15, 0.4) * h)
        out = f.copy()
        thick = max(2, h // 40)
        out[:, y0:y0 + thick, x0:x0 + width] = 250.0
        out[:, y0 + thick:, x0:x0 + width] *= rng.uniform(0.05, 0.15)
    elif kind == "heavy-noise":
        out = f + rng.normal(0.0, rng.uniform(50.0, 70.0), f.shape)
    else:
        raise InputError(f"Unknown corruption '{kind}'.", f"Use one of: {', '.join(CORRUPTIONS)}.")
    return (np.clip(out, 0, 255) * fan).round().astype(np.uint8)


# --- different anatomy: the fetal-like nuchal-translucency phantom ------------------------------------------------

def nt_structure(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, depth_mm: float) -> dict[str, Any]:
    """Echogenicity structure of a fetal-like phantom (world depth axis -z, as the simulator's poses).

    From the skin down: maternal tissue, amniotic fluid (anechoic slab), the fetal skin (bright
    line), the translucency (thin hypoechoic layer), the bright line of the underlying tissue,
    then fetal tissue with a bright bony inclusion.
    """
    tilt = rng.uniform(-0.15, 0.15)
    normal = np.array([tilt, 0.0, 1.0]) / np.hypot(tilt, 1.0)
    x_mid = float((lo[0] + hi[0]) / 2)
    fluid_top = rng.uniform(0.12, 0.2) * depth_mm
    fluid_bottom = rng.uniform(0.4, 0.5) * depth_mm
    nt = rng.uniform(1.5, 3.0)        # translucency thickness (mm)
    line = rng.uniform(0.6, 1.0)      # bright line thickness (mm)

    def at(depth: float) -> list[float]:
        return [x_mid, 0.0, -float(depth)]

    skin = fluid_bottom + line / 2
    centre_nt = fluid_bottom + line + nt / 2
    deep = fluid_bottom + line + nt + line / 2
    layers = [
        {"point": at((fluid_top + fluid_bottom) / 2), "normal": normal.tolist(), "thickness": fluid_bottom - fluid_top,
         "echogenicity": 0.03, "role": "amniotic fluid"},
        {"point": at(skin), "normal": normal.tolist(), "thickness": line, "echogenicity": rng.uniform(3.5, 5.0),
         "role": "fetal skin"},
        {"point": at(centre_nt), "normal": normal.tolist(), "thickness": nt, "echogenicity": rng.uniform(0.08, 0.2),
         "role": "translucency"},
        {"point": at(deep), "normal": normal.tolist(), "thickness": line, "echogenicity": rng.uniform(3.5, 5.0),
         "role": "deep line"},
    ]
    bone = {"centre": [x_mid + rng.uniform(-8, 8), rng.uniform(lo[1], hi[1]), -(deep + rng.uniform(6, 10))],
            "radius": float(rng.uniform(3.0, 5.0)), "echogenicity": float(rng.uniform(3.0, 4.0))}
    return {"vessels": [], "layers": layers, "inclusions": [bone], "smooth": [], "smooth_db": 0.0}


def layer_mask(layer: dict[str, Any], pixel_to_world: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """``bool [N, H, W]``: pixels whose world position lies inside a slab layer."""
    h, w = frame_shape
    jj, ii = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pix = np.stack([ii.ravel(), jj.ravel(), np.zeros(h * w), np.ones(h * w)], axis=0)
    pts = np.einsum("nab,bp->npa", np.asarray(pixel_to_world, np.float64).reshape(-1, 4, 4), pix)[..., :3]
    d = (pts - np.asarray(layer["point"])) @ np.asarray(layer["normal"])
    return (np.abs(d) < layer["thickness"] / 2).reshape(-1, h, w)


def nt_sweep(seed: int, num_frames: int = 24, site: str = "site-a", image_size: tuple[int, int] = (128, 128)) -> Sweep:
    """A simulated sweep over the fetal-like phantom with ``site``'s settings; its ROI (the translucency
    layer) is in ``metadata["roi_layer"]`` (see :func:`nt_roi`)."""
    from ..simulate import make_trajectory, simulate_sweep, site_settings
    from ..simulate import make_phantom, frame_box, scatterer_density
    from ..simulate.trajectory import WORLD_DEPTH_AXIS, WORLD_SWEEP_AXIS

    rng = _rng("nt", site, seed)
    settings = site_settings(site, rng, image_size)
    poses = make_trajectory("linear", num_frames, rng, direction=1, step_mm=float(rng.uniform(0.1, 0.4)),
                            pivot_mm=settings.skin_point_mm, depth_mm=settings.depth_mm)
    lo, hi = frame_box(settings, poses)
    structure = nt_structure(lo, hi, rng, settings.depth_mm)
    phantom = make_phantom(lo, hi, rng, density=scatterer_density(settings), structure=structure,
                           depth_axis=WORLD_DEPTH_AXIS, sweep_axis=WORLD_SWEEP_AXIS)
    roi_layer = next(layer for layer in structure["layers"] if layer["role"] == "translucency")
    return simulate_sweep(settings, poses, phantom, rng,
                          metadata={"site": site, "seed": int(seed), "anatomy": "fetal-nt", "roi_layer": roi_layer})


def nt_roi(sweep: Sweep) -> np.ndarray:
    """Native-grid ROI of an :func:`nt_sweep`: the translucency layer."""
    layer = sweep.metadata.get("roi_layer")
    if not layer:
        raise InputError("This sweep has no translucency layer in its metadata.", "Use a sweep from nt_sweep().")
    return layer_mask(layer, sweep.pixel_to_world(), sweep.frame_shape)


def nt_frameset(seeds: Sequence[int], num_frames: int, sites: Sequence[str], cache: Path | None = None,
                progress: Callable[[str, float], None] | None = None) -> FrameSet:
    """Fetal-like sweeps (site cycling with the seed) with their translucency ROI, labelled ``fetal-nt``."""
    from ..simulate.cache import cached_sweep

    parts = []
    for j, seed in enumerate(seeds):
        site = sites[int(seed) % len(sites)]
        sw = cached_sweep(cache, f"nt_{site}_q{seed}_n{num_frames}", lambda: nt_sweep(int(seed), num_frames, site))
        parts.append(sweep_to_frameset(sw, nt_roi(sw), "fetal-nt", j))
        if progress is not None:
            progress("anatomy", (j + 1) / len(seeds))
    return FrameSet.concat(parts, ["fetal-nt"])


def corrupted_frameset(base_sweeps: Sequence[Sweep], kind: str, seed: int = 0) -> FrameSet:
    """Guard frames of corrupted copies of native sweeps (ROI empty; label ``kind``)."""
    parts = []
    for j, sw in enumerate(base_sweeps):
        bad = corrupt(sw.frames, kind, _rng("corrupt", kind, seed, j))
        x = guard_frames(bad, sw.pixel_spacing)
        n = x.shape[0]
        parts.append(FrameSet(np.round(x * 255).astype(np.uint8), np.zeros(x.shape, bool), np.zeros(n, np.int64),
                              np.full(n, j, np.int64), [kind]))
    return FrameSet.concat(parts, [kind])
