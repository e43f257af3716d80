"""PLUS / IGSIO tracked ultrasound sequences (``.igs.mha``, ``.mha``, ``.mhd``).

A PLUS sequence is a 3D MetaImage (``DimSize = W H N``) whose header carries per-frame
fields ``Seq_FrameNNNN_<Name>``: ``<From>To<To>Transform`` (16 numbers, row-major),
``<From>To<To>TransformStatus`` (``OK``/``INVALID``/...), ``Timestamp`` and ``ImageStatus``.

Image orientation: ``UltrasoundImageOrientation`` is two letters (a third one, for 3D
volumes, is ignored) naming the transducer direction along which the image x axis
(columns) and y axis (rows) increase: ``M``/``U`` = towards the marked/unmarked side,
``F``/``N`` = towards far (deep)/near. PLUS works internally in ``MF`` (x towards the
marked side, y deeper), and so does FreehandRecon: when read, ``UF`` frames have
their columns flipped, ``MN`` their rows, ``UN`` both; the transposed codes ``FM``,
``FU``, ``NM``, ``NU`` are first transposed. Pixel (column i, row j) of the returned
frames is then PLUS's Image coordinate (i, j, 0), in pixels.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import CalibrationError, InputError
from ..sweep import Sweep
from .common import check_output, grey_frames
from .matrix_file import read_matrix_file
from .metaimage import read_metaimage, write_metaimage
from .plus_config import PlusConfig, read_plus_config
from .transform_chain import Chain, TransformGraph, split_transform_name

_FRAME_FIELD = re.compile(r"Seq_Frame(\d+)_(.+)$")
# code -> (swap rows and columns first, then flip rows, flip columns) to reach MF
_TO_MF = {"MF": (False, False, False), "UF": (False, False, True), "MN": (False, True, False),
          "UN": (False, True, True), "FM": (True, False, False), "FU": (True, False, True),
          "NM": (True, True, False), "NU": (True, True, True)}
_NAN16 = " ".join(["nan"] * 16)
# Column norms within this of 1 mean a transform is in mm, not pixels (see sweep_from_plus).
_UNIT_TOL = 1e-3


@dataclass
class PlusSequence:
    """A PLUS sequence as stored, with frames turned to MF orientation.

    Attributes:
        frames: ``[N, H, W]`` (colour is converted to grey with a warning).
        timestamps: ``[N]`` seconds (NaN where a frame has none), or None if no frame has one.
        frame_fields: per frame, its ``Seq_FrameNNNN_*`` fields without the prefix.
        transforms: ``{"ProbeToTracker": [N, 4, 4], ...}`` (NaN where a frame lacks it).
        transform_status: ``{"ProbeToTracker": bool [N]}``; a missing status counts as OK,
            a missing transform as not OK.
        image_status: bool ``[N]`` (``ImageStatus`` OK or absent).
        orientation: ``UltrasoundImageOrientation`` as written in the file.
        element_spacing: ``ElementSpacing`` of the columns and rows.
        header: every header field, in file order.
        path: the file read.
    """

    frames: np.ndarray
    timestamps: np.ndarray | None
    frame_fields: list[dict[str, str]]
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    transform_status: dict[str, np.ndarray] = field(default_factory=dict)
    image_status: np.ndarray | None = None
    orientation: str = "MF"
    element_spacing: tuple[float, float] = (1.0, 1.0)
    header: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _orient(frames: np.ndarray, orientation: str, path: Path) -> np.ndarray:
    code = orientation.strip().upper()[:2]
    if code not in _TO_MF:
        if code in ("", "??", "XX"):
            warnings.warn(f"{path}: UltrasoundImageOrientation is '{orientation}'; assuming MF.", stacklevel=3)
            return frames
        raise InputError(f"'{path}': UltrasoundImageOrientation = '{orientation}' is not one of "
                         f"{', '.join(_TO_MF)}.",
                         "Correct the header field (MF: image x axis towards the marked side, y axis towards far).")
    swap, flip_rows, flip_cols = _TO_MF[code]
    out = frames.swapaxes(1, 2) if swap else frames
    if flip_rows:
        out = out[:, ::-1]
    if flip_cols:
        out = out[:, :, ::-1]
    return out if out is frames else np.ascontiguousarray(out)


def _parse_matrices(values: list[str | None], key: str, path: Path) -> np.ndarray:
    """Per-frame 16-number strings (None = absent) -> ``[N, 4, 4]`` with NaN for absent ones."""
    text = " ".join(v if v is not None else _NAN16 for v in values)
    try:
        flat = np.array(text.split(), dtype=np.float64)
    except ValueError:
        flat = np.array([])
    if flat.size != 16 * len(values):
        for n, v in enumerate(values):  # only on error: find the frame to name
            try:
                ok = v is None or np.array(v.split(), dtype=np.float64).size == 16
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"'{path}': Seq_Frame{n:04d}_{key} = '{v[:80]}' is not 16 numbers.",
                                 "Fix that header line or export the sequence again.")
    return flat.reshape(len(values), 4, 4)


def read_plus_sequence(path: str | os.PathLike) -> PlusSequence:
    """Read a PLUS/IGSIO sequence file (.igs.mha, .mha, .mhd); see :class:`PlusSequence`."""
    img = read_metaimage(path)
    p = img.path
    arr = img.array
    if img.ndims == 2:
        arr = arr[None]
    elif img.ndims != 3:
        raise InputError(f"'{p}' has {img.ndims} dimensions; a PLUS sequence of 2D frames has 3 (columns rows frames).",
                         "Give a sequence of 2D ultrasound frames (sequences of 3D volumes are not supported).")
    frames = grey_frames(arr, str(p))
    n = frames.shape[0]
    frame_fields: list[dict[str, str]] = [{} for _ in range(n)]
    for key, value in img.fields.items():
        m = _FRAME_FIELD.match(key)
        if m and int(m.group(1)) < n:
            frame_fields[int(m.group(1))][m.group(2)] = value
    names = sorted({k for ff in frame_fields for k in ff if k.endswith("Transform")})
    transforms: dict[str, np.ndarray] = {}
    status: dict[str, np.ndarray] = {}
    for key in names:
        try:
            name = "To".join(split_transform_name(key))
        except CalibrationError:
            warnings.warn(f"{p}: field '{key}' is not named <From>To<To>Transform; ignored.", stacklevel=2)
            continue
        values = [ff.get(key) for ff in frame_fields]
        transforms[name] = _parse_matrices(values, key, p)
        status[name] = np.array([v is not None and ff.get(key + "Status", "OK").strip().upper() == "OK"
                                 for v, ff in zip(values, frame_fields)], dtype=bool)
    stamps = [ff.get("Timestamp") for ff in frame_fields]
    timestamps = None
    if any(s is not None for s in stamps):
        try:
            timestamps = np.array([float(s) if s is not None else np.nan for s in stamps])
        except ValueError:
            raise InputError(f"'{p}': a Seq_Frame*_Timestamp field is not a number.",
                             "Fix the header or export the sequence again.") from None
    image_status = np.array([ff.get("ImageStatus", "OK").strip().upper() == "OK" for ff in frame_fields])
    orientation = img.fields.get("UltrasoundImageOrientation", "MF")
    sp = tuple(float(v) for v in (tuple(img.spacing) + (1.0, 1.0))[:2])
    return PlusSequence(frames=_orient(frames, orientation, p), timestamps=timestamps, frame_fields=frame_fields,
                        transforms=transforms, transform_status=status, image_status=image_status,
                        orientation=orientation, element_spacing=sp, header=img.fields, path=p)


# --- sweep ----------------------------------------------------------------------------------
Calibration = Union[str, os.PathLike, np.ndarray, PlusConfig, Mapping]  # Union: Python 3.9 has no X | Y at run time


def _calibration_edges(calibration: Calibration, name: str) -> list[tuple[tuple[str, str], np.ndarray, str]]:
    """Turn the ``calibration`` argument into ``((From, To), 4x4, source)`` entries."""
    if isinstance(calibration, PlusConfig):
        return [(k, m, f"config {calibration.path}") for k, m in calibration.transforms.items()]
    if isinstance(calibration, (str, os.PathLike)):
        if Path(calibration).suffix.lower() == ".xml":
            return _calibration_edges(read_plus_config(calibration), name)
        return [(split_transform_name(name), read_matrix_file(calibration), f"calibration {calibration}")]
    if isinstance(calibration, Mapping):
        out = []
        for key, m in calibration.items():
            pair = split_transform_name(key) if isinstance(key, str) else tuple(key)
            out.append((pair, np.asarray(m, dtype=np.float64), "calibration argument"))
        return out
    m = np.asarray(calibration, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise CalibrationError(f"The calibration matrix has shape {m.shape}; expected 4x4 (or 3x4).",
                               "Pass a 4x4 image-to-probe matrix, a matrix file or a PLUS config.")
    return [(split_transform_name(name), m, "calibration argument")]


def _split_pixel_spacing(chain: Chain, mats: np.ndarray, element_spacing: tuple[float, float]
                         ) -> tuple[np.ndarray, tuple[float, float], str]:
    """Factor pixel->world matrices into image_to_world and a pixel spacing.

    PLUS's Image frame is in pixels, so a resolved ImageToReference maps pixels to mm and
    its column lengths are the pixel spacing. Only when the request is one stored
    transform that is already in mm (unit columns) is ``ElementSpacing`` the spacing.
    """
    norms = np.linalg.norm(mats[:, :3, :3], axis=1)  # [N, 3] column lengths
    unit = np.abs(norms[:, :2] - 1.0).max() < _UNIT_TOL
    if chain.direct and unit and not np.allclose(element_spacing, 1.0):
        return mats.copy(), element_spacing, "ElementSpacing (transform in mm)"
    sx, sy = float(norms[:, 0].mean()), float(norms[:, 1].mean())
    sz = np.where(norms[:, 2] > 0, norms[:, 2], 1.0)
    scale = np.zeros((len(mats), 4, 4))
    scale[:, 0, 0], scale[:, 1, 1], scale[:, 2, 2], scale[:, 3, 3] = 1.0 / sx, 1.0 / sy, 1.0 / sz, 1.0
    return mats @ scale, (sx, sy), "calibration (column lengths of the pixel-to-reference matrix)"


def sweep_from_plus(path: str | os.PathLike, plus_config: str | os.PathLike | PlusConfig | None = None,
                    image_to_reference: str | None = "ImageToReference", calibration: Calibration | None = None,
                    *, calibration_name: str = "ImageToProbe") -> Sweep:
    """Read a PLUS sequence as a :class:`Sweep` with poses ``image_to_reference``.

    Transforms come from the file (per frame), ``plus_config`` (its
    CoordinateDefinitions) and ``calibration`` (a matrix, matrix file or config; a
    bare matrix is named ``calibration_name``). ``sweep.pixel_to_world()`` equals
    PLUS's pixel->reference matrix on the image plane. Frames whose needed transforms
    are not OK, or whose ImageStatus is not OK, are dropped with a warning and listed
    in ``metadata["dropped_frames"]``. A file without any transform (and no
    calibration given), or ``image_to_reference=None``, gives a sweep without poses
    and pixel spacing from ``ElementSpacing``.
    """
    seq = read_plus_sequence(path)
    meta: dict = {"source": str(seq.path), "format": "plus", "orientation": seq.orientation,
                  "header": {k: v for k, v in seq.header.items() if not k.startswith("Seq_Frame")}}
    graph = TransformGraph(seq.num_frames)
    for name, mats in seq.transforms.items():
        graph.add(name, mats, seq.transform_status[name], source="sequence file")
    if plus_config is not None:
        cfg = plus_config if isinstance(plus_config, PlusConfig) else read_plus_config(plus_config)
        for pair, m in cfg.transforms.items():
            graph.add(pair, m, source="PLUS config")
        meta.update(plus_config=str(cfg.path), volume_reconstruction=cfg.volume_reconstruction,
                    hole_filling=cfg.hole_filling)
    if calibration is not None:
        for pair, m, source in _calibration_edges(calibration, calibration_name):
            graph.add(pair, m, source=source)

    keep = seq.image_status.copy()
    if image_to_reference is None or not graph.edges:
        if image_to_reference is not None:
            meta["poses"] = "none: the file has no transforms"
        dropped = np.flatnonzero(~keep)
        chain = None
    else:
        chain = graph.resolve(image_to_reference)
        if calibration is not None and all(e.source == "sequence file" for e, _ in chain.steps):
            warnings.warn(f"{seq.path}: the calibration given ({_describe(calibration)}) is not used: {image_to_reference} "
                          f"is resolved from the file alone ({chain.description}).", stacklevel=2)
        keep &= chain.valid
        dropped = np.flatnonzero(~keep)
        meta.update(image_to_reference=image_to_reference, transforms_used=chain.names, chain=chain.description)
    meta["dropped_frames"] = dropped.tolist()
    if dropped.size:
        warnings.warn(f"{seq.path}: dropped {dropped.size} of {seq.num_frames} frames whose image or needed "
                      f"transforms are not OK (frames {_ranges(dropped)}).", stacklevel=2)
    if keep.sum() < 2:
        raise InputError(f"'{seq.path}' has {int(keep.sum())} usable frame(s) out of {seq.num_frames}; a sweep "
                         "needs at least 2.",
                         "Record a longer sweep, check the tracker status fields, or ask for a transform "
                         "that is valid in more frames (--image-to-reference).")
    idx = np.flatnonzero(keep)
    frames = seq.frames[idx] if dropped.size else seq.frames
    stamps = None if seq.timestamps is None else seq.timestamps[idx]
    if chain is None:
        meta["pixel_spacing_source"] = "ElementSpacing"
        # PLUS writes ElementSpacing 1 1 1 when it does not know the spacing; no probe images at 1 mm/pixel
        meta["pixel_spacing_known"] = not np.allclose(seq.element_spacing[:2], 1.0)
        return Sweep(frames=frames, pixel_spacing=seq.element_spacing, timestamps=stamps, metadata=meta)
    image_to_world, spacing, source = _split_pixel_spacing(chain, chain.matrices[idx], seq.element_spacing)
    meta["pixel_spacing_source"] = source
    return Sweep(frames=frames, pixel_spacing=spacing, image_to_world=image_to_world, timestamps=stamps,
                 metadata=meta)


def _describe(calibration: Calibration) -> str:
    return str(calibration) if isinstance(calibration, (str, os.PathLike)) else type(calibration).__name__


def _ranges(idx: np.ndarray) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], int(idx[0])
    for a, b in zip(idx, list(idx[1:]) + [None]):
        if b is None or b != a + 1:
            out.append(f"{start}-{int(a)}" if a != start else f"{start}")
            start = int(b) if b is not None else start
    return ", ".join(out)


# --- writing --------------------------------------------------------------------------------
def _matrix_text(m: np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in m.ravel())


def write_plus_sequence(sweep: Sweep, path: str | os.PathLike, force: bool = False, compress: bool = True,
                        transform_name: str = "ImageToReference") -> Path:
    """Write ``sweep`` as a PLUS sequence (.igs.mha / .mha, or .mhd + .raw/.zraw).

    Each frame gets ``<transform_name>Transform = pixel_to_world`` (pixels to mm, as
    PLUS's Image frame is in pixels) with status OK, its timestamp and ImageStatus OK;
    ``ElementSpacing`` is 1 (the pixel spacing when the sweep has no poses) and the orientation MF.
    Extra channels are not stored (a warning says so); use .npz or .h5 to keep them.
    """
    out = check_output(path, force)
    split_transform_name(transform_name)
    if sweep.channels:
        warnings.warn(f"{out}: PLUS sequences hold one image per frame; channels {sorted(sweep.channels)} "
                      "were not written (use .npz or .h5 to keep them).", stacklevel=2)
    p2w = None if sweep.image_to_world is None else sweep.pixel_to_world()
    fields = {"AnatomicalOrientation": "RAI", "Kinds": "domain domain list", "UltrasoundImageOrientation": "MF"}
    for n in range(sweep.num_frames):
        tag = f"Seq_Frame{n:04d}_"
        if p2w is not None:
            fields[f"{tag}{transform_name}Transform"] = _matrix_text(p2w[n])
            fields[f"{tag}{transform_name}TransformStatus"] = "OK"
        if sweep.timestamps is not None:
            fields[f"{tag}Timestamp"] = repr(float(sweep.timestamps[n]))
        fields[f"{tag}ImageStatus"] = "OK"
    # untracked: no transform carries the pixel spacing, so ElementSpacing does (as the reader expects)
    spacing = (1.0, 1.0, 1.0) if p2w is not None else (*sweep.pixel_spacing, 1.0)
    return write_metaimage(out, sweep.frames, spacing=spacing, fields=fields, compress=compress, force=force)
