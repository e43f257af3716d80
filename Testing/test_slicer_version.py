"""The supported Slicer versions (5.4+) and the SampleData keyword each one takes, against Slicer's sources.

The parameter lists below were read from Modules/Scripted/SampleData/SampleData.py of github:Slicer/Slicer at
each tag (``git show <tag>:Modules/Scripted/SampleData/SampleData.py``); ``slicer.i18n`` and
``slicer.parameterNodeWrapper`` from ``git ls-tree <tag> Base/Python/slicer/``.
"""

import ast
import types
from pathlib import Path

import pytest

from freehandrecon import slicer_version

MODULE = Path(__file__).resolve().parents[1] / "FreehandRecon" / "FreehandRecon.py"

_BASE = ["category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader", "thumbnailFileName"]
_TAIL = ["loadFiles", "loadFileProperties", "checksums"]
REGISTER_CUSTOM_SAMPLE_DATA_SOURCE = {  # tag -> parameters of SampleDataLogic.registerCustomSampleDataSource
    "v5.4.0": _BASE + ["loadFileType"] + _TAIL,            # loadFileType='VolumeFile'
    "v5.6.0": _BASE + ["loadFileType"] + _TAIL,            # loadFileType="VolumeFile"
    "v5.8.0": _BASE + ["loadFileTypes"] + _TAIL + ["loadFileType"],   # loadFileType: deprecated alias
    "v5.10.0": _BASE + ["loadFileTypes"] + _TAIL + ["loadFileType"],
    "v5.12.0": _BASE + ["loadFileTypes"] + _TAIL + ["loadFileType"],
}
HAS_I18N_AND_PARAMETER_NODE_WRAPPER = {"v5.0.0": False, "v5.2.2": False, "v5.4.0": True, "v5.6.0": True}


def module_register_keywords() -> set[str]:
    """The literal keywords FreehandRecon.py passes to registerCustomSampleDataSource."""
    tree = ast.parse(MODULE.read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "")
                == "registerCustomSampleDataSource")
    return {k.arg for k in call.keywords if k.arg is not None}


@pytest.mark.parametrize("tag", sorted(REGISTER_CUSTOM_SAMPLE_DATA_SOURCE))
def test_sample_data_keywords_exist_in_each_supported_slicer(tag):
    params = REGISTER_CUSTOM_SAMPLE_DATA_SOURCE[tag]
    kwargs = module_register_keywords() | set(slicer_version.sample_data_load_keywords(tag[1:]))
    assert kwargs <= set(params), f"{tag} has no parameter {kwargs - set(params)}"
    assert slicer_version.sample_data_load_keywords(tag[1:]) in ({"loadFileType": "SceneFile"},
                                                                 {"loadFileTypes": "SceneFile"})


def test_the_module_asks_for_a_scene_load():
    tree = ast.parse(MODULE.read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "")
                == "registerCustomSampleDataSource")
    starred = [ast.unparse(k.value) for k in call.keywords if k.arg is None]
    assert starred == ["slicer_version.sample_data_load_keywords(slicer.app)"]


def test_minimum_is_the_first_slicer_with_i18n_and_the_parameter_node_wrapper():
    for tag, has in HAS_I18N_AND_PARAMETER_NODE_WRAPPER.items():
        assert slicer_version.is_supported(tag[1:]) == has, tag
    assert slicer_version.MINIMUM == (5, 4)


@pytest.mark.parametrize("given, parsed", [("5.6.2", (5, 6, 2)), ("5.13.31053.0", (5, 13, 31053)), ("5.4", (5, 4, 0)),
                                           ((5, 2), (5, 2, 0)), ("5.8.1-2025-03-01", (5, 8, 1))])
def test_parse(given, parsed):
    assert slicer_version.parse(given) == parsed


def test_parse_reads_a_slicer_app():
    app = types.SimpleNamespace(majorVersion=5, minorVersion=2)  # slicer.app's Qt properties
    assert slicer_version.parse(app) == (5, 2, 0)
    assert slicer_version.unsupported_message(app) == (
        "FreehandRecon needs 3D Slicer 5.4 or later; this is 5.2. Install a newer Slicer from https://download.slicer.org.")
    assert slicer_version.unsupported_message(types.SimpleNamespace(majorVersion=5, minorVersion=4)) is None
    assert slicer_version.unsupported_message((6, 0)) is None


@pytest.mark.parametrize("bad", ["five", "5", (5,)])
def test_parse_refuses_non_versions(bad):
    with pytest.raises(ValueError):
        slicer_version.parse(bad)


def test_module_file_loads_on_slicer_5_0_to_5_2():
    """slicer.i18n and slicer.parameterNodeWrapper are imported inside try/except ImportError, and the module
    class and the widget check the version before anything that needs them."""
    tree = ast.parse(MODULE.read_text())
    guarded = set()
    for node in tree.body:
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
            guarded |= {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom)}
    unguarded = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert {"slicer.i18n", "slicer.parameterNodeWrapper"} <= guarded
    assert not {"slicer.i18n", "slicer.parameterNodeWrapper"} & unguarded
    text = MODULE.read_text()
    module_init = text[text.index("class FreehandRecon(ScriptedLoadableModule)"):text.index("def unsupportedSlicerMessage")]
    assert module_init.index("unsupportedSlicerMessage()") < module_init.index("registerSampleData")
    setup = text[text.index("    def setup(self)"):text.index("    def cleanup(self)")]
    assert setup.index("unsupportedSlicerMessage()") < setup.index("loadUI")
