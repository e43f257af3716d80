"""Calibrate on one sweep of a probe, estimate another: what the probe's calibration buys (``evaluate
--probe-calibration``).

For every ordered pair (A, B) of sweeps of the same probe (``metadata["probe"]``, else the same frame size and
pixel spacing; a sweep whose probe has no other sweep is split in halves: the first half calibrates, the second is
estimated), the decorrelation curve
(as ``calibrate-speckle`` and ``adapt`` fit it) and the learned model's elevational gain
(:mod:`freehandrecon.poses.elevation_gain`, as ``adapt --epochs 0`` fits it) come from A, and B is estimated
with: the learned model uncalibrated, with A's gain, with A's curve as ``calibrate-speckle`` writes it (checked on A:
the network's features use it only if the learned model drifted no more with it on A, :mod:`~..poses.curve_check`),
with A's curve unchecked, with A's checked curve and gain (the gain fitted with the curve the estimate uses), with A's
gain and speckle's tilt and yaw through A's curve; speckle with the typical curve and with A's curve. The figures are
final drift rates in % of B's trajectory length, averaged over pairs (and per probe). Each pair also carries B's
in-plane floor (:mod:`freehandrecon.poses.tracking_check`): the drift its true poses leave to a method that reads
in-plane motion from the images, when their in-plane motion is not what the images show.
No fine-tuning happens here (``freehandrecon adapt`` does that).
"""

from __future__ import annotations

import math
from itertools import permutations
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..poses import common, estimate_poses
from ..poses.elevation_gain import fit_elevation_gain, forward_params, from_forward_params, with_elevation_gain
from ..poses.metrics import final_drift_rate_length_pct
from ..sweep import Sweep

VARIANTS = (
    ("learned", "learned, no calibration"),
    ("learned_gain", "learned, typical curve + elevational gain"),
    ("learned_curve", "learned, probe curve (checked)"),
    ("learned_curve_unchecked", "learned, probe curve unchecked"),
    ("learned_curve_gain", "learned, probe curve (checked) + elevational gain"),
    ("learned_gain_speckle_rotations", "learned, typical curve + elevational gain, speckle's tilt and yaw"),
    ("speckle", "speckle, typical curve"),
    ("speckle_curve", "speckle, probe curve"),
)
CALIBRATED = ("learned_gain", "learned_curve_gain", "learned_gain_speckle_rotations")  # learned with a calibration
MIN_HALF_FRAMES = 10  # the real sweeps of Testing/Data have 21 frames: halves of 10 and 11
TARGET_CALIBRATED_FDR_PCT = 10.0


def calibration_pairs(named: list[tuple[str, Sweep]]) -> list[tuple[str, Sweep, str, Sweep]]:
    """``(calibration name, sweep, estimated name, sweep)``: every ordered pair of sweeps of the same probe
    (``metadata["probe"]``, else the same frame size and pixel spacing), and the two halves of a sweep that is its
    probe's only one (when each half has :data:`MIN_HALF_FRAMES`)."""
    groups: dict[str, list[tuple[str, Sweep]]] = {}
    for name, s in named:
        probe = (s.metadata or {}).get("probe")
        if not probe:  # a user's tracked files: one probe setting per frame size and pixel spacing, as adapt has it
            sx, sy = s.pixel_spacing
            probe = f"setting {s.frame_shape[1]}x{s.frame_shape[0]} at {sx:.4g}x{sy:.4g}"
        groups.setdefault(str(probe), []).append((name, s))
    pairs = []
    for members in groups.values():
        if len(members) >= 2:
            pairs += [(a, sa, b, sb) for (a, sa), (b, sb) in permutations(members, 2)]
        else:
            name, s = members[0]
            half = s.num_frames // 2
            if min(half, s.num_frames - half) >= MIN_HALF_FRAMES:
                pairs.append((f"{name}[:{half}]", s.subset(slice(0, half)),
                              f"{name}[{half}:]", s.subset(slice(half, None))))
    return pairs


def phantom_pairs(named: list[tuple[str, Sweep]], phantoms: list[tuple[str, Sweep]]
                  ) -> list[tuple[str, Sweep, str, Sweep]]:
    """``(phantom name, phantom sweep, estimated name, sweep)``: every sweep calibrated on the speckle-phantom sweep
    of its probe (``metadata["probe"]``); InputError when a probe has none."""
    by_probe = {str((s.metadata or {}).get("probe")): (n, s) for n, s in phantoms}
    pairs = []
    for name, s in named:
        probe = str((s.metadata or {}).get("probe"))
        if probe not in by_probe:
            raise InputError(f"No speckle-phantom calibration sweep of the probe '{probe}' (sweep {name}).",
                             "Give a phantom sweep for every probe of the set, or use --probe-calibration other.")
        pn, ps = by_probe[probe]
        pairs.append((pn, ps, name, s))
    return pairs


