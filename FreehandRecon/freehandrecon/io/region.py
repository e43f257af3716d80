"""The image region of scanner exports (DICOM cine loops, screen and video captures).

A capture holds more than the B-mode image: menus, text, rulers, a border. :func:`detect_region` finds the
largest region of changing speckle (a rectangle for linear probes; the fan is reported for curvilinear ones,
found with :func:`freehandrecon.fan.detect_fan`); :func:`finish_capture` crops the frames to it
(or to the DICOM region, or to ``--crop``), fills colour overlay pixels from their grey neighbours, and counts
the static overlays left inside the image (calipers, text: bright pixels whose range over the cine stays
within coding noise).

Static overlays stay in the frames (they are what the scanner showed) but are hidden from the pose
estimators: :func:`without_static_overlays` replaces them by the local median of the surrounding pixels of
the same frame, and :func:`freehandrecon.poses.estimate_poses` applies it to sweeps whose metadata counts
static overlay pixels. The poses have no mask input of their own, so filling is the least invasive way.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from ..sweep import Sweep, to_grey

CHANGE_LEVEL = 0.06       # a pixel changes when its range over the cine exceeds 6 % of full scale
STATIC_LEVEL = 0.03       # ... and is static when its range stays within 3 % of full scale, or within
STATIC_OF_TYPICAL = 0.2   # ... a fifth of the median pixel range (video coding noise on static overlays)
OVERLAY_BRIGHTNESS = 0.3  # static overlays are bright: mean above 30 % of full scale
COLOUR_LEVEL = 0.12       # colour pixels: max - min over R, G, B above 12 % of full scale
MAX_STATIC_FRACTION = 0.25  # more static than this: a motionless cine, not overlays
_SAMPLE_FRAMES = 64


def _sample(frames: np.ndarray, limit: int = _SAMPLE_FRAMES) -> np.ndarray:
    n = frames.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    return frames[idx].astype(np.float32)


def _full_scale(frames: np.ndarray) -> float:
    if frames.dtype == np.uint8:
        return 255.0
    return max(float(frames.max()), 1e-6)


def changing_mask(frames: np.ndarray) -> np.ndarray:
    """``[H, W]`` True where the pixel's range over (up to 64 of) the frames exceeds :data:`CHANGE_LEVEL`."""
    f = _sample(frames)
    return (f.max(axis=0) - f.min(axis=0)) > CHANGE_LEVEL * _full_scale(frames)


def _best_run(profile: np.ndarray, level: float) -> tuple[int, int]:
    """``(start, stop)`` of the contiguous run of ``profile > level`` with the largest sum of the profile."""
    active = np.concatenate([[False], profile > level, [False]])
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    if starts.size == 0:
        return 0, 0
    cum = np.concatenate([[0.0], np.cumsum(profile)])
    best = int(np.argmax(cum[stops] - cum[starts]))
    return int(starts[best]), int(stops[best])


