"""End-to-end check of the FreehandRecon panel inside a real 3D Slicer (for maintainers; it cannot run headless).

Run it with the extension installed (or its module folder added to Slicer's module paths):

    Slicer --no-splash --testing --no-main-window --python-script scripts/slicer_smoke_test.py
    Slicer --no-splash --testing --no-main-window --python-script scripts/slicer_smoke_test.py --install

``--testing`` makes Slicer's confirmation dialogs answer OK by themselves (slicer.util testing mode), so
``--install`` installs the missing dependencies (PyTorch through the PyTorch extension, then h5py and
safetensors) without a click. Without ``--install`` the steps that need them are reported as SKIP.

It drives the widget as a user would: Sample Data, the parameter node, the Apply/Cancel/Fit ROI buttons.
It prints one line per step (PASS / FAIL / SKIP) and exits with 0 when nothing failed, 1 otherwise.
"""

import sys
import traceback

import qt
import slicer

RESULTS = []


def step(name):
    """Decorator: run the step, record PASS / FAIL / SKIP (a step returns a string to skip with that reason)."""

    def wrap(function):
        def run(*args):
            try:
                skipped = function(*args)
                RESULTS.append((name, "SKIP" if skipped else "PASS", skipped or ""))
            except Exception as err:  # noqa: BLE001 - every failure goes into the table
                traceback.print_exc()
                RESULTS.append((name, "FAIL", f"{type(err).__name__}: {err}"))
        run.stepName = name
        return run

    return wrap


def nodeIds():
    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


@step("module loads and its panel builds")
def moduleLoads(state):
    check(hasattr(slicer.modules, "freehandrecon"), "the FreehandRecon module is not loaded")
    state["widget"] = slicer.modules.freehandrecon.widgetRepresentation().self()
    check(state["widget"].ui is not None, state["widget"].parent.helpText[:200])


@step("dependencies (--install installs the missing ones)")
def dependencies(state):
    logic = state["widget"].logic
    missing = logic.missingDependencies("learned", checkQuality=True)
    if missing and "--install" in sys.argv:
        import FreehandRecon

        FreehandRecon.ensureDependencies(state["widget"].resourcePath("requirements.txt"),
                                         needTorch="torch" in missing)
        missing = logic.missingDependencies("learned", checkQuality=True)
    state["missing"] = missing
    if missing:
        return f"missing: {', '.join(missing)} (rerun with --install)"


@step("Sample Data loads the spine sweep as a sequence browser")
def loadSample(state):
    import SampleData

    slicer.mrmlScene.Clear()
    SampleData.SampleDataLogic().downloadSample("FreehandReconSpinePhantom")
    browser = slicer.mrmlScene.GetFirstNodeByName("SpinePhantom browser")
    check(browser is not None and browser.GetNumberOfItems() == 21, "no 21-frame 'SpinePhantom browser' in the scene")
    widget = state["widget"]
    widget.initializeParameterNode()
    check(widget._parameterNode.inputBrowser is browser, "the panel did not select the sample's browser")
    state["browser"] = browser


def apply(widget):
    widget.ui.applyButton.click()
    slicer.app.processEvents()
    return widget.ui.statusLabel.text


@step("Apply with tracked poses builds the volume and its coverage")
def applyTracked(state):
    widget, p = state["widget"], state["widget"]._parameterNode
    p.poses, p.spacingMm, p.outputVolume = "tracked", 0.5, None
    if widget.logic.missingDependencies("tracked"):
        return "tracked reconstruction needs: " + ", ".join(widget.logic.missingDependencies("tracked"))
    check(widget.ui.applyButton.enabled, f"Apply is disabled: {widget.ui.applyButton.toolTip}")
    status = apply(widget)
    check(status.startswith("Done"), f"status: {status}")
    volume = p.outputVolume
    check(volume is not None and slicer.util.arrayFromVolume(volume).shape == (105, 106, 147),
          "the output volume is missing or not 147 x 106 x 105 voxels")
    check(volume.GetNodeReference("FreehandRecon.Coverage") is not None, "no coverage volume")
    state["volume"] = volume


@step("Apply again into the same output reuses its coverage node")
def applyAgain(state):
    if "volume" not in state:
        return "the tracked step did not run"
    widget = state["widget"]
    before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    status = apply(widget)
    check(status.startswith("Done"), f"status: {status}")
    after = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    check(after == before, f"{after - before} new volume nodes on a rerun into the same output")


@step("Cancel during a run leaves the scene as it was")
def cancel(state):
    widget, p = state["widget"], state["widget"]._parameterNode
    if widget.logic.missingDependencies("tracked"):
        return "tracked reconstruction needs its dependencies"
    p.outputVolume, p.spacingMm = None, 0.3
    before = nodeIds()
    qt.QTimer.singleShot(0, widget.onCancelButton)  # fires at the first progress update (processEvents)
    status = apply(widget)
    check(status.startswith("Cancelled"), f"status: {status}")
    check(nodeIds() == before, "the cancelled run added or removed nodes")
    p.spacingMm = 0.5


@step("Fit ROI creates one editable bounds ROI and reuses it")
def fitRoi(state):
    widget, p = state["widget"], state["widget"]._parameterNode
    p.roiNode = None
    widget.ui.fitRoiButton.click()
    first = p.roiNode
    widget.ui.fitRoiButton.click()
    check(first is not None and p.roiNode is first, "Fit ROI did not create and then reuse one ROI")
    check(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 1, "more than one ROI node")
    p.roiNode = None


@step("Apply with learned poses (quality guard first)")
def applyLearned(state):
    widget, p = state["widget"], state["widget"]._parameterNode
    if state.get("missing"):
        return "learned poses need: " + ", ".join(state["missing"])
    p.poses, p.spacingMm, p.outputVolume = "learned", 1.0, None
    status = apply(widget)
    check(status.startswith("Done"), f"status: {status}")
    check(widget.logic.lastNodes.get("qualityTable") is not None, "no quality table after a learned-pose run")
    p.poses = "tracked"


def main():
    state = {}
    for function in (moduleLoads, dependencies, loadSample, applyTracked, applyAgain, cancel, fitRoi, applyLearned):
        if "widget" not in state and function is not moduleLoads:
            RESULTS.append((function.stepName, "SKIP", "the panel did not build"))
            continue
        function(state)
    print(f"\nFreehandRecon smoke test in Slicer {slicer.app.applicationVersion}")
    for name, result, detail in RESULTS:
        print(f"{result:4}  {name}" + (f"  ({detail})" if detail else ""))
    failed = sum(result == "FAIL" for _, result, _ in RESULTS)
    print(f"{sum(r == 'PASS' for _, r, _ in RESULTS)} passed, {failed} failed")
    slicer.util.exit(1 if failed else 0)


main()