def _fdr(sweep: Sweep, poses: np.ndarray) -> float:
    return float(final_drift_rate_length_pct(sweep.image_to_world, poses, sweep.frame_shape, sweep.pixel_spacing))


def evaluate_pair(calib: Sweep, target: Sweep, model: Any = None, device: str = "cpu") -> dict[str, Any]:
    """FDR (% of length) of every :data:`VARIANTS` entry on ``target`` with the calibration from ``calib``."""
    import copy

    from ..poses import check_learned_with_curve
    from ..poses.curve_check import CHECK_KEY
    from ..poses.speckle import DecorrelationCurve  # imports torch: only when evaluating

    out: dict[str, Any] = {}
    gained: tuple[np.ndarray, int] | None = None  # the typical-curve estimate with its gain, for the hybrid
    raw = DecorrelationCurve.calibrate(calib, min_bands=2)
    curve = copy.deepcopy(raw)
    check = check_learned_with_curve(calib, curve, model=model, device=device)
    curve.meta[CHECK_KEY] = check
    out["curve_check"] = {k: check[k] for k in ("fdr_with_curve_pct", "fdr_without_curve_pct", "use_curve")}
    run = lambda s, method, **kw: estimate_poses(s, method, model=model if method == "learned" else None,  # noqa: E731
                                                 sweep_direction="auto", device=device, **kw)
    out["learned_curve_unchecked"] = _fdr(target, run(target, "learned", curve=raw).image_to_world)
    for suffix, c in (("", None), ("_curve", curve)):
        est = run(target, "learned", curve=c)
        out[f"learned{suffix}"] = _fdr(target, est.image_to_world)
        key = f"learned{suffix}_gain"
        try:
            ref = run(calib, "learned", curve=c)
            gain = fit_elevation_gain([(calib, ref.relative_centre, ref.direction)])
        except InputError as err:
            out[key], out[f"gain{suffix}"], out[f"gain{suffix}_error"] = math.nan, math.nan, err.problem
            continue
        rel = with_elevation_gain(est.relative_centre, est.direction, gain)
        out[key], out[f"gain{suffix}"] = _fdr(target, _chain(target, rel)), gain
        if not suffix:
            gained = rel, est.direction
    out["speckle"] = _fdr(target, run(target, "speckle").image_to_world)
    spk = run(target, "speckle", curve=curve)
    out["speckle_curve"] = _fdr(target, spk.image_to_world)
    out["learned_gain_speckle_rotations"] = math.nan
    if gained is not None:  # what a probe model with out_of_plane_rotations "speckle" estimates
        rel, direction = gained
        p = forward_params(rel, direction)
        p[:, 3:5] = forward_params(spk.relative_centre, spk.direction)[:, 3:5]
        out["learned_gain_speckle_rotations"] = _fdr(target, _chain(target, from_forward_params(p, direction)))
    from ..poses.tracking_check import check_tracking

    floor = check_tracking(target)["in_plane_floor_fdr_pct"]
    out["in_plane_floor"] = math.nan if floor is None else floor
    return out


def _chain(sweep: Sweep, rel: np.ndarray) -> np.ndarray:
    return common.absolute_from_centre(rel, sweep.frame_shape, sweep.pixel_spacing, sweep.image_to_world[0])


