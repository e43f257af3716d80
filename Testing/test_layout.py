"""The package reads as the pipeline: imports only go down the layer list, and no modules import each other.

Every ``.py`` under ``freehandrecon/`` is parsed (no imports run); every ``import`` statement counts, at
module level and inside functions alike (a lazy import is still a dependency). Importing ``a.b.c`` also
runs the packages ``a.b`` and ``a``, so those count too (except the importer's own packages, running already).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "FreehandRecon" / "freehandrecon"

# Bottom to top. A module may import from its own layer or any layer below; a module belongs to the layer
# whose entry is the longest prefix of its dotted name ("freehandrecon" itself matches only exactly).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("data model", ("freehandrecon", "errors", "geometry", "sweep", "channels", "fan", "model_files",
                    "dependencies", "slicer_version")),
    ("io", ("io",)),
    ("simulate", ("simulate",)),
    ("poses", ("poses",)),
    ("compound", ("compound",)),
    ("quality", ("quality",)),
    ("scene", ("scene",)),
    ("logic", ("logic", "live")),
    ("module logic", ("module_logic", "module_inputs", "module_live")),
    ("command-line helpers", ("commands.common", "commands.__init__")),
    ("lab", ("lab",)),
    ("adapt", ("adapt",)),  # calibrate once, then go trackerless: fine-tunes with the lab's training pieces
    ("commands", ("commands",)),
]
BELOW_SCENE = {name for name, _ in LAYERS[: [n for n, _ in LAYERS].index("scene")]}
SLICER_LIBRARIES = {"slicer", "vtk", "qt", "ctk", "mrml"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    """Index into LAYERS of ``module`` (longest matching prefix)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "freehandrecon":
                hit = module == "freehandrecon"
            elif prefix.endswith(".__init__"):
                hit = module == f"freehandrecon.{prefix[:-len('.__init__')]}"
            else:
                full = f"freehandrecon.{prefix}"
                hit = module == full or module.startswith(full + ".")
            if hit and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name} on purpose"
    return best


class _Imports(ast.NodeVisitor):
    """Collect (target module, line, at module level) for every freehandrecon import of one module."""

    def __init__(self, module: str, is_pkg: bool) -> None:
        self.module, self.is_pkg = module, is_pkg
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []
        self.top_level_libraries: list[tuple[str, int]] = []
        self.dynamic: list[int] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, target: str, line: int) -> None:
        while target not in MODULES and "." in target:  # ``from pkg import name``: name is an attribute
            target = target.rsplit(".", 1)[0]
        parts = target.split(".")
        for k in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first ...
            name = ".".join(parts[:k])
            if k < len(parts) and self.module.startswith(name + "."):
                continue  # ... except this module's own packages, which are running already
            if name in MODULES and name != self.module:
                self.found.append((name, line, self.depth == 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "freehandrecon":
                self._add(alias.name, node.lineno)
            elif self.depth == 0 and alias.name.split(".")[0] in SLICER_LIBRARIES:
                self.top_level_libraries.append((alias.name, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "freehandrecon":
            if self.depth == 0 and source.split(".")[0] in SLICER_LIBRARIES:
                self.top_level_libraries.append((source, node.lineno))
            return
        for alias in node.names:
            self._add(f"{source}.{alias.name}", node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            self.dynamic.append(node.lineno)
        self.generic_visit(node)


def _scan() -> dict[str, _Imports]:
    scans = {}
    for module, (path, is_pkg) in MODULES.items():
        visitor = _Imports(module, is_pkg)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        scans[module] = visitor
    return scans


SCANS = _scan()


def _where(module: str, line: int) -> str:
    return f"{MODULES[module][0].relative_to(PACKAGE_DIR.parent)}:{line}"


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_only_go_down_the_layers():
    upward = []
    for module, scan in SCANS.items():
        here = layer_of(module)
        for target, line, _ in scan.found:
            there = layer_of(target)
            if there > here:
                upward.append(f"{_where(module, line)}: {module} ({LAYERS[here][0]}) imports {target} "
                              f"({LAYERS[there][0]}, a higher layer)")
    assert not upward, "Upward imports (move the code down, or the caller up):\n  " + "\n  ".join(sorted(set(upward)))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles():
    edges = {module: {t for t, _, _ in scan.found} for module, scan in SCANS.items()}
    cycles = _cycles(edges)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(" <-> ".join(component) + ": " + "; ".join(
            f"{_where(m, line)} imports {t}" for m in component for t, line, _ in SCANS[m].found if t in members))
    assert not cycles, "Import cycles (cut one of the imports listed):\n  " + "\n  ".join(lines)


def test_nothing_below_the_scene_loads_slicer_at_import():
    found = [f"{_where(m, line)}: {m} imports {lib} at module level"
             for m, scan in SCANS.items() if LAYERS[layer_of(m)][0] in BELOW_SCENE
             for lib, line in scan.top_level_libraries]
    assert not found, ("Below scene/, Slicer and VTK are imported inside the functions that use them:\n  "
                       + "\n  ".join(found))


def test_imports_are_statements_the_graph_sees():
    found = [f"{_where(m, line)}: {m} imports by name at run time" for m, scan in SCANS.items() for line in scan.dynamic]
    assert not found, "Write imports as import statements so this test sees them:\n  " + "\n  ".join(found)


def test_the_checker_sees_lazy_upward_imports_and_cycles():
    """The rules themselves: a function-level upward import and a two-module cycle are both reported."""
    scan = _Imports("freehandrecon.io.example", False)
    scan.visit(ast.parse("def f():\n    from ..scene import nodes\n"))
    assert [(t, top) for t, _, top in scan.found] == [("freehandrecon.scene", False), ("freehandrecon.scene.nodes", False)]
    assert layer_of("freehandrecon.scene.nodes") > layer_of("freehandrecon.io.example")
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


# The module's logic reads the scene and writes nodes; everything else a reconstruction does (poses, quality guard,
# compounding) it asks of freehandrecon.logic, so there is one orchestration for the module, console and CLI.
MODULE_LOGIC_MAY_NOT_IMPORT = ("freehandrecon.poses", "freehandrecon.compound", "freehandrecon.quality",
                               "freehandrecon.simulate")


def test_module_logic_reaches_poses_compounding_and_quality_only_through_the_logic():
    found = [f"{_where(m, line)}: {m} imports {t}"
             for m in MODULES if LAYERS[layer_of(m)][0] == "module logic"
             for t, line, _ in SCANS[m].found
             if any(t == p or t.startswith(p + ".") for p in MODULE_LOGIC_MAY_NOT_IMPORT)]
    assert {"freehandrecon.module_logic", "freehandrecon.module_inputs"} <= set(MODULES)
    assert not found, "Call freehandrecon.logic instead (one orchestration):\n  " + "\n  ".join(found)
