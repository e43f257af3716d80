"""Evaluation of sensorless pose estimators against known poses (``freehandrecon evaluate``).

Sweeps come from the simulator (held-out site and unseen seeds by default), from tracked files
(their tracker poses are the truth), or from a bundled set (``--set independent``: sweeps made with an
independent simulator, pymust, never used for training or model selection; ``--set real``: real tracked
sweeps with speckle). Each method runs through
:func:`freehandrecon.poses.estimate_poses` with ``sweep_direction="auto"`` (simulated sweeps carry
their direction in metadata; tracked ones give it by their net motion), and
:func:`freehandrecon.poses.metrics.evaluate_poses` scores it. Writes ``report.json`` and PNG plots.
``--curve typical`` scores simulated sweeps with the typical probe's curve instead of their own beam model (as an
uncalibrated probe would be scored), ``--curve phantom`` with a curve calibrated on a simulated speckle phantom of
each sweep's probe (:mod:`.phantom_curve`); ``--guard`` adds whether the quality guard's verdict predicts the learned
poses' drift (:mod:`.guard_vs_error`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..poses import metrics
from ..errors import Cancelled, InputError, OutputExistsError
from ..sweep import Sweep

ESTIMATORS = ("learned", "speckle")
DEFAULT_SEED = 20000  # training uses seeds < 10000 and validation 10000-19999; evaluation never sees either
TABLE_COLUMNS = (("gpe_mm", "GPE (mm)"), ("lpe_mm", "LPE (mm)"), ("final_drift_mm", "final drift (mm)"),
                 ("final_drift_rate_length_pct", "FDR (% length)"),
                 ("final_drift_rate_distance_pct", "FDR (% start-end)"), ("average_drift_mm", "avg drift (mm)"),
                 ("max_drift_mm", "max drift (mm)"), ("frames_per_second", "frames/s"))
TARGET_FDR_PCT, TARGET_RATIO, TARGET_LPE_MM, TARGET_FPS = 5.0, 2.0, 0.1, 200.0

Progress = Callable[[str, float], None]


# --- sweeps ----------------------------------------------------------------------------------

def simulated_sweeps(sites: Iterable[str], count: int, seed: int = DEFAULT_SEED, frames: int = 100,
                     kind: str | None = None) -> Iterator[tuple[str, Sweep]]:
    """``count`` simulated sweeps per site with seeds ``seed, seed+1, ...`` (generated lazily)."""
    from ..simulate import random_sweep

    for site in sites:
        for i in range(count):
            s = seed + i
            yield f"{site}-seed{s}", random_sweep(site, s, num_frames=frames, kind=kind)


def file_sweeps(paths: Iterable[Path], **read_options: Any) -> Iterator[tuple[str, Sweep]]:
    """Tracked sweep files (any format :func:`freehandrecon.io.read_sweep` reads); poses are required."""
    from ..io import read_sweep

    for p in paths:
        sweep = read_sweep(p, **read_options)
        if sweep.image_to_world is None:
            raise InputError(f"'{p}' has no tracked poses to evaluate against.",
                             "Give the tracker transforms and calibration (--plus-config or --calibration).")
        yield Path(p).name, sweep


SETS = ("independent", "real")
DATA_ROOT = Path(__file__).resolve().parents[3] / "Testing" / "Data"
# Real tracked sweeps with speckle bundled in Testing/Data (file, PLUS config): the spine phantom (IGSIO) and a
# linear-probe sweep over soft tissue and a bone surface (PLUS test data, BoneUltrasound_L14), 21 frames each. The
# other tracked PLUS test sweeps (N-wire and USTC stepper recordings) show wires in water without speckle, and the
# USTC ones have no image calibration, so they say nothing about speckle-based pose estimation.
REAL_SWEEPS = (("igsio/SpinePhantomFreehand.igs.mha", "plus/PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"),
               ("plus/BoneUltrasound_L14.igs.mha", "plus/BoneUltrasound_L14_config.xml"))


def set_sweeps(name: str, data_root: str | Path | None = None) -> list[tuple[str, Path, Path | None]]:
    """The files of a named evaluation set: ``(name, sweep file, PLUS config or None)``.

    ``independent``: the sweeps made with an independent simulator (pymust) in ``Testing/Data/independent``
    (never used for training or model selection); ``real``: real tracked sweeps with speckle
    (:data:`REAL_SWEEPS`).
    """
    root = Path(data_root) if data_root is not None else DATA_ROOT
    if name not in SETS:
        raise InputError(f"Unknown evaluation set '{name}'.", f"Use one of: {', '.join(SETS)}.")
    if name == "independent":
        files = sorted((root / "independent").glob("*.npz"))
        out = [(f.stem, f, None) for f in files]
    else:
        out = [(Path(f).name, root / f, root / c) for f, c in REAL_SWEEPS if (root / f).exists()]
    if not out:
        raise InputError(f"No sweeps of the '{name}' set under {root}.",
                         "Run from a source checkout (the sets live in Testing/Data) or pass --data-root.")
    return out


def phantom_sweeps(data_root: str | Path | None = None) -> list[tuple[str, Sweep]]:
    """The independent set's speckle-phantom calibration sweeps (``independent/phantom/*.npz``, one per probe)."""
    from ..io import read_sweep

    root = Path(data_root) if data_root is not None else DATA_ROOT
    files = sorted((root / "independent" / "phantom").glob("*.npz"))
    if not files:
        raise InputError(f"No speckle-phantom calibration sweeps under {root / 'independent' / 'phantom'}.",
                         "Run from a source checkout, pass --data-root, or use --probe-calibration other.")
    return [(f.stem, read_sweep(f)) for f in files]


