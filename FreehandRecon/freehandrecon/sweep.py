"""The one in-memory model of a freehand sweep that every reader produces.

A :class:`Sweep` holds N single-channel 2D frames, their pixel spacing, and (when
known) one image-to-world transform per frame. Extra channels acquired with the
B-mode frames (photoacoustic, Doppler) share the frame geometry and poses.
See :mod:`freehandrecon.geometry` for the coordinate conventions.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import geometry
from .errors import InputError

SUPPORTED_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
# Channel names become parts of output file names (volume_<name>.nrrd, <stem>_channel-<name>.seq.nrrd),
# so only plain names are accepted: letters, digits, '_', '-' and '.', not '.' or '..' alone.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def check_channel_name(name: Any, source: str = "") -> str:
    """Return ``name`` if it is a safe channel name; :class:`InputError` naming ``source`` otherwise.

    Every reader and the :class:`Sweep` itself apply this rule, so a name read from a file
    can never lead an output file outside its folder.
    """
    where = f" in '{source}'" if source else ""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        shown = repr(name)[:80]
        raise InputError(f"The channel name {shown}{where} is not allowed: channel names become parts of output "
                         "file names, so they must be 1-64 letters, digits, '_', '-' or '.' (not '.' or '..', no "
                         "path separators).",
                         "Rename the channel (e.g. 'photoacoustic', 'doppler') in the file or the code that wrote it.")
    return name


@dataclass
class Sweep:
    """A 2D ultrasound sweep.

    Attributes:
        frames: ``[N, H, W]`` array, row j and column i addressed as ``frames[n, j, i]``.
        pixel_spacing: ``(sx, sy)`` mm per pixel along columns (lateral) and rows (axial).
        image_to_world: ``[N, 4, 4]`` image-mm -> world-mm transforms, or None (no poses yet).
        timestamps: ``[N]`` seconds, or None.
        channels: extra ``[N, H, W]`` image channels by name (e.g. ``"photoacoustic"``).
        metadata: free-form provenance (source file, transform names, warnings, ...).
    """

    frames: np.ndarray
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    image_to_world: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    channels: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # --- shape -------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def __len__(self) -> int:
        return self.num_frames

    # --- geometry ----------------------------------------------------------------
    def pixel_to_world(self) -> np.ndarray:
        """``[N, 4, 4]`` transforms from pixel ``(i, j, 0, 1)`` to world mm."""
        if self.image_to_world is None:
            source = self.metadata.get("source")
            reason = self.metadata.get("no_poses_reason")
            raise InputError(f"This sweep{f' ({source})' if source else ''} has no poses (no image-to-world "
                             f"transforms){f': {reason}' if reason else ''}.",
                             "Use a tracked input with its calibration, or estimate poses first "
                             "(--poses learned|speckle).")
        return self.image_to_world @ geometry.pixel_scale_matrix(self.pixel_spacing)

    def channel_frames(self, name: str | None) -> np.ndarray:
        """The B-mode frames (``name`` None) or the frames of the named extra channel."""
        if name is None:
            return self.frames
        if name not in self.channels:
            raise InputError(f"The sweep has no channel '{name}' (it has: {sorted(self.channels) or 'none'}).",
                             "Ask for one of the channels the input provides.")
        return self.channels[name]

    def with_poses(self, image_to_world: np.ndarray, **metadata: Any) -> "Sweep":
        """Return a copy that shares the frames but has new poses."""
        meta = dict(self.metadata)
        meta.update(metadata)
        return replace(self, image_to_world=np.asarray(image_to_world, dtype=np.float64), metadata=meta)

    def subset(self, index: np.ndarray | slice) -> "Sweep":
        """Frames selected by ``index`` (all channels and poses follow)."""
        return Sweep(
            frames=self.frames[index],
            pixel_spacing=self.pixel_spacing,
            image_to_world=None if self.image_to_world is None else self.image_to_world[index],
            timestamps=None if self.timestamps is None else self.timestamps[index],
            channels={k: v[index] for k, v in self.channels.items()},
            metadata=dict(self.metadata),
        )

    # --- checks ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`InputError` with a fix when the sweep is malformed."""
        f = self.frames
        if not isinstance(f, np.ndarray):
            raise InputError(f"Sweep frames must be a numpy array, got {type(f).__name__}.",
                             "Convert with numpy.asarray(frames).")
        if f.ndim == 4 and f.shape[-1] in (3, 4):
            raise InputError(f"Sweep frames are colour (RGB/RGBA, shape {f.shape}).",
                             "Convert to grey first, e.g. freehandrecon.sweep.to_grey(frames), or read the "
                             "file with FreehandRecon's readers, which convert RGB with a warning.")
        if f.ndim != 3:
            raise InputError(f"Sweep frames must be [N, H, W]; got shape {f.shape}.",
                             "Stack the 2D frames along a first axis.")
        if f.shape[0] < 2:
            raise InputError(f"A sweep needs at least 2 frames; this one has {f.shape[0]}.",
                             "Record a longer sweep or check that the file was not truncated.")
        if min(f.shape[1:]) < 2:
            raise InputError(f"Frames of {f.shape[2]}x{f.shape[1]} pixels are too small.", "Check the input file.")
        if f.dtype.type not in SUPPORTED_DTYPES:
            raise InputError(f"Unsupported pixel type {f.dtype}.", "Convert frames to uint8, uint16 or float32.")
        _check_finite_frames(f, "B-mode frames")
        sx, sy = (float(v) for v in self.pixel_spacing)
        if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
            raise InputError(f"Pixel spacing must be positive, got ({sx}, {sy}) mm.",
                             "Give the true spacing in mm per pixel, e.g. --pixel-spacing 0.2 0.2.")
        self.pixel_spacing = (sx, sy)
        if self.image_to_world is not None:
            m = geometry.validate_transforms(self.image_to_world)
            if m.shape[0] != f.shape[0]:
                raise InputError(f"{m.shape[0]} transforms for {f.shape[0]} frames.",
                                 "Give exactly one image-to-world transform per frame.")
            # Shear is never valid. Scaled axes are refused where sweeps enter from arrays and files
            # (io.npz.sweep_from_arrays, TUS-REC); Slicer's sequence reader keeps pixel_to_world under a
            # spacing override and so may carry the ratio in image_to_world.
            geometry.check_axes(m, "image-to-world transforms", scaled=True)
            self.image_to_world = m
        if self.timestamps is not None:
            self.timestamps = _checked_timestamps(self.timestamps, f.shape[0])
        if not isinstance(self.channels, dict):
            raise InputError(f"Sweep channels must be a dict of name -> [N, H, W] array, got "
                             f"{type(self.channels).__name__}.", "Pass channels={'photoacoustic': frames, ...}.")
        for name, ch in self.channels.items():
            check_channel_name(name, str(self.metadata.get("source", "")) if isinstance(self.metadata, dict) else "")
            if isinstance(ch, np.ndarray) and ch.dtype.type not in SUPPORTED_DTYPES:
                raise InputError(f"Channel '{name}' has unsupported pixel type {ch.dtype}.",
                                 "Convert the channel frames to uint8, uint16 or float32.")
            if not isinstance(ch, np.ndarray) or ch.shape[0] != f.shape[0]:
                n = getattr(ch, "shape", ("?",))[0]
                raise InputError(f"Channel '{name}' has {n} frames but the B-mode sweep has {f.shape[0]}.",
                                 "Acquire or export the channels together so every frame has a partner.")
            if ch.shape[1:] != f.shape[1:]:
                raise InputError(f"Channel '{name}' frames are {ch.shape[2]}x{ch.shape[1]} but B-mode frames "
                                 f"are {f.shape[2]}x{f.shape[1]}.", "Resample the channel onto the B-mode grid.")
            _check_finite_frames(ch, f"channel '{name}' frames")


