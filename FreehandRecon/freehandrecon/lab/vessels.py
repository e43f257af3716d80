"""Vessel accuracy of photoacoustic reconstructions (``freehandrecon evaluate-vessels``).

For simulated PAUS sweeps the vessel geometry is known (``sweep.metadata["vessels"]``: straight
cylinders, a point, a direction and a radius each, in world mm). Each pose method (tracked,
learned, speckle) reconstructs the sweep (poses from the B-mode frames, applied to the
photoacoustic channel, which is max-compounded) and is scored on its own output grid:

* **Region**: the voxels the sweep covered (coverage > 0 of that reconstruction).
* **Segmentation rule**: a voxel is vessel when its photoacoustic value exceeds a threshold found
  in the covered voxels: ``otsu`` (default) is Otsu's threshold of their 256-bin histogram
  (the value that best splits the voxels into two classes, maximising the between-class
  variance); ``fraction`` is ``fraction`` x the maximum of the covered voxels.
* **Dice**: ``2 |S & T| / (|S| + |T|)`` inside the region, T the true vessel lumen (voxel
  centres within the radius of a centre line) on the same grid.
* **Centre-line distance**: the true centre line of each vessel is cut into slabs one voxel
  (the largest spacing) thick. A slab counts when at least 90 % of its true lumen voxels are
  covered (the vessel is in the swept region there). The segmented voxels in the slab within
  ``radius + SEARCH_MM`` of the true line give the centre of the segmented cross-section (their
  centroid projected on the slab plane); the distance from the true centre-line sample to it is
  the error. The mean over counted slabs of all vessels is ``centreline_mm``; slabs with no
  segmented voxel are misses (``centreline_detected`` = detected / counted slabs).

Targets (issue 6): Dice >= 0.7 and centre-line error <= 1 mm with learned poses on held-out
sweeps. Seeds default to 20000+, never used in training (0-124) or validation (10000-10004).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..compound import OutputGrid
from ..errors import FreehandReconError, InputError, OutputExistsError

METHODS = ("tracked", "learned", "speckle")
RULES = ("otsu", "fraction")
DEFAULT_SITES = ("site-a", "site-f")
DEFAULT_SEED = 20000
SEARCH_MM = 1.5          # segmented voxels this far beyond the true radius still count for a cross-section
MIN_SLAB_COVERED = 0.9   # a centre-line slab counts when this fraction of its true lumen voxels is covered
TARGET_DICE, TARGET_CENTRELINE_MM = 0.7, 1.0

Progress = Callable[[str, float], None]


# --- geometry on a grid --------------------------------------------------------------------------

def _voxel_centres(grid: OutputGrid, k: np.ndarray) -> np.ndarray:
    """World centres ``[len(k), ny, nx, 3]`` of the voxels in slices ``k``."""
    nx, ny, _ = grid.dims
    m = grid.ijk_to_world()
    ii, jj = np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64)
    return (m[:3, 3] + k[:, None, None, None] * m[:3, 2] + jj[None, :, None, None] * m[:3, 1]
            + ii[None, None, :, None] * m[:3, 0])


def _line(vessel: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    c = np.asarray(vessel["point"], dtype=np.float64)
    u = np.asarray(vessel["direction"], dtype=np.float64)
    return c, u / np.linalg.norm(u), float(vessel["radius"])


def vessel_mask_volume(vessels: list[dict[str, Any]], grid: OutputGrid, margin_mm: float = 0.0,
                       slab: int = 16) -> np.ndarray:
    """``bool [nz, ny, nx]``: voxel centres within ``radius - margin_mm`` of a vessel centre line."""
    nz = grid.dims[2]
    out = np.zeros(grid.shape_zyx, dtype=bool)
    for k0 in range(0, nz, slab):  # slabs of slices bound the memory; each slab is vectorised
        k = np.arange(k0, min(k0 + slab, nz), dtype=np.float64)
        pts = _voxel_centres(grid, k)
        for v in vessels:
            c, u, r = _line(v)
            d = pts - c
            along = d @ u
            out[k0:k0 + k.size] |= (d * d).sum(axis=-1) - along * along < (r - margin_mm) ** 2
    return out


# --- segmentation and scores ---------------------------------------------------------------------

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximum between-class variance of a ``bins``-bin histogram)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise InputError("No voxels to threshold: the reconstruction covers nothing.",
                         "Check the sweep's poses and the output grid.")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def segment(volume: np.ndarray, region: np.ndarray, rule: str = "otsu", fraction: float = 0.5
            ) -> tuple[np.ndarray, float]:
    """Vessel voxels of a photoacoustic ``volume`` inside ``region`` (see the module docstring) and the threshold."""
    if rule not in RULES:
        raise InputError(f"Unknown segmentation rule '{rule}'.", f"Use one of: {', '.join(RULES)}.")
    values = volume[region]
    if values.size == 0:
        raise InputError("The reconstruction covers no voxel, so there is nothing to segment.",
                         "Check the sweep's poses and the output grid.")
    if rule == "otsu":
        thr = otsu_threshold(values)
    else:
        if not 0.0 < fraction < 1.0:
            raise InputError(f"The threshold fraction must be in (0, 1), got {fraction}.", "Use e.g. 0.5.")
        thr = fraction * float(values.max())
    return (volume > thr) & region, thr


def dice(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Dice overlap of two masks (inside ``region``); 1.0 when both are empty."""
    if region is not None:
        a, b = a & region, b & region
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def centreline_errors(vessels: list[dict[str, Any]], grid: OutputGrid, segmented: np.ndarray, region: np.ndarray
                      ) -> dict[str, Any]:
    """Distances (mm) from the true centre-line samples to the centres of the segmented
    cross-sections (see the module docstring), over all vessels."""
    step = float(np.max(grid.spacing))
    m = grid.ijk_to_world()
    seg_idx = np.argwhere(segmented)                     # [S, 3] as (k, j, i)
    seg_pts = seg_idx[:, ::-1] @ m[:3, :3].T + m[:3, 3]
    errors: list[float] = []
    counted = detected = 0
    for v in vessels:
        c, u, r = _line(v)
        lumen = vessel_mask_volume([v], grid)
        lum_idx = np.argwhere(lumen)
        if lum_idx.size == 0:
            continue
        lum_pts = lum_idx[:, ::-1] @ m[:3, :3].T + m[:3, 3]
        t_lum = np.rint(((lum_pts - c) @ u) / step).astype(np.int64)
        base = int(t_lum.min())
        n_bins = int(t_lum.max()) - base + 1
        total = np.bincount(t_lum - base, minlength=n_bins)
        covered = np.bincount(t_lum - base, weights=region[tuple(lum_idx.T)].astype(np.float64), minlength=n_bins)
        valid = (total > 0) & (covered >= MIN_SLAB_COVERED * total)
        d = seg_pts - c
        t = d @ u
        radial = d - t[:, None] * u
        near = (np.linalg.norm(radial, axis=1) < r + SEARCH_MM)
        tb = np.rint(t[near] / step).astype(np.int64) - base
        ok = (tb >= 0) & (tb < n_bins)
        tb, rad = tb[ok], radial[near][ok]
        count = np.bincount(tb, minlength=n_bins)
        # float even when nothing was segmented near this vessel (bincount of nothing is integer)
        centroid = np.stack([np.bincount(tb, weights=rad[:, a], minlength=n_bins) for a in range(3)],
                            axis=1).astype(np.float64)
        centroid /= np.maximum(count, 1)[:, None]
        hit = valid & (count > 0)
        counted += int(valid.sum())
        detected += int(hit.sum())
        errors.extend(np.linalg.norm(centroid[hit], axis=1).tolist())
    e = np.asarray(errors)
    return {"centreline_mm": float(e.mean()) if e.size else float("nan"),
            "centreline_median_mm": float(np.median(e)) if e.size else float("nan"),
            "centreline_p90_mm": float(np.percentile(e, 90)) if e.size else float("nan"),
            "centreline_samples": counted,
            "centreline_detected": detected / counted if counted else float("nan")}


