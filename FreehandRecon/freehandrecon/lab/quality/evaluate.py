"""Site-held-out protocol and the evaluation table (``freehandrecon quality-eval``).

Protocol on simulated sites: train on sweeps of ``TRAIN_SITES`` (seeds ``0..train_sweeps-1``),
validate on other sweeps of the same sites (seeds from 1000; even-numbered ones calibrate the
thresholds, odd-numbered ones are the in-distribution negatives of the OOD AUROC), test on
``HELDOUT_SITE`` (seeds from 2000), which no training frame comes from. The latent statistics are
fitted on the training frames plus ``stats_sweeps`` shorter sweeps per training site (seeds from
100): the encoder is frozen by then, and more sweeps cover more of each site's settings. Out-of-distribution sets: corrupted copies of the
validation sweeps (:data:`.data.CORRUPTIONS`) and fetal-like sweeps (a different anatomy). The
table reports reconstruction (PSNR, ROI MAE, ROI Edge-MAE) after phase 1 and phase 2, the frozen-
latent site probe, and OOD AUROC (Mahalanobis and kNN; per frame and per sweep, where a sweep's
score is the median of its frames') of every OOD set against the validation frames.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...errors import InputError
from ...sweep import Sweep
from ...quality.data import (CORRUPTIONS, FrameSet, check_roi, corrupted_frameset, frameset_of, nt_frameset,
    simulated_sweeps)
from ...quality.guard import Guard, check_sweep, encode_frames
from .losses import psnr, roi_edge, roi_l1
from ...quality.model import GuardAE
from ...quality.ood import auroc, per_sweep
from .probe import fit_probe


@dataclass
class Protocol:
    """Which simulated sweeps make up each split."""

    train_sweeps: int = 12
    val_sweeps: int = 16
    heldout_sweeps: int = 10
    anatomy_sweeps: int = 8
    num_frames: int = 24
    stats_sweeps: int = 80
    stats_frames: int = 12
    train_sites: tuple[str, ...] = ()
    heldout_site: str = ""

    def __post_init__(self) -> None:
        from ...simulate import HELDOUT_SITE, TRAIN_SITES

        self.train_sites = tuple(self.train_sites) or TRAIN_SITES
        self.heldout_site = self.heldout_site or HELDOUT_SITE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_sites"] = list(self.train_sites)
        return d


@dataclass
class Splits:
    train: FrameSet | None
    val: FrameSet
    heldout: FrameSet
    ood: dict[str, FrameSet]
    val_sweeps: list[tuple[str, Sweep]]
    extra: FrameSet | None = None  # more sweeps of the training sites for the latent statistics only

    @property
    def fit(self) -> FrameSet:
        """Frames the latent statistics are fitted on: the training frames plus the extra sweeps."""
        parts = [s for s in (self.train, self.extra) if s is not None and len(s)]
        return parts[0] if len(parts) == 1 else FrameSet.concat(parts, list(parts[0].sites))


def build_splits(p: Protocol, cache: Path | None, progress: Callable[[str, float], None] | None = None,
                 with_train: bool = True) -> Splits:
    """Simulate (or read from ``cache``) every split of the protocol."""
    sites = list(p.train_sites)
    train = (frameset_of(simulated_sweeps(sites, range(p.train_sweeps), p.num_frames, cache, progress, "train"), sites)
             if with_train else None)
    val_sw = simulated_sweeps(sites, range(1000, 1000 + p.val_sweeps), p.num_frames, cache, progress, "validation")
    held_sw = simulated_sweeps([p.heldout_site], range(2000, 2000 + p.heldout_sweeps), p.num_frames, cache, progress,
                               "held-out")
    ood = {kind: corrupted_frameset([sw for _, sw in val_sw], kind) for kind in CORRUPTIONS}
    ood["different-anatomy"] = nt_frameset(range(3000, 3000 + p.anatomy_sweeps), p.num_frames, sites, cache, progress)
    extra = (frameset_of(simulated_sweeps(sites, range(100, 100 + p.stats_sweeps), p.stats_frames, cache, progress,
                                          "statistics"), sites) if p.stats_sweeps > 0 else None)
    return Splits(train, frameset_of(val_sw, sites), frameset_of(held_sw, [p.heldout_site]), ood, val_sw, extra)


def user_splits(folder: Path, heldout_site: str, roi_box: Any, val_fraction: float = 0.25,
                plus_config: Path | None = None, progress: Callable[[str, float], None] | None = None) -> Splits:
    """The same protocol on your own sweeps: ``folder/<site>/<sweep files>``; ``heldout_site`` is never trained on,
    ``val_fraction`` of every other site's sweeps (at least one) validate; the ROI is a pixel box."""
    from ...io import read_sweep
    from ...quality.data import box_roi, sweep_to_frameset

    folder = Path(folder)
    site_dirs = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    names = [d.name for d in site_dirs]
    if heldout_site not in names or len(names) < 3:
        raise InputError(f"{folder} must hold at least three site sub-folders including '{heldout_site}' "
                         f"(found: {', '.join(names) or 'none'}).",
                         "Put each site's sweep files in its own sub-folder and name the held-out one.")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction}.", "Use e.g. 0.25.")
    sites = [n for n in names if n != heldout_site]
    train, val, held, val_sw = [], [], [], []
    for k, d in enumerate(site_dirs):
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        sweeps = [read_sweep(f, plus_config=plus_config) for f in files]
        if len(sweeps) < (1 if d.name == heldout_site else 2):
            raise InputError(f"Site folder {d} has {len(sweeps)} sweep(s).",
                             "Give at least two sweeps per training site (one is kept for validation).")
        n_val = max(1, int(round(val_fraction * len(sweeps))))
        for j, sw in enumerate(sweeps):
            fs = sweep_to_frameset(sw, box_roi(sw.frame_shape, roi_box, sw.num_frames), d.name, j)
            if d.name == heldout_site:
                held.append(fs)
            elif j < n_val:
                val.append(fs)
                val_sw.append((d.name, sw))
            else:
                train.append(fs)
        if progress is not None:
            progress("read", (k + 1) / len(site_dirs))
    ood = {kind: corrupted_frameset([sw for _, sw in val_sw], kind) for kind in CORRUPTIONS}
    return Splits(FrameSet.concat(train, sites), FrameSet.concat(val, sites), FrameSet.concat(held, [heldout_site]),
                  ood, val_sw)


