"""PLUS configuration XML: the calibration transforms and the volume reconstruction settings.

Only what reconstruction needs is read: every ``CoordinateDefinitions/Transform``
(``From``, ``To``, ``Matrix`` = 16 numbers, row-major) and the raw attributes of the
``VolumeReconstruction`` element and of its ``HoleFilling/HoleFillingElement``
children. Their meaning is interpreted by the compounder.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, InputError
from .common import existing_file

ROOT_TAGS = ("PlusConfiguration", "VolumeReconstruction")  # a full PLUS config, or its reconstruction element
HOLE_FILLING_TYPES = {"STICK", "GAUSSIAN", "GAUSSIAN_ACCUMULATION", "DISTANCE_WEIGHT_INVERSE", "NEAREST_NEIGHBOR"}


@dataclass
class PlusConfig:
    """What FreehandRecon uses from a PLUS configuration file.

    Attributes:
        transforms: ``{(From, To): 4x4}`` from ``CoordinateDefinitions``.
        transform_attributes: the other attributes of each transform (Error, Date, ...).
        volume_reconstruction: attributes of the ``VolumeReconstruction`` element, or None.
        hole_filling: attributes of each ``HoleFillingElement``, in order.
        path: the file read.
    """

    transforms: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    transform_attributes: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    volume_reconstruction: dict[str, str] | None = None
    hole_filling: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None

    def matrix(self, frm: str, to: str) -> np.ndarray:
        """The ``frm -> to`` matrix, inverting a stored ``to -> frm`` one if needed."""
        if (frm, to) in self.transforms:
            return self.transforms[(frm, to)].copy()
        if (to, frm) in self.transforms:
            return np.linalg.inv(self.transforms[(to, frm)])
        have = ", ".join(f"{a}To{b}" for a, b in self.transforms) or "none"
        raise CalibrationError(f"The PLUS config '{self.path}' has no {frm}To{to} transform (it has: {have}).",
                               f"Add <Transform From=\"{frm}\" To=\"{to}\" Matrix=\"...16 numbers...\"/> to its "
                               "CoordinateDefinitions, or ask for one of the transforms it has.")


def parse_matrix(text: str, what: str) -> np.ndarray:
    """16 numbers (row-major) -> 4x4; raises :class:`CalibrationError` naming ``what``."""
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise CalibrationError(f"{what}: the matrix '{text.strip()[:80]}' contains text that is not a number.",
                               "Write 16 numbers, row by row, separated by spaces.") from None
    if values.size != 16:
        raise CalibrationError(f"{what}: the matrix has {values.size} numbers; a 4x4 matrix needs 16.",
                               "Write 16 numbers, row by row, separated by spaces.")
    if not np.isfinite(values).all():
        raise CalibrationError(f"{what}: the matrix contains NaN or infinite values.",
                               "Write 16 finite numbers (the calibration result), row by row.")
    return values.reshape(4, 4)


def read_plus_config(path: str | os.PathLike) -> PlusConfig:
    """Read a PLUS configuration XML; see :class:`PlusConfig`."""
    p = existing_file(path, "PLUS config file")
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, ValueError, LookupError) as exc:  # bad syntax, bad or unknown encoding
        raise InputError(f"The PLUS config '{p}' is not valid XML ({exc}).",
                         "Fix the XML (an editor with XML checking helps) or give another config.") from None
    if root.tag not in ROOT_TAGS:
        raise InputError(f"'{p}' is XML but not a PLUS configuration: its root element is <{root.tag[:60]}>, not "
                         "<PlusConfiguration>.",
                         "Give the PLUS configuration file (it starts with <PlusConfiguration ...>).")
    cfg = PlusConfig(path=p)
    for node in root.iter("CoordinateDefinitions"):
        for t in node.iter("Transform"):
            attrs = dict(t.attrib)
            frm, to, text = attrs.pop("From", None), attrs.pop("To", None), attrs.pop("Matrix", None)
            if not frm or not to or text is None:
                raise CalibrationError(f"The PLUS config '{p}' has a Transform without From, To or Matrix "
                                       f"(attributes: {sorted(t.attrib)}).",
                                       "Give each <Transform> From=\"...\" To=\"...\" Matrix=\"16 numbers\".")
            m = parse_matrix(text, f"PLUS config '{p}', transform {frm}To{to}")
            if (frm, to) in cfg.transforms and not np.allclose(cfg.transforms[(frm, to)], m):
                raise CalibrationError(f"The PLUS config '{p}' defines {frm}To{to} twice with different matrices.",
                                       "Delete the stale one.")
            cfg.transforms[(frm, to)] = m
            cfg.transform_attributes[(frm, to)] = attrs
    vr = next(root.iter("VolumeReconstruction"), None)
    if vr is not None:
        cfg.volume_reconstruction = dict(vr.attrib)
        cfg.hole_filling = [dict(e.attrib) for e in vr.iter("HoleFillingElement")]
        check_volume_reconstruction(cfg.volume_reconstruction, cfg.hole_filling, p)
    return cfg


def _numbers(attrs: dict[str, str], name: str, p: Path) -> list[float] | None:
    text = attrs.get(name)
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise InputError(f"{p.name}: VolumeReconstruction {name}=\"{text[:60]}\" is not a list of numbers.",
                         "Write space-separated numbers, as in the PLUS documentation.") from None
    if not all(np.isfinite(values)):
        raise InputError(f"{p.name}: VolumeReconstruction {name}=\"{text[:60]}\" holds NaN or infinity.",
                         "Write finite numbers.")
    return values


def check_volume_reconstruction(attrs: dict[str, str], hole_filling: list[dict[str, str]], p: Path) -> None:
    """Refuse VolumeReconstruction settings that PLUS would reject or that silently mean nothing.

    Reversed fan angles, negative or half-empty clip rectangles and unknown hole-filling types are
    :class:`InputError`; ``ClipRectangleSize="0 0"`` means no clipping in PLUS and gets a warning.
    """
    for key in ("FanAnglesDeg", "FanAngles"):
        angles = _numbers(attrs, key, p)
        if angles is not None and len(angles) == 2 and angles[0] > angles[1]:
            raise InputError(f"{p.name}: {key}=\"{attrs[key]}\" is reversed: the first (start) angle must not be "
                             "larger than the second (stop) angle.",
                             f"Write the smaller angle first, e.g. {key}=\"{angles[1]:g} {angles[0]:g}\".")
        if angles is not None and any(abs(a) > 90 for a in angles):
            raise InputError(f"{p.name}: {key}=\"{attrs[key]}\" has an angle beyond +-90 degrees.",
                             "Give fan angles in degrees from the image's vertical axis, within -90..90.")
    size = _numbers(attrs, "ClipRectangleSize", p)
    if size is not None and len(size) == 2:
        if min(size) < 0 or (min(size) == 0 and max(size) > 0):
            raise InputError(f"{p.name}: ClipRectangleSize=\"{attrs['ClipRectangleSize']}\" would keep no pixel "
                             "(a negative or zero width or height).",
                             "Give the clip rectangle's width and height in pixels (both > 0), or remove "
                             "ClipRectangleOrigin/ClipRectangleSize to use the whole frame.")
        if max(size) == 0 and "ClipRectangleOrigin" in attrs:
            warnings.warn(f"{p.name}: ClipRectangleSize=\"0 0\" means no clipping (as in PLUS); every pixel of the "
                          "frame is used.", stacklevel=3)
    for el in hole_filling:
        kind = (el.get("Type") or "").upper()
        if kind not in HOLE_FILLING_TYPES:
            raise InputError(f"{p.name}: HoleFillingElement Type=\"{el.get('Type', '')}\" is not a PLUS hole filling "
                             "type.", f"Use one of {', '.join(sorted(HOLE_FILLING_TYPES))}.")
