"""Whether the learned model should use a probe's calibrated decorrelation curve, checked on the curve's own sweep.

A curve calibrated from images helps the shipped network on some probes and makes it drift more on others (on the
independent simulator: far better on the L9-4, worse on the C5-2v and the L11-5v; README, "With the probe's
calibration"). Which of the two holds for a probe shows on the tracked sweep the curve is fitted from:
``freehandrecon calibrate-speckle`` estimates that sweep with the learned model twice, with the new curve and with
the curve the model uses without one (:func:`freehandrecon.poses.check_learned_with_curve`), and stores both drift
rates and the verdict in the curve's metadata (:data:`CHECK_KEY`; this module only reads it). The learned estimator
then gives the curve to that model's features only where it drifted no more there; speckle decorrelation (and a
probe model's speckle rotations) always use the curve. The verdict holds for the model it was made with (the
weights' sha256): another model uses the curve unchecked.
"""

from __future__ import annotations

from typing import Any

CHECK_KEY = "learned_check"


def verdict(curve: Any, model_sha256: str | None) -> dict[str, Any] | None:
    """The check stored in ``curve``'s metadata for the model with these weights, or None (none, or another model)."""
    check = (getattr(curve, "meta", None) or {}).get(CHECK_KEY)
    if not isinstance(check, dict) or not model_sha256 or check.get("model_sha256") != model_sha256:
        return None
    return check


def shipped_sha256() -> str | None:
    """The sha256 of the shipped learned model's weights, from its description (no torch)."""
    import json

    from ..model_files import DEFAULT_POSE_MODEL, MODEL_DIR

    try:
        return json.loads((MODEL_DIR / f"{DEFAULT_POSE_MODEL}.json").read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def describe(check: dict[str, Any]) -> str:
    """One line for reports: what the check found and what follows."""
    used = "used" if check["use_curve"] else "not used"
    return (f"probe curve {used} by the learned model: on its calibration sweep it drifted "
            f"{check['fdr_with_curve_pct']:.1f} % with the curve against {check['fdr_without_curve_pct']:.1f} % "
            "without")
