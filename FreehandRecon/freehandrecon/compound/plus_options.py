"""Read the VolumeReconstruction element of a PLUS configuration file into :class:`CompoundOptions`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fan import FanMask
from .options import CompoundOptions, HoleFilling

_INTERP = {"NEAREST_NEIGHBOR": "nearest", "LINEAR": "linear"}
_COMPOUND = {"MEAN": "mean", "MAXIMUM": "max", "LATEST": "latest", "IMPORTANCE_MASK": "importance"}


def _numbers(elem: ET.Element, name: str, count: int, path: Path) -> list[float] | None:
    text = elem.get(name)
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split()]
    except ValueError:
        vals = []
    if len(vals) != count:
        raise InputError(f"{path.name}: attribute {name}=\"{text}\" must hold {count} number(s).",
                         f"Write {count} space-separated numbers, as in the PLUS documentation.")
    return vals


def _choice(elem: ET.Element, name: str, table: dict[str, str], default: str, path: Path) -> str:
    text = elem.get(name)
    if text is None:
        return default
    if text.upper() not in table:
        raise InputError(f"{path.name}: {name}=\"{text}\" is not supported.", f"Use one of {', '.join(table)}.")
    return table[text.upper()]


def _hole_filling(recon: ET.Element, path: Path) -> HoleFilling:
    if (recon.get("FillHoles") or "OFF").upper() != "ON":
        return HoleFilling()
    elements = recon.findall("./HoleFilling/HoleFillingElement")
    if not elements:
        raise InputError(f"{path.name}: FillHoles=\"ON\" but there is no HoleFilling/HoleFillingElement.",
                         "Add <HoleFilling><HoleFillingElement Type=\"STICK\" StickLengthLimit=\"9\" "
                         "NumberOfSticksToUse=\"1\"/></HoleFilling>, or set FillHoles=\"OFF\".")
    el = elements[0]  # IGSIO tries elements in order; the first one decides almost every hole
    kind = (el.get("Type") or "").upper()
    if kind == "STICK":
        length = _numbers(el, "StickLengthLimit", 1, path) or [9]
        sticks = _numbers(el, "NumberOfSticksToUse", 1, path) or [1]
        return HoleFilling("stick", int(length[0]), int(sticks[0]))
    size = _numbers(el, "Size", 1, path) or [3]
    return HoleFilling("normalized", int(size[0]))


def options_from_plus_config(xml_path: str | Path, plus_arithmetic: bool = False
                             ) -> tuple[CompoundOptions, tuple[float, float, float]]:
    """Options and OutputSpacing (mm) from a PLUS config's ``VolumeReconstruction`` element.

    PLUS clip rectangles include the pixel at origin + size; they are converted to this package's
    (x0, y0, width, height) convention (one pixel wider and taller). Gaussian and other kernels map to
    normalised convolution with the element's Size. ``plus_arithmetic`` asks for IGSIO's integer arithmetic.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"Cannot read PLUS config {path}: {exc}.",
                         "Give a readable PLUS XML configuration file.") from exc
    recon = root if root.tag == "VolumeReconstruction" else root.find(".//VolumeReconstruction")
    if recon is None:
        raise InputError(f"{path.name} has no VolumeReconstruction element.",
                         "Use a PLUS volume reconstruction config (it holds <VolumeReconstruction .../>).")
    spacing = _numbers(recon, "OutputSpacing", 3, path)
    if spacing is None:
        raise InputError(f"{path.name}: VolumeReconstruction has no OutputSpacing.",
                         "Add OutputSpacing=\"0.5 0.5 0.5\" (mm).")
    if min(spacing) <= 0:
        raise InputError(f"{path.name}: OutputSpacing must be positive, got {spacing}.", "Give positive spacings in mm.")
    clip = None
    origin = _numbers(recon, "ClipRectangleOrigin", 2, path)
    size = _numbers(recon, "ClipRectangleSize", 2, path)
    if origin is not None and size is not None and size[0] > 0 and size[1] > 0:
        clip = (int(origin[0]), int(origin[1]), int(size[0]) + 1, int(size[1]) + 1)
    fan = None
    angles = _numbers(recon, "FanAnglesDeg", 2, path) or _numbers(recon, "FanAngles", 2, path)
    if angles is not None and (angles[0] != 0 or angles[1] != 0):
        fo = _numbers(recon, "FanOriginPixel", 2, path) or _numbers(recon, "FanOrigin", 2, path) or [0.0, 0.0]
        r0 = (_numbers(recon, "FanRadiusStartPixel", 1, path) or [0.0])[0]
        r1 = (_numbers(recon, "FanRadiusStopPixel", 1, path) or _numbers(recon, "FanDepth", 1, path) or [1e9])[0]
        fan = FanMask((fo[0], fo[1]), (angles[0], angles[1]), r0, r1)
    threshold = _numbers(recon, "PixelRejectionThreshold", 1, path)
    importance = None
    mode = _choice(recon, "CompoundingMode", _COMPOUND, "mean", path)
    if mode == "importance":
        name = recon.get("ImportanceMaskFilename")
        importance = _read_mask(path.parent / name if name else None, path)
    opts = CompoundOptions(
        interpolation=_choice(recon, "Interpolation", _INTERP, "linear", path),
        compounding=mode, clip_rectangle=clip, fan=fan,
        pixel_threshold=None if threshold is None else threshold[0],
        importance_mask=importance, hole_filling=_hole_filling(recon, path), plus_arithmetic=plus_arithmetic)
    opts.validate()
    return opts, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _read_mask(mask_path: Path | None, cfg: Path) -> np.ndarray:
    if mask_path is None or not mask_path.is_file():
        raise InputError(f"{cfg.name}: CompoundingMode IMPORTANCE_MASK needs ImportanceMaskFilename pointing to an "
                         f"image next to the config (looked for {mask_path}).",
                         "Put the mask PNG beside the config or pass importance_mask yourself.")
    from ..io.mask_image import read_mask_image

    return read_mask_image(mask_path)
