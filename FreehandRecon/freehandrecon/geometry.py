"""Coordinate conventions and rigid-transform helpers, written down once.

Conventions (tested in Testing/test_geometry.py):

* Lengths are millimetres, angles are degrees at every interface and radians inside.
* A pixel is addressed as (column i, row j). Its position in *image mm* is
  ``(i * sx, j * sy, 0)`` where ``(sx, sy)`` is the pixel spacing. ``image_to_world``
  maps image mm to world mm; ``pixel_to_world = image_to_world @ diag(sx, sy, 1, 1)``.
* Relative motion of frame k+1 expressed in frame k:
  ``T_rel[k] = inv(T[k]) @ T[k+1]``; accumulation is ``T[k+1] = T[k] @ T_rel[k]``.
* A 6-vector pose is ``[tx, ty, tz, rx, ry, rz]`` (mm, degrees) with
  ``R = Rz(rz) @ Ry(ry) @ Rx(rx)`` (rotations about the fixed x, then y, then z axes).
* World is Slicer RAS. Tracker/reference coordinates from PLUS and TUS-REC files are
  used as RAS as they are (as Slicer's sequence importer and SlicerIGT do); the only
  LPS<->RAS flip happens when Slicer's storage nodes write or read NRRD headers.
"""

from __future__ import annotations

import numpy as np

from .errors import CalibrationError

LAST_ROW_TOL = 1e-6  # a homogeneous transform's last row is 0 0 0 1 (files carry ~6 digits)
SCALE_TOL = 0.05  # image-mm -> world-mm axes may differ from unit length by this (tracker noise is far smaller)
SHEAR_TOL = 0.1  # |cos| between normalised axes; real PLUS calibrations reach 0.048


def pixel_scale_matrix(spacing: tuple[float, float]) -> np.ndarray:
    """Return the 4x4 matrix mapping pixel (i, j, 0, 1) to image mm."""
    m = np.eye(4)
    m[0, 0], m[1, 1] = float(spacing[0]), float(spacing[1])
    return m


def euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz @ Ry @ Rx`` for angles ``[..., 3]`` in degrees -> ``[..., 3, 3]``."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    r = np.empty(a.shape[:-1] + (3, 3))
    r[..., 0, 0] = cz * cy
    r[..., 0, 1] = cz * sy * sx - sz * cx
    r[..., 0, 2] = cz * sy * cx + sz * sx
    r[..., 1, 0] = sz * cy
    r[..., 1, 1] = sz * sy * sx + cz * cx
    r[..., 1, 2] = sz * sy * cx - cz * sx
    r[..., 2, 0] = -sy
    r[..., 2, 1] = cy * sx
    r[..., 2, 2] = cy * cx
    return r


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix`: ``[..., 3, 3]`` -> ``[..., 3]`` degrees."""
    r = np.asarray(rot, dtype=np.float64)
    sy = np.clip(-r[..., 2, 0], -1.0, 1.0)
    ry = np.arcsin(sy)
    rx = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    rz = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.rad2deg(np.stack([rx, ry, rz], axis=-1))


def params_to_matrix(params: np.ndarray) -> np.ndarray:
    """6-vectors ``[..., 6]`` (mm, degrees) -> homogeneous matrices ``[..., 4, 4]``."""
    p = np.asarray(params, dtype=np.float64)
    m = np.zeros(p.shape[:-1] + (4, 4))
    m[..., :3, :3] = euler_to_matrix(p[..., 3:6])
    m[..., :3, 3] = p[..., :3]
    m[..., 3, 3] = 1.0
    return m


def matrix_to_params(mat: np.ndarray) -> np.ndarray:
    """Homogeneous rigid matrices ``[..., 4, 4]`` -> 6-vectors ``[..., 6]``."""
    m = np.asarray(mat, dtype=np.float64)
    return np.concatenate([m[..., :3, 3], matrix_to_euler(m[..., :3, :3])], axis=-1)


def relative_transforms(absolute: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` absolute poses -> ``[N-1, 4, 4]`` with ``T_rel[k] = inv(T[k]) @ T[k+1]``."""
    a = np.asarray(absolute, dtype=np.float64)
    return np.linalg.inv(a[:-1]) @ a[1:]


def accumulate(relative: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Chain ``[N-1, 4, 4]`` relative transforms into ``[N, 4, 4]`` absolute poses."""
    rel = np.asarray(relative, dtype=np.float64)
    out = np.empty((rel.shape[0] + 1, 4, 4))
    out[0] = np.eye(4) if first is None else first
    for k in range(rel.shape[0]):  # sequential by nature: each pose depends on the last
        out[k + 1] = out[k] @ rel[k]
    return out