def reconstruction_metrics(net: GuardAE, data: FrameSet, batch: int = 256) -> dict[str, float]:
    """PSNR (dB, mean over frames), ROI MAE and ROI Edge-MAE (pooled over all ROI pixels)."""
    check_roi(data.roi, "the ROI of the evaluation frames")
    net.eval()
    ps, mae_sum, edge_sum, npx = [], 0.0, 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(data), batch):
            x = torch.from_numpy(data.frames[s:s + batch].astype(np.float32) / 255.0)[:, None]
            r = torch.from_numpy(data.roi[s:s + batch])[:, None]
            x_hat, _ = net(x)
            ps.append(psnr(x_hat, x).numpy())
            n = float(r.sum())
            mae_sum += float(roi_l1(x_hat, x, r)) * n
            edge_sum += float(roi_edge(x_hat, x, r)) * n
            npx += n
    return {"psnr_db": float(np.concatenate(ps).mean()), "roi_mae": mae_sum / npx, "roi_edge_mae": edge_sum / npx}


def _change(a: float, b: float) -> float:
    return 100.0 * (b - a) / a if a else float("nan")


def timing(guard: Guard, num_frames: int = 100, size: tuple[int, int] = (128, 128)) -> dict[str, float]:
    """Milliseconds per frame of :func:`check_sweep` (resampling included) with 1 torch thread and with the default."""
    rng = np.random.default_rng(0)
    sweep = Sweep(frames=rng.integers(0, 255, (num_frames, *size), dtype=np.uint8), pixel_spacing=(0.3, 0.3))
    out = {}
    default = torch.get_num_threads()
    for label, threads in (("1_thread", 1), (f"{default}_threads", default)):
        torch.set_num_threads(threads)
        check_sweep(sweep, guard=guard)  # warm-up
        best = min(_timed(lambda: check_sweep(sweep, guard=guard)) for _ in range(3))
        out[f"ms_per_frame_{label}"] = 1000.0 * best / num_frames
    torch.set_num_threads(default)
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def calibration_split(val: FrameSet) -> tuple[FrameSet, FrameSet]:
    """Even-numbered validation sweeps calibrate (layer normalisation, thresholds); odd-numbered ones test.

    Sweeps are numbered site by site, seed by seed, so every site gives half its sweeps to each side."""
    calib, test = val.subset(val.sweep % 2 == 0), val.subset(val.sweep % 2 == 1)
    if len(calib) == 0 or len(test) == 0:
        raise InputError("The validation set needs at least two sweeps (one calibrates the thresholds, one tests).",
                         "Keep two or more validation sweeps per site (--val-sweeps 2).")
    return calib, test


