"""The Slicer module cannot run here (no Slicer desktop); check its contract statically.

- FreehandRecon.py compiles;
- every ``self.ui.<name>`` it uses exists in the .ui, with a widget class that fits;
- every SlicerParameterName in the .ui is a field of the parameter node;
- FreehandRecon/CMakeLists.txt lists every script and resource that exists, and nothing else.
"""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "FreehandRecon"
MODULE = MODULE_DIR / "FreehandRecon.py"
UI = MODULE_DIR / "Resources" / "UI" / "FreehandRecon.ui"


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FreehandReconParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_module_file_compiles():
    compile(MODULE.read_text(), str(MODULE), "exec")


def test_every_ui_name_used_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    widgets = ui_widgets()
    assert used, "the widget uses no ui elements?"
    missing = used - set(widgets)
    assert not missing, f"FreehandRecon.py uses ui names absent from the .ui: {missing}"
    assert widgets["applyButton"].get("class") == "QPushButton"


FITTING_CLASSES = {
    "vtkMRMLSequenceBrowserNode": {"qMRMLNodeComboBox"},
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
    "float": {"ctkDoubleSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "qMRMLSpinBox"},
    "bool": {"QCheckBox", "ctkCheckBox", "QRadioButton"},
    "str": {"QComboBox", "QLineEdit", "ctkComboBox"},
}


def test_parameter_names_in_ui_are_fields_with_fitting_widgets():
    fields = parameter_fields()
    bound = {}
    for w in ui_widgets().values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w.get("class")
    assert bound, "no widget is bound to the parameter node"
    for param, cls in bound.items():
        assert param in fields, f"SlicerParameterName '{param}' is not a parameter node field"
        annotation = fields[param]
        kind = next((k for k in FITTING_CLASSES if k in annotation), None)
        assert kind is not None, f"unexpected annotation {annotation} for {param}"
        assert cls in FITTING_CLASSES[kind], f"{param} ({annotation}) is bound to a {cls}"


def test_cmake_lists_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+([\w./-]+\.(?:py|ui|png|xml|json|md|safetensors|mrml|txt))\s*$", cmake, re.M))
    scripts = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert scripts - listed == set(), f"scripts missing from CMakeLists.txt: {sorted(scripts - listed)}"
    assert resources - listed == set(), f"resources missing from CMakeLists.txt: {sorted(resources - listed)}"
    stale = {p for p in listed if not (MODULE_DIR / p).exists()}
    assert not stale, f"CMakeLists.txt lists files that do not exist: {sorted(stale)}"
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake
