"""The Slicer module cannot run here (no Slicer desktop); check its contract statically.

- FreehandRecon.py compiles;
- every ``self.ui.<name>`` it uses exists in the .ui, with a widget class that fits;
- every SlicerParameterName in the .ui is a field of the parameter node, bound to a widget class that
  slicer.parameterNodeWrapper can connect, and every field is bound or listed as console-only;
- requirements.txt matches pyproject.toml; nothing heavy is imported when Slicer loads the module;
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


# Widget classes slicer.parameterNodeWrapper's GUI connectors accept for each field type (they match the
# widget's exact class: a ctkDoubleSpinBox or ctkComboBox would fail at connectGui in Slicer).
FITTING_CLASSES = {
    "node": {"qMRMLNodeComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "QPushButton"},
    "choice": {"QComboBox"},
    "str": {"QLineEdit", "QTextEdit"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}


def annotation_kind(annotation: str) -> str:
    if re.search(r"\bvtkMRML\w+Node\b", annotation):
        return "node"
    if "Choice(" in annotation:
        return "choice"
    for kind, pattern in (("float", r"\bfloat\b"), ("int", r"\bint\b"), ("bool", r"\bbool\b"), ("str", r"\bstr\b"),
                          ("path", r"\bPath\b")):
        if re.search(pattern, annotation):
            return kind
    raise AssertionError(f"unexpected annotation {annotation}")


def bound_parameters() -> dict[str, tuple[str, str]]:
    """SlicerParameterName -> (widget class, widget name) in the .ui."""
    bound = {}
    for w in ui_widgets().values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in bound, f"parameter '{name}' is bound to two widgets"
                bound[name] = (w.get("class"), w.get("name"))
    return bound


def console_only_parameters() -> set[str]:
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id == "CONSOLE_ONLY_PARAMETERS":
                return set(ast.literal_eval(node.value))
    raise AssertionError("FreehandRecon.py must define CONSOLE_ONLY_PARAMETERS (parameters with no widget)")


def test_parameter_names_in_ui_are_fields_with_fitting_widgets():
    fields = parameter_fields()
    bound = bound_parameters()
    assert bound, "no widget is bound to the parameter node"
    for param, (cls, widget) in bound.items():
        assert param in fields, f"SlicerParameterName '{param}' ({widget}) is not a parameter node field"
        kind = annotation_kind(fields[param])
        assert cls in FITTING_CLASSES[kind], f"{param} ({fields[param]}) is bound to a {cls}; use one of " \
                                             f"{sorted(FITTING_CLASSES[kind])}"


def test_every_parameter_field_is_bound_or_documented_console_only():
    fields = set(parameter_fields())
    bound = set(bound_parameters())
    console_only = console_only_parameters()
    assert console_only <= fields, f"CONSOLE_ONLY_PARAMETERS names unknown fields: {console_only - fields}"
    assert not console_only & bound, f"fields both bound and console-only: {console_only & bound}"
    unbound = fields - bound - console_only
    assert not unbound, f"parameter node fields with no widget and not listed as console-only: {sorted(unbound)}"


def test_widget_classes_used_from_python_fit():
    """Attributes the module sets or reads on ui widgets exist on their class kind."""
    widgets = ui_widgets()
    text = MODULE.read_text()
    expectations = {"applyButton": "QPushButton", "cancelButton": "QPushButton", "progressBar": "QProgressBar",
                    "statusLabel": "QLabel", "memoryEstimateLabel": "QLabel"}
    for name, cls in expectations.items():
        assert f"self.ui.{name}" in text, f"the widget does not use {name}"
        assert widgets[name].get("class") == cls, f"{name} should be a {cls}"
    for name in set(re.findall(r"self\.ui\.(\w+)\.enabled", text)):
        assert widgets[name].get("class") != "QLabel" or name == "memoryEstimateLabel"


def test_ui_sections_and_custom_widgets_are_declared():
    root = ET.parse(UI).getroot()
    sections = [w.findtext("property/string") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Input", "Poses", "Reconstruction", "Output", "Live reconstruction"]
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_classes = {"QWidget", "QLabel", "QComboBox", "QCheckBox", "QDoubleSpinBox", "QPushButton", "QProgressBar",
                  "QLineEdit", "QTextEdit", "QSpinBox"}
    used = {w.get("class") for w in root.iter("widget")}
    assert used - qt_classes <= declared, f"custom widgets not declared: {used - qt_classes - declared}"
    # every MRML selector gets the scene from the module widget
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors <= receivers, f"selectors without mrmlSceneChanged connection: {selectors - receivers}"


def test_requirements_match_pyproject():
    """Resources/requirements.txt lists the run-time deps of pyproject.toml that the module needs inside Slicer
    and Slicer does not ship: h5py (.h5 files), safetensors (models) and numba (the compiled compounding engine,
    an optional speed-up: without it the numpy engine compounds). Nothing there may depend on torch
    (pytorch-msssim would pull a PyPI torch before the PyTorch extension installs the right one)."""
    import tomllib

    reqs = (MODULE_DIR / "Resources" / "requirements.txt").read_text().split("\n")
    reqs = {r.strip() for r in reqs if r.strip() and not r.startswith("#")}
    deps = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    shipped_by_slicer = {"numpy", "vtk", "slicer-core", "torch"}  # torch: through the PyTorch extension
    # matplotlib: plots of `freehandrecon evaluate`; tqdm: command-line progress bars; pytorch-msssim:
    # training losses; pydicom, av: DICOM and video readers (the module takes its sweeps from the scene, and the
    # readers import them only when such a file is read); pyigtl: `freehandrecon live`/`stream` (in Slicer,
    # OpenIGTLinkIF brings the images into the scene and the Live section reads them there); pynrrd: the snapshot
    # files of `freehandrecon live` (the module updates its volume node instead). The module never uses them.
    command_line_only = {"matplotlib", "tqdm", "pytorch-msssim", "pydicom", "av", "pyigtl", "pynrrd"}
    expected = {d for d in deps if re.split(r"[<>=~! \[;]", d)[0] not in shipped_by_slicer | command_line_only}
    assert reqs == expected
    assert {re.split(r"[<>=~! \[;]", r)[0] for r in reqs} == {"h5py", "safetensors", "numba"}


def test_module_imports_nothing_heavy_at_load_time():
    tree = ast.parse(MODULE.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not names & {"torch", "numpy", "freehandrecon.compound", "freehandrecon.logic", "freehandrecon.poses"}
    core = (MODULE_DIR / "freehandrecon" / "module_logic.py").read_text()
    core_top = [n for n in ast.parse(core).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    core_names = {a.name for n in core_top for a in n.names} | {n.module for n in core_top
                                                                if isinstance(n, ast.ImportFrom)}
    assert not core_names & {"torch", "qt", "ctk", "slicer", "compound", "logic", "poses", "mrml"}


def test_sample_data_is_registered_from_the_samples_list():
    text = MODULE.read_text()
    assert "registerCustomSampleDataSource" in text and "module_logic.SAMPLES" in text
    assert 'connect("startupCompleted()", registerSampleData)' in text
    assert "checksums=sample.checksum" in text


def test_cmake_lists_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+([\w./-]+\.(?:py|ui|png|xml|json|md|safetensors|mrml|mrb|nrrd|mha|txt))\s*$", cmake, re.M))
    scripts = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert scripts - listed == set(), f"scripts missing from CMakeLists.txt: {sorted(scripts - listed)}"
    assert resources - listed == set(), f"resources missing from CMakeLists.txt: {sorted(resources - listed)}"
    stale = {p for p in listed if not (MODULE_DIR / p).exists()}
    assert not stale, f"CMakeLists.txt lists files that do not exist: {sorted(stale)}"
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake


def _function_source(name: str) -> str:
    tree = ast.parse(MODULE.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(MODULE.read_text(), node)


def test_dependencies_install_torch_first_and_only_from_the_button():
    """PyTorch comes from the PyTorch extension before any requirement (none may pull a PyPI torch); the
    buttons install when the logic says something is missing; declining is a plain status, not a failure;
    slicer.pydeps (which no Slicer has) is gone; the self-test installs nothing."""
    text = MODULE.read_text()
    ensure = _function_source("ensureDependencies")
    assert ensure.index("_ensureTorch()") < ensure.index("_ensureRequirements(")
    torch = _function_source("_ensureTorch")
    assert "PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)" in torch
    requirements = _function_source("_ensureRequirements")
    assert "pip_ensure" in requirements and "unmet_requirements" in requirements  # 5.12+ / older Slicer
    assert "slicer.pydeps" not in text
    for handler in ("onApplyButton", "onCheckSweepButton"):
        source = _function_source(handler)
        assert "self.logic.missingDependencies(" in source and "self._installDependencies(missing)" in source
    install = _function_source("_installDependencies")
    assert "except dependencies.InstallDeclined:" in install and '_("Dependencies not installed.")' in install
    test_class = text[text.index("class FreehandReconTest"):]
    assert "ensureDependencies" not in test_class and "pip_install" not in test_class
    assert test_class.count("self._skipIfMissing(") >= 3  # tracked, learned, quality check


def test_an_empty_model_path_is_not_shown_as_a_dot():
    """pathlib.Path() is "."; the panel clears it from the path widget on every update."""
    assert "self._hideEmptyModelPath()" in _function_source("_onParameterNodeModified")
    assert 'currentPath = ""' in _function_source("_hideEmptyModelPath")


def test_live_memory_estimate_uses_the_selected_channels_and_settings():
    source = _function_source("_updateMemoryEstimate")
    for keyword in ("channels=[p.channelSequence] if p.channelSequence else []", "pixelSpacingMm=",
                    "calibrationNode=p.calibrationTransform", "imageSequence="):
        assert keyword in source


def test_issue18_widgets_parameter_set_selector_and_option_plumbing():
    """The SlicerIGT-parity widgets exist with their classes; the parameter-set selector lists this module's
    (hidden) scripted module nodes; every field the logic's optionsFromParameters reads is a parameter field."""
    widgets = ui_widgets()
    expected = {"parameterSetSelector": "qMRMLNodeComboBox", "fitRoiButton": "QPushButton",
                "importanceMaskSelector": "qMRMLNodeComboBox", "anisotropicSpacingCheckBox": "QCheckBox",
                "spacingYSpinBox": "QDoubleSpinBox", "spacingZSpinBox": "QDoubleSpinBox",
                "fanAngleLeftSpinBox": "QDoubleSpinBox", "fanAngleRightSpinBox": "QDoubleSpinBox",
                "fanOriginXSpinBox": "QDoubleSpinBox", "fanOriginYSpinBox": "QDoubleSpinBox",
                "fanRadiusStartSpinBox": "QDoubleSpinBox", "fanRadiusStopSpinBox": "QDoubleSpinBox",
                "useClipRectangleCheckBox": "QCheckBox", "clipXSpinBox": "QSpinBox", "clipYSpinBox": "QSpinBox",
                "clipWidthSpinBox": "QSpinBox", "clipHeightSpinBox": "QSpinBox", "skipIntervalSpinBox": "QSpinBox"}
    for name, cls in expected.items():
        assert name in widgets and widgets[name].get("class") == cls, name
    selector = widgets["parameterSetSelector"]
    props = {p.get("name"): p for p in selector.findall("property")}
    assert props["nodeTypes"].findtext("stringlist/string") == "vtkMRMLScriptedModuleNode"
    assert props["showHidden"].findtext("bool") == "true"  # vtkMRMLScriptedModuleNode is hidden from editors
    assert "SlicerParameterName" not in props  # it chooses the parameter node itself
    text = MODULE.read_text()
    assert 'parameterSetSelector.addAttribute("vtkMRMLScriptedModuleNode", "ModuleName", self.moduleName)' in text
    assert "parameterNode=p, **self.logic.optionsFromParameters(p)" in text
    assert "qualityNodes=report is not None" in text and "addNodes=False" in text
    core = (MODULE_DIR / "freehandrecon" / "module_logic.py").read_text()
    body = core[core.index("def optionsFromParameters"):core.index("def ", core.index("def optionsFromParameters") + 10)]
    read = set(re.findall(r'get\("(\w+)"', body)) | set(re.findall(r'get\(n, 0\)\) for n in \(([^)]*)\)', body))
    names = {n.strip(' "\n') for item in read for n in item.split(",")}
    names = {n for n in names if n}
    fields = parameter_fields()
    assert names and names <= set(fields), f"optionsFromParameters reads unknown fields: {names - set(fields)}"
    assert {"clipXPx", "clipHeightPx", "fanRadiusStopPx", "skipInterval", "spacingZMm"} <= names


