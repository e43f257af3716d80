"""Freehand-like probe trajectories as exact per-frame image-to-world transforms.

A pose is built about the probe's skin contact point ``pivot`` (image mm): the contact point
moves along a path ``p(t)`` and the probe turns by ``R(t) = Rz Ry Rx`` (rx: tilt/fan about the
lateral axis, ry: yaw about the beam axis, rz: in-plane rotation), so
``image_to_world = BASE @ T(p) @ R @ T(-pivot)``. ``BASE`` is the default first pose of
:mod:`freehandrecon.poses` (image x -> R, depth y -> -S, elevation z -> A) with the first contact
point at the world origin; world "depth" is therefore -S and the sweep runs along A.
Motion is mostly elevational (+z in the probe's frame for ``direction=+1``, -z for -1).
"""

from __future__ import annotations

import numpy as np

from .. import geometry
from ..errors import InputError

KINDS = ("linear", "fan", "tilt", "s-curve", "mixed")
BASE = np.array([[1.0, 0.0, 0.0, 0.0],
                 [0.0, 0.0, 1.0, 0.0],
                 [0.0, -1.0, 0.0, 0.0],
                 [0.0, 0.0, 0.0, 1.0]])
WORLD_DEPTH_AXIS = (0.0, 0.0, -1.0)
WORLD_SWEEP_AXIS = (0.0, 1.0, 0.0)


def _smooth(n: int, rng: np.random.Generator, max_cycles: float = 1.5) -> np.ndarray:
    """A smooth random curve over ``n`` frames, zero at the start, peak magnitude 1."""
    t = np.linspace(0.0, 1.0, n)
    y = np.zeros(n)
    for _ in range(3):
        f, ph = rng.uniform(0.3, max_cycles), rng.uniform(0, 2 * np.pi)
        y += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + ph)
    y -= y[0]
    peak = np.abs(y).max()
    return y / peak if peak > 0 else y


def _poses(path: np.ndarray, angles_deg: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    n = path.shape[0]
    m = geometry.params_to_matrix(np.concatenate([path, angles_deg], axis=1))
    to_pivot = np.eye(4)
    to_pivot[:3, 3] = -pivot
    return BASE[None] @ m @ to_pivot[None].repeat(n, axis=0)


def make_trajectory(kind: str, num_frames: int, rng: np.random.Generator, *, direction: int = +1,
                    step_mm: float | None = None,
                    pivot_mm: tuple[float, float, float] = (20.0, 0.0, 0.0),
                    depth_mm: float = 40.0) -> np.ndarray:
    """``[N, 4, 4]`` image-to-world transforms of a freehand-like sweep.

    kind: "linear" (pure elevational translation at constant ``step_mm`` per frame), "fan" (rocking
    about the lateral axis at the skin; ``step_mm`` is the step at mid-depth), "tilt" (sweep while
    the probe tilts), "s-curve" (lateral S while sweeping, yaw following the path), "mixed"
    (varying speed, in-plane drift, small rotations about all axes, hand jitter).
    ``step_mm`` defaults to a random 0.1-0.6 mm/frame; rotations stay within about 15 degrees.
    ``pivot_mm`` is the skin contact point in image mm (``AcquisitionSettings.skin_point_mm``).
    """
    if kind not in KINDS:
        raise InputError(f"Unknown trajectory kind '{kind}'.", f"Use one of: {', '.join(KINDS)}.")
    if direction not in (1, -1):
        raise InputError(f"Sweep direction must be +1 or -1, got {direction}.", "Pass direction=1 or -1.")
    if num_frames < 2:
        raise InputError(f"A sweep needs at least 2 frames, asked for {num_frames}.", "Ask for 2 or more frames.")
    n = int(num_frames)
    step = float(rng.uniform(0.1, 0.6)) if step_mm is None else float(step_mm)
    if not (np.isfinite(step) and step > 0):
        raise InputError(f"The elevational step must be positive, got {step_mm} mm.", "Use e.g. 0.3 mm per frame.")
    k = np.arange(n, dtype=np.float64)
    path = np.zeros((n, 3))
    ang = np.zeros((n, 3))
    d = float(direction)
    span = step * (n - 1)

    if kind == "linear":
        path[:, 2] = d * step * k
    elif kind == "fan":
        # total rotation so that mid-depth moves ~step per frame; capped at 15 degrees
        total = min(np.rad2deg(span / (0.5 * depth_mm)), 15.0)
        speed = 1.0 + 0.15 * _smooth(n, rng)
        s = np.concatenate([[0.0], np.cumsum(speed[1:])])
        ang[:, 0] = d * (total * s / s[-1] - total / 2)
        path[:, 2] = d * 0.15 * step * k  # the skin point slides a little too
        ang[:, 2] = rng.uniform(-1.0, 1.0) * _smooth(n, rng)
    else:
        speed = 1.0 + (0.4 if kind == "mixed" else 0.2) * _smooth(n, rng, 2.0)
        path[:, 2] = d * step * np.concatenate([[0.0], np.cumsum(speed[1:])])
        if kind == "tilt":
            ang[:, 0] = rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 12.0) * _smooth(n, rng, 0.6) ** 2
            ang[:, 1] = rng.uniform(-5.0, 5.0) * _smooth(n, rng, 0.8)
        elif kind == "s-curve":
            amp = min(rng.uniform(2.0, 6.0), 0.15 * span + 1.0)
            cycles, ph = rng.uniform(0.8, 1.5), rng.uniform(0, 2 * np.pi)
            t = np.linspace(0.0, 1.0, n)
            path[:, 0] = amp * (np.sin(2 * np.pi * cycles * t + ph) - np.sin(ph))
            # Yaw partly follows the path: proportional to its lateral slope, at most 7 degrees. (Clipping
            # the slope's angle instead flipped the probe between the limits at several degrees per frame
            # wherever the lateral motion reversed, which no hand does.)
            slope = np.gradient(path[:, 0]) / np.maximum(np.abs(np.gradient(path[:, 2])), 1e-6)
            peak = float(np.abs(slope).max())
            if peak > 0:
                ang[:, 1] = min(7.0, float(np.rad2deg(np.arctan(0.5 * peak)))) * slope / peak
            ang[:, 2] = rng.uniform(-2.0, 2.0) * _smooth(n, rng)
        elif kind == "mixed":
            path[:, 0] += rng.uniform(-4.0, 4.0) * _smooth(n, rng)
            path[:, 1] += rng.uniform(-1.0, 1.0) * _smooth(n, rng)  # probe pressure
            ang[:, 0] = rng.uniform(-8.0, 8.0) * _smooth(n, rng)
            ang[:, 1] = rng.uniform(-6.0, 6.0) * _smooth(n, rng)
            ang[:, 2] = rng.uniform(-4.0, 4.0) * _smooth(n, rng)
            path += rng.normal(0.0, 0.02, (n, 3))   # hand tremor
            ang += rng.normal(0.0, 0.05, (n, 3))
    return _poses(path, ang, np.asarray(pivot_mm, dtype=np.float64))