def frame_corners_pixels(width: int, height: int, clip: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Pixel coordinates ``[4, 4]`` (homogeneous rows) of the outer pixel centres of a frame.

    ``clip`` is ``(x0, y0, w, h)`` in pixels; the corners are the first and last pixel
    centres inside it, as PLUS uses them to fit the output extent.
    """
    x0, y0, w, h = clip if clip is not None else (0, 0, width, height)
    x1, y1 = x0 + w - 1, y0 + h - 1
    return np.array([[x0, y0, 0, 1], [x1, y0, 0, 1], [x0, y1, 0, 1], [x1, y1, 0, 1]], dtype=np.float64)


def transform_points(mats: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``[N, 4, 4]`` matrices to ``[P, 4]`` homogeneous points -> ``[N, P, 3]``."""
    return np.einsum("nab,pb->npa", np.asarray(mats, dtype=np.float64), points)[..., :3]


def validate_transforms(mats: np.ndarray, what: str = "image-to-world transforms") -> np.ndarray:
    """Check ``[N, 4, 4]`` transforms are finite and invertible; return them as float64.

    Raises :class:`CalibrationError` naming the first bad frame.
    """
    m = np.asarray(mats, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (4, 4):
        raise CalibrationError(f"The {what} have shape {m.shape}; expected [N, 4, 4].",
                               "Pass one 4x4 homogeneous matrix per frame.")
    bad = ~np.isfinite(m).all(axis=(1, 2))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        if m.shape[0] == 1:
            raise CalibrationError(f"The {what} contain NaN or infinite values.",
                                   "Write the matrix with 16 finite numbers (check the file it came from).")
        raise CalibrationError(f"The {what} of frame {k} contain NaN or infinite values.",
                               "Drop that frame (its tracker status is probably INVALID) or fix the tracking data.")
    det = np.linalg.det(m[:, :3, :3])
    scale = np.abs(m[:, :3, :3]).max(axis=(1, 2)) ** 3
    singular = np.abs(det) <= 1e-12 * np.maximum(scale, 1e-300)
    if singular.any():
        k = int(np.flatnonzero(singular)[0])
        raise CalibrationError(f"The {what} of frame {k} are singular (determinant {det[k]:.3g}).",
                               "Check the calibration matrix and the tracker data for that frame.")
    projective = np.abs(m[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > LAST_ROW_TOL
    if projective.any():
        k = int(np.flatnonzero(projective)[0])
        where = "" if m.shape[0] == 1 else f" of frame {k}"
        raise CalibrationError(f"The {what}{where} have last row {np.round(m[k, 3], 6).tolist()}, not 0 0 0 1: "
                               "a projective matrix, not a rigid transform (with pixel scaling).",
                               "Check that the matrix is written row by row (not transposed) and is a homogeneous "
                               "4x4 transform.")
    return m


def check_axes(mats: np.ndarray, what: str = "image-to-world transforms", scaled: bool = True) -> None:
    """Refuse sheared (and, unless ``scaled``, scaled) ``[N, 4, 4]`` transforms, naming ``what``.

    The rotation part must have orthogonal axes once each column's length (a pixel spacing, for
    pixel-to-mm calibrations) is divided out. PLUS calibrations are least-squares fits whose axes
    are a few degrees from orthogonal (the bundled ones up to cos = 0.048), hence the tolerances.
    With ``scaled=False`` (image-mm to world-mm) each column must also have unit length.
    """
    m = np.asarray(mats, dtype=np.float64).reshape(-1, 4, 4)
    rot = m[:, :3, :3]
    norms = np.linalg.norm(rot, axis=1)  # [N, 3] column lengths
    unit = rot / np.where(norms > 0, norms, 1.0)[:, None, :]
    gram = np.einsum("nji,njk->nik", unit, unit) - np.eye(3)
    shear = np.abs(gram).max(axis=(1, 2))
    k = int(np.argmax(shear))
    if shear[k] > SHEAR_TOL:
        where = "" if len(m) == 1 else f" of frame {k}"
        angle = float(np.degrees(np.arcsin(min(float(shear[k]), 1.0))))
        raise CalibrationError(f"The {what}{where} are sheared: two axes are {angle:.1f} degrees from "
                               "perpendicular (only rotation, translation and per-axis pixel scaling are valid).",
                               "Check the matrix (a transposed or mistyped entry?) and the calibration it came from.")
    if not scaled:
        off = np.abs(norms - 1.0).max(axis=1)
        k = int(np.argmax(off))
        if off[k] > SCALE_TOL:
            where = "" if len(m) == 1 else f" of frame {k}"
            raise CalibrationError(f"The {what}{where} scale lengths by {np.round(norms[k], 4).tolist()} along their "
                                   "axes; image-to-world transforms must be rigid (pixel spacing is separate).",
                                   "Remove the scaling from the transform (give the pixel spacing separately), or "
                                   "check the tracker and calibration data.")


def split_scale(pixel_to_x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Factor a pixel->mm matrix (as PLUS ImageToProbe calibrations are) into a unit-axis
    matrix and the pixel spacing ``(sx, sy)`` so that ``m == unit @ diag(sx, sy, 1, 1)``
    on the image plane. The third column is normalised too (it only acts on z = 0)."""
    m = np.asarray(pixel_to_x, dtype=np.float64)
    sx = float(np.linalg.norm(m[:3, 0]))
    sy = float(np.linalg.norm(m[:3, 1]))
    sz = float(np.linalg.norm(m[:3, 2]))
    if min(sx, sy, sz) <= 0:
        raise CalibrationError("The image calibration matrix has a zero-length axis.",
                               "Check the ImageToProbe matrix in the PLUS config.")
    unit = m.copy()
    unit[:3, 0] /= sx
    unit[:3, 1] /= sy
    unit[:3, 2] /= sz
    return unit, (sx, sy)