def test_slicer_smoke_script_uses_what_the_module_has():
    """scripts/slicer_smoke_test.py (run by maintainers inside Slicer) drives only widgets, parameters and
    logic methods that exist, so it does not rot silently while it cannot run here."""
    script = ROOT / "scripts" / "slicer_smoke_test.py"
    text = script.read_text()
    compile(text, str(script), "exec")
    missing_ui = set(re.findall(r"widget\.ui\.(\w+)", text)) - set(ui_widgets())
    assert not missing_ui, f"the smoke script uses ui names absent from the .ui: {missing_ui}"
    module = MODULE.read_text()
    fields = set(re.findall(r"^    (\w+): ", module, flags=re.M))
    used_fields = set(re.findall(r"\bp\.(\w+)\b", text)) | set(re.findall(r"_parameterNode\.(\w+)\b", text))
    assert used_fields and not used_fields - fields, f"unknown parameter fields: {used_fields - fields}"
    for method in set(re.findall(r"\bwidget\.(on\w+|initializeParameterNode)\b", text)):
        assert f"def {method}(" in module, f"the widget has no {method}()"
    from freehandrecon.module_logic import FreehandReconLogic

    for method in set(re.findall(r"\blogic\.(\w+)\(", text)) | set(re.findall(r"widget\.logic\.(\w+)\(", text)):
        assert hasattr(FreehandReconLogic, method), f"the logic has no {method}()"
    assert "ensureDependencies" in module and "slicer.util.exit" in text
