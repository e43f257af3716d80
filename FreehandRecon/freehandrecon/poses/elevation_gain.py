"""One number per probe that rescales the learned model's elevational step.

The network reads the elevational step from how fast speckle decorrelates, which depends on the probe's
elevation beam. On probes it was not trained on it reads the step consistently too long or too short (on the
independent simulator's sweeps it needs a gain of 0.71-0.87 on one linear probe and 1.48-1.70 on another), while
its in-plane motions and rotations carry over better. ``freehandrecon adapt`` fits this gain on tracked sweeps of
the probe and stores it in the probe model (``"elevation_gain"``); :func:`freehandrecon.poses.learned.estimate_relative`
multiplies the forward elevational translation by it.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .. import geometry
from ..errors import InputError
from ..sweep import Sweep
from . import common

GAIN_RANGE = (0.2, 5.0)     # outside it the estimate is not a scale error of the step but a failure
MIN_TRUE_STEP_SUM_MM = 2.0  # elevational path needed for a meaningful ratio


def forward_params(relative_centre: np.ndarray, direction: int) -> np.ndarray:
    """Relative centre-frame motions ``[N-1, 4, 4]`` -> forward-canonical 6-vectors ``[N-1, 6]`` (mm, degrees):
    the motions of a backward sweep (``direction`` < 0) reflected through the image plane."""
    rel = common.mirror_elevation(relative_centre) if direction < 0 else np.asarray(relative_centre, np.float64)
    return geometry.matrix_to_params(rel)


def from_forward_params(params: np.ndarray, direction: int) -> np.ndarray:
    """The inverse of :func:`forward_params`: forward-canonical 6-vectors -> relative motions of the sweep."""
    rel = geometry.params_to_matrix(params)
    return common.mirror_elevation(rel) if direction < 0 else rel


def with_elevation_gain(relative_centre: np.ndarray, direction: int, gain: float) -> np.ndarray:
    """``relative_centre`` with its forward elevational translation multiplied by ``gain``."""
    p = forward_params(relative_centre, direction)
    p[:, 2] *= float(gain)
    return from_forward_params(p, direction)


def fit_elevation_gain(pairs: Iterable[tuple[Sweep, np.ndarray, int]]) -> float:
    """The gain that makes the summed estimated elevational step equal the tracked one.

    ``pairs``: ``(tracked sweep, estimated relative centre motions, direction)``, the estimate as
    :func:`freehandrecon.poses.estimate_poses` returns it (``relative_centre``, ``direction``). The tracked
    motions are made forward-canonical with the same direction. Raises :class:`InputError` when the sweeps
    barely move in elevation or the ratio is outside :data:`GAIN_RANGE`.
    """
    true_sum = est_sum = 0.0
    for sweep, rel, direction in pairs:
        if sweep.image_to_world is None:
            raise InputError("A sweep without tracked poses cannot calibrate the elevational step.",
                             "Give tracked sweeps.")
        truth = common.relative_centre(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
        true_sum += float(forward_params(truth, direction)[:, 2].sum())
        est_sum += float(forward_params(rel, direction)[:, 2].sum())
    if true_sum < MIN_TRUE_STEP_SUM_MM:
        raise InputError(f"The tracked sweeps move {true_sum:.2f} mm in elevation in all: too little to calibrate "
                         "the elevational step.",
                         f"Give sweeps that move the probe at least {MIN_TRUE_STEP_SUM_MM:g} mm across the image "
                         "plane.")
    gain = true_sum / est_sum if est_sum > 0 else math.inf
    if not GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]:
        raise InputError(f"The learned model's elevational step is {1 / gain if gain else math.inf:.2f}x the tracked "
                         f"one on these sweeps: not a scale error that one gain can correct "
                         f"(allowed {GAIN_RANGE[0]:g}-{GAIN_RANGE[1]:g}).",
                         "Check the sweeps' tracking and pixel spacing, or fine-tune the model instead.")
    return float(gain)