def evaluate_transfer(named: list[tuple[str, Sweep]], model: Any = None, device: str = "cpu",
                      progress: Callable[[str, float], None] | None = None,
                      phantoms: list[tuple[str, Sweep]] | None = None) -> dict[str, Any]:
    """Every pair of :func:`calibration_pairs` (with ``phantoms``: of :func:`phantom_pairs`), the means over pairs,
    and the issue's targets."""
    pairs = phantom_pairs(named, phantoms) if phantoms is not None else calibration_pairs(named)
    rows = []
    for i, (a, sa, b, sb) in enumerate(pairs):
        rows.append({"calibrated_on": a, "estimated": b, **evaluate_pair(sa, sb, model, device)})
        if progress is not None:
            progress("probe calibration", (i + 1) / len(pairs))
    def mean_of(rs: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for key, _ in VARIANTS:
            v = np.array([r[key] for r in rs], np.float64)
            v = v[np.isfinite(v)]
            out[key] = float(v.mean()) if v.size else math.nan
        return out

    means = mean_of(rows)
    floors = np.array([r["in_plane_floor"] for r in rows], np.float64)
    floors = floors[np.isfinite(floors)]
    means["in_plane_floor"] = float(floors.mean()) if floors.size else math.nan
    probe_of = {name: str((s.metadata or {}).get("probe") or "") for name, s in named}
    by_probe: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_probe.setdefault(probe_of.get(r["estimated"].split("[")[0], "") or "sweeps of one setting", []).append(r)
    per_probe = {p: mean_of(rs) for p, rs in sorted(by_probe.items())}
    def holds(a: float, b: float, strict: bool = False) -> bool | None:
        if not (math.isfinite(a) and math.isfinite(b)):
            return None  # not evaluated: e.g. no gain could be fitted on any pair
        return a < b if strict else a <= b

    targets: dict[str, Any] = {}
    if rows:
        targets = {
            "learned_with_curve_le_without": holds(means["learned_curve"], means["learned"]),
            "learned_with_curve_le_without_every_probe": all(holds(m["learned_curve"], m["learned"]) is not False
                                                             for m in per_probe.values()),
            "learned_with_curve_and_gain_le_without": holds(means["learned_curve_gain"], means["learned"]),
        }
        for key in CALIBRATED:
            targets[f"{key}_le_{TARGET_CALIBRATED_FDR_PCT:g}pct"] = holds(means[key], TARGET_CALIBRATED_FDR_PCT)
            targets[f"{key}_lt_speckle_calibrated"] = holds(means[key], means["speckle_curve"], strict=True)
    return {"pairs": rows, "mean_fdr_length_pct": means, "per_probe_mean_fdr_length_pct": per_probe,
            "targets": targets,
            "definition": __doc__.split("\n\n")[1].replace("\n", " ")}


def transfer_table(result: dict[str, Any]) -> str:
    """Markdown: one row per pair, then the means, FDR % of length."""
    head = ("| calibrated on | estimated | " + " | ".join(label for _, label in VARIANTS)
            + " | gain (typical curve / probe curve) | in-plane floor |")
    lines = [head, "|" + "---|" * (len(VARIANTS) + 4)]

    def cell(v: Any) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.1f}"

    def cell2(v: Any) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"

    for r in result["pairs"]:
        lines.append(f"| {r['calibrated_on']} | {r['estimated']} | " + " | ".join(cell(r[k]) for k, _ in VARIANTS)
                     + f" | {cell2(r['gain'])} / {cell2(r['gain_curve'])} | {cell(r.get('in_plane_floor'))} |")
    m = result["mean_fdr_length_pct"]
    means = " | ".join(cell(m[k]) for k, _ in VARIANTS)
    lines.append(f"| mean over {len(result['pairs'])} pairs | | {means} | | {cell(m.get('in_plane_floor'))} |")
    return "\n".join(lines)


def targets_lines(result: dict[str, Any]) -> str:
    """The issue's calibration targets, met or not, with the figures."""
    m, t = result["mean_fdr_length_pct"], result["targets"]
    if not t:
        return "- no pair of sweeps of one probe (nor a sweep long enough to split in halves): not evaluated"
    ok = lambda v: "not evaluated" if v is None else ("met" if v else "NOT met")  # noqa: E731
    label = dict(VARIANTS)
    lines = [
        f"- learned with the probe curve <= learned without: {ok(t['learned_with_curve_le_without'])} "
        f"({m['learned_curve']:.1f} % against {m['learned']:.1f} %; "
        f"unchecked curve {m['learned_curve_unchecked']:.1f} %)",
        f"- the same on every probe: {ok(t['learned_with_curve_le_without_every_probe'])} ("
        + "; ".join(f"{p}: {pm['learned_curve']:.1f} against {pm['learned']:.1f} %"
                    for p, pm in result.get("per_probe_mean_fdr_length_pct", {}).items()) + ")",
        f"- learned with the probe curve and gain <= learned without: {ok(t['learned_with_curve_and_gain_le_without'])}"
        f" ({m['learned_curve_gain']:.1f} % against {m['learned']:.1f} %)",
    ]
    for key in CALIBRATED:
        lines.append(f"- {label[key]}: <= {TARGET_CALIBRATED_FDR_PCT:g} % "
                     f"{ok(t[f'{key}_le_{TARGET_CALIBRATED_FDR_PCT:g}pct'])}, better than speckle with the probe curve "
                     f"{ok(t[f'{key}_lt_speckle_calibrated'])} ({m[key]:.1f} % against {m['speckle_curve']:.1f} %)")
    floor = m.get("in_plane_floor", math.nan)
    if math.isfinite(floor) and floor > 0.5 * TARGET_CALIBRATED_FDR_PCT:
        lines.append(f"- the estimated sweeps' in-plane floor is {floor:.1f} %: their true poses move in-plane where "
                     "the images do not (see the tracking check), so a method that reads in-plane motion from the "
                     "images drifts no less against them")
    return "\n".join(lines)