def named_set(name: str, data_root: str | Path | None = None) -> Iterator[tuple[str, Sweep]]:
    """The sweeps of a named set (:func:`set_sweeps`), read lazily."""
    from ..io import read_sweep

    for label, path, config in set_sweeps(name, data_root):
        sweep = read_sweep(path, plus_config=config) if config is not None else read_sweep(path)
        if sweep.image_to_world is None:
            raise InputError(f"'{path}' has no poses to evaluate against.", "Check the set's files.")
        yield label, sweep


# --- evaluation ------------------------------------------------------------------------------

def _round(v: Any, digits: int = 5) -> Any:
    if isinstance(v, float):
        return v if not math.isfinite(v) else round(v, digits)
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x, digits) for x in v]
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def evaluate_sweep(sweep: Sweep, methods: Iterable[str], *, model: str | Path | None = None,
                   device: str = "cpu", progress: Progress | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   curve: Any = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run each method on ``sweep`` and score it against the sweep's poses.

    ``curve``: the decorrelation curve both estimators use (a :class:`~freehandrecon.poses.speckle.DecorrelationCurve`
    or a JSON path); default, for simulated sweeps, their probe's own curve, else the typical probe's.

    Returns ``(results, poses)``: per method the metrics (with per-frame lists), ``seconds``,
    ``frames_per_second``, ``warnings`` and the estimator's ``info``; and the estimated poses.
    """
    from ..poses import estimate_poses

    if sweep.image_to_world is None:
        raise InputError("The sweep has no true poses to evaluate against.", "Use a tracked or simulated sweep.")
    results: dict[str, Any] = {}
    poses: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "speckle":  # probe calibration is a one-off per probe: keep it out of the timing
            from ..poses.speckle import curve_for

            curve_for(sweep, curve)
        est = estimate_poses(sweep, method, model=model if method == "learned" else None, device=device,
                             sweep_direction="auto", curve=curve,
                             progress=progress, should_cancel=should_cancel)
        r = metrics.evaluate_poses(sweep.image_to_world, est.image_to_world, sweep.frame_shape, sweep.pixel_spacing,
                                   per_frame=True)
        r.update(seconds=est.seconds, frames_per_second=est.frames_per_second, warnings=list(est.warnings),
                 direction=est.direction, info=_jsonable(est.info))
        results[method] = r
        poses[method] = est.image_to_world
    return results, poses


def no_motion_baseline(sweep: Sweep) -> dict[str, float]:
    """Drift rates of the estimate "the probe never moved" (every frame at the first pose): the score of
    an estimator that has learned nothing."""
    true = sweep.image_to_world
    still = np.repeat(true[:1], sweep.num_frames, axis=0)
    r = metrics.evaluate_poses(true, still, sweep.frame_shape, sweep.pixel_spacing)
    return {k: r[k] for k in ("final_drift_mm", "final_drift_rate_length_pct", "final_drift_rate_distance_pct")}


def _stats(values: Iterable[float]) -> dict[str, float]:
    """Mean and median of the finite values (NaN when there are none)."""
    vals = np.asarray(list(values), dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return {"mean": float(vals.mean()) if vals.size else float("nan"),
            "median": float(np.median(vals)) if vals.size else float("nan")}


def aggregate(sweeps: list[dict[str, Any]], methods: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and median over sweeps of every scalar metric, per method (NaN rates are skipped)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        rows = [s["results"][m] for s in sweeps if m in s["results"]]
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if rows else []
        agg = {k: _stats(r[k] for r in rows) for k in keys}
        if rows:
            for dof in metrics.DOF_NAMES:
                agg[f"mae_{dof}"] = _stats(r["per_dof_mae"][dof] for r in rows)
            for group in metrics.ATTRIBUTION_GROUPS:
                agg[f"fdr_length_pct_with_true_{group}"] = _stats(
                    r["final_drift_rate_length_pct_with_true"][group] for r in rows)
        out[m] = agg
    return out


def check_targets(agg: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The issue's targets from the mean metrics: learned FDR <= 5 % of length and >= 2x lower than
    speckle's, learned LPE <= 0.1 mm, learned >= 200 frames/s. ``None`` where a method was not run."""
    def mean(method: str, key: str) -> float | None:
        v = agg.get(method, {}).get(key, {}).get("mean")
        return None if v is None or not math.isfinite(v) else float(v)

    fdr_l, fdr_s = mean("learned", "final_drift_rate_length_pct"), mean("speckle", "final_drift_rate_length_pct")
    lpe_l, fps_l = mean("learned", "lpe_mm"), mean("learned", "frames_per_second")
    t = {
        "learned_fdr_length_le_5pct": None if fdr_l is None else fdr_l <= TARGET_FDR_PCT,
        "learned_fdr_2x_lower_than_speckle": None if fdr_l is None or fdr_s is None else fdr_l * TARGET_RATIO <= fdr_s,
        "learned_lpe_le_0.1mm": None if lpe_l is None else lpe_l <= TARGET_LPE_MM,
        "learned_ge_200_frames_per_s": None if fps_l is None else fps_l >= TARGET_FPS,
    }
    t["all_met"] = all(v is True for v in t.values())
    return t


def markdown_table(agg: dict[str, dict[str, dict[str, float]]], stat: str = "mean") -> str:
    """The summary table (one row per method) in Markdown."""
    lines = ["| method | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
             "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for m, a in agg.items():
        cells = []
        for k, _ in TABLE_COLUMNS:
            v = a.get(k, {}).get(stat, float("nan"))
            cells.append("-" if not math.isfinite(v) else (f"{v:.0f}" if k == "frames_per_second" else f"{v:.3g}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attribution_table(agg: dict[str, dict[str, dict[str, float]]], stat: str = "mean") -> str:
    """Where the drift comes from, in Markdown: per method the FDR (% of length) as estimated and with each
    group of motions replaced by the truth (:func:`metrics.drift_attribution`), and the elevational step ratio."""
    groups = list(metrics.ATTRIBUTION_GROUPS)
    lines = ["| method | FDR % | " + " | ".join(f"true {g}" for g in groups) + " | tz est/true |",
             "|---" * (len(groups) + 3) + "|"]

    def cell(v: float, fmt: str = "{:.3g}") -> str:
        return "-" if not math.isfinite(v) else fmt.format(v)

    for m, a in agg.items():
        cells = [cell(a.get("final_drift_rate_length_pct", {}).get(stat, float("nan")))]
        cells += [cell(a.get(f"fdr_length_pct_with_true_{g}", {}).get(stat, float("nan"))) for g in groups]
        cells.append(cell(a.get("elevation_step_ratio", {}).get(stat, float("nan")), "{:.3f}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_attribution_table(entries: list[dict[str, Any]]) -> str:
    """Per sweep and method, in Markdown: FDR (% of length), FDR with each group of relative motions taken
    from the truth (:func:`metrics.drift_attribution`), the elevational step ratio and the mean signed
    per-frame tilt (rx) error."""
    groups = list(metrics.ATTRIBUTION_GROUPS)
    lines = ["| sweep | method | FDR % | " + " | ".join(f"true {g}" for g in groups)
             + " | tz est/true | rx bias deg/frame |", "|---" * (len(groups) + 5) + "|"]

    def cell(v: Any, fmt: str = "{:.3g}") -> str:
        return "-" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))

    for e in entries:
        for m, r in e["results"].items():
            with_true = r.get("final_drift_rate_length_pct_with_true", {})
            cells = [cell(r.get("final_drift_rate_length_pct"))] + [cell(with_true.get(g)) for g in groups]
            cells += [cell(r.get("elevation_step_ratio"), "{:.3f}"),
                      cell(r.get("per_dof_bias", {}).get("rx_deg"), "{:+.3f}")]
            lines.append(f"| {e['name']} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tracking_table(entries: list[dict[str, Any]]) -> str:
    """Per sweep, in Markdown, the tracking check (:mod:`freehandrecon.poses.tracking_check`): the in-plane
    motion the true poses have and the images do not show, and the drift it leaves to a method that reads in-plane
    motion from the images."""
    lines = ["| sweep | true in-plane mm | images' in-plane mm | not in the images mm | elevational path mm "
             "| as a rotation, deg | in-plane floor FDR % | consistent |", "|---" * 8 + "|"]
    for e in entries:
        c = e.get("tracking_check")
        if c is None:
            continue
        t, i = c["tracked_in_plane_mm"], c["image_in_plane_mm"]
        floor = c["in_plane_floor_fdr_pct"]
        lines.append(f"| {e['name']} | {t[0]:+.2f}, {t[1]:+.2f} | {i[0]:+.2f}, {i[1]:+.2f} | "
                     f"{c['disagreement_mm']:.2f} | {c['elevational_path_mm']:.1f} | {c['angle_deg']:.1f} | "
                     f"{'-' if floor is None else f'{floor:.1f}'} | {'yes' if c['consistent'] else 'NO'} |")
    return "\n".join(lines)


def set_summary(entries: list[dict[str, Any]], methods: Iterable[str]) -> dict[str, Any]:
    """One set's headline numbers: mean FDR (% of length and % of start-end distance) per method and of the
    no-motion baseline, and per method the mean tilt (rx) bias in degrees per frame over the pure
    translations (sweeps whose ``trajectory`` is ``translation`` or ``linear``; None when there are none), signed
    and absolute (biases of opposite signs cancel in the signed mean); and the tracking check
    (:mod:`freehandrecon.poses.tracking_check`): on how many sweeps the true poses' in-plane motion is not what the
    images show, and the mean in-plane floor FDR, the drift a method that reads in-plane motion from the images
    cannot remove."""
    def mean(vals: list[float]) -> float:
        v = np.asarray([x for x in vals if x is not None and math.isfinite(x)], dtype=np.float64)
        return float(v.mean()) if v.size else float("nan")

    out: dict[str, Any] = {"sweeps": len(entries), "methods": {}}
    pure = [e for e in entries if e.get("trajectory") in ("translation", "linear")]
    for m in methods:
        rows = [e["results"][m] for e in entries if m in e["results"]]
        out["methods"][m] = {
            "fdr_length_pct": mean([r["final_drift_rate_length_pct"] for r in rows]),
            "fdr_distance_pct": mean([r["final_drift_rate_distance_pct"] for r in rows]),
            "tilt_bias_deg_per_frame_pure_translation": (
                mean([e["results"][m]["per_dof_bias"]["rx_deg"] for e in pure if m in e["results"]])
                if pure else None),
            "tilt_abs_bias_deg_per_frame_pure_translation": (
                mean([abs(e["results"][m]["per_dof_bias"]["rx_deg"]) for e in pure if m in e["results"]])
                if pure else None)}
    out["no_motion"] = {"fdr_length_pct": mean([e["no_motion"]["final_drift_rate_length_pct"] for e in entries]),
                        "fdr_distance_pct": mean([e["no_motion"]["final_drift_rate_distance_pct"] for e in entries])}
    out["pure_translations"] = len(pure)
    checks = [e["tracking_check"] for e in entries if "tracking_check" in e]
    if checks:
        out["tracking_check"] = {
            "inconsistent": sum(not c["consistent"] for c in checks),
            "in_plane_floor_fdr_pct": mean([c["in_plane_floor_fdr_pct"] for c in checks]),
            "max_angle_deg": max(c["angle_deg"] for c in checks)}
    return out


def summary_line(label: str, summary: dict[str, Any]) -> str:
    """``set: N sweeps | learned FDR x % | speckle FDR y % | no-motion FDR z % | tilt bias ...`` (FDR in %
    of length, start-end distance in brackets)."""
    def pct(d: dict[str, Any]) -> str:
        a, b = d["fdr_length_pct"], d["fdr_distance_pct"]
        return "-" if not math.isfinite(a) else f"{a:.1f} % ({b:.1f} % start-end)"

    parts = [f"{label}: {summary['sweeps']} sweeps"]
    for m, d in summary["methods"].items():
        parts.append(f"{m} FDR {pct(d)}")
    parts.append(f"no-motion FDR {pct(summary['no_motion'])}")
    tilts = []
    for m, d in summary["methods"].items():
        t, a = d["tilt_bias_deg_per_frame_pure_translation"], d["tilt_abs_bias_deg_per_frame_pure_translation"]
        tilts.append(f"{m} {t:+.3f} (|.| {a:.3f})" if t is not None and math.isfinite(t) else f"{m} n/a")
    parts.append(f"tilt bias deg/frame on {summary['pure_translations']} pure translations: " + ", ".join(tilts))
    tc = summary.get("tracking_check")
    if tc:
        parts.append(f"tracked in-plane motion not in the images on {tc['inconsistent']} of {summary['sweeps']} "
                     f"sweeps (up to {tc['max_angle_deg']:.1f} deg; in-plane floor FDR "
                     f"{tc['in_plane_floor_fdr_pct']:.1f} %)")
    return " | ".join(parts)


def targets_text(targets: dict[str, Any], agg: dict[str, Any]) -> str:
    """One line per target, stating whether the measured numbers meet it."""
    def fmt(v: Any) -> str:
        return "not evaluated" if v is None else ("met" if v else "NOT met")

    def mean(method: str, key: str) -> str:
        v = agg.get(method, {}).get(key, {}).get("mean")
        return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"

    return "\n".join([
        f"- learned FDR <= 5 % of length: {fmt(targets['learned_fdr_length_le_5pct'])} "
        f"(learned {mean('learned', 'final_drift_rate_length_pct')} %)",
        f"- learned FDR >= 2x lower than speckle: {fmt(targets['learned_fdr_2x_lower_than_speckle'])} "
        f"(speckle {mean('speckle', 'final_drift_rate_length_pct')} %)",
        f"- learned LPE <= 0.1 mm: {fmt(targets['learned_lpe_le_0.1mm'])} (learned {mean('learned', 'lpe_mm')} mm)",
        f"- learned >= 200 frames/s: {fmt(targets['learned_ge_200_frames_per_s'])} "
        f"(learned {mean('learned', 'frames_per_second')} frames/s)",
    ])


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_evaluation(sweeps: Iterable[tuple[str, Sweep]], methods: Iterable[str], out_dir: str | Path, *,
                   force: bool = False, plots: int = 3, model: str | Path | None = None, device: str = "cpu",
                   total: int | None = None, progress: Progress | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   settings: dict[str, Any] | None = None, probe_calibration: bool = False,
                   curve: Any = None, guard: bool = False,
                   phantoms: list[tuple[str, Sweep]] | None = None) -> dict[str, Any]:
    """Evaluate every sweep with every method; write ``report.json`` and PNG plots (trajectories and
    per-frame errors of the first ``plots`` sweeps) into ``out_dir``. Returns the report.

    ``probe_calibration`` adds ``report["probe_calibration"]``: each sweep estimated with the calibration
    fitted on another sweep of its probe (:mod:`.probe_transfer`), or with ``phantoms`` on its probe's
    speckle-phantom sweep. ``curve``: see :func:`evaluate_sweep`.
    ``guard`` runs the quality guard on every sweep and adds ``report["guard_vs_error"]``: does its verdict
    predict the learned poses' drift (:mod:`.guard_vs_error`)? It needs the learned method.

    Refuses to overwrite an existing report without ``force``; outputs appear only when all succeeded.
    """
    from . import plots as plotting
    from ..io.common import atomic_outputs
    from ..poses.tracking_check import check_tracking

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("No methods to evaluate.", f"Give some of: {', '.join(ESTIMATORS)}.")
    bad = [m for m in methods if m not in ESTIMATORS]
    if bad:
        raise InputError(f"Unknown method(s): {', '.join(bad)}.", f"Use some of: {', '.join(ESTIMATORS)}.")
    if guard and "learned" not in methods:
        raise InputError("--guard scores the quality guard against the learned poses' drift, but the learned method "
                         "is not evaluated.", "Add learned to --methods.")
    loaded_guard = None
    if guard:
        from ..quality import load_guard

        loaded_guard = load_guard()  # before any slow work: a missing guard is an error now, not after the poses
    out_dir = Path(out_dir)
    if (out_dir / "report.json").exists() and not force:
        raise OutputExistsError(f"{out_dir} already holds an evaluation report.",
                                "Choose another --out folder, or pass --force to overwrite it.")
    entries: list[dict[str, Any]] = []
    figures: list[tuple[str, Callable[[Path], Any]]] = []
    kept: list[tuple[str, Sweep]] = []
    t0 = time.perf_counter()
    for i, (name, sweep) in enumerate(sweeps):
        if probe_calibration:
            kept.append((name, sweep))
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        inner = None
        if progress is not None and total:
            inner = lambda stage, f, i=i: progress("evaluate", min(1.0, (i + f) / total))  # noqa: E731
        results, poses = evaluate_sweep(sweep, methods, model=model, device=device, progress=inner,
                                        should_cancel=should_cancel,
                                        curve=curve(sweep) if callable(curve) else curve)
        meta = sweep.metadata or {}
        entries.append({"name": name, "frames": sweep.num_frames, "frame_shape": list(sweep.frame_shape),
                        "pixel_spacing_mm": list(sweep.pixel_spacing),
                        **{k: _jsonable(meta[k]) for k in ("site", "seed", "trajectory", "sweep_direction", "source",
                                                           "probe", "simulator")
                           if k in meta},
                        "results": _round(results), "no_motion": _round(no_motion_baseline(sweep)),
                        "tracking_check": check_tracking(sweep)})
        if loaded_guard is not None:
            from ..quality import check_sweep
            from .guard_vs_error import guard_entry

            entries[-1]["guard"] = guard_entry(check_sweep(sweep, guard=loaded_guard))
        if i < plots:
            safe = _safe_name(name)
            true, shape, spacing = sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing
            figures.append((f"trajectory_{safe}.png",
                            lambda p, t=true, e=poses, s=shape, sp=spacing, n=name:
                            plotting.plot_trajectories(p, t, e, s, sp, f"{n}: frame-centre trajectories (mm)")))
            figures.append((f"errors_{safe}.png",
                            lambda p, r=results, n=name: plotting.plot_errors(p, r, f"{n}: per-frame errors")))
        if progress is not None and total:
            progress("evaluate", min(1.0, (i + 1) / total))
    if not entries:
        raise InputError("There was no sweep to evaluate.", "Give input files, or --sweeps K >= 1.")
    transfer = None
    if probe_calibration:
        from .probe_transfer import evaluate_transfer

        transfer = _round(evaluate_transfer(kept, model=model, device=device, phantoms=phantoms))
    agg = aggregate([{"results": e["results"]} for e in entries], methods)
    targets = check_targets(agg)
    report = {"format": "freehandrecon-evaluation", "version": 1, "methods": methods,
              "settings": _jsonable(settings or {}), "seconds": round(time.perf_counter() - t0, 3),
              "metric_definitions": "see freehandrecon.poses.metrics (TUS-REC GPE/LPE; drift at the frame centre, "
                                    "chains anchored on the true first pose)",
              "sweeps": entries, "aggregate": _round(agg), "targets": targets,
              "table_markdown": markdown_table(agg),
              "attribution_markdown": attribution_table(agg),
              "sweep_attribution_markdown": sweep_attribution_table(entries),
              "tracking_markdown": tracking_table(entries),
              "summary": _round(set_summary(entries, methods)), "plots": [n for n, _ in figures],
              **({"probe_calibration": transfer} if transfer is not None else {})}
    if guard:
        from .guard_vs_error import guard_vs_error

        report["guard_vs_error"] = _round(guard_vs_error(entries))
    paths = [out_dir / "report.json"] + [out_dir / n for n, _ in figures]
    with atomic_outputs(*paths) as temps:
        temps[0].write_text(json.dumps(report, indent=2, allow_nan=True))
        for tmp, (_, draw) in zip(temps[1:], figures):
            draw(tmp)
    return report


# --- command line ------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``freehandrecon evaluate`` to the command line."""
    from ..simulate import HELDOUT_SITE

    p = sub.add_parser(
        "evaluate", help="score sensorless pose estimators on simulated or tracked sweeps (JSON report, plots)",
        description="Run pose estimators on sweeps with known poses and score them (GPE, LPE, final drift and "
        "drift rates, per-DoF errors, frames/s). Without INPUT files or --set, sweeps are simulated (default: the "
        "held-out site, unseen seeds). Writes report.json and PNG plots into --out and prints a Markdown table and whether "
        "the targets are met.")
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                   help="tracked sweep files to evaluate against their tracker poses (.igs.mha/.mha/.mhd with "
                   "--plus-config or --calibration, TUS-REC .h5, .seq.nrrd, .npz); none: simulate")
    p.add_argument("--set", choices=SETS, dest="eval_set",
                   help="a bundled evaluation set instead of INPUT files or simulation: 'independent' (sweeps made "
                   "with an independent simulator, pymust; never used for training) or 'real' (real tracked sweeps "
                   "with speckle)")
    p.add_argument("--data-root", type=Path, metavar="DIR",
                   help="folder holding the sets (default: Testing/Data of the source checkout)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--methods", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS),
                   help="estimators to evaluate (default: %(default)s)")
    p.add_argument("--site", default=HELDOUT_SITE,
                   help="simulation site (default: the held-out site %(default)s)")
    p.add_argument("--sites", nargs="+", metavar="SITE", help="several simulation sites (overrides --site)")
    p.add_argument("--sweeps", type=int, default=5, metavar="K", help="simulated sweeps per site (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                   help="first simulation seed; sweeps use S, S+1, ... (default: %(default)s, unseen in training)")
    p.add_argument("--frames", type=int, default=100, metavar="N", help="frames per simulated sweep (default: %(default)s)")
    p.add_argument("--trajectory", metavar="KIND",
                   help="simulated trajectory kind (linear, fan, tilt, s-curve, mixed; default: random per seed)")
    p.add_argument("--plots", type=int, default=3, metavar="K", help="sweeps to plot (default: %(default)s)")
    p.add_argument("--model", type=Path, metavar="FILE", help="learned model (.safetensors); default: the shipped one")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the learned model runs (default: cpu)")
    p.add_argument("--plus-config", type=Path, metavar="XML", help="PLUS configuration with the image calibration")
    p.add_argument("--image-to-reference", default="ImageToReference", metavar="NAME",
                   help="pixel-to-world transform to build for PLUS files (default: %(default)s)")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="image calibration instead of --plus-config (4x4 matrix file or TUS-REC calib_matrix.csv)")
    p.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("SX", "SY"),
                   help="override the pixel spacing in mm (columns, rows)")
    p.add_argument("--probe-calibration", nargs="?", const="other", choices=["other", "phantom"],
                   help="also estimate each sweep with the probe calibration (decorrelation curve and the learned "
                   "model's elevational gain, as 'adapt --epochs 0' fits them): 'other' (the default) from another "
                   "sweep of its probe (the same probe name, or for your files the same frame size and pixel "
                   "spacing), or from the first half of a sweep whose probe has no other one; 'phantom' (with --set "
                   "independent) from its probe's speckle-phantom sweep in independent/phantom")
    p.add_argument("--curve", metavar="FILE|typical|phantom",
                   help="decorrelation curve both estimators use: a JSON from calibrate-speckle, or 'typical' for "
                   "the typical probe's curve (default: a simulated sweep's own probe curve, else the typical one); "
                   "'typical' scores simulated sweeps as a new, uncalibrated probe would be; 'phantom' (simulated "
                   "sweeps) gives each the curve calibrated on a simulated speckle phantom of its probe (32 frames "
                   "straight at 0.2 mm/frame), as a user who calibrated on a phantom")
    p.add_argument("--guard", action="store_true",
                   help="also run the quality guard on every sweep and score whether its verdict predicts the learned "
                   "poses' drift (AUROC, rank correlation, verdicts against FDR > 10 %%)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report and plots in --out")
    p.set_defaults(func=cmd_evaluate)


PHANTOM_NEEDS_SIMULATED = ("--curve phantom needs simulated sweeps (their probe settings make the phantom).",
                           "Drop INPUT files and --set, or give a curve file from calibrate-speckle.")


def phantom_curve_for(sweep: Sweep) -> Any:
    """``--curve phantom``: the curve a user would calibrate on a speckle phantom of the simulated sweep's probe
    (:mod:`.phantom_curve`; the phantom of seed s is drawn with s + 777)."""
    from .phantom_curve import EVALUATION_SEED_OFFSET, phantom_calibrated_curve

    meta = sweep.metadata or {}
    if not isinstance(meta.get("settings"), dict) or "seed" not in meta:
        raise InputError(*PHANTOM_NEEDS_SIMULATED)
    return phantom_calibrated_curve(meta["settings"], int(meta["seed"]) + EVALUATION_SEED_OFFSET)


def _curve_option(value: str | None) -> Any:
    """``--curve``: None, the typical probe's curve for ``typical``, :func:`phantom_curve_for` for ``phantom``, else
    the curve file (read now, so a bad file fails before any work)."""
    if value is None:
        return None
    if value == "phantom":
        return phantom_curve_for
    from ..poses.speckle import DecorrelationCurve

    return DecorrelationCurve.default() if value == "typical" else DecorrelationCurve.load(value)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation from parsed arguments; print the table and the targets."""
    from ..commands.common import Progress

    if (Path(args.out) / "report.json").exists() and not args.force:  # before any slow work
        raise OutputExistsError(f"{args.out} already holds an evaluation report.",
                                "Choose another --out folder, or pass --force to overwrite it.")
    for name in ("sweeps", "frames"):
        if getattr(args, name) < (1 if name == "sweeps" else 2):
            raise InputError(f"--{name} must be at least {1 if name == 'sweeps' else 2}.", f"Give a larger --{name}.")
    eval_set = getattr(args, "eval_set", None)
    if eval_set and args.inputs:
        raise InputError("Give either INPUT files or --set, not both.", "Drop the files or the --set option.")
    if eval_set:
        files = set_sweeps(eval_set, getattr(args, "data_root", None))
        sweeps = named_set(eval_set, getattr(args, "data_root", None))
        total = len(files)
        settings = {"mode": "set", "set": eval_set, "inputs": [str(f) for _, f, _ in files]}
    elif args.inputs:
        sweeps = file_sweeps(args.inputs, plus_config=args.plus_config, image_to_reference=args.image_to_reference,
                             calibration=args.calibration,
                             pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None)
        total = len(args.inputs)
        settings = {"mode": "files", "inputs": [str(p) for p in args.inputs]}
    else:
        from ..simulate.sites import check_site

        sites = args.sites or [args.site]
        for s in sites:
            check_site(s)
        sweeps = simulated_sweeps(sites, args.sweeps, args.seed, args.frames, args.trajectory)
        total = len(sites) * args.sweeps
        settings = {"mode": "simulated", "sites": sites, "sweeps_per_site": args.sweeps, "seed": args.seed,
                    "frames": args.frames, "trajectory": args.trajectory or "random"}
    if getattr(args, "curve", None) == "phantom" and (eval_set or args.inputs):  # before any slow work
        raise InputError(*PHANTOM_NEEDS_SIMULATED)
    curve = _curve_option(getattr(args, "curve", None))
    if curve is not None:
        settings["curve"] = str(args.curve)
    calibration = getattr(args, "probe_calibration", None)
    phantoms = None
    if calibration == "phantom":
        if eval_set != "independent":
            raise InputError("--probe-calibration phantom needs --set independent (its probes have phantom sweeps).",
                             "Add --set independent, or use --probe-calibration other.")
        phantoms = phantom_sweeps(getattr(args, "data_root", None))  # before any slow work
        settings["probe_calibration"] = "phantom"
    progress = Progress(getattr(args, "quiet", False))
    try:
        report = run_evaluation(sweeps, args.methods, args.out, force=args.force, plots=args.plots, model=args.model,
                                device=args.device, total=total, progress=progress, settings=settings,
                                probe_calibration=bool(calibration), curve=curve,
                                guard=getattr(args, "guard", False), phantoms=phantoms)
    finally:
        progress.close()
    print(report["table_markdown"])
    print("\nWhere the drift comes from (FDR % of length with one group of relative motions taken from the truth):")
    print(report["attribution_markdown"])
    print("\nPer sweep (FDR % of length; with one group of relative motions from the truth; mean signed rx "
          "error per frame):")
    print(report["sweep_attribution_markdown"])
    print("\nTracking check (is the true poses' in-plane motion what the images show? The floor is the drift of the "
          "true poses with their in-plane motion read from the images):")
    print(report["tracking_markdown"])
    print()
    label = eval_set or settings["mode"]
    print(summary_line(label, report["summary"]))
    print()
    print("Targets (issue 3, from the mean over sweeps):")
    print(targets_text(report["targets"], report["aggregate"]))
    if "probe_calibration" in report:
        from .probe_transfer import targets_lines, transfer_table

        source = "its speckle-phantom sweep" if phantoms is not None else "another sweep of the probe"
        print(f"\nWith the probe's calibration from {source} (FDR % of length):")
        print(transfer_table(report["probe_calibration"]))
        print("\nTargets (issue 17, calibration):")
        print(targets_lines(report["probe_calibration"]))
    if "guard_vs_error" in report:
        from .guard_vs_error import guard_lines, guard_table

        print("\nThe quality guard against the learned poses' drift:")
        print(guard_table(report["sweeps"]))
        print("\nTargets (issue 17, a guard that predicts pose failure):")
        print(guard_lines(report["guard_vs_error"]))
    print(f"\nwrote {Path(args.out) / 'report.json'} and {len(report['plots'])} plots")
    return 0
