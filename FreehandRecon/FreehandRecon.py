"""FreehandRecon: the 3D Slicer scripted module (module, parameter node, widget, logic, self-test).

The module is thin: every computation lives in the Qt-free ``freehandrecon`` package beside
this file, the same code the ``freehandrecon`` command line runs. The widget only edits the
parameter node and calls the logic.
"""

import logging
from typing import Annotated, Optional

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceBrowserNode
from slicer.util import VTKObservationMixin

README_URL = "https://github.com/freehandrecon/FreehandRecon#readme"


class FreehandRecon(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Freehand Reconstruction")
        self.parent.categories = [_("Ultrasound")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["FreehandRecon contributors"]
        self.parent.helpText = _(
            "Turns a freehand 2D ultrasound sweep (with photoacoustic or Doppler frames acquired with it) into a "
            "3D volume, with poses from a tracker. Select the sequence browser of the sweep, set the output spacing "
            "and press Apply. The coverage volume shows which voxels the sweep reached. "
            f'See the <a href="{README_URL}">README</a> for the console API and the command line.')
        self.parent.acknowledgementText = _(
            "Regression data from the PLUS toolkit and IGSIO (BSD-3). Built on 3D Slicer, VTK and PyTorch.")


@parameterNodeWrapper
class FreehandReconParameterNode:
    """Panel state, saved with the scene."""

    inputBrowser: vtkMRMLSequenceBrowserNode
    spacingMm: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    interpolation: Annotated[str, Choice(["nearest", "linear"])] = "nearest"
    compounding: Annotated[str, Choice(["mean", "max", "latest"])] = "mean"
    fillHoles: Annotated[str, Choice(["none", "normalized", "stick"])] = "none"
    outputVolume: vtkMRMLScalarVolumeNode


class FreehandReconWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: loads Resources/UI/FreehandRecon.ui and binds it to the parameter node."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FreehandRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FreehandReconLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputBrowser:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
            if first:
                self._parameterNode.inputBrowser = first

    def setParameterNode(self, inputParameterNode: Optional[FreehandReconParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ok = bool(self._parameterNode and self._parameterNode.inputBrowser)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = _("Reconstruct the selected sweep") if ok else _("Select an input sequence browser")

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Reconstruction failed."), waitCursor=True):
            p = self._parameterNode
            volume = self.logic.reconstruct(p.inputBrowser, spacingMm=p.spacingMm, interpolation=p.interpolation,
                                            compounding=p.compounding, fillHoles=p.fillHoles,
                                            outputVolumeNode=p.outputVolume)
            p.outputVolume = volume
            slicer.util.setSliceViewerLayers(background=volume, fit=True)


def ensureDependencies() -> None:
    """Raise a clear error when PyTorch is missing (it is not bundled with Slicer)."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "FreehandRecon needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, restart "
            "Slicer, and install torch from its module (or run slicer.util.pip_install('torch')).") from err


class FreehandReconLogic(ScriptedLoadableModuleLogic):
    """Console and panel API; delegates to freehandrecon.logic on slicer.mrmlScene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return FreehandReconParameterNode(super().getParameterNode())

    def reconstruct(self, browserNode, poses: str = "tracked", spacingMm: float = 1.0, interpolation: str = "nearest",
                    compounding: str = "mean", fillHoles: str = "none", outputVolumeNode=None):
        """Reconstruct the sweep in ``browserNode`` and return the output volume node.

        ``outputVolumeNode`` is replaced in place when given; otherwise a new node is created.
        """
        ensureDependencies()
        from freehandrecon import mrml
        from freehandrecon.compound import CompoundOptions, HoleFilling
        from freehandrecon.logic import ReconstructionLogic, ReconstructionRequest

        if poses != "tracked":
            raise ValueError(f"poses='{poses}' is not available yet; use poses='tracked'.")
        sweep = mrml.sweep_from_browser(browserNode)
        request = ReconstructionRequest(spacing_mm=spacingMm, options=CompoundOptions(
            interpolation=interpolation, compounding=compounding, hole_filling=HoleFilling(method=fillHoles)))
        core = ReconstructionLogic(slicer.mrmlScene)
        nodes, result = core.reconstruct(sweep, request, name=f"{browserNode.GetName()}_Volume",
                                         replace_volume=outputVolumeNode)
        logging.info(f"FreehandRecon: {sweep.num_frames} frames compounded in {result.seconds:.2f} s, "
                     f"coverage {100 * result.coverage_fraction:.1f} %")
        return nodes["volume"]


class FreehandReconTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic tracked sweep -> browser -> logic -> volume with the right geometry."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrackedReconstruction()

    def test_TrackedReconstruction(self):
        import numpy as np
        from freehandrecon import mrml
        from freehandrecon.sweep import Sweep

        self.delayDisplay("Building a synthetic tracked sweep")
        n, h, w = 40, 60, 80
        frames = np.zeros((n, h, w), np.uint8)
        frames[:, 20:40, 30:50] = 200
        poses = np.repeat(np.eye(4)[None], n, axis=0)
        poses[:, 2, 3] = np.arange(n) * 0.5  # 0.5 mm elevational steps
        sweep = Sweep(frames, (0.5, 0.5), poses)
        browser = mrml.sweep_to_browser(slicer.mrmlScene, sweep, name="SelfTestSweep")
        volume = FreehandReconLogic().reconstruct(browser, spacingMm=0.5)
        array = slicer.util.arrayFromVolume(volume)
        self.assertEqual(array.shape, (n, h, w))
        self.assertGreater(float(array.max()), 150)
        self.delayDisplay("Test passed")
