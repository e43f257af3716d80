"""The quality guard's report in the scene: a per-frame table and a plot of the OOD score."""

from __future__ import annotations

from typing import Any

import numpy as np


def add_quality_nodes(scene: Any, report: Any, base: str) -> dict[str, Any]:
    """A table node ``<base>_Quality`` (frame, scores, thresholds, flag) and a plot chart ``<base>_QualityPlot`` of
    the OOD score against frame, from a :class:`~freehandrecon.quality.QualityReport`; keys "qualityTable",
    "qualityChart", "qualitySeries"."""
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray

    from ..io.slicer_scene import unique_name

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, f"{base}_Quality"))
    n = report.num_frames
    columns = (("Frame", vtkIntArray, np.arange(n)),
               ("OOD score", vtkDoubleArray, report.ood_score),
               ("OOD threshold", vtkDoubleArray, np.full(n, report.thresholds["ood"])),
               ("Reconstruction error", vtkDoubleArray, report.recon_error),
               ("Out of distribution", vtkIntArray, report.frame_out.astype(int)))
    for name, cls, values in columns:
        arr = cls()
        arr.SetName(name)
        arr.SetNumberOfValues(n)
        for i, v in enumerate(values):  # n frames: a short loop over table rows
            arr.SetValue(i, v.item() if hasattr(v, "item") else v)
        table.AddColumn(arr)
    table.SetAttribute("FreehandRecon.QualityVerdict", report.verdict)
    table.SetAttribute("FreehandRecon.QualityMessage", report.message)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", unique_name(scene, f"{base}_QualityPlot"))
    chart.SetTitle(f"Quality guard: {report.verdict}")
    chart.SetXAxisTitle("Frame")
    chart.SetYAxisTitle("OOD score (Mahalanobis)")
    series = []
    for column, colour, style in (("OOD score", (0.1, 0.3, 0.8), 0), ("OOD threshold", (0.85, 0.1, 0.1), 1)):
        s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", unique_name(scene, f"{base}_{column}"))
        s.SetAndObserveTableNodeID(table.GetID())
        s.SetXColumnName("Frame")
        s.SetYColumnName(column)
        s.SetPlotType(s.PlotTypeScatter)
        s.SetMarkerStyle(s.MarkerStyleNone)
        s.SetLineStyle(s.LineStyleDash if style else s.LineStyleSolid)
        s.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
        series.append(s)
    return {"qualityTable": table, "qualityChart": chart, "qualitySeries": series}
