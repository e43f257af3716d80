"""Which Python packages each FreehandRecon action needs inside Slicer, and which are missing or too old.

Qt-free: the module's panel, its self-test and the stock-Slicer tests share it. Nothing here imports
the packages it checks (``importlib.util.find_spec`` and ``importlib.metadata`` only), so asking is
cheap enough for every change of the panel.

A stock Slicer's Python has numpy and VTK but not torch (the PyTorch extension installs it), nor what
Resources/requirements.txt lists (h5py for TUS-REC .h5 files, safetensors for the bundled models).
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

from .errors import Cancelled

# What each need is, for the panel's tooltip: import name -> (pip distribution, why).
PACKAGES = {
    "torch": ("torch", "PyTorch (from the PyTorch extension)"),
    "safetensors": ("safetensors", "model weights (learned poses, quality guard)"),
    "h5py": ("h5py", "TUS-REC .h5 files"),
    "numba": ("numba", "compiled compounding engine (optional speed-up)"),
}
# Installed with the requirements but needed by no action: without them something runs slower, not not at all.
OPTIONAL = ("numba",)  # without numba the numpy engine compounds (several times slower, no PLUS arithmetic)


class InstallDeclined(Cancelled):
    """The user said no to installing the dependencies (not a failure: nothing was changed)."""

    def __init__(self, problem: str = "Dependencies not installed.",
                 fix: str = "Press the button again and accept the installation when you are ready.") -> None:
        super().__init__(problem, fix)


def needed_for(poses: str = "tracked", check_quality: bool = False, fill_holes: str = "none",
               device: str = "cpu") -> list[str]:
    """Import names an action needs beyond a stock Slicer: a reconstruction with ``poses`` ("tracked",
    "learned", "speckle"), or the quality guard (``check_quality``; learned poses run it first).

    Tracked reconstruction compounds with the numba engine, or the numpy engine when numba is absent (numba
    is an optional speed-up there, hole filling included); a CUDA device needs torch. ``fill_holes`` is
    accepted for callers that pass it: no hole filling needs more than numpy."""
    del fill_holes
    need = []
    if poses != "tracked" or check_quality or str(device).startswith("cuda"):
        need.append("torch")
    if poses == "learned" or check_quality:
        need.append("safetensors")  # the bundled model and the guard are .safetensors files
    return need


def optional_missing(find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """The optional speed-ups (:data:`OPTIONAL`) that are not installed."""
    return missing(OPTIONAL, find_spec)


def missing(names: Iterable[str], find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """The import names among ``names`` that are not installed (found without importing them)."""
    out = []
    for name in names:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install counts as missing
            found = False
        if not found:
            out.append(name)
    return out


# --- requirements.txt -----------------------------------------------------------------------------

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")
_SPECIFIER = re.compile(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*([^\s,]+)\s*$")


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def parse_requirement(line: str) -> tuple[str, list[tuple[str, str]]]:
    """``"h5py>=3.8,<4"`` -> ``("h5py", [(">=", "3.8"), ("<", "4")])``; environment markers are ignored."""
    m = _REQUIREMENT.match(line)
    if m is None:
        raise ValueError(f"not a requirement: {line!r}")
    specs = []
    for part in filter(None, (p.strip() for p in m.group(3).split(","))):
        s = _SPECIFIER.match(part)
        if s is None:
            raise ValueError(f"unsupported version specifier {part!r} in {line!r}")
        specs.append((s.group(1), s.group(2)))
    return m.group(1), specs


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part: "2.13.0+cpu" -> (2, 13, 0); "1.0rc1" -> (1, 0)."""
    nums = []
    for part in version.split("+", 1)[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        nums.append(int(m.group()))
        if m.end() != len(part):
            break
    return tuple(nums)


def _compare(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return (a > b) - (a < b)


def version_satisfies(version: str, specs: list[tuple[str, str]]) -> bool:
    """Whether ``version`` meets every ``(operator, version)`` in ``specs``.

    Uses ``packaging`` (Slicer ships it from 5.4 on) when it is there, else compares the numeric
    release parts (enough for the plain ``>=`` bounds of Resources/requirements.txt).
    """
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:
        return _numeric_satisfies(version, specs)
    try:
        return SpecifierSet(",".join(op + v for op, v in specs)).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return _numeric_satisfies(version, specs)


def _numeric_satisfies(version: str, specs: list[tuple[str, str]]) -> bool:
    have = _release(version)
    for op, want in specs:
        c = _compare(have, _release(want))
        if op == "~=":
            w = _release(want)
            prefix = w[:-1] if len(w) > 1 else w
            ok = c >= 0 and have[:len(prefix)] == prefix
        else:
            ok = {"==": c == 0, "===": version == want, "!=": c != 0, ">=": c >= 0, "<=": c <= 0,
                  ">": c > 0, "<": c < 0}[op]
        if not ok:
            return False
    return True


def unmet_requirements(lines: Iterable[str], version_of: Callable[[str], str] = metadata.version) -> list[str]:
    """The requirement lines that are not installed, or installed at a version that does not satisfy them."""
    unmet = []
    for line in lines:
        name, specs = parse_requirement(line)
        try:
            installed = version_of(name)
        except metadata.PackageNotFoundError:
            unmet.append(line)
            continue
        if specs and not version_satisfies(installed, specs):
            unmet.append(line)
    return unmet
