"""``adapt`` from sweeps held in sequence browsers (the Slicer module and the Python console).

Reads each browser through the module's logic (:class:`freehandrecon.module_logic.FreehandReconLogic`), so
the same transform chain, calibration and spacing rules apply as for ``reconstruct``; adds nothing to the scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..module_logic import FreehandReconLogic, ProgressCallback
from .options import FineTuneOptions
from .job import HYBRID, AdaptOptions, adapt_probe


def adapt_from_browsers(logic: FreehandReconLogic, browserNodes: Any, outDir: str | Path,
                        progress: ProgressCallback | None = None, shouldCancel: Callable[[], bool] | None = None, *,
                        epochs: int | None = None, stepsPerEpoch: int | None = None, device: str = "cpu",
                        force: bool = False, pixelSpacingMm: tuple[float, float] | None = None,
                        calibrationNode: Any = None) -> dict[str, Any]:
    """Calibrate once, then go trackerless: adapt the learned pose model, the decorrelation curve and the quality
    guard to the probe of the tracked sweeps in ``browserNodes`` (one browser, or a list; nodes, IDs or names of
    ``logic``'s scene) and write ``probe_model.json`` (with its weights, curve and guard) and ``report.json`` into
    ``outDir`` (see :func:`freehandrecon.adapt.adapt_probe`). Returns the report (held-out drift before and after,
    seconds); give ``outDir/probe_model.json`` as the model of ``logic.estimatePoses`` or ``logic.reconstruct``.
    Nothing is written, and the scene is not changed, when it fails or is cancelled.
    """
    logic.requireDependencies("learned", checkQuality=True)  # adapt_probe checks the device before any work
    refs = list(browserNodes) if isinstance(browserNodes, (list, tuple)) else [browserNodes]
    named = []
    for ref in refs:  # nodes, IDs or names: readSweep resolves them
        sweep = logic.readSweep(ref, None, pixelSpacingMm, calibrationNode)
        fallback = ref if isinstance(ref, str) else ref.GetName()
        named.append((str(sweep.metadata.get("image_sequence") or fallback), sweep))
    ft = FineTuneOptions()
    ft.epochs = ft.epochs if epochs is None else int(epochs)
    ft.steps_per_epoch = ft.steps_per_epoch if stepsPerEpoch is None else int(stepsPerEpoch)
    return adapt_probe(named, Path(outDir), AdaptOptions(ft, device=device), force=force, progress=progress,
                       should_cancel=shouldCancel)


KEPT = {"unchanged": "the shipped model unchanged (it drifted least)",
        "gain_typical_curve": "the shipped weights with an elevational gain of {elevation_gain:.2f}",
        "gain_probe_curve": "the shipped weights with the probe curve and an elevational gain of {elevation_gain:.2f}",
        HYBRID: "the shipped weights with an elevational gain of {elevation_gain:.2f} and speckle's tilt and yaw "
                "through the probe curve",
        "fine_tuned": "the fine-tuned weights"}


def adaptation_summary(report: dict[str, Any]) -> str:
    """One line for the panel's status: the held-out drift before and after, and any warning."""
    held = report["heldout"]
    line = (f"Probe model written: held-out drift {held['learned']['before_pct']:.1f} % -> "
            f"{held['learned']['after_pct']:.1f} % of the path ({held['frames']} held-out frames; speckle "
            f"{held['speckle']['before_pct']:.1f} % -> {held['speckle']['after_pct']:.1f} %). Kept: "
            + KEPT.get(held["learned"].get("kept"), "the adapted model").format(**held["learned"])
            + f"; recommended poses for this probe: {held.get('recommended_method', 'learned')}.")
    if report.get("warnings"):
        line += " Warning: " + " ".join(report["warnings"])
    return line
