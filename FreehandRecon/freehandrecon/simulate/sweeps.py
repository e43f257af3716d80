"""Whole simulated sweeps: ``random_sweep`` (the one-call entry point), PAUS channels and the simulator benchmark."""

from __future__ import annotations

import time
import zlib
from typing import Callable

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .beam import resolution_cell_mm3
from .doppler import doppler_frames
from .imaging import frame_box, simulate_sweep
from .phantom import Phantom, make_phantom
from .photoacoustic import photoacoustic_frames
from .sites import TRAIN_SITES, AcquisitionSettings, check_site, site_settings
from .trajectory import KINDS, WORLD_DEPTH_AXIS, make_trajectory

SCATTERERS_PER_CELL = 10.0


CHANNELS = ("photoacoustic", "doppler")


def scatterer_density(settings: AcquisitionSettings, per_cell: float = SCATTERERS_PER_CELL, *,
                      skin: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
                      depth_axis: tuple[float, float, float] | np.ndarray = WORLD_DEPTH_AXIS
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """Density (per mm^3) of world points for ``per_cell`` scatterers per resolution cell at each
    point's depth ``(p - skin) . depth_axis`` (by default -S below the first contact point, as the
    default poses put it)."""
    skin, axis = np.asarray(skin, dtype=np.float64), np.asarray(depth_axis, dtype=np.float64)

    def density(points: np.ndarray) -> np.ndarray:
        d = np.clip((np.asarray(points) - skin) @ axis, 0.0, settings.depth_mm)
        return per_cell / resolution_cell_mm3(settings, d)

    return density


def phantom_for(settings: AcquisitionSettings, image_to_world: np.ndarray, rng: np.random.Generator, *,
                structure: dict | bool = True, per_cell: float = SCATTERERS_PER_CELL) -> Phantom:
    """A phantom just covering the frames of a trajectory, with fully developed speckle.

    The density follows the depth below the first frame's skin point along the frames' mean
    depth axis, and the buckets are thinnest along the world axis closest to the mean elevation
    axis, so any pose convention works (the default poses are the fastest case)."""
    poses = np.asarray(image_to_world, dtype=np.float64)
    lo, hi = frame_box(settings, poses)
    depth_axis = poses[:, :3, 1].mean(axis=0)
    sweep_axis = poses[:, :3, 2].mean(axis=0)
    depth_axis /= np.linalg.norm(depth_axis)
    sweep_axis /= np.linalg.norm(sweep_axis)
    skin = (poses[0] @ np.array([*settings.skin_point_mm, 1.0]))[:3]
    bucket = np.full(3, 2.0)
    thin = int(np.argmax(np.abs(sweep_axis)))
    deep = int(np.argmax(np.where(np.arange(3) == thin, -1.0, np.abs(depth_axis))))
    bucket[deep], bucket[thin] = 1.0, 0.5
    density = scatterer_density(settings, per_cell, skin=skin, depth_axis=depth_axis)
    return make_phantom(lo, hi, rng, density=density, structure=structure, depth_axis=tuple(depth_axis),
                        sweep_axis=tuple(sweep_axis), bucket_size=tuple(bucket))


SIMULATOR_VERSION = 2
"""Bumped whenever a (site, seed) gives a different sweep; caches of simulated sweeps put it in their
file names so that they never serve sweeps of an older simulator (2: smooth s-curve yaw)."""


def _rng(site: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(site.encode())]))


def random_sweep(site: str, seed: int, num_frames: int = 100, kind: str | None = None,
                 image_size: tuple[int, int] = (128, 128), *, direction: int | None = None,
                 step_mm: float | None = None, structure: bool = True,
                 progress: Callable[[str, float], None] | None = None,
                 channels: tuple[str, ...] = (), doppler_mode: str = "power") -> Sweep:
    """A simulated sweep, fully determined by its arguments.

    ``site`` picks the settings distribution (:data:`SITES`), ``kind`` the trajectory (random from
    :data:`KINDS` when None), ``direction`` +1/-1 (random when None), ``step_mm`` the elevational
    step per frame (random 0.1-0.6 when None). ``structure=False`` gives plain speckle.
    """
    check_site(site)
    if kind is not None and kind not in KINDS:
        raise InputError(f"Unknown trajectory kind '{kind}'.", f"Use one of: {', '.join(KINDS)}.")
    rng = _rng(site, seed)
    settings = site_settings(site, rng, image_size)
    drawn_kind = str(rng.choice(KINDS))
    drawn_dir = int(rng.choice([1, -1]))
    kind = drawn_kind if kind is None else kind
    direction = drawn_dir if direction is None else int(direction)
    poses = make_trajectory(kind, num_frames, rng, direction=direction, step_mm=step_mm,
                            pivot_mm=settings.skin_point_mm, depth_mm=settings.depth_mm)
    phantom = phantom_for(settings, poses, rng, structure=structure, per_cell=settings.scatterers_per_cell)
    centre = np.array([settings.skin_point_mm[0], settings.depth_mm / 2, 0.0, 1.0])
    step = np.linalg.norm(np.diff(poses @ centre, axis=0)[:, :3], axis=1)
    meta = {"site": site, "seed": int(seed), "trajectory": kind, "sweep_direction": direction,
            "mean_step_mm": round(float(step.mean()), 4), "simulator_version": SIMULATOR_VERSION}
    sweep = simulate_sweep(settings, poses, phantom, rng, progress, metadata=meta)
    if channels:
        sweep = add_channels(sweep, channels, _rng(f"{site}/channels", seed), doppler_mode=doppler_mode)
    return sweep