def _check_finite_frames(frames: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite pixels: they would count as data (coverage) but carry none."""
    if not np.issubdtype(frames.dtype, np.floating):
        return
    finite = np.isfinite(frames).reshape(frames.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"The {what} contain NaN or infinite pixels ({bad.size} frame(s), the first is frame "
                         f"{int(bad[0])}).",
                         "Replace them with a number that means no echo (e.g. numpy.nan_to_num(frames)), or drop "
                         "those frames.")


def _checked_timestamps(timestamps: Any, n: int) -> np.ndarray:
    """``[n]`` finite, non-decreasing seconds; repeated values are allowed with a warning."""
    try:
        t = np.asarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("The timestamps are not numbers.", "Give one timestamp in seconds per frame.") from None
    if t.shape != (n,):
        raise InputError(f"The timestamps have shape {t.shape} for {n} frames; expected ({n},).",
                         "Give one timestamp per frame, as a flat list.")
    if not np.isfinite(t).all():
        k = int(np.flatnonzero(~np.isfinite(t))[0])
        raise InputError(f"The timestamp of frame {k} is {t[k]} (not a finite number).",
                         "Fix or drop that frame's timestamp; every frame needs a time in seconds.")
    step = np.diff(t)
    if (step < 0).any():
        k = int(np.flatnonzero(step < 0)[0])
        raise InputError(f"The timestamps go backwards: frame {k + 1} ({t[k + 1]:.6g} s) is earlier than frame {k} "
                         f"({t[k]:.6g} s).",
                         "Sort the frames by acquisition time, or fix the timestamps (a clock reset or a "
                         "concatenated file?).")
    if (step == 0).any():
        repeats = int((step == 0).sum())
        warnings.warn(f"{repeats} frame(s) repeat the previous frame's timestamp (first: frame "
                      f"{int(np.flatnonzero(step == 0)[0]) + 1}); duplicated frames?", stacklevel=4)
    return t


def to_grey(frames: np.ndarray) -> np.ndarray:
    """RGB(A) ``[..., 3|4]`` -> grey with ITU-R BT.601 luma weights, keeping the dtype."""
    f = np.asarray(frames)
    grey = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    if np.issubdtype(f.dtype, np.integer):
        grey = np.clip(np.rint(grey), np.iinfo(f.dtype).min, np.iinfo(f.dtype).max)
    return grey.astype(f.dtype)
