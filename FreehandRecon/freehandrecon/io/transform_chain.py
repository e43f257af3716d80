"""Resolve a transform such as ``ImageToReference`` from the transforms that are available.

Transforms are named ``<From>To<To>`` as in PLUS: ``ProbeToTracker`` maps Probe
coordinates to Tracker coordinates. Each known transform is an edge of a graph over
coordinate frames; it is either per frame (``[N, 4, 4]`` with a bool ``[N]`` status,
from a sequence file) or constant (``4x4``, from a PLUS config or a calibration
file). An edge can be walked backwards through its inverse, so for example
``ImageToReference = inv(ReferenceToTracker) @ ProbeToTracker @ ImageToProbe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import geometry
from ..errors import CalibrationError

# Two paths "agree" when their matrices differ by less than this (linear part relative
# to its largest entry; translation in mm). File matrices carry about 6 digits.
LINEAR_TOL = 1e-4
TRANSLATION_TOL_MM = 1e-2
_MAX_PATHS = 32


def split_transform_name(name: str) -> tuple[str, str]:
    """``"ProbeToTracker"`` (or ``"ProbeToTrackerTransform"``) -> ``("Probe", "Tracker")``.

    The separator is a ``To`` followed by an upper-case letter, so ``ToolToTracker``
    splits into ``Tool`` and ``Tracker``. Raises :class:`CalibrationError` otherwise.
    """
    base = name[:-len("Transform")] if name.endswith("Transform") and len(name) > len("Transform") else name
    cuts = [i for i in range(1, len(base) - 2) if base[i:i + 2] == "To" and base[i + 2].isupper()]
    if len(cuts) != 1:
        raise CalibrationError(f"'{name}' is not a transform name of the form <From>To<To> "
                               f"({'no' if not cuts else 'more than one'} 'To' separator found).",
                               "Name transforms like PLUS does, e.g. ImageToReference or ProbeToTracker.")
    return base[:cuts[0]], base[cuts[0] + 2:]


@dataclass
class Edge:
    """One known transform ``frm -> to``."""

    frm: str
    to: str
    matrix: np.ndarray          # [4, 4] constant or [N, 4, 4] per frame
    status: np.ndarray | None   # bool [N] for per-frame edges, None for constant ones
    source: str                 # where it came from, for messages

    @property
    def name(self) -> str:
        return f"{self.frm}To{self.to}"

    @property
    def per_frame(self) -> bool:
        return self.matrix.ndim == 3


@dataclass
class Chain:
    """A resolved transform: per-frame matrices, which frames are usable, and how it was built."""

    matrices: np.ndarray        # [N, 4, 4]; identity where not valid
    valid: np.ndarray           # bool [N]
    steps: list[tuple[Edge, bool]] = field(default_factory=list)  # (edge, inverted)

    @property
    def names(self) -> list[str]:
        """Names of the transforms used, in the order they are applied to a point."""
        return [e.name for e, _ in self.steps]

    @property
    def description(self) -> str:
        """E.g. ``Image -> Probe (ImageToProbe, config) -> Tracker (ProbeToTracker, file) -> ...``."""
        if not self.steps:
            return "identity"
        parts = [self.steps[0][0].to if self.steps[0][1] else self.steps[0][0].frm]
        for e, inv in self.steps:
            parts.append(f"{e.frm if inv else e.to} ({'inverse of ' if inv else ''}{e.name}, {e.source})")
        return " -> ".join(parts)

    @property
    def direct(self) -> bool:
        """True when the request was one stored transform, used as it is."""
        return len(self.steps) == 1 and not self.steps[0][1]


class TransformGraph:
    """Frames and the transforms between them for a sequence of ``n_frames`` frames."""

    def __init__(self, n_frames: int) -> None:
        self.n_frames = int(n_frames)
        self.edges: list[Edge] = []

    def add(self, name: str | tuple[str, str], matrix: np.ndarray, status: np.ndarray | None = None,
            source: str = "") -> None:
        """Add ``name`` (``"AToB"`` or ``("A", "B")``) with a 4x4 or ``[N, 4, 4]`` matrix."""
        frm, to = split_transform_name(name) if isinstance(name, str) else name
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape == (4, 4):
            st = None
        elif m.shape == (self.n_frames, 4, 4):
            st = np.ones(self.n_frames, bool) if status is None else np.asarray(status, bool)
        else:
            raise CalibrationError(f"Transform {frm}To{to} ({source}) has shape {m.shape}; expected 4x4 or "
                                   f"[{self.n_frames}, 4, 4].", "Give one 4x4 matrix, or one per frame.")
        self.edges.append(Edge(frm, to, m, st, source))

    @property
    def frames(self) -> list[str]:
        return sorted({e.frm for e in self.edges} | {e.to for e in self.edges})

    def _paths(self, frm: str, to: str) -> list[list[tuple[Edge, bool]]]:
        """All simple paths (no frame visited twice) from ``frm`` to ``to``, shortest first."""
        found: list[list[tuple[Edge, bool]]] = []

        def walk(node: str, visited: set[str], steps: list[tuple[Edge, bool]]) -> None:
            if len(found) >= _MAX_PATHS:
                return
            if node == to:
                found.append(list(steps))
                return
            for e in self.edges:
                for start, end, inv in ((e.frm, e.to, False), (e.to, e.frm, True)):
                    if start == node and end not in visited:
                        steps.append((e, inv))
                        walk(end, visited | {end}, steps)
                        steps.pop()

        walk(frm, {frm}, [])
        return sorted(found, key=len)

    def _evaluate(self, steps: list[tuple[Edge, bool]]) -> Chain:
        n = self.n_frames
        total = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
        valid = np.ones(n, bool)
        for e, inv in steps:
            m = e.matrix
            if e.per_frame:
                valid &= e.status
                # Frames that are not OK may hold anything; park identity there so the
                # algebra stays finite. Frames marked OK must be usable transforms.
                m = np.where(e.status[:, None, None], m, np.eye(4))
                geometry.validate_transforms(m, what=f"{e.name} transforms ({e.source})")
                geometry.check_axes(m, f"{e.name} transforms ({e.source})")
            else:
                geometry.validate_transforms(m[None], what=f"{e.name} matrix ({e.source})")
                geometry.check_axes(m, f"{e.name} matrix ({e.source})")
            total = (np.linalg.inv(m) if inv else m) @ total
        total[~valid] = np.eye(4)
        return Chain(total, valid, list(steps))

    def resolve(self, name: str) -> Chain:
        """Compute ``name`` (e.g. ``"ImageToReference"``) for every frame.

        Raises :class:`CalibrationError` when a frame is unknown, when no path links
        the two frames, or when two paths give different results.
        """
        frm, to = split_transform_name(name)
        missing = [f for f in (frm, to) if f not in self.frames]
        paths = [] if missing else self._paths(frm, to)
        if not paths:
            have = ", ".join(e.name for e in self.edges) or "none"
            what = (f"coordinate frame(s) {' and '.join(repr(f) for f in missing)} are not in any available transform"
                    if missing else f"no chain of available transforms links '{frm}' to '{to}'")
            raise CalibrationError(
                f"Cannot compute {name}: {what}. Available transforms: {have} (frames: "
                f"{', '.join(self.frames) or 'none'}).",
                f"Pass the PLUS config with the image calibration (--plus-config config.xml, with "
                f"<Transform From=\"{frm}\" To=\"...\">), a calibration matrix (--calibration matrix.txt), or "
                f"the name of a transform that exists (--image-to-reference, e.g. one of: {have}).")
        best = self._evaluate(paths[0])
        for other in paths[1:]:
            alt = self._evaluate(other)
            both = best.valid & alt.valid
            a, b = best.matrices[both], alt.matrices[both]
            lin_tol = LINEAR_TOL * max(float(np.abs(a[:, :3, :3]).max(initial=0.0)), 1e-12)
            t_tol = TRANSLATION_TOL_MM + LINEAR_TOL * float(np.abs(a[:, :3, 3]).max(initial=0.0))
            if (np.abs(a[:, :3, :3] - b[:, :3, :3]).max(initial=0.0) > lin_tol
                    or np.abs(a[:, :3, 3] - b[:, :3, 3]).max(initial=0.0) > t_tol):
                raise CalibrationError(
                    f"{name} is ambiguous: two chains of transforms give different results:\n"
                    f"  1) {best.description}\n  2) {alt.description}",
                    "Remove the transform you do not want (e.g. a stale ImageToReference in the file or a "
                    "duplicate calibration in the config), or ask for a name that has one path.")
        return best
