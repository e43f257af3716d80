"""FreehandRecon: the 3D Slicer scripted module (module, parameter node, widget, logic, self-test).

The module is thin: every computation lives in the Qt-free ``freehandrecon`` package beside
this file (``freehandrecon.module_logic.FreehandReconLogic`` is the logic; it also runs
headless on slicer-core). The widget only edits the parameter node, shows progress and
calls the logic. Nothing heavy (torch, h5py, the compounder) is imported when Slicer loads the module,
so the panel opens on a stock Slicer and offers to install what the chosen action needs.

Needs 3D Slicer 5.4 or later (``slicer.parameterNodeWrapper``, ``slicer.i18n``); on an older Slicer the
module still loads and says so instead of failing.
"""

import logging
import pathlib
from typing import Annotated, Optional

import slicer
import vtk
from slicer import (vtkMRMLLinearTransformNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSequenceBrowserNode, vtkMRMLSequenceNode)
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from freehandrecon import dependencies, module_logic, slicer_version
from freehandrecon.errors import Cancelled, FreehandReconError, ResourceError

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4: the module only says that it needs a newer Slicer

    def _(text: str) -> str:
        return text

try:
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the parameter node class below is defined but never used

    def parameterNodeWrapper(cls):
        return cls

    def Choice(values):
        return None

    def WithinRange(low, high):
        return None

README_URL = "https://github.com/freehandrecon/FreehandRecon#readme"
SAMPLE_CATEGORY = "Ultrasound"

# Parameter node fields with no widget in the panel (set them from the console); the contract test checks this list.
CONSOLE_ONLY_PARAMETERS: tuple = ()


class FreehandRecon(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel; registers the sample data."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Freehand Reconstruction")
        self.parent.categories = [_("Ultrasound")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["FreehandRecon contributors"]
        self.parent.helpText = _(
            "Turns a freehand 2D ultrasound sweep (with photoacoustic or Doppler frames acquired with it) into a 3D "
            "volume, with poses from a tracker or estimated from the images (learned or speckle). Select the "
            "sequence browser of the sweep, set the output spacing and press Apply; Cancel stops a long run and "
            "leaves the scene as it was. Try it on the sample in Sample Data > Ultrasound. "
            f'See the <a href="{README_URL}">README</a> for the Python console API and the command line.')
        self.parent.acknowledgementText = _(
            "Sample and regression data from the PLUS toolkit and IGSIO (BSD-3). Built on 3D Slicer, VTK and PyTorch.")
        unsupported = unsupportedSlicerMessage()
        if unsupported:
            logging.error(unsupported)
            self.parent.helpText = unsupported
            return
        slicer.app.connect("startupCompleted()", registerSampleData)


def unsupportedSlicerMessage() -> Optional[str]:
    """"FreehandRecon needs 3D Slicer 5.4 or later; this is X" on an older Slicer, else None."""
    return slicer_version.unsupported_message(slicer.app)


def registerSampleData() -> None:
    """Offer the bundled sweeps in the Sample Data module (local files, checked by SHA-256)."""
    import SampleData

    iconsPath = pathlib.Path(__file__).parent / "Resources" / "Icons"
    for sample in module_logic.SAMPLES:
        thumbnail = iconsPath / f"{sample.sampleName}.png"
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=SAMPLE_CATEGORY,
            sampleName=sample.sampleName,
            thumbnailFileName=str(thumbnail) if thumbnail.exists() else None,
            uris=sample.path.as_uri(),
            fileNames=sample.fileName,
            checksums=sample.checksum,
            loadFiles=True,  # a .mrb is only downloaded unless asked to load
            # ... and loaded as a scene: 5.4-5.6 default to 'VolumeFile' (loadFileType; 5.8+: loadFileTypes)
            **slicer_version.sample_data_load_keywords(slicer.app),
        )


