"""A probe's decorrelation curve as a user would calibrate it on a speckle phantom, for simulated probes.

A structure-free speckle phantom of the probe's settings is simulated and swept (straight at a given step, or
freehand), and :meth:`DecorrelationCurve.calibrate` fits the curve on it as ``calibrate-speckle`` does. Training
(``train --curve-mix``) gives such curves to the network; ``evaluate --curve phantom`` scores simulated sweeps with
them (the protocol of the independent set's phantom sweeps: 32 frames straight at 0.2 mm/frame).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PHANTOM_FRAMES, PHANTOM_STEP_MM = 32, 0.2  # the independent set's speckle-phantom sweeps
EVALUATION_SEED_OFFSET = 777  # evaluate --curve phantom: the phantom of the sweep with seed s is drawn with s + 777


def phantom_calibrated_curve(settings: dict[str, Any], seed: int, *, kind: str = "linear",
                             frames: int = PHANTOM_FRAMES, step_mm: float | None = PHANTOM_STEP_MM):
    """The curve fitted (``min_bands=2``) on a simulated speckle phantom of the probe ``settings`` (a simulated
    sweep's ``metadata["settings"]``), swept ``kind`` over ``frames`` frames at ``step_mm`` (None: the simulator's
    draw), drawn with ``seed``. Raises InputError when the phantom gives too few usable pairs."""
    from ..poses.speckle import MIN_CALIBRATION_BANDS, DecorrelationCurve
    from ..simulate import AcquisitionSettings, phantom_for, simulate_sweep
    from ..simulate.trajectory import make_trajectory

    rng = np.random.default_rng(seed)
    st = AcquisitionSettings.from_dict(settings)
    poses = make_trajectory(kind, frames, rng, direction=1, step_mm=step_mm, pivot_mm=st.skin_point_mm,
                            depth_mm=st.depth_mm)
    phantom = simulate_sweep(st, poses, phantom_for(st, poses, rng, structure=False), rng, metadata={})
    return DecorrelationCurve.calibrate(phantom, min_bands=MIN_CALIBRATION_BANDS)
