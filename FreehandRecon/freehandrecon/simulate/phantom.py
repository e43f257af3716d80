"""Tissue phantom: random point scatterers times a structured echogenicity map.

Scatterers sit at uniformly random positions (by default jittered sampling: one uniform point
per cell of a fine lattice, which keeps the local count from fluctuating) and have uniformly
random phase (optionally circular complex Gaussian amplitudes). Their density may vary from
bucket to bucket so that every resolution cell holds about ten scatterers (fully developed
speckle: Testing/test_simulate.py checks the Rayleigh statistics) without wasting scatterers
where the elevation beam is wide; amplitudes carry ``1 / sqrt(density)`` so plain tissue has
unit mean power per volume everywhere. Amplitudes are scaled by the echogenicity (an amplitude
factor; 1 is plain tissue): anechoic vessels (cylinders, 0.05, with a bright wall), bright
layers (slabs), hypo/hyper-echoic spherical inclusions and a smooth low-frequency variation.

Scatterers are stored sorted by a 3D bucket grid (``starts``/``counts`` per bucket) so that a
frame only touches the buckets near its plane. The structure is kept as plain-JSON geometry
(``Phantom.structure``): vessels are ``{"point", "direction", "radius"}`` in world mm, for masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, ResourceError

VESSEL_ECHO = 0.05
MAX_SCATTERERS = 40_000_000


@dataclass
class Phantom:
    """Scatterers in world mm, bucketed. ``positions`` are relative to ``lo`` (float32 precision)."""

    lo: np.ndarray
    hi: np.ndarray
    bucket_size: np.ndarray
    grid: tuple[int, int, int]
    positions: torch.Tensor          # [3, M] float32, world mm - lo (per-axis rows gather fastest)
    magnitude: torch.Tensor          # [M] float32 amplitude: echogenicity / sqrt(density)
    phase: torch.Tensor              # [M] float32 radians
    starts: torch.Tensor             # [B] int64 first scatterer of each bucket
    counts: torch.Tensor             # [B] int64
    bucket_density: np.ndarray       # [B] scatterers per mm^3 used in each bucket
    structure: dict[str, Any] = field(default_factory=dict)

    @property
    def num_scatterers(self) -> int:
        return int(self.positions.shape[1])

    @property
    def vessels(self) -> list[dict[str, Any]]:
        return list(self.structure.get("vessels", []))


# --- structure ---------------------------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _tilted(axis: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector within ``max_deg`` of ``axis`` (random azimuth)."""
    axis = _unit(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = _unit(np.cross(axis, helper))
    w = np.cross(axis, u)
    t, az = np.deg2rad(rng.uniform(0, max_deg)), rng.uniform(0, 2 * np.pi)
    return _unit(np.cos(t) * axis + np.sin(t) * (np.cos(az) * u + np.sin(az) * w))


def random_structure(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, *,
                     depth_axis: np.ndarray, sweep_axis: np.ndarray, num_vessels: int | None = None) -> dict[str, Any]:
    """Random vessels, layers, inclusions and smooth variation inside the box ``[lo, hi]`` (world mm)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    depth_axis, sweep_axis = _unit(np.asarray(depth_axis, float)), _unit(np.asarray(sweep_axis, float))
    size = hi - lo

    def inside(margin: float = 0.15) -> np.ndarray:
        return lo + size * rng.uniform(margin, 1 - margin, 3)

    n_v = int(rng.integers(1, 4)) if num_vessels is None else num_vessels
    vessels = [{"point": inside().tolist(), "direction": _tilted(sweep_axis, 70.0, rng).tolist(),
                "radius": float(rng.uniform(1.0, 4.0)), "echogenicity": VESSEL_ECHO,
                "wall_echogenicity": float(rng.uniform(1.5, 2.2)), "wall_mm": float(rng.uniform(0.3, 0.6))}
               for _ in range(n_v)]
    layers = [{"point": inside(0.05).tolist(), "normal": _tilted(depth_axis, 20.0, rng).tolist(),
               "thickness": float(rng.uniform(0.5, 2.5)), "echogenicity": float(rng.uniform(1.8, 3.2))}
              for _ in range(int(rng.integers(1, 4)))]
    if rng.random() < 0.5:  # a thicker hypoechoic band (fat/muscle)
        layers.append({"point": inside(0.05).tolist(), "normal": _tilted(depth_axis, 15.0, rng).tolist(),
                       "thickness": float(rng.uniform(3.0, 6.0)), "echogenicity": float(rng.uniform(0.4, 0.7))})
    inclusions = []
    for _ in range(int(rng.integers(1, 4))):
        hyper = rng.random() < 0.5
        inclusions.append({"centre": inside().tolist(), "radius": float(rng.uniform(2.0, 6.0)),
                           "echogenicity": float(rng.uniform(1.6, 2.5) if hyper else rng.uniform(0.25, 0.6))})
    smooth = [{"wavevector": (_unit(rng.standard_normal(3)) * 2 * np.pi / rng.uniform(15.0, 40.0)).tolist(),
               "phase": float(rng.uniform(0, 2 * np.pi))} for _ in range(4)]
    return {"vessels": vessels, "layers": layers, "inclusions": inclusions, "smooth": smooth,
            "smooth_db": float(rng.uniform(1.5, 3.0))}


def echogenicity(structure: dict[str, Any], points: np.ndarray, *,
                 buckets: tuple[np.ndarray, float, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Amplitude echogenicity ``[P]`` of world ``points [P, 3]`` (1 = plain tissue).

    ``buckets`` = (centres [B, 3], half diagonal, starts [B], counts [B]) of points sorted by
    bucket lets each structure element touch only the buckets it can reach (a speed-up only).
    """
    p = np.asarray(points, dtype=np.float32)
    echo = np.ones(p.shape[0], dtype=np.float32)
    if structure.get("smooth"):
        waves = structure["smooth"]
        k = torch.tensor([w["wavevector"] for w in waves], dtype=torch.float32).t()
        ph = torch.tensor([w["phase"] for w in waves], dtype=torch.float32)
        s = torch.cos(torch.from_numpy(p) @ k + ph).sum(dim=1)
        # a few dB of slow variation (amplitude: dB / 20), normalised by the sum's rms
        db = structure["smooth_db"] / np.sqrt(len(waves) / 2.0)
        echo *= torch.exp(s * float(db / 20.0 * np.log(10.0))).numpy()
    for layer in structure.get("layers", []):
        c, n = np.asarray(layer["point"], np.float32), np.asarray(layer["normal"], np.float32)
        idx = _reachable(lambda q: np.abs((q - c) @ n), layer["thickness"] / 2, p, buckets)
        inside = np.abs((p[idx] - c) @ n) < layer["thickness"] / 2
        echo[idx[inside]] *= layer["echogenicity"]
    for inc in structure.get("inclusions", []):
        c = np.asarray(inc["centre"], np.float32)
        idx = _reachable(lambda q: np.linalg.norm(q - c, axis=-1), inc["radius"], p, buckets)
        inside = np.linalg.norm(p[idx] - c, axis=-1) < inc["radius"]
        echo[idx[inside]] *= inc["echogenicity"]
    for v in structure.get("vessels", []):
        c, u = np.asarray(v["point"], np.float64), np.asarray(v["direction"], np.float64)
        outer = v["radius"] + v.get("wall_mm", 0.0)
        idx = _reachable(lambda q: _distance_to_line(q, c, u), outer, p, buckets)
        r = _distance_to_line(p[idx], c, u)
        echo[idx[(r >= v["radius"]) & (r < outer)]] = v.get("wall_echogenicity", 1.0)
        echo[idx[r < v["radius"]]] = v["echogenicity"]  # blood: anechoic whatever else is there
    return echo


def _reachable(distance: Callable[[np.ndarray], np.ndarray], reach: float, points: np.ndarray,
               buckets: tuple[np.ndarray, float, np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Indices of the points in buckets whose centre is within ``reach`` + half a bucket diagonal
    (``distance`` is 1-Lipschitz), or of all points without buckets."""
    if buckets is None:
        return np.arange(points.shape[0])
    centres, half_diag, starts, counts = buckets
    near = np.flatnonzero(distance(centres.astype(np.float32)) < reach + half_diag)
    cnt = counts[near]
    total = int(cnt.sum())
    offsets = np.cumsum(cnt) - cnt
    return np.repeat(starts[near] - offsets, cnt) + np.arange(total)


def _distance_to_line(p: np.ndarray, point: np.ndarray, direction: np.ndarray) -> np.ndarray:
    d = p - point.astype(p.dtype)
    u = _unit(direction).astype(p.dtype)
    along = d @ u
    return np.sqrt(np.maximum((d * d).sum(axis=-1) - along * along, 0.0))


def vessel_mask(vessels: list[dict[str, Any]], pixel_to_world: np.ndarray, frame_shape: tuple[int, int],
                margin_mm: float = 0.0) -> np.ndarray:
    """``bool [N, H, W]``: pixels whose world position is inside a vessel (radius - ``margin_mm``)."""
    h, w = frame_shape
    jj, ii = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pix = np.stack([ii.ravel(), jj.ravel(), np.zeros(h * w), np.ones(h * w)], axis=0)
    mats = np.asarray(pixel_to_world, dtype=np.float64).reshape(-1, 4, 4)
    out = np.zeros((mats.shape[0], h, w), dtype=bool)
    for n, m in enumerate(mats):  # per frame (vectorised over pixels)
        pts = (m @ pix)[:3].T
        for v in vessels:
            r = _distance_to_line(pts, np.asarray(v["point"], float), np.asarray(v["direction"], float))
            out[n] |= (r < v["radius"] - margin_mm).reshape(h, w)
    return out


# --- scatterers --------------------------------------------------------------------------------------

def _stratified(corners: np.ndarray, bsize: np.ndarray, dens: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered-lattice scatterers: bucket b is cut into ``dims[b]`` cells (about 1/density mm^3
    each), one uniform point per cell. Returns positions sorted by bucket, counts, and the
    density actually used per bucket."""
    # cells per axis, the shortest bucket side first; the longest side (most cells) takes up the
    # rounding, rounded up, so every bucket has at least its target density
    target = dens * np.prod(bsize)
    dims = np.zeros((dens.size, 3), dtype=np.int64)
    left = target.copy()
    order = np.argsort(bsize)
    for k, a in enumerate(order):
        if k < 2:  # cells still to place spread evenly over the remaining sides
            share = bsize[a] * (left / np.prod(bsize[order[k:]])) ** (1.0 / (3 - k))
            dims[:, a] = np.maximum(np.rint(share), 1)
        else:
            dims[:, a] = np.maximum(np.ceil(left), 1)
        left = left / dims[:, a]
    dims[dens <= 0] = 0
    counts = dims.prod(axis=1)
    used = counts / np.prod(bsize)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty((int(counts.sum()), 3), dtype=np.float32)
    combos, inverse = np.unique(dims, axis=0, return_inverse=True)
    for c, d in enumerate(combos):  # one vectorised block per lattice shape (a few dozen at most)
        if d.prod() == 0:
            continue
        buckets = np.flatnonzero(inverse.ravel() == c)
        cells = np.stack(np.meshgrid(*(np.arange(k, dtype=np.float32) for k in d), indexing="ij"),
                         axis=-1).reshape(-1, 3)
        p = rng.random((buckets.size, cells.shape[0], 3), dtype=np.float32)
        p += cells[None]
        p *= (bsize / d).astype(np.float32)
        p += corners[buckets, None, :].astype(np.float32)
        if np.all(np.diff(buckets) == 1):  # one run of consecutive buckets: a contiguous block
            pos[starts[buckets[0]]:starts[buckets[0]] + p.shape[0] * p.shape[1]] = p.reshape(-1, 3)
        else:
            rows = starts[buckets][:, None] + np.arange(cells.shape[0])[None, :]
            pos[rows.ravel()] = p.reshape(-1, 3)
    return pos, counts, used


def make_phantom(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, *,
                 density: float | Callable[[np.ndarray], np.ndarray],
                 structure: dict[str, Any] | bool = True,
                 depth_axis: tuple[float, float, float] = (0.0, 0.0, -1.0),
                 sweep_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
                 bucket_size: tuple[float, float, float] = (2.0, 0.5, 1.0),
                 gaussian_amplitudes: bool = False, stratified: bool = True) -> Phantom:
    """Scatterers filling the world box ``[lo, hi]`` (mm).

    ``density`` is scatterers per mm^3, a number or a function of world points ``[P, 3]``
    (evaluated at bucket centres). ``structure`` is a dict from :func:`random_structure`, True
    for a random one, False for plain speckle. The default ``bucket_size`` is small along the
    sweep (elevation) axis of the default poses (world y = anterior) so that a frame touches
    few extra scatterers. Scatterers have equal strength and uniformly random phase unless
    ``gaussian_amplitudes`` (circular complex Gaussian amplitudes, which need about twice the
    density for the same speckle statistics). ``stratified`` places one scatterer uniformly in
    each cell of a per-bucket lattice (jittered sampling) instead of a Poisson process: the local
    scatterer count then hardly fluctuates, so speckle is fully developed (Rayleigh) at a lower
    density, while phases stay uniformly random (the jitter spans whole cells, several half
    wavelengths).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
        raise InputError(f"Phantom box {lo} - {hi} is empty or malformed.", "Give lo < hi, three values each.")
    bsize = np.asarray(bucket_size, dtype=np.float64)
    grid = tuple(int(g) for g in np.maximum(np.ceil((hi - lo) / bsize), 1))
    hi = lo + np.asarray(grid) * bsize
    if structure is True:
        structure = random_structure(lo, hi, rng, depth_axis=np.asarray(depth_axis), sweep_axis=np.asarray(sweep_axis))
    elif structure is False or structure is None:
        structure = {}
    ix, iy, iz = np.meshgrid(*(np.arange(g) for g in grid), indexing="ij")
    centres = lo + (np.stack([ix, iy, iz], axis=-1).reshape(-1, 3) + 0.5) * bsize
    if callable(density):
        dens = np.asarray(density(centres), dtype=np.float64).reshape(-1)
    else:
        dens = np.full(centres.shape[0], float(density))
    if not np.all(np.isfinite(dens)) or np.any(dens < 0):
        raise InputError("The scatterer density must be finite and non-negative.", "Check the density function.")
    expected = float(dens.sum() * np.prod(bsize))
    if expected > MAX_SCATTERERS:
        raise ResourceError(f"The phantom would hold {expected:.3g} scatterers (limit {MAX_SCATTERERS:.0e}).",
                            "Simulate a shorter sweep, a smaller image or a lower scatterer density.")
    if stratified:
        pos, counts, dens = _stratified(centres - 0.5 * bsize - lo, bsize, dens, rng)
    else:
        counts = rng.poisson(dens * np.prod(bsize))
        # buckets are generated in id order, so the scatterers come out sorted by bucket
        corner = np.repeat(centres - 0.5 * bsize - lo, counts, axis=0).astype(np.float32)
        pos = corner + rng.random((int(counts.sum()), 3), dtype=np.float32) * bsize.astype(np.float32)
    m = pos.shape[0]
    # unit mean power per unit volume whatever the local density: |a| = 1 / sqrt(density)
    magnitude = np.repeat((1.0 / np.sqrt(np.maximum(dens, 1e-30))).astype(np.float32), counts)
    if gaussian_amplitudes:
        a = rng.standard_normal((m, 2), dtype=np.float32)
        magnitude *= np.sqrt(0.5 * (a * a).sum(axis=1))
        phase = np.arctan2(a[:, 1], a[:, 0])
    else:
        phase = rng.random(m, dtype=np.float32) * np.float32(2 * np.pi)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if structure:
        index = (centres, 0.5 * float(np.linalg.norm(bsize)), starts, counts)
        magnitude *= echogenicity(structure, pos + lo.astype(np.float32), buckets=index)
    positions = torch.from_numpy(np.ascontiguousarray(pos.T))
    return Phantom(lo=lo, hi=hi, bucket_size=bsize, grid=grid, positions=positions,
                   magnitude=torch.from_numpy(magnitude), phase=torch.from_numpy(phase),
                   starts=torch.from_numpy(starts.astype(np.int64)),
                   counts=torch.from_numpy(counts.astype(np.int64)), bucket_density=dens.astype(np.float32),
                   structure=structure)
