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

from .. import geometry
from ..errors import FreehandReconError, InputError, ResourceError
from ..sweep import Sweep, check_channel_name
from .common import atomic_outputs, check_array_fits, check_output, check_spacing, existing_file, grey_frames

_CHANNEL = "channel_"


def sweep_from_arrays(frames: Any, pixel_spacing: Any, image_to_world: Any = None, timestamps: Any = None,
                      channels: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Sweep:
    """Build a :class:`Sweep` from numpy arrays (or lists of 2D frames).

    ``frames`` is ``[N, H, W]`` (or ``[N, H, W, 3|4]`` colour, converted to grey with
    a warning); ``pixel_spacing`` is ``(sx, sy)`` mm or one number for both.
    """
    if channels is not None and not isinstance(channels, dict):
        raise InputError(f"channels must be a dict of name -> frames, got {type(channels).__name__}.",
                         "Pass channels={'photoacoustic': frames, ...}.")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}.", "Pass metadata={...} or None.")
    named = {check_channel_name(k): v for k, v in (channels or {}).items()}
    if image_to_world is not None:
        poses = _floats(image_to_world, "image_to_world")
        if poses.ndim == 3 and poses.shape[1:] == (4, 4):
            geometry.validate_transforms(poses)
            geometry.check_axes(poses, "image-to-world transforms", scaled=False)
    return Sweep(frames=_stack(frames, "frames"), pixel_spacing=check_spacing(pixel_spacing),
                 image_to_world=None if image_to_world is None else _floats(image_to_world, "image_to_world"),
                 timestamps=None if timestamps is None else _floats(timestamps, "timestamps"),
                 channels={k: _stack(v, f"channel '{k}'") for k, v in named.items()},
                 metadata=dict(metadata or {}))


def _floats(value: Any, what: str) -> np.ndarray:
    """``value`` as a float64 array; text or other non-numbers are an :class:`InputError`."""
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.dtype.kind not in "biuf":
        raise InputError(f"The {what} are stored as {arr.dtype} ({arr.dtype.kind!r} kind), not as numbers.",
                         f"Store {what} as a numeric (float) array.")
    return arr.astype(np.float64)


def _stack(frames: Any, what: str) -> np.ndarray:
    """Frames as one array; a list of frames of different sizes is an :class:`InputError`."""
    if isinstance(frames, np.ndarray) and frames.dtype != object:
        if frames.dtype.kind not in "biuf":
            raise InputError(f"The {what} are stored as {frames.dtype}, not as pixel numbers.",
                             "Store frames as a numeric [N, H, W] array (uint8, uint16 or float32).")
        return grey_frames(frames, what)
    try:
        items = list(frames)
    except TypeError:
        raise InputError(f"The {what} must be an [N, H, W] array or a list of 2D frames, got "
                         f"{type(frames).__name__}.", "Pass a numeric numpy array of frames.") from None
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
    _check_zip_magic(p)
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():  # sizes from the .npy headers, before reading any array
                _check_member(zf, info, p)
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FreehandReconError:
        raise
    except MemoryError:
        raise ResourceError(f"'{p}' does not fit in memory.", "Read it on a machine with more memory.") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(f"'{p}' stores Python objects (e.g. frames of different sizes), which are not read "
                             "for safety.", "Save one numeric [N, H, W] array of equal-size frames.") from None
        raise InputError(f"'{p}' is not a readable .npz archive ({exc}).", "Write it with numpy.savez.") from None
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib/numpy header parsing of a damaged file raise many types
        raise InputError(f"'{p}' is a damaged or truncated .npz archive ({type(exc).__name__}: {exc}).",
                         "Write it again with numpy.savez / FreehandRecon's write_sweep, or copy it again.") from None
    missing = [k for k in ("frames", "pixel_spacing") if k not in data]
    if missing:
        raise InputError(f"'{p}' has no {' or '.join(missing)} array (it has: {', '.join(sorted(data)) or 'none'}).",
                         "Save frames [N, H, W] and pixel_spacing (sx, sy) in mm, e.g. "
                         "numpy.savez(path, frames=f, pixel_spacing=[0.2, 0.2]).")
    meta = _metadata(data.get("metadata_json"), p)
    meta.update(source=str(p), format="npz")
    channels = {check_channel_name(k[len(_CHANNEL):], str(p)): v for k, v in data.items() if k.startswith(_CHANNEL)}
    if data["pixel_spacing"].dtype.kind not in "biuf":
        raise InputError(f"'{p}': pixel_spacing is stored as {data['pixel_spacing'].dtype}, not as numbers.",
                         "Store pixel_spacing as two floats (mm), e.g. numpy.array([0.2, 0.2]).")
    return sweep_from_arrays(data["frames"], data["pixel_spacing"], data.get("image_to_world"),
                             data.get("timestamps"), channels, meta)


def _check_zip_magic(p: Path) -> None:
    """A clear message when the file is not a zip archive at all (a renamed .npy or .mha, say)."""
    with open(p, "rb") as f:
        head = f.read(64)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return
    if head.startswith(b"\x93NUMPY"):
        raise InputError(f"'{p}' is a single numpy array (.npy), not an .npz archive.",
                         "Save the sweep with numpy.savez(path, frames=..., pixel_spacing=...).")
    looks = ""
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        looks = " (it looks like a MetaImage .mha/.mhd file; give it its own extension)"
    elif head.startswith(b"\x89HDF"):
        looks = " (it looks like an HDF5 file; name it .h5)"
    elif head.startswith(b"NRRD"):
        looks = " (it looks like a NRRD file; name it .seq.nrrd)"
    raise InputError(f"'{p}' is not a numpy .npz archive: it does not start like a zip file{looks}.",
                     "Give a file written with numpy.savez or FreehandRecon, or rename the file to its real format.")


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, p: Path) -> None:
    """Refuse object arrays and arrays larger than memory from the member's .npy header alone."""
    if not info.filename.endswith(".npy"):
        return
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject:
        raise InputError(f"'{p}' stores Python objects in '{info.filename[:-4]}' (e.g. frames of different sizes), "
                         "which are not read for safety.", "Save one numeric [N, H, W] array of equal-size frames.")
    check_array_fits(shape, dtype.itemsize, f"array '{info.filename[:-4]}'", p)


def _metadata(value: np.ndarray | None, p: Path) -> dict[str, Any]:
    """``metadata_json`` as a dict; anything else is an :class:`InputError`."""
    if value is None:
        return {}
    try:
        meta = json.loads(str(value)) if value.dtype.kind in "US" and value.shape == () else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"'{p}': metadata_json is not a JSON object (a text holding {{...}}).",
                         "Store metadata_json=numpy.array(json.dumps({...})), or leave it out.")
    return meta
