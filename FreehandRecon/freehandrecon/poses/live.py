"""Sensorless poses for frames that arrive one by one: sliding windows of the offline estimator, chained.

The learned and speckle estimators (:func:`~freehandrecon.poses.estimate_poses`) work on a whole sweep, and
the learned one looks ahead (its LSTM runs over windows of frame pairs, its decorrelation features correlate
frames up to ``floor_lag`` apart). Live, :class:`SlidingPoses` runs the same estimator on short windows:

- frames wait until ``block + lookahead`` of them are uncommitted; the window is then the last ``context``
  committed frames, the ``block`` frames to commit and ``lookahead`` later frames (future context);
- the ``block`` frames are committed with poses chained from the last committed frame ``c``:
  ``P_j = P_c @ inv(E_c) @ E_j`` where ``E`` are the window's estimated poses (so every window adds only its
  relative motions, as the offline estimator chains pair motions);
- the first window starts from the first frame's streamed pose (``anchor``) and resolves the sweep direction
  once (as offline: from tracked poses when the stream has them, else forward); later windows keep it;
- :meth:`SlidingPoses.flush` (end of stream) estimates the remaining frames in one window.

When one window holds the whole stream (``block >= frames``) the poses are exactly the offline estimator's
on the same frames. With shorter windows each relative motion is estimated with less context (window
edges), so the chained poses drift from the offline ones by a small amount per window; each frame is
estimated about ``(context + block + lookahead) / block`` times and waits up to ``block + lookahead``
frames before it is posed (the latency of sensorless live reconstruction).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from . import estimate_poses


class SlidingPoses:
    """Incremental learned/speckle poses (see the module docstring)."""

    def __init__(self, method: str, *, model: str | None = None, curve: str | None = None, device: str = "cpu",
                 sweep_direction: str = "auto", block: int = 16, context: int = 8, lookahead: int = 8) -> None:
        if method not in ("learned", "speckle"):
            raise InputError(f"Live pose estimation takes 'learned' or 'speckle', not '{method}'.",
                             "Use --poses learned or --poses speckle (tracked poses need no estimation).")
        if block < 1 or context < 1 or lookahead < 0:
            raise InputError(f"The pose window needs block >= 1, context >= 1 and lookahead >= 0 frames; got "
                             f"{block}, {context}, {lookahead}.", "Use e.g. --pose-window 16.")
        self.method, self.device, self.direction = method, device, sweep_direction
        self.block, self.context, self.lookahead = int(block), int(context), int(lookahead)
        self.model: Any = model
        self.curve: Any = curve
        if method == "learned":
            from .learned import load_model

            self.model = load_model(model, device=device)  # once: loading verifies the weights' checksum
            self.min_window = self.model.min_frames
        else:
            self.min_window = 3
        if curve is not None:
            from .speckle import DecorrelationCurve

            self.curve = DecorrelationCurve.load(curve)
        self._frames: list[np.ndarray] = []       # context (committed) + uncommitted frames
        self._tracked: list[np.ndarray | None] = []  # their streamed image-mm -> world poses (None: invalid)
        self._payloads: list[Any] = []            # the caller's per-frame data, returned on commit
        self._committed_in_buffer = 0             # how many of the buffered frames are committed context
        self._last_pose: np.ndarray | None = None  # the pose given to the last committed frame
        self.spacing: tuple[float, float] | None = None
        self.windows = 0
        self.seconds = 0.0
        self.warnings: list[str] = []

    @property
    def waiting(self) -> int:
        """Frames received but not posed yet."""
        return len(self._frames) - self._committed_in_buffer

    def push(self, frame: np.ndarray, spacing: tuple[float, float], tracked: np.ndarray | None,
             payload: Any = None) -> list[tuple[Any, np.ndarray]]:
        """Add one frame (pixel ``spacing`` mm; its streamed image-mm pose, or None); returns the frames posed
        now as ``[(payload, image_to_world [4, 4])]`` in arrival order."""
        if self.spacing is None:
            self.spacing = (float(spacing[0]), float(spacing[1]))
        self._frames.append(frame)
        self._tracked.append(tracked)
        self._payloads.append(payload)
        out: list[tuple[Any, np.ndarray]] = []
        while self.waiting >= max(self.block + self.lookahead, self.min_window - self._committed_in_buffer):
            out += self._commit(self.block)
        return out

    def flush(self) -> list[tuple[Any, np.ndarray]]:
        """Pose every waiting frame (end of the stream)."""
        if self.waiting == 0:
            return []
        if len(self._frames) < self.min_window:
            raise InputError(f"Only {len(self._frames)} frames arrived; sensorless poses need at least "
                             f"{self.min_window}.", "Stream more frames (a longer sweep, or a larger --frames).")
        return self._commit(self.waiting)

    def _commit(self, count: int) -> list[tuple[Any, np.ndarray]]:
        c0 = self._committed_in_buffer
        window = np.stack(self._frames)
        tracked = self._tracked if all(t is not None for t in self._tracked) else None
        sweep = Sweep(window, self.spacing, None if tracked is None else np.stack(tracked))
        first = None
        if c0 == 0:
            first = self._tracked[0] if self._tracked[0] is not None else None
        t0 = time.perf_counter()
        est = estimate_poses(sweep, self.method, model=self.model, sweep_direction=self.direction,
                             device=self.device, first=first, curve=self.curve)
        self.seconds += time.perf_counter() - t0
        self.windows += 1
        if self.direction == "auto":  # decided once, on the first window, then kept
            self.direction = "forward" if est.direction > 0 else "backward"
        for w in est.warnings:
            if w not in self.warnings:
                self.warnings.append(w)
        poses = est.image_to_world
        if c0 > 0:
            poses = self._last_pose @ np.linalg.inv(poses[c0 - 1]) @ poses
        new = list(range(c0, c0 + count))
        out = [(self._payloads[i], poses[i]) for i in new]
        self._last_pose = poses[new[-1]]
        keep = max(0, c0 + count - self.context)  # the last `context` committed frames stay as context
        del self._frames[:keep], self._tracked[:keep], self._payloads[:keep]
        self._committed_in_buffer = c0 + count - keep
        return out

    def info(self) -> dict[str, Any]:
        """How the live poses were estimated (for report.json)."""
        return {"method": self.method, "window": {"block": self.block, "context": self.context,
                                                  "lookahead": self.lookahead},
                "windows": self.windows, "seconds": round(self.seconds, 3), "sweep_direction": self.direction,
                "warnings": self.warnings}
