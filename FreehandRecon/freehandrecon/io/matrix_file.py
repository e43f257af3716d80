"""Read one 4x4 calibration matrix from a text file or from a PLUS config.

Text files hold 16 numbers (a 4x4 matrix row by row) or 12 (the top 3x4 rows; the
last row ``0 0 0 1`` is implied), separated by spaces, tabs, commas or newlines.
Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import CalibrationError
from .common import existing_file
from .plus_config import read_plus_config
from .transform_chain import split_transform_name

_FIX = "Write the matrix as 16 numbers (4 rows of 4) or 12 numbers (3 rows of 4), e.g. one row per line."


def read_matrix_file(path: str | os.PathLike, name: str = "ImageToProbe") -> np.ndarray:
    """Return the 4x4 matrix in ``path``.

    For a PLUS config (``.xml``) ``name`` (e.g. ``"ImageToProbe"``) picks the
    transform, inverting the opposite one if only that is stored.
    """
    p = existing_file(path, "calibration file")
    if p.suffix.lower() == ".xml":
        frm, to = split_transform_name(name)
        return read_plus_config(p).matrix(frm, to)
    text = p.read_text(encoding="utf-8", errors="replace")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    tokens = [t for t in re.split(r"[\s,;]+", body) if t]
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise CalibrationError(f"The calibration file '{p}' contains '{bad[:40]}', which is not a number.",
                               _FIX + " Put any notes on lines starting with #.") from None
    if values.size == 12:
        values = np.concatenate([values, [0.0, 0.0, 0.0, 1.0]])
    if values.size != 16:
        raise CalibrationError(f"The calibration file '{p}' holds {values.size} numbers; expected 16 (4x4) or 12 (3x4).",
                               _FIX)
    m = values.reshape(4, 4)
    if not np.isfinite(m).all():
        raise CalibrationError(f"The calibration matrix in '{p}' contains NaN or infinite values.", _FIX)
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise CalibrationError(f"The calibration matrix in '{p}' has last row {m[3].tolist()}, not 0 0 0 1.",
                               "Check that the matrix is written row by row (not transposed).")
    return m


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
