"""Regenerate FreehandRecon/CMakeLists.txt from the scripts and resources that exist.

Run after adding or removing a module file: python scripts/update_module_cmake.py
(``--tracked``: list only files git tracks, to commit while untracked work is in the tree).
(Testing/test_module_contract.py fails when the list is stale.)
"""

import subprocess
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "FreehandRecon"

TEMPLATE = """#-----------------------------------------------------------------------------
set(MODULE_NAME FreehandRecon)

#-----------------------------------------------------------------------------
set(MODULE_PYTHON_SCRIPTS
{scripts}
  )

set(MODULE_PYTHON_RESOURCES
{resources}
  )

#-----------------------------------------------------------------------------
slicerMacroBuildScriptedModule(
  NAME ${{MODULE_NAME}}
  SCRIPTS ${{MODULE_PYTHON_SCRIPTS}}
  RESOURCES ${{MODULE_PYTHON_RESOURCES}}
  WITH_GENERIC_TESTS
  )

#-----------------------------------------------------------------------------
if(BUILD_TESTING)
  # Register the module's self-test (FreehandReconTest) to run inside Slicer.
  slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py)
endif()
"""


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", "."], cwd=MODULE_DIR, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def main() -> None:
    keep = _tracked() if "--tracked" in sys.argv[1:] else None
    scripts = sorted(str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    scripts.remove("FreehandRecon.py")
    scripts.insert(0, "FreehandRecon.py")
    resources = sorted(str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())
    if keep is not None:
        scripts = [s for s in scripts if s in keep]
        resources = [r for r in resources if r in keep]
    text = TEMPLATE.format(scripts="\n".join(f"  {s}" for s in scripts),
                           resources="\n".join(f"  {r}" for r in resources))
    (MODULE_DIR / "CMakeLists.txt").write_text(text)
    print(f"{len(scripts)} scripts, {len(resources)} resources listed")


if __name__ == "__main__":
    main()
