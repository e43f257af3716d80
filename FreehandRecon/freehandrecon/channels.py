"""Multi-channel sweeps (photoacoustic, Doppler beside B-mode): channel pairing and per-channel defaults.

* Compounding: B-mode uses the request's options (mean by default); photoacoustic and Doppler
  default to ``max`` (a vessel seen brightly in one frame should not be averaged away by frames
  that missed it), unless ``ReconstructionRequest.channel_compounding`` says otherwise
  (:func:`freehandrecon.compound.options.channel_options`).
* Poses: channels never get poses of their own; every channel is compounded with the B-mode
  poses (tracked, learned or speckle) of the same sweep.
* Display: :mod:`freehandrecon.scene.display` (fused B-mode + vessel volume rendering).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .sweep import Sweep

CHANNEL_COMPOUNDING = {"photoacoustic": "max", "doppler": "max"}
"""Default compounding mode per channel name; other channels follow the B-mode options."""


def attach_channel(sweep: Sweep, channel: Sweep | np.ndarray, name: str, *,
                   timestamps: np.ndarray | None = None, tolerance_s: float | None = None) -> Sweep:
    """A copy of ``sweep`` with ``channel``'s frames as channel ``name`` (e.g. a second PLUS file
    recorded by the same device set: PLUS writes one image stream per sequence file).

    Frame counts and sizes must match; when both have timestamps they must agree within
    ``tolerance_s`` (default: a quarter of the median B-mode frame interval). The channel's own
    poses, if any, are ignored: channels always use the B-mode poses."""
    frames = channel.frames if isinstance(channel, Sweep) else np.asarray(channel)
    stamps = channel.timestamps if isinstance(channel, Sweep) and timestamps is None else timestamps
    check_channel_timestamps(sweep.timestamps, stamps, name, tolerance_s)
    channels = dict(sweep.channels)
    channels[name] = frames
    return Sweep(frames=sweep.frames, pixel_spacing=sweep.pixel_spacing, image_to_world=sweep.image_to_world,
                 timestamps=sweep.timestamps, channels=channels, metadata=dict(sweep.metadata))


def check_channel_timestamps(bmode: np.ndarray | None, channel: np.ndarray | None, name: str,
                             tolerance_s: float | None = None) -> None:
    """Raise :class:`InputError` unless the channel's timestamps match the B-mode ones frame by frame."""
    if bmode is None or channel is None:
        return
    b, c = np.asarray(bmode, dtype=np.float64).ravel(), np.asarray(channel, dtype=np.float64).ravel()
    if b.size != c.size:
        raise InputError(f"Channel '{name}' has {c.size} timestamps but the B-mode sweep has {b.size} frames.",
                         "Acquire or export the channels together so every frame has a partner.")
    if tolerance_s is None:
        gaps = np.diff(b)
        tolerance_s = 0.25 * float(np.median(gaps)) if gaps.size and np.median(gaps) > 0 else 1e-3
    off = np.abs(b - c)
    if off.size and float(off.max()) > tolerance_s:
        k = int(np.argmax(off))
        raise InputError(f"Channel '{name}' frame {k} is at {c[k]:.4f} s but B-mode frame {k} at {b[k]:.4f} s "
                         f"({off.max() * 1000:.1f} ms apart; {int((off > tolerance_s).sum())} frames disagree by more "
                         f"than {tolerance_s * 1000:.1f} ms).",
                         "Export the channels from the same acquisition (one timestamp per frame for all of them), "
                         "or resample the channel onto the B-mode timestamps first.")
