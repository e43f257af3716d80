"""``adapt_probe``: calibrate once on tracked sweeps of one probe, then estimate poses without a tracker.

Steps: check the sweeps (refusals come first, in seconds) -> split adaptation / held-out frames ->
fit the probe's decorrelation curve on the adaptation frames -> held-out drift before -> fit the
elevational gain of the shipped model on the adaptation frames (:mod:`freehandrecon.poses.elevation_gain`),
with the typical and with the fitted curve -> fine-tune the shipped pose model on the adaptation frames ->
keep the candidate (unchanged, gain, gain with speckle's rotations, fine-tuned) that drifts least on the
held-out frames -> refit the quality guard's statistics to the probe -> write ``probe_model.json``
(+ ``.safetensors``), ``probe_curve.json``, ``probe_guard.json`` (+ ``.safetensors``) and ``report.json``
into a hidden folder beside the output folder, moved into place only when everything succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import Cancelled, InputError
from ..poses.metrics import final_drift_rate_length_pct
from ..model_files import sha256_file
from ..sweep import Sweep
from .checks import HOLDOUT_FRACTION, check_sweeps, split_sweeps
from .finetune import FineTuneOptions, fine_tune, records_for

log = logging.getLogger(__name__)

MODEL_NAME = "probe_model"
CURVE_FILE = "probe_curve.json"
GUARD_NAME = "probe_guard"
OUTPUT_FILES = (f"{MODEL_NAME}.json", f"{MODEL_NAME}.safetensors", CURVE_FILE, f"{GUARD_NAME}.json",
                f"{GUARD_NAME}.safetensors", "report.json")
Progress = Callable[[str, float], None]
HYBRID = "gain_typical_curve_speckle_rotations"


@dataclass
class AdaptOptions:
    """What ``adapt`` starts from and how long it trains."""

    finetune: FineTuneOptions = field(default_factory=FineTuneOptions)
    base_model: str | Path | None = None  # default: the shipped pose model
    device: str = "cpu"
    threads: int | None = None
    holdout_fraction: float = HOLDOUT_FRACTION


def fit_curve(sweeps: list[Sweep]):
    """The probe's decorrelation curve from tracked sweeps (``calibrate-speckle`` on each, averaged by frames)."""
    from ..poses.speckle import MIN_CALIBRATION_BANDS, DecorrelationCurve

    curves = [DecorrelationCurve.calibrate(s, min_bands=MIN_CALIBRATION_BANDS) for s in sweeps]
    if len(curves) == 1:
        c = curves[0]
    else:  # same frames and spacing (checked): average, weighted by frames, over every band and distance
        depths = np.unique(np.concatenate([c.depths_mm for c in curves]))
        dist = np.linspace(0.0, max(float(c.distances_mm[-1]) for c in curves), curves[0].distances_mm.size)
        w = np.array([s.num_frames for s in sweeps], np.float64)
        rho = sum(wi * c.correlation(depths[:, None], dist[None, :]) for wi, c in zip(w, curves)) / w.sum()
        c = DecorrelationCurve(depths, dist, rho, meta={"patch_height_mm": curves[0].meta["patch_height_mm"],
                                                        "sweeps": [c.meta for c in curves]})
    c.source = f"probe curve fitted by freehandrecon adapt on {sum(s.num_frames for s in sweeps)} tracked frames"
    notes = list(dict.fromkeys(w for k in curves for w in k.meta.get("warnings", [])))  # e.g. tissue structure
    if notes:
        c.meta["warnings"] = notes
    return c


def heldout_drift(heldout: list[tuple[str, Sweep]], method: str, *, model=None, curve=None,
                  device: str = "cpu") -> dict[str, Any]:
    """Final drift rate (% of trajectory length) of ``method`` on each held-out sweep, and their mean."""
    from ..poses import estimate_poses

    per = {}
    for name, s in heldout:
        est = estimate_poses(s, method, model=model, curve=curve, sweep_direction="auto", device=device)
        per[name] = round(final_drift_rate_length_pct(s.image_to_world, est.image_to_world, s.frame_shape,
                                                      s.pixel_spacing), 2)
    return {"fdr_pct": round(float(np.mean(list(per.values()))), 2), "per_sweep": per}


def fit_gain(adapt: list[tuple[str, Sweep]], model, curve, device: str) -> float:
    """The elevational gain of ``model`` (with ``curve``) on the adaptation sweeps."""
    from ..poses import estimate_poses
    from ..poses.elevation_gain import fit_elevation_gain

    pairs = []
    for _, s in adapt:
        est = estimate_poses(s, "learned", model=model, curve=curve, sweep_direction="auto", device=device)
        pairs.append((s, est.relative_centre, est.direction))
    return fit_elevation_gain(pairs)