@parameterNodeWrapper
class FreehandReconParameterNode:
    """Panel state, saved with the scene. Every field is bound to a widget in Resources/UI/FreehandRecon.ui."""

    # Input
    inputBrowser: vtkMRMLSequenceBrowserNode
    imageSequence: vtkMRMLSequenceNode
    channelSequence: vtkMRMLSequenceNode
    overridePixelSpacing: bool = False
    pixelSpacingXMm: Annotated[float, WithinRange(0.001, 10.0)] = 0.1
    pixelSpacingYMm: Annotated[float, WithinRange(0.001, 10.0)] = 0.1
    calibrationTransform: vtkMRMLLinearTransformNode
    # Poses
    poses: Annotated[str, Choice(list(module_logic.POSE_METHODS))] = "tracked"
    modelPath: pathlib.Path = pathlib.Path()
    sweepDirection: Annotated[str, Choice(list(module_logic.SWEEP_DIRECTIONS))] = "auto"
    device: Annotated[str, Choice(list(module_logic.DEVICES))] = "cpu"
    adaptFolder: pathlib.Path = pathlib.Path()  # where "Adapt to my probe" writes probe_model.json
    # Reconstruction
    roiNode: vtkMRMLMarkupsROINode
    spacingMm: Annotated[float, WithinRange(0.05, 20.0)] = 1.0  # X (all axes unless anisotropicSpacing)
    anisotropicSpacing: bool = False
    spacingYMm: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    spacingZMm: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    interpolation: Annotated[str, Choice(list(module_logic.INTERPOLATIONS))] = "nearest"
    compounding: Annotated[str, Choice(list(module_logic.COMPOUNDINGS))] = "mean"
    importanceMaskVolume: vtkMRMLScalarVolumeNode
    fillHoles: Annotated[str, Choice(list(module_logic.HOLE_FILLINGS))] = "none"
    fanMask: Annotated[str, Choice(list(module_logic.FAN_MASKS))] = "none"
    fanAngleLeftDeg: Annotated[float, WithinRange(-89.0, 89.0)] = -30.0
    fanAngleRightDeg: Annotated[float, WithinRange(-89.0, 89.0)] = 30.0
    fanOriginXPx: float = -1.0  # below 0: the frame's centre column
    fanOriginYPx: float = 0.0
    fanRadiusStartPx: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    fanRadiusStopPx: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0  # 0: to the frame's far corner
    useClipRectangle: bool = False
    clipXPx: Annotated[int, WithinRange(0, 100000)] = 0
    clipYPx: Annotated[int, WithinRange(0, 100000)] = 0
    clipWidthPx: Annotated[int, WithinRange(1, 100000)] = 640
    clipHeightPx: Annotated[int, WithinRange(1, 100000)] = 480
    skipInterval: Annotated[int, WithinRange(1, 1000)] = 1
    # Output
    outputVolume: vtkMRMLScalarVolumeNode
    createCoverage: bool = True
    createTransformSequence: bool = True
    showIn3D: bool = True
    renderingPreset: Annotated[str, Choice(["US-BMode", "PA-Hot", "Doppler-Red"])] = "US-BMode"
    centerView: bool = True
    # Live reconstruction
    liveImage: vtkMRMLScalarVolumeNode
    liveUpdateIntervalS: Annotated[float, WithinRange(0.1, 10.0)] = 1.0


class FreehandReconWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: loads Resources/UI/FreehandRecon.ui, binds it to the parameter node, runs the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # slicer.util.getModuleLogic("FreehandRecon") returns this
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self.ui = None
        self._live = None  # module_live.LiveReconstruction while one exists
        self._liveTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        unsupported = unsupportedSlicerMessage()
        if unsupported:  # Slicer < 5.4: no parameter node wrapper; say so instead of a broken panel
            import qt

            label = qt.QLabel(unsupported)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FreehandRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FreehandReconLogic()
        self.ui.progressBar.setVisible(False)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._onSceneNodesChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.checkSweepButton.connect("clicked(bool)", self.onCheckSweepButton)
        self._checkSweepToolTip = self.ui.checkSweepButton.toolTip
        self.ui.fitRoiButton.connect("clicked(bool)", self.onFitRoiButton)
        self.ui.adaptButton.connect("clicked(bool)", self.onAdaptButton)
        import qt

        self._liveTimer = qt.QTimer()
        self._liveTimer.timeout.connect(self._onLiveTimer)
        self.ui.liveStartButton.connect("clicked(bool)", self.onLiveStartButton)
        self.ui.liveStopButton.connect("clicked(bool)", self.onLiveStopButton)
        self.ui.liveResumeButton.connect("clicked(bool)", self.onLiveResumeButton)
        self.ui.liveResetButton.connect("clicked(bool)", self.onLiveResetButton)
        # one parameter set (vtkMRMLScriptedModuleNode with ModuleName=FreehandRecon) per configuration
        self.ui.parameterSetSelector.addAttribute("vtkMRMLScriptedModuleNode", "ModuleName", self.moduleName)
        self.ui.parameterSetSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onParameterSetSelected)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._endLive()
        self.removeObservers()

    def enter(self) -> None:
        if self.ui is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._endLive()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered and self.ui is not None:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        current = self.ui.parameterSetSelector.currentNode()
        if current is not None and current.GetScene() is slicer.mrmlScene:
            self.setParameterNode(FreehandReconParameterNode(current))
        else:
            self.setParameterNode(self.logic.getParameterNode())
            wasBlocked = self.ui.parameterSetSelector.blockSignals(True)
            self.ui.parameterSetSelector.setCurrentNode(self._parameterNode.parameterNode)
            self.ui.parameterSetSelector.blockSignals(wasBlocked)
        if not self._parameterNode.inputBrowser:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
            if first:
                self._parameterNode.inputBrowser = first

    def onParameterSetSelected(self, node) -> None:
        """Another parameter set (configuration) was chosen or added in the selector."""
        if node is not None and not self._running:
            self.setParameterNode(FreehandReconParameterNode(node))

    def _onSceneNodesChanged(self, caller=None, event=None) -> None:
        self._filterSequenceSelectors()

    def _filterSequenceSelectors(self) -> None:
        """Hide sequences of non-images (e.g. transforms) from the image and channel selectors; a qMRMLNodeComboBox
        cannot filter on a sequence's item class by itself, and checkInputs refuses them anyway."""
        hidden = self.logic.nonImageSequenceIDs()
        for selector in (self.ui.imageSequenceSelector, self.ui.channelSequenceSelector):
            selector.sortFilterProxyModel().hiddenNodeIDs = hidden

    def setParameterNode(self, inputParameterNode: Optional[FreehandReconParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    # --- live state -----------------------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        sensorless = p.poses != "tracked"
        for widget in (self.ui.modelPathLineEdit, self.ui.sweepDirectionComboBox, self.ui.transformSequenceCheckBox):
            widget.enabled = sensorless
        self.ui.pixelSpacingXSpinBox.enabled = p.overridePixelSpacing
        self.ui.pixelSpacingYSpinBox.enabled = p.overridePixelSpacing
        self.ui.presetComboBox.enabled = p.showIn3D
        self.ui.anisotropicSpacingWidget.enabled = p.anisotropicSpacing
        self.ui.importanceMaskSelector.enabled = p.compounding == "importance"
        for widget in (self.ui.fanAnglesWidget, self.ui.fanOriginWidget, self.ui.fanRadiusWidget):
            widget.enabled = p.fanMask == "manual"
        self.ui.clipRectangleWidget.enabled = p.useClipRectangle
        self.ui.fitRoiButton.enabled = bool(p.inputBrowser or p.imageSequence) and not self._running
        self._filterSequenceSelectors()
        self._hideEmptyModelPath()
        missing = self.logic.checkInputs(p)
        self.ui.applyButton.enabled = missing is None and not self._running
        self.ui.checkSweepButton.enabled = bool(p.inputBrowser or p.imageSequence) and not self._running
        self.ui.adaptButton.enabled = bool(p.inputBrowser or p.imageSequence) and not self._running
        self._showLiveState()
        self.ui.applyButton.toolTip = _("Reconstruct the selected sweep.") if missing is None else missing
        self._showDependencyState(p)
        self._updateMemoryEstimate(missing)

    def _hideEmptyModelPath(self) -> None:
        """An empty model path is pathlib.Path() ("."): show it as empty, not as "."."""
        for widget in (self.ui.modelPathLineEdit, self.ui.adaptFolderLineEdit):
            if widget.currentPath == ".":
                widget.currentPath = ""

    def _showDependencyState(self, p) -> None:
        """While the chosen action needs packages that are not installed, Apply (and Check sweep) say so and
        install them when pressed; the reconstruction runs on the next press."""
        needApply = self.logic.missingDependencies(p.poses, checkQuality=p.poses == "learned",
                                                   fillHoles=p.fillHoles, device=p.device)
        needCheck = self.logic.missingDependencies("tracked", checkQuality=True)
        install = _("Install dependencies")
        self.ui.applyButton.text = install if needApply else _("Apply")
        if needApply and self.ui.applyButton.enabled:
            self.ui.applyButton.toolTip = _("First install what this reconstruction needs: {packages} "
                                            "(PyTorch through the PyTorch extension). Then press Apply.").format(
                packages=", ".join(needApply))
        self.ui.checkSweepButton.text = install if needCheck else _("Check sweep")
        self.ui.checkSweepButton.toolTip = _("First install what the quality guard needs: {packages}.").format(
            packages=", ".join(needCheck)) if needCheck else self._checkSweepToolTip

    def _updateMemoryEstimate(self, missing: Optional[str]) -> None:
        p = self._parameterNode
        if missing is not None:
            self.ui.memoryEstimateLabel.text = "-"
            return
        try:  # geometry only (no pixels), for the channels and settings Apply would use
            mb = self.logic.memoryEstimateMb(
                p.inputBrowser or p.imageSequence, roiNode=p.roiNode, interpolation=p.interpolation,
                compounding=p.compounding, fillHoles=p.fillHoles, **self.logic.optionsFromParameters(p),
                imageSequence=p.imageSequence if p.inputBrowser else None,
                channels=[p.channelSequence] if p.channelSequence else [],
                pixelSpacingMm=(p.pixelSpacingXMm, p.pixelSpacingYMm) if p.overridePixelSpacing else None,
                calibrationNode=p.calibrationTransform)
            self.ui.memoryEstimateLabel.text = f"{mb:,.0f} MB" if mb < 10240 else f"{mb / 1024:,.1f} GB"
            self.ui.memoryEstimateLabel.toolTip = _("Peak memory the reconstruction needs at this spacing.")
        except FreehandReconError as err:
            self.ui.memoryEstimateLabel.text = "-"
            self.ui.memoryEstimateLabel.toolTip = f"{err.problem} {err.fix}"
        except Exception as err:  # noqa: BLE001 - a live label must never break the panel
            logging.debug(f"FreehandRecon: no memory estimate: {err}")
            self.ui.memoryEstimateLabel.text = "-"

    # --- run ------------------------------------------------------------------------------------

    def _progress(self, stage: str, fraction: float) -> None:
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
        self.ui.progressBar.format = f"{stage}: %p%"
        slicer.app.processEvents()  # keeps the panel responsive and lets Cancel be clicked

    def _shouldCancel(self) -> bool:
        return self._cancelRequested

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling...")

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        self.ui.cancelButton.enabled = running
        for section in (self.ui.parameterSetWidget, self.ui.inputsCollapsibleButton, self.ui.posesCollapsibleButton,
                        self.ui.reconstructionCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = not running  # the settings of a running job stay as they were
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.value = 0
        self._onParameterNodeModified()

    def _showFailure(self, err: Exception, what: str, statusText: str, dialogText: str) -> None:
        """Tell the user a job failed: a FreehandRecon error shows its problem and fix; anything else shows
        ``statusText``/``dialogText`` with the error as detail. The traceback goes to the log either way."""
        logging.exception(f"FreehandRecon: {what} failed")
        if isinstance(err, FreehandReconError):
            self.ui.statusLabel.text = err.problem
            slicer.util.errorDisplay(f"{err.problem}\n\n{err.fix}" if err.fix else err.problem,
                                     windowTitle=_("Freehand Reconstruction"))
        else:
            self.ui.statusLabel.text = statusText
            slicer.util.errorDisplay(dialogText, windowTitle=_("Freehand Reconstruction"), detailedText=str(err))

    def _showQuality(self, report) -> None:
        """Verdict in the panel: plain when ok, a highlighted warning otherwise."""
        warning = self.logic.qualityWarning(report)
        self.ui.qualityLabel.text = warning or _("OK: {message}").format(message=report.message)
        self.ui.qualityLabel.styleSheet = "" if not warning else (
            "color: #b00000; font-weight: bold;" if report.verdict == "out-of-distribution" else "color: #a06000;")

    def _checkSweep(self, p, spacing):
        report = self.logic.checkSweep(p.inputBrowser or p.imageSequence, progress=self._progress,
                                       imageSequence=p.imageSequence if p.inputBrowser else None,
                                       pixelSpacingMm=spacing)
        self._showQuality(report)
        chart = self.logic.lastNodes.get("qualityChart")
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        return report

    def _installDependencies(self, missing: list) -> None:
        """The button's install state: PyTorch first (PyTorch extension), then Resources/requirements.txt."""
        self._setRunning(True)
        self.ui.statusLabel.text = _("Installing dependencies...")
        try:
            ensureDependencies(self.resourcePath("requirements.txt"), needTorch="torch" in missing)
            still = dependencies.missing(missing)
            self.ui.statusLabel.text = (_("Dependencies installed; press the button again to run.") if not still else
                                        _("Still missing: {packages}. Restart Slicer and try again.").format(
                                            packages=", ".join(still)))
        except dependencies.InstallDeclined:
            self.ui.statusLabel.text = _("Dependencies not installed.")
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "dependency installation",
                              _("Dependencies were not installed (see the Python console / log for details)."),
                              _("Installing the dependencies failed: {error}").format(error=err))
        finally:
            self._setRunning(False)

    def onCheckSweepButton(self) -> None:
        p = self._parameterNode
        missing = self.logic.missingDependencies("tracked", checkQuality=True)
        if missing:
            self._installDependencies(missing)
            return
        self._setRunning(True)
        self.ui.statusLabel.text = _("Checking the sweep...")
        try:
            spacing = (p.pixelSpacingXMm, p.pixelSpacingYMm) if p.overridePixelSpacing else None
            report = self._checkSweep(p, spacing)
            self.ui.statusLabel.text = _("Quality check: {verdict} ({frames} frames).").format(
                verdict=report.verdict, frames=report.num_frames)
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "quality check",
                              _("Quality check failed (see the Python console / log for details)."),
                              _("Quality check failed: {error}").format(error=err))
        finally:
            self._setRunning(False)

    def onAdaptButton(self) -> None:
        """Calibrate once, then go trackerless: adapt the learned model to the probe of the tracked input sweep,
        write it into the chosen folder and select it as the pose model."""
        p = self._parameterNode
        missing = self.logic.missingDependencies("learned", checkQuality=True)
        if missing:
            self._installDependencies(missing)
            return
        folder = str(p.adaptFolder)
        if folder in ("", "."):
            self.ui.statusLabel.text = _("Choose a folder for the probe model first (beside 'Adapt to my probe').")
            return
        force = (pathlib.Path(folder) / "probe_model.json").exists()
        if force and not slicer.util.confirmOkCancelDisplay(
                _("{folder} already holds a probe model. Replace it?").format(folder=folder),
                windowTitle=_("Freehand Reconstruction")):
            return
        self._setRunning(True)
        self.ui.statusLabel.text = _("Adapting the pose model to this probe (about half a minute on two free "
                                     "CPU cores)...")
        try:
            from freehandrecon.adapt.browsers import adapt_from_browsers, adaptation_summary

            spacing = (p.pixelSpacingXMm, p.pixelSpacingYMm) if p.overridePixelSpacing else None
            report = adapt_from_browsers(self.logic, p.inputBrowser or p.imageSequence, folder,
                                         progress=self._progress, shouldCancel=self._shouldCancel, device=p.device,
                                         force=force, pixelSpacingMm=spacing, calibrationNode=p.calibrationTransform)
            p.modelPath = pathlib.Path(folder) / "probe_model.json"
            self.ui.statusLabel.text = adaptation_summary(report) + " " + _("Selected as the pose model.")
        except Cancelled:
            self.ui.statusLabel.text = _("Adaptation cancelled; nothing was written.")
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "adaptation", _("Adaptation failed (see the Python console / log for details)."),
                              _("Adaptation failed: {error}").format(error=err))
        finally:
            self._setRunning(False)

    # --- live reconstruction --------------------------------------------------------------------

    def _showLiveState(self) -> None:
        p = self._parameterNode
        state = self._live.state if self._live is not None else "stopped"
        self.ui.liveStartButton.enabled = p is not None and p.liveImage is not None and state != "running" \
            and not self._running
        self.ui.liveStopButton.enabled = state == "running"
        self.ui.liveResumeButton.enabled = state == "paused" and not self._running
        self.ui.liveResetButton.enabled = self._live is not None and state != "running"
        self.ui.liveImageSelector.enabled = state != "running"

    def onLiveStartButton(self) -> None:
        """A new live reconstruction of the live image, with the settings of the sections above."""
        p = self._parameterNode
        missing = self.logic.missingDependencies(p.poses, fillHoles=p.fillHoles, device=p.device)
        if missing:
            self._installDependencies(missing)
            return
        self._endLive()
        try:
            options = self.logic.optionsFromParameters(p)
            self._live = self.logic.liveReconstruction(
                p.liveImage, p.outputVolume, spacingMm=options["spacingMm"], interpolation=p.interpolation,
                compounding=p.compounding, fillHoles=p.fillHoles, roiNode=p.roiNode,
                clipRectangle=options.get("clipRectangle"), poses=p.poses, model=p.modelPath, device=p.device,
                showIn3D=p.showIn3D, preset=p.renderingPreset, name=f"{p.liveImage.GetName()}_LiveVolume")
            self._live.start()
            self._liveTimer.start(int(1000 * p.liveUpdateIntervalS))
            self.ui.liveStatusLabel.text = _("Running: scan now; the volume grows every {interval:g} s.").format(
                interval=p.liveUpdateIntervalS)
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._endLive()
            self._showFailure(err, "live reconstruction", _("Live reconstruction could not start (see the log)."),
                              _("Live reconstruction could not start: {error}").format(error=err))
        self._showLiveState()

    def _onLiveTimer(self) -> None:
        """Every update interval: compound what arrived and refresh the output volume (a short slice of work)."""
        if self._live is None:
            return
        try:
            volume = self._live.update()
            p = self._parameterNode
            if volume is not None and p is not None and p.outputVolume is not volume:
                p.outputVolume = volume
            self.ui.liveStatusLabel.text = self._live.statusText()
        except Exception as err:  # noqa: BLE001 - a failing live update stops the live run, visibly
            self._liveTimer.stop()
            self._live.cleanup()
            self._showFailure(err, "live reconstruction", _("Live reconstruction stopped (see the log)."),
                              _("Live reconstruction stopped: {error}").format(error=err))
            self._showLiveState()

    def onLiveStopButton(self) -> None:
        self._liveTimer.stop()
        try:
            volume = self._live.stop()
            if volume is not None and self._parameterNode is not None:
                self._parameterNode.outputVolume = volume
            self.ui.liveStatusLabel.text = self._live.statusText()
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "live reconstruction", _("Stopping failed (see the log)."),
                              _("Stopping the live reconstruction failed: {error}").format(error=err))
        self._showLiveState()

    def onLiveResumeButton(self) -> None:
        self._live.resume()
        self._liveTimer.start(int(1000 * self._parameterNode.liveUpdateIntervalS))
        self.ui.liveStatusLabel.text = self._live.statusText()
        self._showLiveState()

    def onLiveResetButton(self) -> None:
        self._live.reset()
        self.ui.liveStatusLabel.text = _("Reset: every frame was forgotten; press Start to begin again.")
        self._showLiveState()

    def _endLive(self) -> None:
        """Stop the timer and the observers of a live reconstruction (scene closing, module reload, a new Start)."""
        if self._liveTimer is not None:
            self._liveTimer.stop()
        if self._live is not None:
            self._live.cleanup()
            self._live = None

    def onFitRoiButton(self) -> None:
        p = self._parameterNode
        try:
            spacing = (p.pixelSpacingXMm, p.pixelSpacingYMm) if p.overridePixelSpacing else None
            options = self.logic.optionsFromParameters(p)
            p.roiNode = self.logic.fitRoi(p.inputBrowser or p.imageSequence, p.roiNode,
                                          imageSequence=p.imageSequence if p.inputBrowser else None,
                                          pixelSpacingMm=spacing, calibrationNode=p.calibrationTransform,
                                          clipRectangle=options.get("clipRectangle"))
            self.ui.statusLabel.text = _("ROI '{name}' fitted to the sweep; drag its handles to crop.").format(
                name=p.roiNode.GetName())
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "ROI fit", _("Could not fit the ROI (see the Python console / log for details)."),
                              _("Could not fit the ROI: {error}").format(error=err))

    def onApplyButton(self) -> None:
        p = self._parameterNode
        missing = self.logic.missingDependencies(p.poses, checkQuality=p.poses == "learned", fillHoles=p.fillHoles,
                                                 device=p.device)
        if missing:
            self._installDependencies(missing)
            return
        self._setRunning(True)
        self.ui.statusLabel.text = _("Running...")
        try:
            spacing = (p.pixelSpacingXMm, p.pixelSpacingYMm) if p.overridePixelSpacing else None
            report = None
            if p.poses == "learned" and module_logic.qualityGuardAvailable():
                # the guard first: the clinician sees the warning before trusting learned poses; its table and
                # plot are added with the result, only if the reconstruction succeeds
                report = self.logic.checkSweep(p.inputBrowser or p.imageSequence, progress=self._progress,
                                               imageSequence=p.imageSequence if p.inputBrowser else None,
                                               pixelSpacingMm=spacing, addNodes=False)
                self._showQuality(report)
                if report.verdict == "out-of-distribution" and not slicer.util.confirmOkCancelDisplay(
                        _("{message}\n\nReconstruct with learned poses anyway?").format(message=report.message),
                        windowTitle=_("Freehand Reconstruction")):
                    self.ui.statusLabel.text = _("Not reconstructed: the sweep is out of distribution.")
                    return
            volume = self.logic.reconstruct(
                p.inputBrowser or p.imageSequence, poses=p.poses,
                interpolation=p.interpolation, compounding=p.compounding, fillHoles=p.fillHoles, fanMask=p.fanMask,
                roiNode=p.roiNode, outputVolumeNode=p.outputVolume, coverage=p.createCoverage, showIn3D=p.showIn3D,
                preset=p.renderingPreset, model=p.modelPath, sweepDirection=p.sweepDirection, device=p.device,
                progress=self._progress, shouldCancel=self._shouldCancel,
                imageSequence=p.imageSequence if p.inputBrowser else None,
                channels=[p.channelSequence] if p.channelSequence else [], pixelSpacingMm=spacing,
                calibrationNode=p.calibrationTransform, transformSequence=p.createTransformSequence,
                checkQuality=False, qualityReport=report, qualityNodes=report is not None,  # checked above
                parameterNode=p, **self.logic.optionsFromParameters(p))
            p.outputVolume = volume
            chart = self.logic.lastNodes.get("qualityChart")
            if chart is not None:
                slicer.modules.plots.logic().ShowChartInLayout(chart)
            if p.centerView:
                centerViewsOn(volume)
            r = self.logic.lastReport
            self.ui.statusLabel.text = _(
                "Done: {frames} frames in {seconds:.1f} s, {dims} voxels of {spacing} mm, coverage {coverage:.0f} %."
            ).format(frames=r["frames"], seconds=r["seconds"], dims=" x ".join(map(str, r["dims_ijk"])),
                     spacing=" x ".join(f"{v:g}" for v in (r["spacing_mm"][:1] if len(set(r["spacing_mm"])) == 1
                                                             else r["spacing_mm"])),
                     coverage=100 * r["coverage_fraction"])
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled; the scene was left as it was.")
        except Exception as err:  # noqa: BLE001 - show every failure to the user, with the traceback in the log
            self._showFailure(err, "reconstruction", _("Failed (see the Python console / log for details)."),
                              _("Reconstruction failed: {error}").format(error=err))
        finally:
            self._setRunning(False)


