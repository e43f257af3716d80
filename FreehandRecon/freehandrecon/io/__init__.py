"""Readers and writers of freehand sweeps: PLUS, TUS-REC, numpy, Slicer sequences.

:func:`read_sweep` and :func:`write_sweep` pick the format from the file name:

=====================================  ==============================================
``.igs.mha``, ``.mha``, ``.mhd``       PLUS/IGSIO sequence (+ PLUS config calibration)
``.h5``, ``.hdf5``                     TUS-REC scan (+ ``calib_matrix.csv``)
``.npz``                               numpy archive (:mod:`.npz`)
``.seq.nrrd``                          Slicer sequence (:mod:`freehandrecon.io.slicer_files`)
``.dcm``, ``.dicom`` (or a DICM file)  DICOM ultrasound cine loop, read only (:mod:`.dicom`)
``.mp4``, ``.mov``, ``.avi``, ...      screen/video capture, read only (:mod:`.video`)
=====================================  ==============================================
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from ..errors import InputError
from ..sweep import Sweep
from . import dicom, video
from .common import check_output, check_spacing, existing_file
from .matrix_file import read_matrix_file
from .metaimage import MetaImage, read_metaimage, write_metaimage
from .npz import read_npz, sweep_from_arrays, write_npz
from .plus import PlusSequence, read_plus_sequence, sweep_from_plus, write_plus_sequence
from .plus_config import PlusConfig, read_plus_config
from .transform_chain import Chain, TransformGraph, split_transform_name
from .tusrec import read_tusrec_calibration, sweep_from_tusrec, write_tusrec

SUPPORTED = {".igs.mha": "plus", ".mha": "plus", ".mhd": "plus", ".h5": "tusrec", ".hdf5": "tusrec",
             ".npz": "npz", ".seq.nrrd": "seq.nrrd", **dict.fromkeys(dicom.SUFFIXES, "dicom"),
             **dict.fromkeys(video.SUFFIXES, "video")}
READ_ONLY = ("dicom", "video")
_SUPPORTED_TEXT = ", ".join(SUPPORTED)


def sweep_format(path: str | os.PathLike) -> str:
    """``"plus"``, ``"tusrec"``, ``"npz"`` or ``"seq.nrrd"`` from the file name; :class:`InputError` otherwise."""
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED, key=len, reverse=True):
        if name.endswith(suffix):
            return SUPPORTED[suffix]
    if dicom.is_dicom_file(path):  # DICOM files often have no extension
        return "dicom"
    raise InputError(f"'{path}' is not a supported sweep file (by its extension).",
                     f"Give one of: {_SUPPORTED_TEXT}.")


def read_sweep(path: str | os.PathLike, *, plus_config: str | os.PathLike | PlusConfig | None = None,
               image_to_reference: str | None = "ImageToReference", calibration=None,
               pixel_spacing: tuple[float, float] | float | None = None, crop=None) -> Sweep:
    """Read a sweep, dispatching on the extension (see the module docstring).

    ``plus_config`` and ``image_to_reference`` apply to PLUS files; ``calibration`` is
    a matrix/matrix file/PLUS config for PLUS files and the ``calib_matrix.csv`` for
    TUS-REC (default: the one beside the scan). ``pixel_spacing`` (mm, > 0) replaces
    the spacing found in the file. ``crop`` ``(x, y, w, h)`` pixels replaces the image region of DICOM and
    video inputs (default: the DICOM ultrasound region, else detected; see :mod:`.region`).
    """
    fmt = sweep_format(path)
    spacing = None if pixel_spacing is None else check_spacing(pixel_spacing, "pixel spacing override")
    existing_file(path, "sweep file")
    if isinstance(calibration, (str, os.PathLike)) and not Path(calibration).is_file():
        from ..errors import CalibrationError

        raise CalibrationError(f"The calibration file '{calibration}' does not exist.",
                               "Check the path given to --calibration.")
    if fmt in ("npz", "seq.nrrd") and calibration is not None:
        warnings.warn(f"{path}: the calibration is not used: {fmt} files store image-to-world poses directly "
                      "(calibration applies to PLUS and TUS-REC files).", stacklevel=2)
    if crop is not None and fmt not in READ_ONLY:
        raise InputError("--crop applies to DICOM and video inputs only.",
                         "Drop --crop; use --clip X0 Y0 W H to reconstruct part of the frames.")
    if fmt == "dicom":
        sweep = dicom.read_dicom_sweep(path, pixel_spacing=spacing, crop=crop)
    elif fmt == "video":
        sweep = video.read_video_sweep(path, crop=crop)
    elif fmt == "plus":
        sweep = sweep_from_plus(path, plus_config=plus_config, image_to_reference=image_to_reference,
                                calibration=calibration)
    elif fmt == "tusrec":
        sweep = sweep_from_tusrec(path, calibration=calibration, pixel_spacing=spacing)
    elif fmt == "npz":
        sweep = read_npz(path)
    else:
        from .slicer_files import read_seq_nrrd  # Slicer MRML is heavy and optional: load it only for .seq.nrrd

        sweep = read_seq_nrrd(path, pixel_spacing=spacing)
    if spacing is not None:
        meta = dict(sweep.metadata, pixel_spacing_source="override", file_pixel_spacing=sweep.pixel_spacing,
                    pixel_spacing_known=True)
        sweep = dataclasses.replace(sweep, pixel_spacing=spacing, metadata=meta)
    return sweep


def write_sweep(sweep: Sweep, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``sweep``, choosing the format from the extension; never overwrites without ``force``.

    A TUS-REC ``.h5`` gets its ``calib_matrix.csv`` in the same folder.
    """
    fmt = sweep_format(path)
    if fmt in READ_ONLY:
        raise InputError(f"FreehandRecon reads {fmt} files but does not write them ('{path}').",
                         "Write one of: .igs.mha, .seq.nrrd, .h5, .npz.")
    out = check_output(path, force)
    if fmt == "plus":
        return write_plus_sequence(sweep, out, force=force)
    if fmt == "tusrec":
        return write_tusrec(sweep, out, out.parent / "calib_matrix.csv", force=force)[0]
    if fmt == "npz":
        return write_npz(sweep, out, force=force)
    from .slicer_files import write_seq_nrrd  # see read_sweep

    write_seq_nrrd(sweep, out, force=force)
    return out


__all__ = ["read_sweep", "write_sweep", "sweep_format", "SUPPORTED", "MetaImage", "read_metaimage",
           "write_metaimage", "PlusSequence", "read_plus_sequence", "sweep_from_plus", "write_plus_sequence",
           "PlusConfig", "read_plus_config", "Chain", "TransformGraph", "split_transform_name", "read_matrix_file",
           "read_npz", "write_npz", "sweep_from_arrays", "read_tusrec_calibration", "sweep_from_tusrec",
           "write_tusrec"]
