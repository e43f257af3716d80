"""FreehandRecon.json, the entry for the Slicer Extensions Index, and the extension's CMake metadata.

Schema facts from github:Slicer/ExtensionsIndex (schemas/slicer-extension-catalog-entry-schema-v1.0.1.json:
required $schema, category, scm_url; no other properties than those below; tier 1-5) and its checks
(scripts/check_description_files.py: the category list, scm_url scheme git/https, LF line endings, the
CMake project name equal to the file name, build dependencies that are index entries: PyTorch.json).
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "FreehandRecon.json"
SCHEMA_V101 = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
REQUIRED = {"$schema", "category", "scm_url"}
PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
              "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
SCM_TYPES = {"git", "local"}
CATEGORIES_NEAR_US = {"Ultrasound", "IGT", "Tracking", "Utilities"}  # part of ACCEPTED_EXTENSION_CATEGORIES
INDEX_ENTRIES_WE_NEED = {"PyTorch"}  # PyTorch.json (github:fepegar/SlicerPyTorch, CMake project "PyTorch")


def test_entry_follows_the_schema():
    raw = ENTRY.read_bytes()
    assert b"\r" not in raw
    entry = json.loads(raw)
    assert entry["$schema"] == SCHEMA_V101
    assert REQUIRED <= set(entry) <= set(PROPERTIES)
    for key, value in entry.items():
        assert isinstance(value, PROPERTIES[key]) and not (PROPERTIES[key] is int and isinstance(value, bool)), key
    assert 1 <= entry["tier"] <= 5
    assert entry.get("scm_type", "git") in SCM_TYPES
    assert all(isinstance(d, str) for d in entry["build_dependencies"])


def test_entry_matches_the_extension():
    entry = json.loads(ENTRY.read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*([^\s)]+)", cmake).group(1) == ENTRY.stem
    assert entry["category"] == "Ultrasound" in CATEGORIES_NEAR_US
    assert re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1) == entry["category"]
    assert re.match(r"(https|git)://", entry["scm_url"])
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake).group(1)
    assert entry["scm_url"].removesuffix(".git") == homepage
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    assert depends == entry["build_dependencies"] == ["PyTorch"]
    assert set(depends) <= INDEX_ENTRIES_WE_NEED
    assert "Sequences" not in depends  # part of Slicer core since 2020: not an extension


def test_module_depends_only_on_core_modules():
    module = (ROOT / "FreehandRecon" / "FreehandRecon.py").read_text()
    deps = re.search(r"self\.parent\.dependencies = (\[[^\]]*\])", module).group(1)
    assert json.loads(deps.replace("'", '"')) == ["Sequences"]  # Modules/Loadable/Sequences (qSlicerSequencesModule)
