"""Which pixels of a frame are pasted: clip rectangle, curvilinear fan (:mod:`freehandrecon.fan`), importance weights.

All geometry here is in pixel units (column i, row j), as PLUS defines it for its unit-spaced frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..fan import FanMask, fan_mask

def clip_bounds(width: int, height: int, clip: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """Inclusive pixel bounds (x0, y0, x1, y1) of ``clip = (x0, y0, w, h)`` intersected with the frame."""
    if clip is None:
        return 0, 0, width - 1, height - 1
    if len(clip) != 4:
        raise InputError(f"Clip rectangle must be (x0, y0, width, height) in pixels, got {clip}.",
                         "Give four integers, e.g. (192, 16, 420, 580).")
    x0, y0, w, h = (int(round(float(v))) for v in clip)
    if w <= 0 or h <= 0:
        raise InputError(f"Clip rectangle size must be positive, got {w}x{h} pixels.",
                         "Give a width and height of at least one pixel.")
    bx0, by0 = max(x0, 0), max(y0, 0)
    bx1, by1 = min(x0 + w - 1, width - 1), min(y0 + h - 1, height - 1)
    if bx1 < bx0 or by1 < by0:
        raise InputError(f"Clip rectangle {clip} lies outside the {width}x{height} frames.",
                         "Move the clip rectangle inside the image (origin and size are in pixels).")
    return bx0, by0, bx1, by1


def normalise_importance(mask: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Importance weights as float32 in [0, 1]; 0..255 masks (as PLUS PNGs) are divided by 255."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., 0]
    if m.shape != tuple(frame_shape):
        raise InputError(f"Importance mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} pixels but frames "
                         f"are {frame_shape[1]}x{frame_shape[0]}.", "Give a mask with the frame size.")
    m = m.astype(np.float32)
    if not np.all(np.isfinite(m)) or m.min() < 0:
        raise InputError("Importance mask values must be finite and non-negative.", "Use weights 0..1 or 0..255.")
    if m.max() > 1.0:
        if m.max() > 255.0:
            raise InputError(f"Importance mask maximum is {m.max():g}; expected at most 1 or 255.",
                             "Scale the mask to 0..1 (or 0..255 for 8-bit images).")
        m = m / 255.0
    return m


@dataclass
class PixelSelection:
    """Pixels to paste: inclusive bounding rectangle plus an optional mask and weights inside it."""

    rect: tuple[int, int, int, int]
    mask: np.ndarray | None  # bool [Hc, Wc] or None = whole rectangle
    weights: np.ndarray | None  # float32 [Hc, Wc] importance (0..1) or None

    @property
    def shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.rect
        return y1 - y0 + 1, x1 - x0 + 1

    @property
    def num_pixels(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.shape[0] * self.shape[1]


def select_pixels(frame_shape: tuple[int, int], clip: tuple[int, int, int, int] | None, fan: FanMask | None,
                  importance: np.ndarray | None = None) -> PixelSelection:
    """Combine clip rectangle, fan and importance mask into one :class:`PixelSelection`."""
    h, w = frame_shape
    x0, y0, x1, y1 = clip_bounds(w, h, clip)
    full = np.ones((h, w), dtype=bool)
    if fan is not None:
        full &= fan_mask(fan, w, h)
    weights_full = None
    if importance is not None:
        weights_full = normalise_importance(importance, frame_shape)
        full &= weights_full > 0
    inside = full[y0:y1 + 1, x0:x1 + 1]
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise InputError("No frame pixel is left after the clip rectangle, fan and importance mask.",
                         "Check the fan origin/angles/radii and the clip rectangle against the frame size.")
    x0, x1 = x0 + int(cols[0]), x0 + int(cols[-1])
    y0, y1 = y0 + int(rows[0]), y0 + int(rows[-1])
    mask = full[y0:y1 + 1, x0:x1 + 1]
    weights = None if weights_full is None else np.ascontiguousarray(weights_full[y0:y1 + 1, x0:x1 + 1])
    return PixelSelection((x0, y0, x1, y1), None if mask.all() else np.ascontiguousarray(mask), weights)
