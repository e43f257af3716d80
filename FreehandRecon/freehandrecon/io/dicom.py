"""DICOM ultrasound cine loops (US Multi-frame Image Storage, 2D Enhanced US) read with pydicom.

Frames come from pydicom's pixel handlers (uncompressed, deflated, RLE and, with Pillow, JPEG baseline/extended
and JPEG 2000 decode out of the box; JPEG lossless and JPEG-LS need ``pylibjpeg-libjpeg`` (or ``pyjpegls`` /
``gdcm``), HTJ2K ``pylibjpeg-openjpeg``; MPEG-2/MPEG-4/HEVC cine loops are not decoded by pydicom and are
refused). Frame times come from Frame Time Vector, Frame Time or Cine Rate; the pixel spacing and the image
region from the Sequence of Ultrasound Regions (Physical Delta X/Y in cm), else Pixel Spacing, else unknown.
pydicom is imported only when a DICOM file is read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .region import finish_capture, grey_and_colour

SUFFIXES = (".dcm", ".dicom")
_CM = 3  # PhysicalUnitsX/YDirection code for cm
_SPATIAL_2D = 1  # RegionSpatialFormat: 2D (tissue or flow)
_TISSUE = 1  # RegionDataType: tissue


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _decode_problem(ds: Any, path: Path, err: Exception) -> InputError:
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(uid, "name", str(uid))
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):
        decoder = None
    if decoder is None:
        return InputError(f"'{path}' is compressed as {name}, which pydicom cannot decode.",
                          "Export the cine loop uncompressed or as JPEG from the scanner, or export it as a video "
                          "file (MP4) and read that with --pixel-spacing.")
    if not decoder.is_available:
        options = "; or ".join(decoder.missing_dependencies)
        return InputError(f"'{path}' is compressed as {name}, and no installed package decodes it.",
                          f"Install one of: {options} (pip install ...), or export the cine loop uncompressed.")
    return InputError(f"The pixel data of '{path}' ({name}) cannot be decoded: {err}.",
                      "The file is probably truncated or damaged; export it from the scanner again.")


def _region(ds: Any, width: int, height: int, path: Path,
            need_spacing: bool) -> tuple[dict[str, Any] | None, tuple[float, float] | None]:
    """The B-mode region of the Sequence of Ultrasound Regions and its spacing in mm (either may be None)."""
    items = [r for r in ds.get("SequenceOfUltrasoundRegions", []) if r.get("RegionSpatialFormat") == _SPATIAL_2D]
    if not items:
        return None, None
    tissue = [r for r in items if r.get("RegionDataType") == _TISSUE] or items

    def area(r: Any) -> int:
        return (int(r.get("RegionLocationMaxX1", 0)) - int(r.get("RegionLocationMinX0", 0))) * \
            (int(r.get("RegionLocationMaxY1", 0)) - int(r.get("RegionLocationMinY0", 0)))

    r = max(tissue, key=area)
    try:
        x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
        x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
    except AttributeError:
        raise InputError(f"'{path}': an ultrasound region has no location (RegionLocationMinX0 ... MaxY1).",
                         "Give the image region with --crop X Y W H.") from None
    if not (0 <= x0 < x1 < width and 0 <= y0 < y1 < height):
        raise InputError(f"'{path}': the ultrasound region ({x0}, {y0}) - ({x1}, {y1}) does not lie inside the "
                         f"{width}x{height} frames.", "Give the image region with --crop X Y W H.")
    region = {"x": x0, "y": y0, "width": x1 - x0 + 1, "height": y1 - y0 + 1, "source": "DICOM ultrasound region",
              "region_data_type": int(r.get("RegionDataType", 0))}
    units = (r.get("PhysicalUnitsXDirection"), r.get("PhysicalUnitsYDirection"))
    if units != (_CM, _CM):
        return region, None
    dx, dy = (abs(float(r.get(k, 0.0) or 0.0)) for k in ("PhysicalDeltaX", "PhysicalDeltaY"))
    if not (np.isfinite(dx) and np.isfinite(dy) and dx > 0 and dy > 0):
        if need_spacing:
            raise InputError(f"'{path}': the ultrasound region gives a pixel spacing of {dx} x {dy} cm, which is "
                             "not a spacing.", "Pass the true spacing with --pixel-spacing SX SY (mm per pixel).")
        return region, None
    return region, (dx * 10.0, dy * 10.0)


def _pixel_spacing_attribute(ds: Any) -> tuple[float, float] | None:
    """Pixel Spacing (row spacing, column spacing in mm), also inside Enhanced US functional groups."""
    sources = [ds]
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(seq, [])[:1]:
            sources += list(group.get("PixelMeasuresSequence", []))
    for item in sources:
        ps = item.get("PixelSpacing")
        if ps is not None and len(ps) == 2:
            row, col = float(ps[0]), float(ps[1])
            if np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0:
                return col, row
    return None


def _timestamps(ds: Any, n: int) -> tuple[np.ndarray | None, str]:
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) == n:
        t = np.cumsum(np.asarray([float(v) for v in vector])) / 1000.0
        if np.all(np.diff(t) > 0):
            return t - t[0], "FrameTimeVector"
    frame_time = float(ds.get("FrameTime", 0) or 0)
    if np.isfinite(frame_time) and frame_time > 0:
        return np.arange(n) * frame_time / 1000.0, "FrameTime"
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = float(ds.get(key, 0) or 0)
        if np.isfinite(rate) and rate > 0:
            return np.arange(n) / rate, key
    return None, "none"


def read_dicom_sweep(path: str | os.PathLike, *, pixel_spacing: tuple[float, float] | None = None,
                     crop: Any = None) -> Sweep:
    """Read a multi-frame ultrasound DICOM into an untracked :class:`Sweep`, cropped to the image region.

    ``pixel_spacing`` (mm) is the user's override: given, a missing or zero region spacing is no error.
    ``crop`` ``(x, y, w, h)`` replaces the region. See the module docstring for what is read from where.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError:
        raise InputError(f"'{p}' is not a DICOM file (no DICM header).",
                         "Give a DICOM file exported by the scanner (or rename it if it is another format).") from None
    except Exception as err:  # noqa: BLE001 - pydicom reports damaged files with many exception types
        raise InputError(f"'{p}' cannot be read as DICOM ({type(err).__name__}: {err}).",
                         "The file is probably truncated or damaged; export it from the scanner again.") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"'{p}' holds no image (no Pixel Data; SOP class "
                         f"{getattr(ds.get('SOPClassUID'), 'name', ds.get('SOPClassUID'))}).",
                         "Give the DICOM file of the cine loop itself, not a report, DICOMDIR or presentation state.")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n < 2:
        raise InputError(f"'{p}' holds a single image, not a cine loop ({n} frame).",
                         "Export the sweep as a multi-frame cine loop (clip) from the scanner.")
    try:
        arr = ds.pixel_array  # YBR colour is converted to RGB by pydicom
    except Exception as err:  # noqa: BLE001 - decoder errors come from several third-party packages
        raise _decode_problem(ds, p, err) from None
    if arr.ndim == 2 or arr.shape[0] != n:
        raise InputError(f"'{p}' says it has {n} frames but its pixel data decodes to shape {arr.shape}.",
                         "The file is probably damaged; export it from the scanner again.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    colour = None
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 4:
        if arr.shape[-1] != 3:
            raise InputError(f"'{p}' has {arr.shape[-1]} samples per pixel.", "Export grey or RGB frames.")
        arr, colour = grey_and_colour(arr)
    elif photometric == "MONOCHROME1":  # 0 is white: invert so that echoes are bright
        arr = arr.max() - arr
    h, w = arr.shape[1:]
    file_region, spacing = _region(ds, w, h, p, need_spacing=pixel_spacing is None)
    source = "SequenceOfUltrasoundRegions"
    if spacing is None:
        spacing, source = _pixel_spacing_attribute(ds), "PixelSpacing"
    if spacing is None:
        source = "none"
        if pixel_spacing is None:
            warnings.warn(f"'{p}' does not give the pixel spacing; pass --pixel-spacing SX SY for poses and "
                          "volumes in mm.", stacklevel=3)
    frames, meta = finish_capture(arr, colour, file_region=file_region, crop=crop)
    stamps, time_source = _timestamps(ds, n)
    sop = ds.get("SOPClassUID")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    meta.update(source=str(p), format="dicom", sop_class=getattr(sop, "name", str(sop)),
                transfer_syntax=getattr(syntax, "name", str(syntax)), modality=str(ds.get("Modality", "")),
                manufacturer=str(ds.get("Manufacturer", "")), photometric_interpretation=photometric,
                frame_time_source=time_source, pixel_spacing_source=source, pixel_spacing_known=spacing is not None)
    return Sweep(frames=frames, pixel_spacing=spacing or (1.0, 1.0), timestamps=stamps, metadata=meta)