def score_reconstruction(vessels: list[dict[str, Any]], grid: OutputGrid, pa_volume: np.ndarray,
                         coverage: np.ndarray, rule: str = "otsu", fraction: float = 0.5) -> dict[str, Any]:
    """Dice and centre-line distance of one photoacoustic reconstruction against the true vessels."""
    region = coverage > 0
    seg, thr = segment(pa_volume, region, rule, fraction)
    truth = vessel_mask_volume(vessels, grid) & region
    out = {"dice": dice(seg, truth, region), "threshold": thr, "true_voxels": int(truth.sum()),
           "segmented_voxels": int(seg.sum()), "covered_voxels": int(region.sum())}
    out.update(centreline_errors(vessels, grid, seg, region))
    return out


# --- the evaluation runner -----------------------------------------------------------------------

def evaluate_sweep(sweep: Any, methods: Iterable[str] = METHODS, *, spacing_mm: float = 0.5, rule: str = "otsu",
                   fraction: float = 0.5, model: str | None = None, channel: str = "photoacoustic"
                   ) -> dict[str, dict[str, Any]]:
    """Reconstruct ``sweep``'s ``channel`` with each pose method and score it; a method that
    fails (e.g. no learned model yet) gets ``{"error": message}``."""
    from ..logic import PoseRequest, ReconstructionRequest, reconstruct_sweep
    from ..poses.metrics import evaluate_poses

    vessels = sweep.metadata.get("vessels")
    if not vessels:
        raise InputError("The sweep has no known vessel geometry (metadata 'vessels').",
                         "Evaluate simulated PAUS sweeps (freehandrecon.simulate.random_paus_sweep).")
    sweep.channel_frames(channel)
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        # the model file is the learned estimator's; speckle would read it as a decorrelation curve
        request = ReconstructionRequest(spacing_mm=spacing_mm, channels=(channel,),
                                        poses=PoseRequest(method=method, model=model if method == "learned" else None))
        try:
            result = reconstruct_sweep(sweep, request)
        except FreehandReconError as err:
            out[method] = {"error": err.problem}
            continue
        ch = result.channels[channel]
        row = score_reconstruction(vessels, result.grid, ch.volume, ch.coverage, rule, fraction)
        row["compounding"] = ch.stats.get("compounding")
        if result.pose_estimate is not None:
            pm = evaluate_poses(sweep.image_to_world, result.pose_estimate.image_to_world, sweep.frame_shape,
                                sweep.pixel_spacing)
            row.update(final_drift_mm=float(pm["final_drift_mm"]),
                       final_drift_rate_length_pct=float(pm["final_drift_rate_length_pct"]))
        else:
            row.update(final_drift_mm=0.0, final_drift_rate_length_pct=0.0)
        out[method] = row
    return out


