"""The one in-memory model of a freehand sweep that every reader produces.

A :class:`Sweep` holds N single-channel 2D frames, their pixel spacing, and (when
known) one image-to-world transform per frame. Extra channels acquired with the
B-mode frames (photoacoustic, Doppler) share the frame geometry and poses.
See :mod:`freehandrecon.geometry` for the coordinate conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import geometry
from .errors import InputError

SUPPORTED_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)


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
            raise InputError("This sweep has no poses (no image-to-world transforms).",
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
            self.image_to_world = m
        if self.timestamps is not None:
            t = np.asarray(self.timestamps, dtype=np.float64)
            if t.shape != (f.shape[0],):
                raise InputError(f"{t.size} timestamps for {f.shape[0]} frames.", "Give one timestamp per frame.")
            self.timestamps = t
        for name, ch in self.channels.items():
            if not isinstance(ch, np.ndarray) or ch.shape[0] != f.shape[0]:
                n = getattr(ch, "shape", ("?",))[0]
                raise InputError(f"Channel '{name}' has {n} frames but the B-mode sweep has {f.shape[0]}.",
                                 "Acquire or export the channels together so every frame has a partner.")
            if ch.shape[1:] != f.shape[1:]:
                raise InputError(f"Channel '{name}' frames are {ch.shape[2]}x{ch.shape[1]} but B-mode frames "
                                 f"are {f.shape[2]}x{f.shape[1]}.", "Resample the channel onto the B-mode grid.")


def to_grey(frames: np.ndarray) -> np.ndarray:
    """RGB(A) ``[..., 3|4]`` -> grey with ITU-R BT.601 luma weights, keeping the dtype."""
    f = np.asarray(frames)
    grey = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    if np.issubdtype(f.dtype, np.integer):
        grey = np.clip(np.rint(grey), np.iinfo(f.dtype).min, np.iinfo(f.dtype).max)
    return grey.astype(f.dtype)