def centerViewsOn(volume) -> None:
    """Show ``volume`` in the slice views and centre the 3D view on it."""
    slicer.util.setSliceViewerLayers(background=volume, fit=True)
    layoutManager = slicer.app.layoutManager()
    if layoutManager is not None and layoutManager.threeDViewCount > 0:
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


def ensureDependencies(requirementsPath: str, needTorch: bool = True) -> None:
    """Install what FreehandRecon needs beyond a stock Slicer: PyTorch first, through the PyTorch extension
    (so that no requirement pulls a PyPI torch before it), then Resources/requirements.txt.

    Asks the user first; raises :class:`freehandrecon.dependencies.InstallDeclined` when they say no.
    Never called at import time or by the self-test.
    """
    if needTorch:
        _ensureTorch()
    _ensureRequirements(requirementsPath)


def _ensureRequirements(requirementsPath: str) -> None:
    try:
        import slicer.packaging as packaging  # Slicer 5.12+: checks versions, asks, installs

        pipEnsure = packaging.pip_ensure
    except (ImportError, AttributeError):
        pipEnsure = None
    if pipEnsure is not None:
        try:
            pipEnsure(packaging.load_requirements(requirementsPath), requester="FreehandRecon")
        except RuntimeError as err:
            if "declined" in str(err).lower():
                raise dependencies.InstallDeclined() from None
            raise
        return
    # Slicer 5.4-5.10: install what is missing or older than required
    unmet = dependencies.unmet_requirements(dependencies.read_requirements(requirementsPath))
    if not unmet:
        return
    if not slicer.util.confirmOkCancelDisplay(
            _("FreehandRecon needs these Python packages: {packages}. Install them now?").format(
                packages=", ".join(unmet)), windowTitle=_("Freehand Reconstruction")):
        raise dependencies.InstallDeclined()
    slicer.util.pip_install(unmet)