def evaluate_vessels(sites: Iterable[str] = DEFAULT_SITES, count: int = 3, seed: int = DEFAULT_SEED,
                     frames: int = 80, methods: Iterable[str] = METHODS, *, spacing_mm: float = 0.5,
                     rule: str = "otsu", fraction: float = 0.5, model: str | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Simulate ``count`` PAUS sweeps per site (seeds ``seed...``), evaluate each pose method, and
    summarise (mean over sweeps per method) with the targets."""
    from ..simulate import random_paus_sweep

    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"Unknown pose method(s): {', '.join(unknown)}.", f"Use any of: {', '.join(METHODS)}.")
    if count < 1:
        raise InputError(f"--sweeps {count}: evaluate at least one sweep per site.", "Use e.g. --sweeps 3.")
    sites = tuple(sites)
    jobs = [(site, seed + i) for site in sites for i in range(count)]
    sweeps = []
    t0 = time.perf_counter()
    for n, (site, s) in enumerate(jobs):
        sweep = random_paus_sweep(site, s, frames)
        rows = evaluate_sweep(sweep, methods, spacing_mm=spacing_mm, rule=rule, fraction=fraction, model=model)
        sweeps.append({"name": f"{site}-seed{s}", "site": site, "seed": s,
                       "trajectory": sweep.metadata["trajectory"], "vessels": len(sweep.metadata["vessels"]),
                       "methods": rows})
        if progress is not None:
            progress("evaluate", (n + 1) / len(jobs))
    summary = _summarise(sweeps, methods)
    by_site = {site: _summarise([sw for sw in sweeps if sw["site"] == site], methods) for site in sites}
    learned = summary.get("learned", {})
    targets = {"dice_min": TARGET_DICE, "centreline_max_mm": TARGET_CENTRELINE_MM,
               "learned_met": bool("dice" in learned and learned["dice"] >= TARGET_DICE
                                   and learned["centreline_mm"] <= TARGET_CENTRELINE_MM)}
    return {"settings": {"sites": list(sites), "sweeps_per_site": count, "seed": seed, "frames": frames,
                         "spacing_mm": spacing_mm, "rule": rule, "fraction": fraction if rule == "fraction" else None,
                         "model": model, "channel": "photoacoustic", "channel_compounding": "max"},
            "summary": summary, "by_site": by_site, "targets": targets, "sweeps": sweeps,
            "seconds": round(time.perf_counter() - t0, 1)}


def _summarise(sweeps: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Mean scores per method over the sweeps that see a vessel; methods that failed keep their error."""
    summary: dict[str, Any] = {}
    for method in methods:
        rows = [sw["methods"][method] for sw in sweeps if "error" not in sw["methods"][method]]
        errors = sorted({sw["methods"][method]["error"] for sw in sweeps if "error" in sw["methods"][method]})
        if not rows:
            summary[method] = {"error": "; ".join(errors) or "no sweeps"}
            continue
        scored = [r for r in rows if r["true_voxels"] > 0]

        def mean(key: str, rs: list = scored) -> float:
            vals = [r[key] for r in rs if math.isfinite(r[key])]
            return float(np.mean(vals)) if vals else float("nan")

        summary[method] = {"sweeps": len(scored), "dice": mean("dice"), "centreline_mm": mean("centreline_mm"),
                           "centreline_detected": mean("centreline_detected"),
                           "final_drift_mm": mean("final_drift_mm"),
                           "final_drift_rate_length_pct": mean("final_drift_rate_length_pct")}
        if errors:
            summary[method]["errors"] = errors
    return summary


def _row(label: str, s: dict[str, Any]) -> str:
    if "error" in s:
        return f"| {label} | - | - | - | - | - ({s['error']}) |"
    return (f"| {label} | {s['sweeps']} | {s['dice']:.3f} | {s['centreline_mm']:.2f} | "
            f"{100 * s['centreline_detected']:.0f} % | {s['final_drift_mm']:.2f} |")


def format_table(report: dict[str, Any]) -> str:
    """The Markdown table of the summary (one row per pose method)."""
    lines = ["| poses | sweeps | Dice | centre-line error (mm) | centre line detected | final drift (mm) |",
             "|---|---|---|---|---|---|"]
    for method, s in report["summary"].items():
        lines.append(_row(method, s))
    by_site = report.get("by_site", {})
    if len(by_site) > 1:  # per site too (e.g. a training site and the held-out site)
        for site, summary in by_site.items():
            for method, s in summary.items():
                lines.append(_row(f"{method}, {site}", s))
    t = report["targets"]
    lines.append("")
    lines.append(f"Target (learned poses): Dice >= {t['dice_min']} and centre-line error <= "
                 f"{t['centreline_max_mm']} mm: {'met' if t['learned_met'] else 'NOT met'}.")
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float):
        return round(v, 5) if math.isfinite(v) else None
    return v