def detect_region(frames: np.ndarray) -> dict[str, Any] | None:
    """The largest region of changing speckle as ``{"x", "y", "width", "height", "shape"[, "fan"]}``, or None.

    Column and row profiles of the changing pixels are cut to their strongest contiguous run, alternately,
    until the rectangle settles; static borders, menus and text around the image fall away, and so do small
    changing widgets (a frame counter) separated from the image by static pixels.
    """
    ch = changing_mask(frames)
    h, w = ch.shape
    x0, y0, x1, y1 = 0, 0, w, h
    for _ in range(4):
        c0, c1 = _best_run(ch[y0:y1, x0:x1].mean(axis=0), 0.02)
        x0, x1 = x0 + c0, x0 + c1
        if x1 - x0 < 8:
            return None
        r0, r1 = _best_run(ch[y0:y1, x0:x1].mean(axis=1), 0.02)
        y0, y1 = y0 + r0, y0 + r1
        if y1 - y0 < 8:
            return None
    return dict({"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}, **region_shape(ch[y0:y1, x0:x1]))


def region_shape(changing: np.ndarray) -> dict[str, Any]:
    """``{"shape": "fan", "fan": {...}}`` (pixels of the region) when the changing pixels form a curvilinear
    fan (:func:`~freehandrecon.fan.detect_fan`), else ``{"shape": "rectangle"}``."""
    from ..fan import detect_fan

    fan = detect_fan(changing[None].astype(np.float32), threshold=0.5)
    if fan is None:
        return {"shape": "rectangle"}
    return {"shape": "fan", "fan": {k: [round(float(v), 2) for v in val] if isinstance(val, tuple)
                                    else round(float(val), 2) for k, val in dataclasses.asdict(fan).items()}}


def check_crop(crop: Any, width: int, height: int, what: str = "--crop") -> tuple[int, int, int, int]:
    """Validate ``(x, y, w, h)`` in pixels against a ``width x height`` frame."""
    try:
        x, y, cw, chh = (int(round(float(v))) for v in crop)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be four numbers X Y W H in pixels, got {crop!r}.",
                         "Give e.g. --crop 120 80 640 480 (left, top, width, height).") from None
    if cw < 2 or chh < 2 or x < 0 or y < 0 or x + cw > width or y + chh > height:
        raise InputError(f"{what} {x} {y} {cw} {chh} does not lie inside the {width}x{height} frames.",
                         "Give a rectangle X Y W H inside the frames (pixels from the top-left corner); "
                         "'freehandrecon info' shows the frame size and the detected image region.")
    return x, y, cw, chh


def fill_from_neighbours(frames: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """A copy of ``frames [N, H, W]`` whose ``mask`` pixels (``[H, W]`` or ``[N, H, W]``) hold the median of
    the unmasked pixels around them in the same frame (window 2r+1, doubled until some are unmasked)."""
    out = frames.copy()
    n, h, w = frames.shape
    full = np.broadcast_to(mask, frames.shape)
    todo = np.argwhere(full)
    r = radius
    while todo.size and r <= max(h, w):
        step = max(1, r // 3)  # at most 7 x 7 samples per window
        offsets = np.arange(-r, r + 1, step)
        done = np.zeros(len(todo), dtype=bool)
        for start in range(0, len(todo), 200_000):
            part = todo[start:start + 200_000]
            k, jj, ii = part[:, 0], part[:, 1], part[:, 2]
            vals = np.full((len(part), offsets.size ** 2), np.nan, dtype=np.float32)
            col = 0
            for dj in offsets:
                for di in offsets:
                    j2, i2 = jj + dj, ii + di
                    ok = (j2 >= 0) & (j2 < h) & (i2 >= 0) & (i2 < w)
                    j2, i2 = np.clip(j2, 0, h - 1), np.clip(i2, 0, w - 1)
                    ok &= ~full[k, j2, i2]
                    vals[ok, col] = frames[k[ok], j2[ok], i2[ok]]
                    col += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: handled below
                med = np.nanmedian(vals, axis=1)
            good = np.isfinite(med)
            if np.issubdtype(out.dtype, np.integer):
                med = np.rint(med)
            out[k[good], jj[good], ii[good]] = med[good]
            done[start:start + len(part)] = good
        todo = todo[~done]
        r *= 2
    for k in np.unique(todo[:, 0]) if todo.size else []:  # nothing unmasked anywhere near: the frame median
        free = ~full[k]
        out[k][full[k]] = np.median(frames[k][free]) if free.any() else 0
    return out


def static_overlay_mask(frames: np.ndarray) -> np.ndarray:
    """``[H, W]`` True on bright pixels that never change over the cine (calipers, text, markers),
    grown by one pixel to catch anti-aliased edges; all False when most of the image is static."""
    f = _sample(frames)
    scale = _full_scale(frames)
    spread = f.max(axis=0) - f.min(axis=0)
    # video coding leaves static pixels a few levels of noise: allow a fifth of the typical speckle range
    level = max(STATIC_LEVEL * scale, STATIC_OF_TYPICAL * float(np.median(spread)))
    static = (spread <= level) & (f.mean(axis=0) >= OVERLAY_BRIGHTNESS * scale)
    if static.mean() > MAX_STATIC_FRACTION or f.shape[0] < 3:
        return np.zeros_like(static)
    grown = static.copy()
    grown[1:] |= static[:-1]
    grown[:-1] |= static[1:]
    grown[:, 1:] |= static[:, :-1]
    grown[:, :-1] |= static[:, 1:]
    return grown


def without_static_overlays(sweep: Sweep) -> Sweep:
    """The sweep with its static overlay pixels filled from their neighbours (for pose estimation only)."""
    mask = static_overlay_mask(sweep.frames)
    if not mask.any():
        return sweep
    return dataclasses.replace(sweep, frames=fill_from_neighbours(sweep.frames, mask))


def grey_and_colour(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[..., 3]`` RGB -> (BT.601 grey, True where the pixel is coloured: a colour overlay or Doppler)."""
    grey = to_grey(rgb)
    chroma = rgb.max(axis=-1).astype(np.float32) - rgb.min(axis=-1)
    return grey, chroma > COLOUR_LEVEL * _full_scale(rgb)


def finish_capture(grey: np.ndarray, colour: np.ndarray | None, *, file_region: dict[str, Any] | None,
                   crop: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop ``grey [N, H, W]`` to the image region and fill its colour pixels; return (frames, metadata).

    The region is ``crop`` when given, else ``file_region`` (from the DICOM ultrasound regions), else
    :func:`detect_region`, else the whole frame. ``colour`` is ``[N, H, W]`` (or None for grey input).
    """
    n, h, w = grey.shape
    if crop is not None:
        x, y, cw, chh = check_crop(crop, w, h)
        region: dict[str, Any] = {"x": x, "y": y, "width": cw, "height": chh, "source": "crop"}
    elif file_region is not None:
        region = dict(file_region)
    else:
        found = detect_region(grey)
        if found is None:
            warnings.warn("No region of changing speckle was found; the whole frame is used. Pass --crop X Y W H "
                          "to give the image region.", stacklevel=3)
            region = {"x": 0, "y": 0, "width": w, "height": h, "source": "whole frame"}
        else:
            region = dict(found, source="detected")
    x, y, cw, chh = region["x"], region["y"], region["width"], region["height"]
    frames = np.ascontiguousarray(grey[:, y:y + chh, x:x + cw])
    if "shape" not in region:
        region.update(region_shape(changing_mask(frames)))
    meta: dict[str, Any] = {"image_region": region, "capture_frame_size": [w, h]}
    if colour is not None:
        inside = colour[:, y:y + chh, x:x + cw]
        meta["colour_overlay_fraction"] = round(float(inside.mean()), 6)
        if inside.any():
            frames = fill_from_neighbours(frames, inside)
    static = static_overlay_mask(frames)
    meta["static_overlay_pixels"] = int(static.sum())
    return frames, meta
