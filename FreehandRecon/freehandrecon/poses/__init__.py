"""Per-frame poses for a sweep: from the tracker, a learned estimator, or speckle decorrelation.

:func:`estimate_poses` is the one entry point the logic, the module and the command line use.
Estimators return forward-canonical relative motions in the centre frame (see
:mod:`freehandrecon.poses.common`); this module applies the sweep direction and chains them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from . import common

METHODS = ("tracked", "learned", "speckle")


@dataclass
class PoseEstimate:
    """Poses of every frame and how they were obtained."""

    image_to_world: np.ndarray  # [N, 4, 4] image mm -> world mm
    relative_centre: np.ndarray  # [N-1, 4, 4] motions of frame k+1 in frame k, centre frame
    method: str
    seconds: float = 0.0
    direction: int = 1
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return float((self.relative_centre.shape[0] + 1) / max(self.seconds, 1e-9))


# The shipped network learned the elevational step mostly through beam-model curves; an image-calibrated curve still
# made it drift more on some of the independent simulator's probes (README, "With the probe's calibration"). A curve
# that calibrate-speckle checked with the shipped model (curve_check) is used only where it helped, so no warning.
IMAGE_CURVE_WARNING = ("The shipped learned model was trained mostly with beam-model curves, and a curve calibrated from "
                       "images makes it drift more on some probes it was not trained on (a convex probe, or a curve "
                       "calibrated on tissue). This curve was not checked with the shipped model: calibrate it again "
                       "with freehandrecon calibrate-speckle (which checks it on its own sweep and keeps it from the "
                       "network where it does not help), run freehandrecon adapt, or leave the curve out.")


def estimate_poses(sweep: Sweep, method: str = "learned", *, model: str | Path | None = None,
                   sweep_direction: str = "auto", device: str = "cpu",
                   progress: Callable[[str, float], None] | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   first: np.ndarray | None = None, curve: str | Path | None = None) -> PoseEstimate:
    """Estimate (or take) the image-to-world pose of every frame of ``sweep``.

    Args:
        method: ``"tracked"`` (the sweep's own poses), ``"learned"`` or ``"speckle"``.
        model: for learned, the model file (``.safetensors`` with its ``.json``; default the shipped one);
            for speckle, a decorrelation-curve JSON from ``freehandrecon calibrate-speckle`` or a probe model
            from ``freehandrecon adapt`` (its curve) (default: the simulator's curve for simulated sweeps, else
            a typical probe's curve).
        sweep_direction: ``"auto"``, ``"forward"`` or ``"backward"`` (see :func:`common.resolve_direction`).
        curve: the probe's decorrelation curve (JSON from ``freehandrecon calibrate-speckle``), used by speckle
            and by learned models of architecture v2; default the curve a probe model carries, else as for
            ``model`` with speckle.
        first: pose of the first frame; default the sweep's first tracked pose, else
            :func:`common.default_first_pose`.
    """
    if method not in METHODS:
        raise InputError(f"Unknown pose method '{method}'.", f"Use one of: {', '.join(METHODS)}.")
    if method == "tracked":
        if sweep.image_to_world is None:
            raise InputError("The sweep has no tracked poses.",
                             "Give the tracker transforms and calibration, or use --poses learned|speckle.")
        rel = common.relative_centre(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
        return PoseEstimate(sweep.image_to_world.copy(), rel, "tracked", direction=common.net_elevation_sign(rel))
    common.check_pixel_spacing_known(sweep)
    if method == "speckle" and curve is None and model is not None:
        from .learned import model_bundle

        curve = model_bundle(model).get("curve")  # a probe model from `freehandrecon adapt` carries its curve
        model = None if curve is not None else model
    if curve is not None:  # read it first: a bad curve file is an input error whichever estimator runs
        from .speckle import CALIBRATED_SOURCE, DecorrelationCurve

        curve = curve if isinstance(curve, DecorrelationCurve) else DecorrelationCurve.load(curve)
    if sweep.metadata.get("static_overlay_pixels"):  # scanner captures: hide calipers and text (io/region.py)
        from ..io.region import without_static_overlays

        sweep = without_static_overlays(sweep)
    warnings = common.check_speckle(sweep.frames)
    if method == "learned" and model is None and curve is not None and curve.source == CALIBRATED_SOURCE:
        from .curve_check import shipped_sha256, verdict

        if verdict(curve, shipped_sha256()) is None:
            warnings.append(IMAGE_CURVE_WARNING)
    direction = common.resolve_direction(sweep, sweep_direction)
    t0 = time.perf_counter()
    if method == "speckle":
        from . import speckle

        rel, info = speckle.estimate_relative(sweep, curve=curve if curve is not None else model, progress=progress,
                                              should_cancel=should_cancel)
    else:
        from . import learned

        rel, info = learned.estimate_relative(sweep, model=model, device=device, progress=progress,
                                              should_cancel=should_cancel, curve=curve)
    seconds = time.perf_counter() - t0
    if direction < 0:
        rel = common.mirror_elevation(rel)
    if first is None and sweep.image_to_world is not None:
        first = sweep.image_to_world[0]
    poses = common.absolute_from_centre(rel, sweep.frame_shape, sweep.pixel_spacing, first)
    info = dict(info, sweep_direction="forward" if direction > 0 else "backward",
                direction_source=sweep_direction)
    return PoseEstimate(poses, rel, method, seconds, direction, warnings, info)


def check_learned_with_curve(sweep: Sweep, curve: Any, model: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Learned final drift rates (% of length) on the tracked ``sweep`` with ``curve`` (a probe's calibrated curve)
    and without it, and the verdict ``use_curve`` (the curve drifted no more), as :mod:`.curve_check` stores it.
    ``model``: a loaded model, a model file or None (the shipped one)."""
    from .learned import LoadedModel, load_model
    from .metrics import final_drift_rate_length_pct

    m = model if isinstance(model, LoadedModel) else load_model(model, device=device)

    def fdr(c: Any) -> float:
        est = estimate_poses(sweep, "learned", model=m, sweep_direction="auto", device=device, curve=c)
        return float(final_drift_rate_length_pct(sweep.image_to_world, est.image_to_world, sweep.frame_shape,
                                                 sweep.pixel_spacing))

    with_curve, without = fdr(curve), fdr(None)
    return {"model_name": m.meta.get("name"), "model_sha256": m.meta.get("sha256"), "frames": sweep.num_frames,
            "fdr_with_curve_pct": round(with_curve, 3), "fdr_without_curve_pct": round(without, 3),
            "use_curve": bool(with_curve <= without)}


def sweep_with_poses(sweep: Sweep, estimate: PoseEstimate) -> Sweep:
    """A copy of ``sweep`` carrying the estimated poses (frames shared), with provenance in metadata."""
    return sweep.with_poses(estimate.image_to_world, poses=estimate.method,
                            pose_estimation={"method": estimate.method, "seconds": round(estimate.seconds, 3),
                                             "frames_per_second": round(estimate.frames_per_second, 1),
                                             "warnings": estimate.warnings, **estimate.info})
