"""FreehandRecon/ runs on Python 3.9 (the Python of Slicer 5.4-5.8), which is not installable here.

Every .py under FreehandRecon/ must parse with Python 3.9's grammar, and must not use, at run time,
3.10+ features that the grammar check cannot see: ``X | Y`` evaluated outside postponed annotations,
``zip(strict=)``, ``dataclass(kw_only=/slots=)``, ``int.bit_count()`` and 3.10+ standard-library names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "FreehandRecon").rglob("*.py") if "__pycache__" not in p.parts)

# Standard-library names that appeared after 3.9: module -> names (None: the whole module).
NEW_STDLIB = {
    "tomllib": None,                                   # 3.11
    "typing": {"TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "LiteralString", "Never",
               "assert_never", "assert_type", "reveal_type", "Required", "NotRequired", "TypeVarTuple",
               "Unpack", "dataclass_transform", "is_typeddict", "get_overloads", "override"},
    "itertools": {"pairwise", "batched"},              # 3.10, 3.12
    "enum": {"StrEnum", "verify", "member", "nonmember"},  # 3.11
    "contextlib": {"aclosing", "chdir"},               # 3.10, 3.11
    "dataclasses": {"KW_ONLY"},                        # 3.10
    "datetime": {"UTC"},                               # 3.11
}
NEW_BUILTINS = {"anext", "aiter", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}
NEW_METHODS = {"bit_count"}  # int.bit_count (3.10)
NEW_KEYWORDS = {("zip", "strict"), ("dataclass", "kw_only"), ("dataclass", "slots"), ("dataclass", "match_args"),
                ("bisect", "key"), ("bisect_left", "key"), ("bisect_right", "key"), ("insort", "key")}
RUNTIME_TYPES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "type", "object"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (arguments, returns, annotated assignments)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    roots.append(a.annotation)
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def problems(source: str, filename: str) -> list[str]:
    """What in ``source`` needs Python 3.10 or later (empty when it runs on 3.9)."""
    try:
        tree = ast.parse(source, filename=filename, feature_version=(3, 9))
    except SyntaxError as err:
        return [f"{filename}:{err.lineno}: Python 3.9 cannot parse it: {err.msg}"]
    found = []
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                    any(a.name == "annotations" for a in n.names) for n in tree.body)
    in_annotation = _annotation_nodes(tree)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            typeish = [s for s in (node.left, node.right)
                       if (isinstance(s, ast.Constant) and s.value is None) or _name(s) in RUNTIME_TYPES
                       or isinstance(s, ast.Subscript)]
            if typeish and (id(node) not in in_annotation or not postponed):
                found.append(f"{where}: 'X | Y' type union evaluated at run time (3.10+)")
        elif isinstance(node, ast.Call):
            func = _name(node.func)
            for kw in node.keywords:
                if (func, kw.arg) in NEW_KEYWORDS:
                    found.append(f"{where}: {func}({kw.arg}=...) is 3.10+")
            if func in NEW_METHODS and isinstance(node.func, ast.Attribute):
                found.append(f"{where}: .{func}() is 3.10+")
            if isinstance(node.func, ast.Name) and func in NEW_BUILTINS:
                found.append(f"{where}: {func}() is 3.10+")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            found.append(f"{where}: {node.id} is 3.10+")
        elif isinstance(node, ast.Import):
            found += [f"{where}: import {a.name} is 3.11+" for a in node.names
                      if a.name in NEW_STDLIB and NEW_STDLIB[a.name] is None]
        elif isinstance(node, ast.ImportFrom) and node.module in NEW_STDLIB:
            names = NEW_STDLIB[node.module]
            bad = [a.name for a in node.names] if names is None else [a.name for a in node.names if a.name in names]
            found += [f"{where}: from {node.module} import {b} is 3.10+" for b in bad]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                NEW_STDLIB.get(node.value.id) and node.attr in NEW_STDLIB[node.value.id]:
            found.append(f"{where}: {node.value.id}.{node.attr} is 3.10+")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_runs_on_python_3_9(path):
    assert problems(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("snippet", [
    "match x:\n    case 1:\n        pass\n",
    "def f(x: int | None):\n    pass\n",                       # no postponed annotations
    "from __future__ import annotations\nisinstance(1, int | float)\n",
    "from __future__ import annotations\nT = list[int] | None\n",
    "zip(a, b, strict=True)\n",
    "from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int\n",
    "@dataclass(kw_only=True)\nclass A:\n    x: int\n",
    "n = (5).bit_count()\n",
    "import tomllib\n",
    "from itertools import pairwise\n",
    "from typing import TypeAlias\n",
    "import typing\nX = typing.ParamSpec('X')\n",
    "anext(it)\n",
])
def test_the_checker_sees_3_10_features(snippet):
    assert problems(snippet, "snippet.py"), snippet


def test_the_checker_accepts_3_9_code():
    ok = ("from __future__ import annotations\nfrom typing import Optional\n"
          "def f(x: int | None, y: list[str] | None = None) -> dict[str, int] | None:\n    return None\n"
          "flags = 1 | 2\nmask = a | b\nz = list(zip(a, b))\n")
    assert problems(ok, "ok.py") == []


def test_pip_package_keeps_requires_python_3_10():
    """The sources run on 3.9 (inside Slicer), but the pip package pins slicer-core and torch, which need
    Python 3.10: requires-python stays >=3.10 so that pip does not try a 3.9 install that cannot resolve."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python\s*=\s*">=3.10"', text, re.M)
    assert re.search(r'"slicer-core==', text) and re.search(r'"torch==', text)
