"""Conventions shared by every pose estimator (speckle, learned) and by training and evaluation.

* **Centre frame.** Estimators work in the image-mm axes of a frame (x lateral along the
  columns, y axial down the rows, z elevation = x cross y) with the origin moved to the frame
  centre ``((W-1)*sx/2, (H-1)*sy/2, 0)``. Rotations about the centre decouple rotation from
  translation better than rotations about the top-left pixel. ``C = centre_matrix(...)`` maps
  centre-frame mm to image mm.
* **Relative motion** of frame k+1 in frame k, in the centre frame:
  ``R_k = C^-1 inv(T_k) T_{k+1} C``; the chain is ``T_{k+1} C = T_k C R_k``.
* **Sweep direction.** The sign of elevational motion is not observable from speckle, so
  estimators predict motion as if the sweep went forward (+z on average) and
  :func:`mirror_elevation` turns it into a backward one (``M R M``, ``M = diag(1, 1, -1, 1)``:
  flips tz, rx and ry). :func:`resolve_direction` picks the sign from a hint.
* **Model input.** :func:`resample_frames` brings frames to an isotropic pixel spacing and a
  square centre crop, so the crop centre is the frame centre and the centre frame is also the
  model's frame.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import geometry
from ..errors import InputError

log = logging.getLogger(__name__)

MIRROR = np.diag([1.0, 1.0, -1.0, 1.0])


def centre_matrix(frame_shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Translation from centre-frame mm to image mm for frames of ``(H, W)`` pixels."""
    h, w = frame_shape
    c = np.eye(4)
    c[0, 3] = (w - 1) * float(spacing[0]) / 2.0
    c[1, 3] = (h - 1) * float(spacing[1]) / 2.0
    return c


def relative_centre(image_to_world: np.ndarray, frame_shape: tuple[int, int],
                    spacing: tuple[float, float]) -> np.ndarray:
    """``[N, 4, 4]`` image-to-world poses -> ``[N-1, 4, 4]`` relative motions in the centre frame."""
    c = centre_matrix(frame_shape, spacing)
    return np.linalg.inv(c) @ geometry.relative_transforms(image_to_world) @ c


def absolute_from_centre(rel_c: np.ndarray, frame_shape: tuple[int, int], spacing: tuple[float, float],
                         first: np.ndarray | None = None) -> np.ndarray:
    """Chain centre-frame relative motions into ``[N, 4, 4]`` image-to-world poses.

    ``first`` is the first frame's image-to-world pose (default :func:`default_first_pose`).
    """
    c = centre_matrix(frame_shape, spacing)
    first = default_first_pose() if first is None else np.asarray(first, dtype=np.float64)
    rel = np.asarray(rel_c, dtype=np.float64)
    return geometry.accumulate(c @ rel @ np.linalg.inv(c), first)