def _fraction_ood(guard, sweeps: list[tuple[str, Sweep]]) -> float:
    from ..quality import check_sweep

    flags = np.concatenate([check_sweep(s, guard=guard).frame_out for _, s in sweeps])
    return round(float(flags.mean()), 4)


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"Unknown device '{device}'.", "Use --device cpu or --device cuda.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU.",
                         "Use --device cpu, or install a CUDA build of PyTorch on a machine with a GPU.")


def adapt_probe(named: list[tuple[str, Sweep]], out_dir: str | Path, options: AdaptOptions | None = None, *,
                force: bool = False, progress: Progress | None = None,
                should_cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Adapt the learned pose model, the decorrelation curve and the quality guard to the probe of ``named``
    (``(name, tracked sweep)`` pairs) and write them into ``out_dir``; returns the report.

    Raises :class:`InputError` before any long work for sweeps it cannot learn from (see
    :func:`.checks.check_sweeps`), :class:`OutputExistsError` when ``out_dir`` holds earlier outputs and not
    ``force``, and :class:`Cancelled` when ``should_cancel`` says so; nothing is written unless all succeeded.
    """
    import torch

    from ..logic import check_outputs_free
    from ..poses.learned import load_model
    from ..quality import load_guard

    opts = options or AdaptOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file.", "Give a folder for the probe model (created if missing).")
    check_outputs_free(out_dir, OUTPUT_FILES, force)
    ft = opts.finetune
    if min(ft.steps_per_epoch, ft.batch_size) < 1 or ft.epochs < 0:
        raise InputError("Steps per epoch and batch size must be at least 1, and epochs at least 0.",
                         "Give positive values (--epochs 0 fits the elevational gain only, without fine-tuning).")
    if not 0.05 <= opts.holdout_fraction <= 0.5:
        raise InputError(f"Held-out fraction {opts.holdout_fraction} is outside 0.05-0.5.", "Use e.g. 0.3.")
    _check_device(opts.device)
    warnings = check_sweeps(named)
    split = split_sweeps(named, opts.holdout_fraction)
    model = load_model(opts.base_model, device=opts.device)
    base_name = model.meta.get("name")
    adapt_sweeps = [s for _, s in split.adapt]
    previous_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    seconds: dict[str, float] = {}

    def stage(name: str, fraction: float) -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("Adaptation was cancelled.", "Run it again when ready; nothing was written.")
        if progress is not None:
            progress(name, fraction)

    t_start = time.perf_counter()
    try:
        t = time.perf_counter()
        stage("curve", 0.0)
        curve = fit_curve(adapt_sweeps)
        warnings += curve.meta.get("warnings", [])
        stage("curve", 1.0)
        seconds["curve"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("before", 0.0)
        before = {"learned": heldout_drift(split.heldout, "learned", model=model, device=opts.device)}
        stage("before", 0.3)
        before["learned_fitted_curve"] = heldout_drift(split.heldout, "learned", model=model, curve=curve,
                                                       device=opts.device)
        stage("before", 0.6)
        before["speckle"] = heldout_drift(split.heldout, "speckle")
        before["speckle_fitted_curve"] = heldout_drift(split.heldout, "speckle", curve=curve)
        stage("before", 1.0)
        seconds["before"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("gain", 0.0)
        # Learned candidates, all from the base weights' own state: unchanged (typical curve), the fitted
        # elevational gain with the typical or the fitted curve, the first with speckle's tilt and yaw, and
        # fine-tuned; the one that drifts least on the held-out frames is kept. The bundle is cleared so that
        # "typical" means the typical-probe curve (a probe model adapted again: its curve is replaced by this one).
        model.bundle = {}
        base_gain = float(model.meta.pop("elevation_gain", 1.0))
        curves = {"typical": None, "probe": curve}
        candidates: dict[str, dict[str, Any]] = {}
        settings: dict[str, tuple[float, str, str]] = {"unchanged": (base_gain, "typical", "network")}
        model.meta["elevation_gain"] = base_gain
        candidates["unchanged"] = heldout_drift(split.heldout, "learned", model=model, device=opts.device)
        for which, c in curves.items():
            model.meta["elevation_gain"] = base_gain
            try:
                gain = base_gain * fit_gain(split.adapt, model, c, opts.device)
            except InputError as err:
                if ft.epochs == 0 and which == "probe":
                    raise
                warnings.append(f"No elevational gain with the {which} curve: {err.problem}")
                continue
            model.meta["elevation_gain"] = gain
            candidates[f"gain_{which}_curve"] = heldout_drift(split.heldout, "learned", model=model, curve=c,
                                                              device=opts.device)
            settings[f"gain_{which}_curve"] = (gain, which, "network")
        if "gain_typical_curve" in settings:  # the network's translations, speckle's tilt and yaw (fitted curve)
            gain = settings["gain_typical_curve"][0]
            model.meta.update(elevation_gain=gain, learned_curve="typical", out_of_plane_rotations="speckle")
            model.bundle = {"curve": curve}  # what speckle's part reads; the network keeps the typical curve
            candidates[HYBRID] = heldout_drift(split.heldout, "learned", model=model, device=opts.device)
            settings[HYBRID] = (gain, "typical", "speckle")
            model.bundle = {}
            for key in ("learned_curve", "out_of_plane_rotations"):
                model.meta.pop(key)
        model.meta.pop("elevation_gain")  # fine-tuning learns the step itself
        stage("gain", 1.0)
        seconds["gain"] = time.perf_counter() - t

        trained = {"steps": 0, "history": []}
        if ft.epochs > 0:
            t = time.perf_counter()
            base_state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
            records = records_for(split.adapt, model, curve)
            trained = fine_tune(model, records, ft, progress=progress, should_cancel=should_cancel)
            seconds["adapt"] = time.perf_counter() - t
            t = time.perf_counter()
            stage("after", 0.0)
            candidates["fine_tuned"] = heldout_drift(split.heldout, "learned", model=model, curve=curve,
                                                     device=opts.device)
            settings["fine_tuned"] = (1.0, "probe", "network")
            stage("after", 1.0)
            seconds["after"] = time.perf_counter() - t
        kept = min(candidates, key=lambda k: candidates[k]["fdr_pct"])
        after = candidates[kept]
        if kept != "fine_tuned" and ft.epochs > 0:
            model.net.load_state_dict(base_state)
        kept_gain, learned_curve, rotations = settings[kept]
        if kept_gain != 1.0:
            model.meta["elevation_gain"] = kept_gain
        model.meta["learned_curve"] = learned_curve
        model.meta["out_of_plane_rotations"] = rotations

        t = time.perf_counter()
        stage("guard", 0.0)
        from .probe_guard import refit_guard

        shipped_guard = load_guard()
        guard = refit_guard(shipped_guard, adapt_sweeps)
        guard_report = {"heldout_fraction_out_before": _fraction_ood(shipped_guard, split.heldout),
                        "heldout_fraction_out_after": _fraction_ood(guard, split.heldout),
                        "ood_threshold": round(float(guard.thresholds["ood"]), 4),
                        "adapted_from": shipped_guard.meta.get("name")}
        stage("guard", 1.0)
        seconds["guard"] = time.perf_counter() - t
    finally:
        torch.set_num_threads(previous_threads)

    learned_before, learned_after = before["learned"]["fdr_pct"], after["fdr_pct"]
    if learned_after > learned_before:
        warnings.append(f"The adapted model drifts more on the held-out frames than the shipped one "
                        f"({learned_after:.1f} % against {learned_before:.1f} % of the path): give longer or more "
                        "tracked sweeps, or keep using the shipped model.")
    speckle_after = before["speckle_fitted_curve"]["fdr_pct"]
    recommended = "speckle" if speckle_after < learned_after else "learned"
    if recommended == "speckle":
        warnings.append(f"On the held-out frames speckle decorrelation with the fitted curve drifts less than the "
                        f"adapted learned model ({speckle_after:.1f} % against {learned_after:.1f} % of the path): "
                        "estimate with --method speckle (--poses speckle) and --model pointing at this probe model.")
    report = {
        "freehandrecon_version": __version__,
        "inputs": [{"name": n, "frames": s.num_frames, "frame_size": [s.frame_shape[1], s.frame_shape[0]],
                    "pixel_spacing_mm": [float(v) for v in s.pixel_spacing]} for n, s in named],
        "split": split.description,
        "adaptation": {"sweeps": [n for n, _ in split.adapt], "frames": int(sum(s.num_frames for s in adapt_sweeps))},
        "heldout": {"sweeps": [n for n, _ in split.heldout],
                    "frames": int(sum(s.num_frames for _, s in split.heldout)),
                    "metric": "final drift rate, % of the tracked trajectory length (FDR)",
                    "learned": {"before_pct": learned_before,
                                "before_with_fitted_curve_pct": before["learned_fitted_curve"]["fdr_pct"],
                                "after_pct": learned_after,
                                "elevation_gain": round(kept_gain, 4),
                                "learned_curve": learned_curve,
                                "kept": kept,
                                "candidates_pct": {k: v["fdr_pct"] for k, v in candidates.items()},
                                "candidate_elevation_gains": {k: round(g, 4) for k, (g, _, _) in settings.items()},
                                "out_of_plane_rotations": rotations,
                                "per_sweep": {"before": before["learned"]["per_sweep"],
                                              "before_with_fitted_curve": before["learned_fitted_curve"]["per_sweep"],
                                              **{k: v["per_sweep"] for k, v in candidates.items()},
                                              "after": after["per_sweep"]}},
                    "speckle": {"before_pct": before["speckle"]["fdr_pct"],
                                "after_pct": before["speckle_fitted_curve"]["fdr_pct"],
                                "per_sweep": {"before": before["speckle"]["per_sweep"],
                                              "after": before["speckle_fitted_curve"]["per_sweep"]}},
                    "recommended_method": recommended,
                    "note": "learned before: the base model with its default curve; after: the kept candidate, the "
                            "one of candidates_pct that drifts least on these held-out frames (unchanged weights with "
                            "the typical curve; the fitted elevational gain with the typical or the fitted curve; the "
                            "first with speckle's tilt and yaw through the fitted curve; fine-tuned with the fitted "
                            "curve), so 'after' is slightly optimistic. speckle before: "
                            "the default curve; after: the fitted curve. recommended_method: the lower of learned "
                            "after and speckle after."},
        "quality_guard": guard_report,
        "base_model": base_name,
        "epochs": ft.epochs, "steps": trained["steps"], "batch_size": ft.batch_size, "learning_rate": ft.lr,
        "training_history": trained["history"],
        "device": opts.device, "threads": int(opts.threads or previous_threads),
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(time.perf_counter() - t_start, 1)},
        "warnings": warnings,
        "outputs": list(OUTPUT_FILES),
    }
    if should_cancel is not None and should_cancel():
        raise Cancelled("Adaptation was cancelled.", "Run it again when ready; nothing was written.")
    _write(out_dir, model, curve, guard, report, base_name, asdict(ft))
    for w in warnings:
        log.warning(w)
    return report


def _write(out_dir: Path, model, curve, guard, report: dict[str, Any], base_name: Any, recipe: dict) -> None:
    """Write every output into a hidden folder beside ``out_dir``, then move them into place together."""
    from ..poses.learned import load_model, save_model
    from ..quality import save_guard

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = Path(tempfile.mkdtemp(prefix=".freehandrecon-adapt-", dir=out_dir.parent.absolute()))
    try:
        curve.save(tmp / CURVE_FILE)
        _, gjs = save_guard(guard.net, guard.stats, guard.thresholds, guard.sites, tmp, GUARD_NAME,
                            extra={"adapted_from": report["quality_guard"]["adapted_from"],
                                   "adaptation": {"frames": report["adaptation"]["frames"],
                                                  "sweeps": report["adaptation"]["sweeps"]}})
        heldout = report["heldout"]
        extra = {"adapted_from": base_name,
                 "curve": {"file": CURVE_FILE, "sha256": sha256_file(tmp / CURVE_FILE)},
                 "guard": {"file": gjs.name, "sha256": sha256_file(gjs)},
                 "recipe": {"command": "freehandrecon adapt", **recipe},
                 "adaptation": {k: report[k] for k in ("inputs", "split", "adaptation")},
                 **({"elevation_gain": model.meta["elevation_gain"]} if "elevation_gain" in model.meta else {}),
                 "learned_curve": model.meta["learned_curve"],
                 "out_of_plane_rotations": model.meta["out_of_plane_rotations"],
                 "recommended_method": heldout["recommended_method"],
                 "kept": heldout["learned"]["kept"],
                 "metrics": {"heldout_fdr_pct": {"learned_before": heldout["learned"]["before_pct"],
                                                 "learned_after": heldout["learned"]["after_pct"],
                                                 "speckle_before": heldout["speckle"]["before_pct"],
                                                 "speckle_after": heldout["speckle"]["after_pct"]}}}
        save_model(model.net, model.scales, tmp, MODEL_NAME, extra)
        load_model(tmp / f"{MODEL_NAME}.json")  # what was written loads, checksums and bundle included
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # mkdtemp and some writers create owner-only files: make them like any other output
            f.chmod(0o666 & ~umask)
        if not out_dir.exists():
            tmp.chmod(0o777 & ~umask)
            os.rename(tmp, out_dir)
            tmp = None
        else:
            for name in OUTPUT_FILES:
                os.replace(tmp / name, out_dir / name)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