def _check_channels(channels: tuple[str, ...]) -> None:
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise InputError(f"Unknown simulated channel(s): {', '.join(unknown)}.", f"Use any of: {', '.join(CHANNELS)}.")


def add_channels(sweep: Sweep, channels: tuple[str, ...], rng: np.random.Generator, *,
                 doppler_mode: str = "power") -> Sweep:
    """``sweep`` (simulated: its metadata holds ``settings`` and ``vessels``) with photoacoustic
    and/or Doppler frames on the same pixel grid and poses; the drawn channel parameters go to
    ``metadata["channel_params"]``."""
    _check_channels(channels)
    meta = sweep.metadata
    if "settings" not in meta or "vessels" not in meta or sweep.image_to_world is None:
        raise InputError("Channels can only be simulated for a simulated sweep with poses.",
                         "Make the sweep with random_sweep(..., channels=...).")
    settings = AcquisitionSettings.from_dict(meta["settings"])
    out = dict(sweep.channels)
    params = dict(meta.get("channel_params", {}))
    for name in channels:
        if name == "photoacoustic":
            out[name], params[name] = photoacoustic_frames(settings, sweep.image_to_world, meta["vessels"], rng)
        else:
            out[name], params[name] = doppler_frames(settings, sweep.image_to_world, meta["vessels"], rng,
                                                     mode=doppler_mode)
    return Sweep(frames=sweep.frames, pixel_spacing=sweep.pixel_spacing, image_to_world=sweep.image_to_world,
                 timestamps=sweep.timestamps, channels=out, metadata=dict(meta, channel_params=params))


def random_paus_sweep(site: str, seed: int, num_frames: int = 80, kind: str | None = None,
                      image_size: tuple[int, int] = (128, 128), *, direction: int | None = None,
                      step_mm: float | None = None, doppler_mode: str = "power",
                      progress: Callable[[str, float], None] | None = None) -> Sweep:
    """A simulated photoacoustic + ultrasound sweep: :func:`random_sweep` with both channels."""
    return random_sweep(site, seed, num_frames, kind, image_size, direction=direction, step_mm=step_mm,
                        progress=progress, channels=CHANNELS, doppler_mode=doppler_mode)


def benchmark_simulator(num_frames: int = 60, sites: tuple[str, ...] = TRAIN_SITES, threads: int = 1,
                        seed: int = 0) -> dict:
    """Frames per second (128 x 128) of image formation with ``threads`` torch threads, CPU time
    per frame (independent of other load on the machine) and phantom build time, per site;
    ``frames_per_second`` is the slowest site's."""
    out: dict = {"threads": threads, "num_frames": num_frames, "sites": {}}
    for site in sites:
        rng = _rng(site, seed)
        settings = site_settings(site, rng)
        poses = make_trajectory("mixed", num_frames, rng, step_mm=0.3, pivot_mm=settings.skin_point_mm,
                                depth_mm=settings.depth_mm)
        t0 = time.perf_counter()
        phantom = phantom_for(settings, poses, rng)
        t1, c1 = time.perf_counter(), time.process_time()
        simulate_sweep(settings, poses, phantom, rng, threads=threads)
        t2, c2 = time.perf_counter(), time.process_time()
        out["sites"][site] = {"frames_per_second": round(num_frames / (t2 - t1), 1),
                              "cpu_ms_per_frame": round(1000 * (c2 - c1) / num_frames, 2),
                              "phantom_seconds": round(t1 - t0, 3), "scatterers": phantom.num_scatterers,
                              "with_phantom_frames_per_second": round(num_frames / (t2 - t0), 1)}
    out["frames_per_second"] = min(v["frames_per_second"] for v in out["sites"].values())
    return out
