"""PNG plots of pose-estimation results (matplotlib's Agg canvas: no display, no global backend change)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..poses import metrics

_COLOURS = {"true": "black", "tracked": "black", "learned": "tab:blue", "speckle": "tab:orange"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_trajectories(path: str | Path, true: np.ndarray, estimates: Mapping[str, np.ndarray],
                      frame_shape: tuple[int, int], spacing: tuple[float, float], title: str = "") -> Path:
    """Frame-centre trajectories, true vs each estimate (anchored on the true first pose), in the three
    world projections x-y, x-z and y-z. Writes ``path`` (PNG) and returns it."""
    fig = _figure(13, 4.4)
    axes = fig.subplots(1, 3)
    ct = metrics.centre_positions(true, frame_shape, spacing)
    curves = {"true": ct}
    for name, poses in estimates.items():
        curves[name] = metrics.centre_positions(metrics.anchored(true, poses), frame_shape, spacing)
    for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2))):
        for name, c in curves.items():
            ax.plot(c[:, i], c[:, j], "-", color=_COLOURS.get(name), lw=2 if name == "true" else 1.3, label=name)
            ax.plot(c[-1, i], c[-1, j], "o", color=_COLOURS.get(name), ms=4)
        ax.plot(ct[0, i], ct[0, j], "k^", ms=6)
        ax.set_xlabel(f"{'xyz'[i]} (mm)")
        ax.set_ylabel(f"{'xyz'[j]} (mm)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Frame-centre trajectories (world mm; triangle: start, dots: end)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def plot_errors(path: str | Path, per_frame: Mapping[str, Mapping[str, list]], title: str = "") -> Path:
    """Per-frame centre drift and local pixel error against the frame index, one line per method.
    ``per_frame[method]`` holds ``drift_mm`` ``[N]`` and ``lpe_per_frame_mm`` / ``gpe_per_frame_mm`` ``[N-1]``."""
    fig = _figure(13, 4.2)
    axes = fig.subplots(1, 3)
    for name, r in per_frame.items():
        colour = _COLOURS.get(name)
        drift = np.asarray(r["drift_mm"])
        axes[0].plot(np.arange(drift.size), drift, color=colour, label=name)
        g = np.asarray(r["gpe_per_frame_mm"])
        axes[1].plot(np.arange(1, g.size + 1), g, color=colour, label=name)
        loc = np.asarray(r["lpe_per_frame_mm"])
        axes[2].plot(np.arange(1, loc.size + 1), loc, color=colour, label=name)
    for ax, label in zip(axes, ("centre drift (mm)", "global pixel error (mm)", "local pixel error (mm)")):
        ax.set_xlabel("frame index")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Per-frame errors")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)
