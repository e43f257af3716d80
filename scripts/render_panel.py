"""Render the module panel (FreehandRecon/Resources/UI/FreehandRecon.ui) offscreen to a PNG.

There is no Slicer here, so the .ui is loaded with PySide6's QUiLoader and small stand-ins for the
CTK/MRML widgets it uses (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, qMRMLNodeComboBox,
qMRMLWidget). The panel is filled as after loading the bundled sample: the selectors show the sample's
nodes, the combo boxes the parameter node's choices, and the memory estimate and status line are
computed by the real logic on slicer-core (unless --no-sample).

    QT_QPA_PLATFORM=offscreen python scripts/render_panel.py --out docs/panel.png

Needs PySide6 (pip install PySide6-Essentials).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_FILE = ROOT / "FreehandRecon" / "Resources" / "UI" / "FreehandRecon.ui"


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets

    return QtCore, QtWidgets


def make_standins():
    """Classes named like the Slicer widgets, with the properties the .ui sets on them."""
    QtCore, QtWidgets = _qt()
    Property = QtCore.Property

    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        def _get_text(self) -> str:
            return self.title()

        def _set_text(self, value: str) -> None:
            self.setTitle(f"\u25bc {value}")

        text = Property(str, _get_text, _set_text)

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        def __init__(self, parent=None):
            super().__init__(parent)
            self._none = "None"

        def _get_none(self) -> str:
            return self._none

        def _set_none(self, value: str) -> None:
            self._none = value

        noneDisplay = Property(str, _get_none, _set_none)
        # set by the .ui; nothing to show without a scene
        showHidden = Property(bool, lambda self: False, lambda self, v: None)
        baseName = Property(str, lambda self: "", lambda self, v: None)

        def show_node(self, name: str | None) -> None:
            self.clear()
            self.addItem(name or self._none)

    class ctkPathLineEdit(QtWidgets.QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.edit = QtWidgets.QComboBox(self)
            self.edit.setEditable(True)
            self.edit.lineEdit().setPlaceholderText("bundled model")
            layout.addWidget(self.edit, 1)
            layout.addWidget(QtWidgets.QToolButton(self, text="..."))

    class ctkSliderWidget(QtWidgets.QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
            self.spin = QtWidgets.QDoubleSpinBox(self)
            layout.addWidget(self.slider, 1)
            layout.addWidget(self.spin)
            self.slider.setRange(0, 1000)

        def _sync(self) -> None:
            lo, hi = self.spin.minimum(), self.spin.maximum()
            self.slider.setValue(int(1000 * (self.spin.value() - lo) / max(hi - lo, 1e-9)))

        def _prop(attr: str, kind):
            def get(self):
                return getattr(self.spin, attr)()

            def set_(self, value):
                getattr(self.spin, "set" + attr[0].upper() + attr[1:])(value)
                self._sync()

            return Property(kind, get, set_)

        value = _prop("value", float)
        minimum = _prop("minimum", float)
        maximum = _prop("maximum", float)
        singleStep = _prop("singleStep", float)
        decimals = _prop("decimals", int)
        suffix = _prop("suffix", str)
        pageStep = Property(float, lambda self: 1.0, lambda self, v: None)

    return [ctkCollapsibleButton, qMRMLWidget, qMRMLNodeComboBox, ctkPathLineEdit, ctkSliderWidget]


def sample_state(spacing_mm: float) -> dict:
    """Node names, memory estimate and status line from the real logic on the bundled sample."""
    sys.path.insert(0, str(ROOT / "FreehandRecon"))
    import slicer

    from freehandrecon.io.slicer_scene import new_scene
    from freehandrecon.module_logic import FreehandReconLogic

    slicer.mrmlScene = new_scene()
    logic = FreehandReconLogic()
    browser = logic.loadSample()
    memory = logic.memoryEstimateMb(browser, spacing_mm)
    logic.reconstruct(browser, spacingMm=spacing_mm, showIn3D=False)
    r = logic.lastReport
    status = (f"Done: {r['frames']} frames in {r['seconds']:.1f} s, {' x '.join(map(str, r['dims_ijk']))} voxels of "
              f"{r['spacing_mm'][0]:g} mm, coverage {100 * r['coverage_fraction']:.0f} %.")
    return {"browser": browser.GetName(), "memory": f"{memory:,.0f} MB", "status": status,
            "reported": f"{r['memory_estimate_mb']:,.0f} MB"}


def render(out: Path, width: int = 460, with_sample: bool = True, spacing_mm: float = 0.5) -> Path:
    """Load the .ui with stand-ins, fill it like Slicer would, and save a PNG of it."""
    QtCore, QtWidgets = _qt()
    from PySide6 import QtUiTools

    from freehandrecon import module_logic

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])

    def quiet(mode, context, message):  # the .ui's mrmlSceneChanged -> setMRMLScene links need real Slicer
        if "QObject::connect" not in message:
            sys.stderr.write(message + "\n")

    QtCore.qInstallMessageHandler(quiet)
    loader = QtUiTools.QUiLoader()
    standins = make_standins()  # keep the classes alive: the loader holds only borrowed references to them
    for cls in standins:
        loader.registerCustomWidget(cls)
    ui_file = QtCore.QFile(str(UI_FILE))
    if not ui_file.open(QtCore.QFile.ReadOnly):
        raise SystemExit(f"cannot open {UI_FILE}")
    panel = loader.load(ui_file)
    ui_file.close()
    if panel is None:
        raise SystemExit(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")

    state = sample_state(spacing_mm) if with_sample else {"browser": None, "memory": "-", "status": "", "reported": "-"}
    find = lambda name: panel.findChild(QtWidgets.QWidget, name)  # noqa: E731
    selections = {"parameterSetSelector": "FreehandRecon", "importanceMaskSelector": None,
                  "inputBrowserSelector": state["browser"], "imageSequenceSelector": None,
                  "channelSequenceSelector": None, "calibrationSelector": None, "roiSelector": None,
                  "outputVolumeSelector": None}
    for name, node in selections.items():
        find(name).show_node(node)
    choices = {"posesComboBox": module_logic.POSE_METHODS, "sweepDirectionComboBox": module_logic.SWEEP_DIRECTIONS,
               "deviceComboBox": module_logic.DEVICES, "interpolationComboBox": module_logic.INTERPOLATIONS,
               "compoundingComboBox": module_logic.COMPOUNDINGS, "fillHolesComboBox": module_logic.HOLE_FILLINGS,
               "fanMaskComboBox": module_logic.FAN_MASKS, "presetComboBox": ("US-BMode", "PA-Hot", "Doppler-Red")}
    for name, items in choices.items():
        combo = find(name)
        combo.clear()
        combo.addItems(list(items))
    find("spacingSliderWidget").setProperty("value", spacing_mm)
    find("memoryEstimateLabel").setText(state["memory"])
    find("statusLabel").setText(state["status"])
    find("adaptFolderLineEdit").edit.lineEdit().setPlaceholderText("folder for the probe model")
    live_image = find("liveImageSelector")
    live_image.clear()
    live_image.addItem("Image_Reference")  # the live image OpenIGTLinkIF brings from a PLUS server
    # As the module does for tracked poses: the sensorless-only and override widgets are disabled.
    # So are the options their switches leave off (anisotropic spacing, importance mask, manual fan, clip rectangle).
    for name in ("modelPathLineEdit", "sweepDirectionComboBox", "transformSequenceCheckBox", "pixelSpacingXSpinBox",
                 "pixelSpacingYSpinBox", "anisotropicSpacingWidget", "importanceMaskSelector", "fanAnglesWidget",
                 "fanOriginWidget", "fanRadiusWidget", "clipRectangleWidget"):
        find(name).setEnabled(False)
    for name in ("liveStopButton", "liveResumeButton", "liveResetButton"):  # live stopped: only Start
        find(name).setEnabled(False)
    apply_button = find("applyButton")
    apply_button.setEnabled(state["browser"] is not None)
    find("progressBar").setVisible(False)

    panel.resize(width, 10)
    panel.adjustSize()
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    print(f"memory estimate: {state['memory']}; run's own estimate: {state['reported']}; status: {state['status']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "panel.png", help="PNG to write")
    parser.add_argument("--width", type=int, default=460, help="panel width in pixels (Slicer's module panel)")
    parser.add_argument("--no-sample", action="store_true", help="do not load the sample (empty selectors)")
    args = parser.parse_args(argv)
    path = render(args.out, args.width, not args.no_sample)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