# --- command line --------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate-vessels`` to the ``freehandrecon`` command line."""
    p = sub.add_parser("evaluate-vessels", help="score photoacoustic vessel reconstructions (Dice, centre-line "
                       "error) for tracked, learned and speckle poses on simulated PAUS sweeps",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.json (created if missing)")
    p.add_argument("--sites", nargs="+", default=list(DEFAULT_SITES), metavar="SITE",
                   help="simulation sites (site-f is held out from training) (default: %(default)s)")
    p.add_argument("--sweeps", type=int, default=3, metavar="K", help="sweeps per site (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                   help="first seed; sweeps use S, S+1, ... (default: %(default)s, unseen in training)")
    p.add_argument("--frames", type=int, default=80, metavar="N", help="frames per sweep (default: %(default)s)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="pose methods to compare (default: all)")
    p.add_argument("--spacing", type=float, default=0.5, metavar="MM",
                   help="output voxel spacing in mm (default: %(default)s)")
    p.add_argument("--rule", choices=list(RULES), default="otsu",
                   help="segmentation threshold of the photoacoustic volume: otsu (Otsu's threshold of the covered "
                   "voxels) or fraction (--fraction x their maximum) (default: %(default)s)")
    p.add_argument("--fraction", type=float, default=0.5, help="threshold fraction for --rule fraction (default: 0.5)")
    p.add_argument("--model", type=Path, metavar="FILE", help="learned pose model (default: the shipped model)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report.json")
    p.set_defaults(func=cmd_evaluate_vessels)


def cmd_evaluate_vessels(args: argparse.Namespace) -> int:
    """Run the evaluation, print the Markdown table, write report.json."""
    out = Path(args.out) / "report.json"
    if out.exists() and not args.force:
        raise OutputExistsError(f"'{out}' already exists.", "Choose another --out or pass --force to overwrite it.")
    if args.frames < 8:
        raise InputError(f"--frames {args.frames} is too short for a vessel evaluation.", "Use e.g. --frames 80.")
    bar = None
    if not getattr(args, "quiet", False):
        from tqdm import tqdm

        bar = tqdm(total=100, desc="  evaluate", unit="%")
    try:
        def progress(stage: str, fraction: float) -> None:
            if bar is not None:
                bar.update(round(100 * fraction) - bar.n)

        report = evaluate_vessels(args.sites, args.sweeps, args.seed, args.frames, args.methods,
                                  spacing_mm=args.spacing, rule=args.rule, fraction=args.fraction,
                                  model=str(args.model) if args.model else None, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(report), indent=2))
    print(format_table(report))
    print(f"\nreport: {out}")
    return 0