def default_first_pose() -> np.ndarray:
    """Pose of the first frame when nothing else is known: image x -> R, depth -> -S (down), elevation -> A."""
    m = np.eye(4)
    m[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    return m


def mirror_elevation(rel: np.ndarray) -> np.ndarray:
    """Reflect relative motions through the image plane: a forward estimate becomes a backward one."""
    return MIRROR @ np.asarray(rel, dtype=np.float64) @ MIRROR


def net_elevation_sign(rel_c: np.ndarray) -> int:
    """+1 when the summed elevational motion of ``[N-1, 4, 4]`` relative motions is >= 0, else -1."""
    return 1 if float(np.asarray(rel_c)[:, 2, 3].sum()) >= 0 else -1


DIRECTIONS = ("auto", "forward", "backward")


def resolve_direction(sweep, hint: str = "auto") -> int:
    """Sign of elevational motion: +1 forward, -1 backward.

    ``"forward"``/``"backward"`` are taken as given. ``"auto"`` uses, in this order, the sweep's
    ``metadata["sweep_direction"]``, the net elevational motion of its tracked poses, and
    otherwise forward (the probe-marker convention: the sweep moves towards the marker side
    of the elevation axis, +z). Speckle alone cannot tell the direction.
    """
    if hint not in DIRECTIONS:
        raise InputError(f"Unknown sweep direction '{hint}'.", f"Use one of {', '.join(DIRECTIONS)}.")
    if hint == "forward":
        return 1
    if hint == "backward":
        return -1
    meta = getattr(sweep, "metadata", {}) or {}
    value = meta.get("sweep_direction")
    if value is not None:
        if isinstance(value, str):
            if value in ("forward", "backward"):
                return 1 if value == "forward" else -1
            try:
                value = float(value)
            except ValueError:
                value = None
        if value is not None and float(value) != 0:
            return 1 if float(value) > 0 else -1
    if getattr(sweep, "image_to_world", None) is not None:
        return net_elevation_sign(relative_centre(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing))
    return 1


def normalise_intensity(frames: np.ndarray) -> np.ndarray:
    """Frames as float32 in [0, 1]: uint8 / 255, other types divided by their maximum."""
    f = np.asarray(frames)
    if f.dtype == np.uint8:
        return f.astype(np.float32) / 255.0
    f = f.astype(np.float32)
    lo = min(float(f.min()), 0.0)
    hi = float(f.max())
    return (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)


def resample_frames(frames: np.ndarray, spacing: tuple[float, float], target_spacing: float, size: int,
                    batch: int = 64) -> np.ndarray:
    """Frames ``[N, H, W]`` -> float32 ``[N, size, size]`` in [0, 1] at ``target_spacing`` mm/pixel.

    Each frame is resampled (area averaging when shrinking, bilinear when enlarging) so one
    output pixel covers ``target_spacing`` mm in both directions, then centre-cropped or
    zero-padded to ``size`` x ``size`` around the frame centre.
    """
    import torch
    import torch.nn.functional as F

    f = np.asarray(frames)
    n, h, w = f.shape
    sx, sy = float(spacing[0]), float(spacing[1])
    new_h = max(1, int(round(h * sy / target_spacing)))
    new_w = max(1, int(round(w * sx / target_spacing)))
    out = np.zeros((n, size, size), np.float32)
    # placement of the resampled frame in the output so that the centres coincide
    top, left = (size - new_h) // 2, (size - new_w) // 2
    src_y0, src_x0 = max(0, -top), max(0, -left)
    dst_y0, dst_x0 = max(0, top), max(0, left)
    hh, ww = min(new_h - src_y0, size - dst_y0), min(new_w - src_x0, size - dst_x0)
    for start in range(0, n, batch):  # bounded memory for long sweeps
        chunk = torch.from_numpy(normalise_intensity(f[start:start + batch]))[:, None]
        if (new_h, new_w) != (h, w):
            shrink = new_h < h and new_w < w
            chunk = F.interpolate(chunk, size=(new_h, new_w), mode="area" if shrink else "bilinear",
                                  **({} if shrink else {"align_corners": False}))
        out[start:start + batch, dst_y0:dst_y0 + hh, dst_x0:dst_x0 + ww] = \
            chunk[:, 0, src_y0:src_y0 + hh, src_x0:src_x0 + ww].numpy()
    return out


def check_speckle(frames: np.ndarray, blank_std: float = 1e-3, saturated_fraction: float = 0.9,
                  max_bad_fraction: float = 0.2) -> list[str]:
    """Find frames with no speckle to track (blank/constant or saturated).

    Returns warnings when a few frames are bad; raises :class:`InputError` when more than
    ``max_bad_fraction`` of them are (poses cannot be estimated from such a sweep).
    """
    f = normalise_intensity(frames)
    n = f.shape[0]
    flat = f.reshape(n, -1)
    std = flat.std(axis=1)
    blank = std < blank_std
    saturated = (flat >= 0.98).mean(axis=1) > saturated_fraction
    bad = blank | saturated
    if not bad.any():
        return []
    idx = np.flatnonzero(bad)
    listed = ", ".join(str(i) for i in idx[:10]) + (" ..." if idx.size > 10 else "")
    kinds = " and ".join(k for k, m in (("blank", blank), ("saturated", saturated)) if m.any())
    if bad.mean() > max_bad_fraction:
        raise InputError(f"{idx.size} of {n} frames are {kinds} (frames {listed}): there is no speckle to "
                         "estimate poses from.",
                         "Check that the probe touched the skin with gel and that gain and depth were set, "
                         "trim the empty frames, or use tracked poses.")
    msg = (f"{idx.size} of {n} frames are {kinds} (frames {listed}); the motion estimated across them "
           "may be wrong.")
    log.warning(msg)
    return [msg]


def require_min_frames(num_frames: int, minimum: int, what: str = "this pose estimator") -> None:
    """Refuse sweeps shorter than ``minimum`` frames with a clear message."""
    if num_frames < minimum:
        raise InputError(f"The sweep has {num_frames} frames but {what} needs at least {minimum}.",
                         "Record a longer sweep (a few seconds), or use tracked poses.")


def check_pixel_spacing_known(sweep) -> None:
    """Sensorless poses are in mm only when the pixel spacing is real, not a default."""
    if (getattr(sweep, "metadata", {}) or {}).get("pixel_spacing_known") is False:
        raise InputError("The pixel spacing of this sweep is unknown (the file does not give it).",
                         "Pass the true spacing, e.g. --pixel-spacing 0.2 0.2 (mm per pixel along columns, rows), "
                         "or set it in the file.")
