"""Sweeps as numpy ``.npz`` archives, and sweeps from plain arrays for scripting.

Archive keys: ``frames`` [N, H, W], ``pixel_spacing`` (2,), optional ``image_to_world``
[N, 4, 4] and ``timestamps`` [N], one ``channel_<name>`` [N, H, W] per extra channel,
and ``metadata_json`` (the JSON-serialisable part of ``sweep.metadata``).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .common import atomic_outputs, check_output, check_spacing, existing_file, grey_frames

_CHANNEL = "channel_"


def sweep_from_arrays(frames: Any, pixel_spacing: Any, image_to_world: Any = None, timestamps: Any = None,
                      channels: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Sweep:
    """Build a :class:`Sweep` from numpy arrays (or lists of 2D frames).

    ``frames`` is ``[N, H, W]`` (or ``[N, H, W, 3|4]`` colour, converted to grey with
    a warning); ``pixel_spacing`` is ``(sx, sy)`` mm or one number for both.
    """
    return Sweep(frames=_stack(frames, "frames"), pixel_spacing=check_spacing(pixel_spacing),
                 image_to_world=None if image_to_world is None else np.asarray(image_to_world, dtype=np.float64),
                 timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.float64),
                 channels={k: _stack(v, f"channel '{k}'") for k, v in (channels or {}).items()},
                 metadata=dict(metadata or {}))


def _stack(frames: Any, what: str) -> np.ndarray:
    """Frames as one array; a list of frames of different sizes is an :class:`InputError`."""
    if isinstance(frames, np.ndarray) and frames.dtype != object:
        return grey_frames(frames, what)
    items = list(frames)
    shapes = sorted({np.shape(f) for f in items})
    if len(shapes) > 1:
        raise InputError(f"The {what} have different sizes: {', '.join(str(s) for s in shapes[:4])}"
                         f"{' ...' if len(shapes) > 4 else ''}.",
                         "Crop or resample every frame to one size (same rows and columns) before reconstruction.")
    try:
        arr = np.stack([np.asarray(f) for f in items]) if items else np.zeros((0, 0, 0), np.uint8)
    except (TypeError, ValueError) as exc:
        raise InputError(f"The {what} cannot be stacked into one array ({exc}).",
                         "Give a numeric [N, H, W] array or a list of equal-size 2D arrays.") from None
    return grey_frames(arr, what)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_npz(sweep: Sweep, path: str | os.PathLike, force: bool = False, compress: bool = False) -> Path:
    """Write ``sweep`` to ``path`` (.npz), atomically; see the module docstring for the keys."""
    out = check_output(path, force)
    if out.suffix.lower() != ".npz":
        raise InputError(f"Cannot write '{out}' as numpy archive: the name must end in .npz.", "Use e.g. sweep.npz.")
    arrays: dict[str, np.ndarray] = {"frames": sweep.frames,
                                     "pixel_spacing": np.asarray(sweep.pixel_spacing, dtype=np.float64),
                                     "metadata_json": np.array(json.dumps(_jsonable(sweep.metadata)))}
    if sweep.image_to_world is not None:
        arrays["image_to_world"] = sweep.image_to_world
    if sweep.timestamps is not None:
        arrays["timestamps"] = sweep.timestamps
    for name, ch in sweep.channels.items():
        arrays[_CHANNEL + name] = ch
    with atomic_outputs(out) as (tmp,):
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
    return out


def read_npz(path: str | os.PathLike) -> Sweep:
    """Read a sweep written by :func:`write_npz` (or any .npz with at least ``frames`` and ``pixel_spacing``)."""
    p = existing_file(path, "numpy sweep file")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(f"'{p}' stores Python objects (e.g. frames of different sizes), which are not read "
                             "for safety.", "Save one numeric [N, H, W] array of equal-size frames.") from None
        raise InputError(f"'{p}' is not a readable .npz archive ({exc}).", "Write it with numpy.savez.") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"'{p}' is not a readable .npz archive or is truncated ({exc}).",
                         "Write it again with numpy.savez / FreehandRecon's write_sweep.") from None
    missing = [k for k in ("frames", "pixel_spacing") if k not in data]
    if missing:
        raise InputError(f"'{p}' has no {' or '.join(missing)} array (it has: {', '.join(sorted(data)) or 'none'}).",
                         "Save frames [N, H, W] and pixel_spacing (sx, sy) in mm, e.g. "
                         "numpy.savez(path, frames=f, pixel_spacing=[0.2, 0.2]).")
    meta = json.loads(str(data["metadata_json"])) if "metadata_json" in data else {}
    meta.update(source=str(p), format="npz")
    channels = {k[len(_CHANNEL):]: v for k, v in data.items() if k.startswith(_CHANNEL)}
    return sweep_from_arrays(data["frames"], data["pixel_spacing"], data.get("image_to_world"),
                             data.get("timestamps"), channels, meta)