def fit_guard(net: GuardAE, splits: Splits, name: str) -> Guard:
    """Latent statistics (per-site means, shared Ledoit-Wolf covariance per feature layer) on the training
    frames and the extra statistics sweeps, their normalisation and the thresholds on the calibration half of the validation frames."""
    from ...quality.guard import calibrate_thresholds, feature_names
    from ...quality.ood import fit_ensemble

    calib, _ = calibration_split(splits.val)
    fit = splits.fit
    f_tr, _ = encode_frames(net, fit.float_frames())
    f_cal, r_cal = encode_frames(net, calib.float_frames())
    stats = fit_ensemble(f_tr, fit.site, f_cal, feature_names(net))
    thresholds = calibrate_thresholds(stats.score(f_cal), r_cal)
    return Guard(net, stats, thresholds, list(splits.train.sites), {"name": name})


SCORES = (("ensemble", "ood"), ("latent", "latent_distance"), ("knn", "knn"), ("recon", "recon"))


def evaluate_guard(guard: Guard, splits: Splits, phase1: GuardAE | None = None,
                   progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """The evaluation table as a plain-JSON dictionary (see the module docstring).

    OOD negatives are the test half of the validation sweeps (:func:`calibration_split`), which
    neither the statistics nor the thresholds saw.
    """
    res: dict[str, Any] = {}
    if phase1 is not None:
        rec = {}
        for split, data in (("validation", splits.val), ("heldout_site", splits.heldout)):
            a, b = reconstruction_metrics(phase1, data), reconstruction_metrics(guard.net, data)
            rec[split] = {"phase1": a, "phase2": b,
                          "change": {"psnr_db": b["psnr_db"] - a["psnr_db"],
                                     "roi_mae_percent": _change(a["roi_mae"], b["roi_mae"]),
                                     "roi_edge_mae_percent": _change(a["roi_edge_mae"], b["roi_edge_mae"])}}
        res["reconstruction"] = rec
    if progress is not None:
        progress("evaluate", 0.3)
    _, test = calibration_split(splits.val)
    neg = guard.score(test.float_frames())
    held = guard.score(splits.heldout.float_frames())
    if splits.train is not None:
        fit = splits.fit
        f_tr, _ = encode_frames(guard.net, fit.float_frames())
        probe = fit_probe(f_tr[-1], fit.site, len(fit.sites))
        acc = float((probe.probabilities(neg["latent"]).argmax(axis=1) == test.site).mean())
        res["site_probe"] = {"seen_sites_validation": probe.confidence(neg["latent"]),
                             "unseen_site": probe.confidence(held["latent"]), "validation_accuracy": acc}
    sets = {"heldout-site": (held, splits.heldout.sweep)}
    for name, data in splits.ood.items():
        sets[name] = (guard.score(data.float_frames()), data.sweep)
    thr = guard.thresholds["ood"]
    rows, verdicts = {}, {}
    for name, (pos, sw) in sets.items():
        row = {}
        for label, key in SCORES:
            row[f"{label}_frame"] = auroc(neg[key], pos[key])
            row[f"{label}_sweep"] = auroc(per_sweep(neg[key], test.sweep), per_sweep(pos[key], sw))
        row["fraction_frames_flagged"] = float((pos["ood"] > thr).mean())
        rows[name] = row
        verdicts[name] = _verdict_counts(pos["ood"] > thr, sw, guard.thresholds)
    res["ood_auroc"] = rows
    res["validation_fraction_flagged"] = float((neg["ood"] > thr).mean())
    verdicts["validation (test half)"] = _verdict_counts(neg["ood"] > thr, test.sweep, guard.thresholds)
    res["sweep_verdicts"] = verdicts
    res["frames"] = {"train": len(splits.train) if splits.train is not None else None,
                     "statistics_extra": len(splits.extra) if splits.extra is not None else 0,
                     "validation": len(splits.val), "ood_negatives": len(test),
                     **{k: len(v) for k, v in splits.ood.items()}, "heldout_site": len(splits.heldout)}
    if progress is not None:
        progress("evaluate", 0.8)
    res["timing"] = timing(guard)
    if progress is not None:
        progress("evaluate", 1.0)
    return res


def _verdict_counts(flags: np.ndarray, sweep: np.ndarray, thresholds: dict[str, float]) -> dict[str, int]:
    from ...quality.guard import verdict_for

    out = {"ok": 0, "warning": 0, "out-of-distribution": 0}
    for s in np.unique(sweep):
        out[verdict_for(flags[sweep == s], thresholds)] += 1
    return out


def format_table(res: dict[str, Any]) -> str:
    """Markdown tables of an :func:`evaluate_guard` result, with the targets marked."""
    lines = []
    rec = res.get("reconstruction")
    if rec:
        lines += ["| split | phase | PSNR (dB) | ROI MAE | ROI Edge-MAE |", "|---|---|---|---|---|"]
        for split, v in rec.items():
            for ph in ("phase1", "phase2"):
                m = v[ph]
                lines.append(f"| {split} | {ph[-1]} | {m['psnr_db']:.2f} | {m['roi_mae']:.4f} | {m['roi_edge_mae']:.4f} |")
            c = v["change"]
            lines.append(f"| {split} | change | {c['psnr_db']:+.2f} dB | {c['roi_mae_percent']:+.2f} % | "
                         f"{c['roi_edge_mae_percent']:+.2f} % |")
        h = rec["heldout_site"]["change"]
        met = h["roi_mae_percent"] < 0 and h["roi_edge_mae_percent"] < 0
        lines += ["", f"Target phase 2 lowers ROI MAE and ROI Edge-MAE on the held-out site: {'met' if met else 'NOT met'}.", ""]
    probe = res.get("site_probe")
    if probe:
        s, u = probe["seen_sites_validation"], probe["unseen_site"]
        lines += ["| site probe (frozen latent) | max-softmax | entropy (nats) |", "|---|---|---|",
                  f"| seen sites (validation) | {s['max_softmax']:.3f} | {s['entropy']:.3f} |",
                  f"| unseen site | {u['max_softmax']:.3f} | {u['entropy']:.3f} |",
                  f"\nProbe accuracy on validation frames: {probe['validation_accuracy']:.3f}.", ""]
    lines += ["| OOD set | Mahalanobis ensemble AUROC frame | sweep | latent-only frame | sweep | kNN frame | sweep | "
              "recon-error frame | frames flagged |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["ood_auroc"].items():
        lines.append(f"| {name} | {r['ensemble_frame']:.4f} | {r['ensemble_sweep']:.4f} | {r['latent_frame']:.4f} | "
                     f"{r['latent_sweep']:.4f} | {r['knn_frame']:.4f} | {r['knn_sweep']:.4f} | {r['recon_frame']:.4f} | "
                     f"{100 * r['fraction_frames_flagged']:.1f} % |")
    worst = min(r["ensemble_frame"] for r in res["ood_auroc"].values())
    lines += ["", f"Validation (test half) frames flagged: {100 * res['validation_fraction_flagged']:.1f} %. "
              f"Target OOD AUROC >= 0.95 per frame for every set (Mahalanobis ensemble): "
              f"{'met' if worst >= 0.95 else 'NOT met'} (lowest {worst:.4f})."]
    v = res.get("sweep_verdicts")
    if v:
        lines += ["", "| sweeps | ok | warning | out-of-distribution |", "|---|---|---|---|"]
        lines += [f"| {k} | {c['ok']} | {c['warning']} | {c['out-of-distribution']} |" for k, c in v.items()]
    t = res.get("timing")
    if t:
        parts = ", ".join(f"{v:.2f} ms ({k.replace('ms_per_frame_', '').replace('_', ' ')})" for k, v in t.items())
        ok = min(t.values()) <= 5.0
        lines += ["", f"Guard time per frame on the CPU (resampling included): {parts}; target <= 5 ms: "
                      f"{'met' if ok else 'NOT met'}."]
    return "\n".join(lines)