def _ensureTorch() -> None:
    if not dependencies.missing(["torch"]):
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise ResourceError("FreehandRecon needs PyTorch, and the PyTorch extension that installs it is missing.",
                            "Install the 'PyTorch' extension from the Extensions Manager, restart Slicer and press "
                            "the button again (it installs torch for your GPU or CPU).") from None
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
        raise dependencies.InstallDeclined()


class FreehandReconLogic(ScriptedLoadableModuleLogic, module_logic.FreehandReconLogic):
    """The console API (``freehandrecon.module_logic.FreehandReconLogic``) on slicer.mrmlScene, plus the parameter node.

    ``logic = slicer.util.getModuleLogic("FreehandRecon")``, then ``logic.reconstruct(browserNode, ...)``,
    ``logic.estimatePoses(browserNode, ...)``, ``logic.memoryEstimateMb(...)``, ``logic.loadSample()``.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        module_logic.FreehandReconLogic.__init__(self)

    def getParameterNode(self):
        return FreehandReconParameterNode(super().getParameterNode())


class FreehandReconTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled sample (through Sample Data) -> sequence browser -> logic -> checked volume.

    Passes on a clean Slicer: it installs nothing, and a part whose Python packages are missing (torch for
    learned poses and the quality guard) is skipped with the reason in the log.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleDataRegistered()
        self.setUp()
        self.test_SampleLoadsAsAScene()
        self.setUp()
        self.test_TrackedReconstruction()
        self.setUp()
        self.test_LearnedPoses()
        self.setUp()
        self.test_CheckSweep()
        self.setUp()
        self.test_LiveReconstruction()
        self.setUp()
        self.test_AdaptRefusesTheShortSample()

    def _loadSampleBrowser(self):
        import SampleData

        registerSampleData()
        sample = module_logic.SAMPLES[0]
        SampleData.SampleDataLogic().downloadSample(sample.sampleName)
        browser = slicer.mrmlScene.GetFirstNodeByName(sample.browserName)
        self.assertIsNotNone(browser, "the sample scene did not load its sequence browser")
        return browser

    def test_SampleDataRegistered(self):
        import SampleData

        registerSampleData()
        sample = module_logic.SAMPLES[0]
        source = SampleData.SampleDataLogic().sourceForSampleName(sample.sampleName)
        self.assertIsNotNone(source)
        self.assertEqual(module_logic.file_sha256(sample.path), sample.sha256)

    def _skipIfMissing(self, what: str, poses: str = "tracked", checkQuality: bool = False) -> bool:
        missing = FreehandReconLogic.missingDependencies(poses, checkQuality)
        if missing:
            message = f"FreehandRecon self-test: {what} skipped: {', '.join(missing)} not installed in this Slicer"
            logging.warning(message)
            self.delayDisplay(message)
        return bool(missing)

    def test_SampleLoadsAsAScene(self):
        """Sample Data loads the .mrb as a scene (5.4-5.6 would only download it without 'SceneFile')."""
        browser = self._loadSampleBrowser()
        self.assertEqual(browser.GetNumberOfItems(), module_logic.SAMPLES[0].frames)
        self.assertIsNone(FreehandReconLogic().checkInputs(
            type("Parameters", (), {"inputBrowser": browser, "poses": "tracked"})()))
        self.delayDisplay("Test passed")

    def test_TrackedReconstruction(self):
        import numpy as np

        if self._skipIfMissing("tracked reconstruction"):
            return
        self.delayDisplay("Loading the sample sweep")
        browser = self._loadSampleBrowser()
        self.assertEqual(browser.GetNumberOfItems(), 21)
        logic = FreehandReconLogic()
        self.delayDisplay("Reconstructing with tracked poses")
        stages = []
        volume = logic.reconstruct(browser, poses="tracked", spacingMm=0.5,
                                   progress=lambda stage, fraction: stages.append(stage))
        self.assertIn("B-mode", stages)
        array = slicer.util.arrayFromVolume(volume)
        self.assertEqual(array.shape, (105, 106, 147))
        self.assertEqual(volume.GetSpacing(), (0.5, 0.5, 0.5))
        ras = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ras)
        np.testing.assert_allclose([ras.GetElement(i, 3) for i in range(3)], [-74.52, 165.57, 29.07], atol=0.02)
        self.assertGreater(float(array.max()), 200)
        self.assertAlmostEqual(logic.lastReport["coverage_fraction"], 0.2213, delta=0.01)
        coverage = slicer.util.arrayFromVolume(logic.lastNodes["coverage"])
        self.assertGreater(float(array[coverage > 0].mean()), float(array[coverage == 0].mean()))
        transforms = slicer.mrmlScene.GetFirstNodeByName("SpinePhantom_ImageToReference")
        self.assertIsNotNone(transforms)
        self.delayDisplay("Test passed")

    def test_LearnedPoses(self):
        if self._skipIfMissing("learned poses", "learned", checkQuality=True):
            return
        if not module_logic.learnedModelAvailable():
            self.delayDisplay("Learned poses (or the bundled model) are not in this build; skipped")
            return
        browser = self._loadSampleBrowser()
        logic = FreehandReconLogic()
        sequence = logic.estimatePoses(browser, method="learned")
        self.assertEqual(sequence.GetNumberOfDataNodes(), browser.GetNumberOfItems())
        self.assertTrue(browser.IsSynchronizedSequenceNode(sequence.GetID()))
        volume = logic.reconstruct(browser, poses="learned", spacingMm=1.0)
        self.assertGreater(float(slicer.util.arrayFromVolume(volume).max()), 0)
        self.delayDisplay("Test passed")

    def test_CheckSweep(self):
        if self._skipIfMissing("quality check", checkQuality=True):
            return
        if not module_logic.qualityGuardAvailable():
            self.delayDisplay("The quality guard is not in this build; skipped")
            return
        browser = self._loadSampleBrowser()
        logic = FreehandReconLogic()
        self.delayDisplay("Checking the sweep with the quality guard")
        report = logic.checkSweep(browser)
        self.assertEqual(report.num_frames, 21)
        self.assertIn(report.verdict, ("ok", "warning", "out-of-distribution"))
        table = logic.lastNodes["qualityTable"]
        self.assertEqual(table.GetNumberOfRows(), 21)
        self.assertEqual(logic.lastNodes["qualityChart"].GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")

    def test_AdaptRefusesTheShortSample(self):
        """"Adapt to my probe" checks its input before any work: the 21-frame sample is too short, the refusal says
        how to fix it, nothing is written and the scene is unchanged."""
        import tempfile

        from freehandrecon.errors import InputError

        if self._skipIfMissing("adapting to a probe", "learned", checkQuality=True):
            return
        from freehandrecon.adapt.browsers import adapt_from_browsers

        browser = self._loadSampleBrowser()
        logic = FreehandReconLogic()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with tempfile.TemporaryDirectory() as folder:
            with self.assertRaises(InputError) as caught:
                adapt_from_browsers(logic, browser, pathlib.Path(folder) / "probe")
            self.assertIn("adapt needs at least 40", caught.exception.problem)
            self.assertTrue(caught.exception.fix)
            self.assertEqual(list(pathlib.Path(folder).iterdir()), [])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.delayDisplay("Test passed")

    def test_LiveReconstruction(self):
        """The Live section's logic: the sample's frames arrive in an image node one by one, as OpenIGTLinkIF
        delivers them (pixels and pose in one StartModify/EndModify block); the live volume equals the offline one."""
        import numpy as np

        if self._skipIfMissing("live reconstruction"):
            return
        browser = self._loadSampleBrowser()
        logic = FreehandReconLogic()
        sweep = logic.readSweep(browser)
        roi = logic.fitRoi(browser)
        offline = slicer.util.arrayFromVolume(logic.reconstruct(browser, spacingMm=1.0, roiNode=roi,
                                                                showIn3D=False)).copy()
        image = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
        live = logic.liveReconstruction(image, spacingMm=1.0, roiNode=roi)
        live.start()
        p2w = sweep.pixel_to_world()
        for frame, matrix in zip(sweep.frames, p2w):
            wasModifying = image.StartModify()
            slicer.util.updateVolumeFromArray(image, frame[None])
            image.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
            image.EndModify(wasModifying)
        volume = live.stop()
        self.assertEqual(live.status["frames_used"], sweep.num_frames)
        array = slicer.util.arrayFromVolume(volume)
        self.assertEqual(array.shape, offline.shape)
        close = np.abs(array.astype(np.int32) - offline.astype(np.int32)) <= 1
        self.assertGreaterEqual(float(close.mean()), 0.999)
        self.delayDisplay("Test passed")
