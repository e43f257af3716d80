"""Input checks and the held-out split of ``freehandrecon adapt``: everything that can be refused is
refused here, in seconds, before the curve fit and the fine-tuning start."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..poses.metrics import trajectory_length_mm
from ..poses import common
from ..sweep import Sweep

MIN_FRAMES = 40          # usable frames per sweep (one sweep: ~28 to adapt on, ~12 to check on)
MIN_PATH_MM = 3.0        # total frame-centre path: less and drift rates mean nothing
MIN_TEXTURE = 0.01       # median per-frame intensity std (0-1): below it there is no speckle to learn from
HOLDOUT_FRACTION = 0.3   # one sweep: the last 30 % of its frames are held out
MIN_HOLDOUT_FRAMES = 12  # learned poses need one window (9 frames); a few more make the drift rate meaningful


@dataclass
class Split:
    """Adaptation sweeps (fine-tuning, curve, guard) and held-out sweeps (the before/after check)."""

    adapt: list[tuple[str, Sweep]]
    heldout: list[tuple[str, Sweep]]
    description: str


def check_sweeps(named: list[tuple[str, Sweep]]) -> list[str]:
    """Refuse sweeps ``adapt`` cannot learn from; returns warnings for what is merely doubtful.

    Raises :class:`InputError` (problem and fix) for: no tracked poses, unknown pixel spacing, fewer
    than :data:`MIN_FRAMES` frames, a path under :data:`MIN_PATH_MM`, no speckle (blank, saturated or
    nearly constant frames), or frames whose size or pixel spacing differ from the first sweep's. Warns when
    the tracked in-plane motion is not what the images show (:mod:`freehandrecon.poses.tracking_check`): the
    model would learn motions its images do not have.
    """
    if not named:
        raise InputError("No tracked sweep was given.", "Give one or more tracked sweeps of your probe.")
    warnings: list[str] = []
    first_name, first = named[0]
    for name, sweep in named:
        if sweep.image_to_world is None:
            raise InputError(f"{name} has no tracking (no frame poses): adapt learns your probe from tracked motion.",
                             "Give the tracker transforms and the probe calibration (--plus-config XML or "
                             "--calibration FILE), or record the sweeps with a tracker or on a stepper.")
        common.check_pixel_spacing_known(sweep)
        if sweep.num_frames < MIN_FRAMES:
            raise InputError(f"{name} has {sweep.num_frames} frames; adapt needs at least {MIN_FRAMES} per sweep "
                             f"(about {MIN_FRAMES - MIN_HOLDOUT_FRAMES} to adapt on and {MIN_HOLDOUT_FRAMES} to "
                             "check the result on).",
                             "Record a longer tracked sweep (60 frames or more, a few seconds), or give several.")
        path = trajectory_length_mm(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
        if not np.isfinite(path) or path < MIN_PATH_MM:
            raise InputError(f"{name} barely moves: its frames travel {path:.2f} mm in all (at least "
                             f"{MIN_PATH_MM:g} mm are needed).",
                             "Record a sweep that moves the probe steadily over a few centimetres (mostly "
                             "elevational motion, about 0.1-0.5 mm per frame).")
        try:
            bad = common.check_speckle(sweep.frames)
        except InputError as err:
            raise InputError(f"{name}: {err.problem}", err.fix) from err
        warnings += [f"{name}: {w}" for w in bad]
        texture = float(np.median(common.normalise_intensity(sweep.frames[::max(1, sweep.num_frames // 32)])
                                  .reshape(-1, sweep.frame_shape[0] * sweep.frame_shape[1]).std(axis=1)))
        if texture < MIN_TEXTURE:
            raise InputError(f"{name} has no speckle: its frames are nearly constant (median intensity spread "
                             f"{texture:.4f} of full scale).",
                             "Scan tissue or a speckle phantom with gel and sensible gain and depth.")
        if sweep.frame_shape != first.frame_shape or not np.allclose(sweep.pixel_spacing, first.pixel_spacing,
                                                                      rtol=0.01, atol=1e-6):
            raise InputError(f"{name} does not match {first_name}: frames of {sweep.frame_shape[1]}x"
                             f"{sweep.frame_shape[0]} pixels at {_fmt(sweep.pixel_spacing)} mm against "
                             f"{first.frame_shape[1]}x{first.frame_shape[0]} at {_fmt(first.pixel_spacing)} mm.",
                             "Adapt to one probe setting at a time: give sweeps recorded with the same probe, depth "
                             "and imaging settings (the ones you will estimate), or fix --pixel-spacing.")
        from ..poses.tracking_check import tracking_warnings  # imports torch, as adapt does anyway

        warnings += tracking_warnings(sweep, name)
    return warnings


def _fmt(spacing) -> str:
    return " x ".join(f"{float(v):.4g}" for v in spacing)


def split_sweeps(named: list[tuple[str, Sweep]], holdout_fraction: float = HOLDOUT_FRACTION) -> Split:
    """One sweep: its first frames adapt, its last ``holdout_fraction`` (at least :data:`MIN_HOLDOUT_FRAMES`)
    are held out. Several: whole sweeps are held out, the last ``holdout_fraction`` of them (at least one)."""
    if len(named) == 1:
        name, sweep = named[0]
        n = sweep.num_frames
        hold = max(MIN_HOLDOUT_FRAMES, int(round(holdout_fraction * n)))
        cut = n - hold
        return Split([(f"{name}[0:{cut}]", sweep.subset(slice(0, cut)))],
                     [(f"{name}[{cut}:{n}]", sweep.subset(slice(cut, n)))],
                     f"one sweep: frames 0-{cut - 1} adapt, frames {cut}-{n - 1} (last {hold}) are held out")
    hold = max(1, int(round(holdout_fraction * len(named))))
    adapt, heldout = list(named[:-hold]), list(named[-hold:])
    return Split(adapt, heldout, f"{len(named)} sweeps: {len(adapt)} adapt, the last {hold} "
                 f"({', '.join(n for n, _ in heldout)}) are held out")
