"""Does the quality guard predict pose failure? (``freehandrecon evaluate --guard``)

The guard (:mod:`freehandrecon.quality`) is meant to warn when sensorless poses cannot be trusted. This
scores that claim on sweeps with known poses: each sweep's guard verdict, fraction of frames out of
distribution and median OOD score next to the learned poses' final drift rate (FDR, % of length), and over
the set:

- AUROC of the median OOD score for "the learned poses fail" (FDR above :data:`FAIL_FDR_PCT`);
- Spearman's rank correlation between the median OOD score and the FDR;
- the verdicts against the outcome: a sweep whose poses are good should be ``ok``, one whose poses fail
  should not be.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from ..quality.ood import auroc, average_ranks

FAIL_FDR_PCT = 10.0  # learned poses drifting more than this share of the path "fail"


def guard_entry(report: Any) -> dict[str, Any]:
    """The per-sweep figures of a :class:`~freehandrecon.quality.QualityReport`."""
    return {"verdict": report.verdict, "fraction_out": round(report.fraction_out, 4),
            "median_ood": round(float(np.median(report.ood_score)), 4) if report.num_frames else float("nan")}


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rank correlation (NaN with fewer than 3 pairs or a constant variable)."""
    a, b = np.asarray(list(x), np.float64), np.asarray(list(y), np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def guard_vs_error(entries: list[dict[str, Any]], fail_pct: float = FAIL_FDR_PCT) -> dict[str, Any]:
    """Set-level figures from evaluation entries that carry ``guard`` (:func:`guard_entry`) and a learned
    result. ``targets``: ``good_not_flagged`` (every sweep with good poses is ``ok``; None when there is
    none) and ``failing_flagged`` (no failing sweep is ``ok``; None when there is none)."""
    rows = [(e["guard"], e["results"]["learned"]["final_drift_rate_length_pct"]) for e in entries
            if "guard" in e and "learned" in e["results"]]
    rows = [(g, f) for g, f in rows if f is not None and math.isfinite(f)]
    score = np.array([g["median_ood"] for g, _ in rows], np.float64)
    fdr = np.array([f for _, f in rows], np.float64)
    fail = fdr > fail_pct
    flagged = np.array([g["verdict"] != "ok" for g, _ in rows], bool)
    good = ~fail
    return {
        "fail_fdr_pct": fail_pct, "sweeps": int(len(rows)), "failing": int(fail.sum()),
        "auroc_median_ood_for_failure": auroc(score[good], score[fail]),
        "spearman_median_ood_vs_fdr": spearman(score, fdr),
        "flagged_and_failing": int((flagged & fail).sum()), "flagged_but_good": int((flagged & good).sum()),
        "ok_but_failing": int((~flagged & fail).sum()), "ok_and_good": int((~flagged & good).sum()),
        "targets": {"good_not_flagged": None if not good.any() else bool(not (flagged & good).any()),
                    "failing_flagged": None if not fail.any() else bool(flagged[fail].all())},
    }


def guard_table(entries: list[dict[str, Any]]) -> str:
    """Markdown: one row per sweep with the learned FDR and the guard's figures."""
    lines = ["| sweep | learned FDR % | guard verdict | frames out of distribution % | median OOD score |",
             "|---|---|---|---|---|"]
    for e in entries:
        if "guard" not in e or "learned" not in e["results"]:
            continue
        g, f = e["guard"], e["results"]["learned"]["final_drift_rate_length_pct"]
        lines.append(f"| {e['name']} | {f:.3g} | {g['verdict']} | {100 * g['fraction_out']:.0f} | "
                     f"{g['median_ood']:.2f} |")
    return "\n".join(lines)


def guard_lines(summary: dict[str, Any]) -> str:
    """The set-level figures and the two targets, one line each."""
    def num(v: Any) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"

    def met(v: Any) -> str:
        return "not evaluated" if v is None else ("met" if v else "NOT met")

    s, t = summary, summary["targets"]
    return "\n".join([
        f"- {s['sweeps']} sweeps, {s['failing']} with learned FDR > {s['fail_fdr_pct']:g} %; AUROC of the median OOD "
        f"score for failure {num(s['auroc_median_ood_for_failure'])}, Spearman (median OOD score, FDR) "
        f"{num(s['spearman_median_ood_vs_fdr'])}",
        f"- verdicts: flagged and failing {s['flagged_and_failing']}, flagged but good {s['flagged_but_good']}, "
        f"ok but failing {s['ok_but_failing']}, ok and good {s['ok_and_good']}",
        f"- a sweep with good learned poses is not flagged: {met(t['good_not_flagged'])}",
        f"- a sweep whose learned poses fail is flagged: {met(t['failing_flagged'])}",
    ])
