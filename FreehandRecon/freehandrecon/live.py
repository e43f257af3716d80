"""Live reconstruction from an OpenIGTLink stream: frames compounded as they arrive, snapshots, final result.

:class:`LiveSession` is GUI-free (the Slicer module can drive it in short slices with :meth:`LiveSession.poll`);
:func:`run_live` is the whole job behind ``freehandrecon live``: connect, reconstruct until a stop condition,
write ``volume.nrrd``, ``coverage.nrrd`` and ``report.json`` atomically (a temporary folder beside ``out_dir``
moved into place). Snapshots replace ``volume.nrrd``/``coverage.nrrd`` in ``out_dir`` by rename every
``snapshot_every`` seconds. On an error the files this run wrote are removed unless ``keep_partial``, which
writes the partial result (``report.json`` says ``"complete": false`` and why) before re-raising.

Poses: ``tracked`` takes each IMAGE message's matrix (pixel -> reference mm), or with ``transform_name`` the
TRANSFORM of that name paired by timestamp (PLUS semantics: the Image frame is in pixels); ``learned`` and
``speckle`` estimate them from the frames (:class:`~freehandrecon.poses.live.SlidingPoses`).

Grid: ``roi``, or auto-growing: the first frames' box plus ``grid_margin_mm`` on a lattice of voxel centres at
whole multiples of the spacing, grown (:meth:`Reconstructor.regrid`) when frames leave it unless the grown
grid's memory estimate exceeds the limit (then pixels outside are counted, with one warning).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, geometry
from .compound import CompoundOptions, OutputGrid, grid_from_roi
from .compound.reconstructor import Reconstructor
from .errors import ConnectionFailed, InputError, ResourceError
from .logic import PoseRequest, Roi, check_outputs_free, install_results, jsonable

log = logging.getLogger(__name__)

LIVE_FILES = ("volume.nrrd", "coverage.nrrd", "report.json")
WRONG_SIZE_LIMIT = 5  # frames of another size in a row: the imaging size changed (an error), not a glitch
NO_TRANSFORM_LIMIT = 10  # images without any TRANSFORM of the asked name: the name is wrong (an error)
WRONG_NAME_LIMIT = 50  # images of other names without one of ours: --image-name is wrong (an error)


@dataclass
class LiveRequest:
    """Everything a live reconstruction needs besides the connection and the output folder."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    options: CompoundOptions = field(default_factory=CompoundOptions)
    roi: Roi | None = None
    poses: PoseRequest = field(default_factory=PoseRequest)
    image_name: str = "Image"
    transform_name: str | None = None
    pair_tolerance_s: float = 0.005
    max_frames: int | None = None
    max_seconds: float | None = None
    snapshot_every_s: float = 2.0  # 0: no snapshots
    keep_partial: bool = False
    grid_margin_mm: float = 20.0
    pose_window: int = 16  # learned/speckle: frames committed per window (plus context and look-ahead)


class LiveSession:
    """Compound frames from a connected :class:`~freehandrecon.io.igtl.IgtlReceiver` (see the module docstring)."""

    def __init__(self, request: LiveRequest, out_dir: Path | None = None) -> None:
        self.request = request
        self.options = request.options
        self.options.validate()
        self.spacing = np.asarray(request.spacing_mm, dtype=np.float64).reshape(-1)
        self.spacing = np.repeat(self.spacing, 3) if self.spacing.size == 1 else self.spacing
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.received = 0
        self.used = 0
        self.dropped: Counter = Counter()
        self.other_images: Counter = Counter()
        self.other_transforms: Counter = Counter()
        self.pixels_outside_grid = 0
        self.growth_refused = 0
        self.regrids = 0
        self.latencies: list[float] = []
        self.snapshots = 0
        self.snapshot_seconds = 0.0
        self.warnings: list[str] = []
        self.frame_shape: tuple[int, int] | None = None
        self.dtype: np.dtype | None = None
        self.first_arrival: float | None = None
        self.last_paste: float | None = None
        self.t_start = time.perf_counter()
        self.closed = False
        self._wrong_in_row = 0
        self._last_ts = -np.inf
        self._ready: list[tuple[np.ndarray, np.ndarray, float]] = []
        self._first_matrices: list[np.ndarray] = []
        self._rect: tuple[int, int, int, int] | None = None
        self.rec: Reconstructor | None = None
        self.written: list[Path] = []  # snapshot files this run put into out_dir
        self._scene = None
        self._nodes: dict[str, Any] = {}
        self._last_snapshot = time.perf_counter()
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_error: Exception | None = None
        from .io.igtl import TransformPairer

        self.pairer = TransformPairer(request.pair_tolerance_s) if request.transform_name else None
        self.sliding = None
        if request.poses.method != "tracked":
            from .poses.live import SlidingPoses

            p = request.poses
            self.sliding = SlidingPoses(p.method, model=p.model, curve=p.curve, device=p.device,
                                        sweep_direction=p.sweep_direction, block=request.pose_window,
                                        context=max(8, request.pose_window // 2),
                                        lookahead=max(8, request.pose_window // 2))

    # --- messages -> frames ---------------------------------------------------------------------
    @property
    def frames_limit_reached(self) -> bool:
        return self.request.max_frames is not None and self.received >= self.request.max_frames

    def handle(self, item: Any) -> None:
        """One item from the receiver's queue: a message, :data:`~freehandrecon.io.igtl.CLOSED` or an error."""
        from .io.igtl import CLOSED

        if item is CLOSED:
            self.closed = True
            return
        if isinstance(item, Exception):
            raise ConnectionFailed(f"The OpenIGTLink connection failed while reading ({item}).",
                                   "Check the server and the network; pass --keep-partial to keep what was "
                                   "reconstructed until then.")
        msg, arrival = item.message, item.arrival
        kind, name = msg.message_type, msg.device_name
        if kind == "IMAGE":
            if name != self.request.image_name:
                self.other_images[name] += 1
                if self.received == 0 and sum(self.other_images.values()) >= WRONG_NAME_LIMIT:
                    raise InputError(f"The server sends IMAGE messages named {', '.join(sorted(self.other_images))}, "
                                     f"none named '{self.request.image_name}'.",
                                     f"Pass --image-name {sorted(self.other_images)[0]} (or the name you want).")
                return
            if self.frames_limit_reached:
                return
            self._on_image(msg, arrival)
        elif kind == "TRANSFORM" and self.pairer is not None:
            if name == self.request.transform_name:
                self.pairer.add_transform(msg.timestamp, msg.matrix)
            else:
                self.other_transforms[name] += 1

    def _on_image(self, msg: Any, arrival: float) -> None:
        from .io.igtl import image_frame

        frame, matrix = image_frame(msg)
        self.add_frame(frame, matrix, msg.timestamp, arrival)

    def add_frame(self, frame: np.ndarray, pixel_to_world: np.ndarray, timestamp: float, arrival: float) -> None:
        """One frame ``[H, W]`` with its pixel -> world matrix (spacing included), acquisition ``timestamp`` (s) and
        ``arrival`` (``time.perf_counter()`` when it came in): checked (size, order, matrix), paired with a
        TRANSFORM when asked, posed (sensorless), then queued for :meth:`paste`. Any frame source can feed it
        (OpenIGTLink here, an image node in Slicer's scene in :mod:`freehandrecon.module_live`)."""
        frame, matrix = np.asarray(frame), np.asarray(pixel_to_world, dtype=np.float64)
        self.received += 1
        if self.first_arrival is None:
            self.first_arrival = arrival
        if self.frame_shape is not None and frame.shape != self.frame_shape:
            self.dropped["wrong_size"] += 1
            self._wrong_in_row += 1
            if self._wrong_in_row >= WRONG_SIZE_LIMIT:
                h, w = self.frame_shape
                raise InputError(f"The frame size changed mid-stream from {w}x{h} to {frame.shape[1]}x"
                                 f"{frame.shape[0]} pixels ({self._wrong_in_row} frames in a row).",
                                 "Keep the imaging depth and size fixed during a live reconstruction; start a new "
                                 "one (another --out) after changing them. --keep-partial keeps what was "
                                 "reconstructed before the change.")
            return
        self._wrong_in_row = 0
        if timestamp <= self._last_ts:
            self.dropped["late_or_out_of_order"] += 1
            return
        self._last_ts = timestamp
        if self.pairer is not None:
            self.pairer.add_image(timestamp, (frame, matrix, arrival))
            if self.pairer.transforms_seen == 0 and self.received >= NO_TRANSFORM_LIMIT:
                others = ", ".join(sorted(self.other_transforms)) or "none"
                raise InputError(f"{self.received} IMAGE messages arrived but no TRANSFORM named "
                                 f"'{self.request.transform_name}' (transforms the server sends: {others}).",
                                 "Give --transform-name one of the server's transform names, or leave it out to "
                                 "use each IMAGE message's own matrix (PLUS: EmbeddedTransformToFrame).")
            return
        self._accept(frame, matrix, matrix, arrival)

    def _drain_pairs(self, final: bool = False) -> None:
        if self.pairer is None:
            return
        paired, unpaired = self.pairer.ready(final)
        self.dropped["no_transform_pair"] += len(unpaired)
        for (frame, image_matrix, arrival), pose in paired:
            self._accept(frame, pose, image_matrix, arrival)

    def _accept(self, frame: np.ndarray, pixel_to_world: np.ndarray, image_matrix: np.ndarray,
                arrival: float) -> None:
        """A frame with its pose (tracked) or its streamed matrix (for the spacing, sensorless)."""
        from .io.igtl import matrix_valid

        if not matrix_valid(pixel_to_world if self.sliding is None else image_matrix):
            self.dropped["invalid_matrix"] += 1
            return
        if self.frame_shape is None:
            self.frame_shape, self.dtype = frame.shape, frame.dtype
        if self.sliding is None:
            self._note_matrix(pixel_to_world)
            self._ready.append((frame, pixel_to_world, arrival))
            return
        sp = (float(np.linalg.norm(image_matrix[:3, 0])), float(np.linalg.norm(image_matrix[:3, 1])))
        tracked = image_matrix @ np.linalg.inv(geometry.pixel_scale_matrix(sp))
        for (f, a), pose in self.sliding.push(frame, sp, tracked, payload=(frame, arrival)):
            self._ready.append((f, pose @ geometry.pixel_scale_matrix(sp), a))

    def _note_matrix(self, m: np.ndarray) -> None:
        """Warn once when the first frames all carry the same matrix (the server embeds no pose)."""
        if len(self._first_matrices) >= 10:
            return
        self._first_matrices.append(m)
        if len(self._first_matrices) == 10 and all(np.allclose(x, m) for x in self._first_matrices):
            msg = ("The first 10 images all carry the same matrix: the server may not embed the probe pose in the "
                   "IMAGE messages (PLUS: EmbeddedTransformToFrame), so every frame lands in the same place. Use "
                   "--transform-name NAME to take poses from TRANSFORM messages, or --poses learned.")
            self.warnings.append(msg)
            log.warning(msg)

    # --- frames -> volume -----------------------------------------------------------------------
    def _corners(self, mats: np.ndarray) -> np.ndarray:
        if self._rect is None:
            from .compound.masks import clip_bounds
            from .fan import fan_bounds

            h, w = self.frame_shape
            x0, y0, x1, y1 = clip_bounds(w, h, self.options.clip_rectangle)
            if self.options.fan is not None:
                fx0, fy0, fx1, fy1 = fan_bounds(self.options.fan, w, h)
                x0, y0, x1, y1 = max(x0, fx0), max(y0, fy0), min(x1, fx1), min(y1, fy1)
            self._rect = (x0, y0, x1, y1)
        x0, y0, x1, y1 = self._rect
        pts = geometry.frame_corners_pixels(0, 0, (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
        return geometry.transform_points(mats, pts).reshape(-1, 3)

    def _lattice_grid(self, lo: np.ndarray, hi: np.ndarray) -> OutputGrid:
        sp = self.spacing
        a = np.floor(lo / sp - 1e-9) * sp
        b = np.ceil(hi / sp + 1e-9) * sp
        dims = tuple(int(v) for v in np.round((b - a) / sp).astype(np.int64) + 1)
        return OutputGrid(a, sp, dims)

    def _memory_ok(self, grid: OutputGrid) -> tuple[bool, int, int]:
        from .compound.memory import available_bytes, estimate_memory_bytes

        need = estimate_memory_bytes(grid, self.options, self.frame_shape, max(self.used, 1),
                                     itemsize=np.dtype(self.dtype).itemsize)
        budget = self.options.max_memory_bytes or available_bytes(self.options.device)
        return need <= budget, need, budget

    def _fit_grid(self, mats: np.ndarray) -> None:
        """Create the grid (first frames) or grow it to hold ``mats``' frames if memory allows."""
        corners = self._corners(mats)
        if self.rec is None:
            if self.request.roi is not None:
                r = self.request.roi
                grid = grid_from_roi(r.center, r.size, self.spacing, r.orientation)
            else:
                m = self.request.grid_margin_mm
                grid = self._lattice_grid(corners.min(0) - m, corners.max(0) + m)
            ok, need, budget = self._memory_ok(grid)
            if not ok:
                raise ResourceError(f"The live grid ({grid.dims[0]}x{grid.dims[1]}x{grid.dims[2]} voxels) needs about "
                                    f"{need / 2**20:.0f} MB, over the limit of {budget / 2**20:.0f} MB.",
                                    "Use a coarser --spacing, a smaller --roi or --grid-margin, or raise "
                                    "--max-memory-gb.")
            self.rec = Reconstructor(grid, self.options)
            return
        grid = self.rec.grid
        ijk = geometry.transform_points(grid.world_to_ijk()[None], np.c_[corners, np.ones(len(corners))])[0]
        inside = ((ijk > -0.5) & (ijk < np.asarray(grid.dims) - 0.5)).all()
        if inside:
            return
        if self.request.roi is None:
            m = self.request.grid_margin_mm
            top = grid.origin + (np.asarray(grid.dims) - 1) * grid.spacing
            new = self._lattice_grid(np.minimum(grid.origin, corners.min(0) - m),
                                     np.maximum(top, corners.max(0) + m))
            ok, need, budget = self._memory_ok(new)
            if ok:
                self.rec.regrid(new)
                self.regrids += 1
                return
            if self.growth_refused == 0:
                msg = (f"The frames left the live grid, but growing it to {new.dims[0]}x{new.dims[1]}x{new.dims[2]} "
                       f"voxels would need about {need / 2**20:.0f} MB, over the limit of {budget / 2**20:.0f} MB: "
                       "pixels outside the grid are left out (counted in report.json). Use a coarser --spacing, "
                       "an --roi, or raise --max-memory-gb.")
                self.warnings.append(msg)
                log.warning(msg)
            self.growth_refused += 1
        self.pixels_outside_grid += self._count_outside(mats, grid)

    def _count_outside(self, mats: np.ndarray, grid: OutputGrid) -> int:
        x0, y0, x1, y1 = self._rect
        jj, ii = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        pix = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size), np.ones(ii.size)], 1).astype(np.float64)
        total = 0
        for m in mats:
            ijk = pix @ (grid.world_to_ijk() @ m).T[:, :3]
            total += int((~((ijk > -0.5) & (ijk < np.asarray(grid.dims) - 0.5)).all(1)).sum())
        return total

    def paste(self) -> int:
        """Compound every frame that is ready; returns how many."""
        if not self._ready:
            return 0
        frames = np.stack([f for f, _, _ in self._ready])
        mats = np.stack([m for _, m, _ in self._ready])
        arrivals = [a for _, _, a in self._ready]
        self._ready = []
        self._fit_grid(mats)
        self.rec.add_frames(frames, mats)
        now = time.perf_counter()
        self.latencies += [now - a for a in arrivals]
        self.used += len(frames)
        self.last_paste = now
        return len(frames)

    def poll(self, receiver: Any, timeout: float = 0.05) -> None:
        """Handle every queued item (waiting up to ``timeout`` s for one) and compound the frames ready."""
        for item in receiver.get_all(timeout):
            self.handle(item)
            if self.closed:
                break
        self._drain_pairs()
        self.paste()

    def finish_frames(self) -> None:
        """End of stream: decide waiting pairings, pose the frames still waiting, compound them."""
        self._drain_pairs(final=True)
        if self.sliding is not None and self.sliding.waiting:
            for (f, a), pose in self.sliding.flush():
                sp = self.sliding.spacing
                self._ready.append((f, pose @ geometry.pixel_scale_matrix(sp), a))
        self.paste()

    # --- files ----------------------------------------------------------------------------------
    def _save_volumes(self, result: Any, folder: Path) -> None:
        from .io.slicer_files import save_node
        from .scene.nodes import add_volume_node

        if self._scene is None:
            from .io.slicer_scene import new_scene

            self._scene = new_scene()
        m = result.grid.ijk_to_world()
        vol = result.volume_as(self.dtype) if np.issubdtype(self.dtype, np.integer) else result.volume
        self._nodes["volume"] = add_volume_node(self._scene, vol, m, "LiveReconstruction",
                                                replace=self._nodes.get("volume"))
        self._nodes["coverage"] = add_volume_node(self._scene, result.coverage, m, "LiveReconstruction_Coverage",
                                                  replace=self._nodes.get("coverage"))
        save_node(self._nodes["volume"], folder / "volume.nrrd")
        save_node(self._nodes["coverage"], folder / "coverage.nrrd")

    def snapshot_due(self) -> bool:
        every = self.request.snapshot_every_s
        # two frames at least: the interim Reconstructor compounds through a Sweep, which needs two
        return (bool(every) and self.rec is not None and self.rec.frames_added >= 2
                and time.perf_counter() - self._last_snapshot >= every)

    def write_snapshot(self) -> None:
        """Replace volume.nrrd and coverage.nrrd in ``out_dir`` (each by rename) with the volume so far.

        The accumulators are copied now (a memory copy); the volume is worked out and the files are written by a
        background thread that lets the receiving thread run (:mod:`.io.nrrd_volume`), so frames keep being
        received and compounded meanwhile (writing a large grid takes about a second). One snapshot is written
        at a time: when the previous one is still being written, this one is skipped."""
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return
        self._raise_snapshot_error()
        state = self.rec.detached()  # a memory copy here; the volume is worked out in the writer thread
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._last_snapshot = time.perf_counter()

        def write() -> None:
            from .io.nrrd_volume import write_volume_nrrd

            t0 = time.perf_counter()
            try:
                result = state.snapshot()
                # not through MRML's storage node: VTK holds the interpreter while it writes, which would stop the
                # receiving thread for as long (about 1.6 s for a 100 MB grid); the final write does use MRML
                m = result.grid.ijk_to_world()
                vol = result.volume_as(self.dtype) if np.issubdtype(self.dtype, np.integer) else result.volume
                write_volume_nrrd(self.out_dir / "volume.nrrd", vol, m)
                write_volume_nrrd(self.out_dir / "coverage.nrrd", result.coverage, m)
            except Exception as exc:  # noqa: BLE001 - raised in the receiving thread at the next snapshot or the end
                self._snapshot_error = exc
                return
            for name in ("volume.nrrd", "coverage.nrrd"):
                path = self.out_dir / name
                if path not in self.written:
                    self.written.append(path)
            self.snapshots += 1
            self.snapshot_seconds += time.perf_counter() - t0

        self._snapshot_thread = threading.Thread(target=write, name="live-snapshot", daemon=True)
        self._snapshot_thread.start()

    def wait_for_snapshot(self) -> None:
        """Let a snapshot being written finish (before the final write, or removing the files)."""
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
            self._snapshot_thread = None

    def _raise_snapshot_error(self) -> None:
        if self._snapshot_error is not None:
            exc, self._snapshot_error = self._snapshot_error, None
            raise exc

    def report(self, stopped_by: str, complete: bool, result: Any = None, error: str | None = None) -> dict:
        """The figures of this run (report.json)."""
        lat = np.asarray(self.latencies) * 1000.0
        span = (self.last_paste - self.first_arrival) if self.last_paste and self.first_arrival else 0.0
        grid = self.rec.grid if self.rec is not None else None
        rep: dict[str, Any] = {
            "freehandrecon_version": __version__,
            "mode": "live",
            "complete": complete,
            "stopped_by": stopped_by,
            "frames_received": self.received,
            "frames_used": self.used,
            "frames_dropped": sum(self.dropped.values()),
            "dropped_by_reason": {k: int(self.dropped.get(k, 0)) for k in
                                  ("no_transform_pair", "late_or_out_of_order", "wrong_size", "invalid_matrix")},
            "pixels_outside_grid": self.pixels_outside_grid,
            "frame_size": None if self.frame_shape is None else [self.frame_shape[1], self.frame_shape[0]],
            "frames_per_second": round(self.used / span, 1) if span > 0 else None,
            "latency_ms": {"median": round(float(np.median(lat)), 2) if lat.size else None,
                           "p95": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
                           "measured": "frame arrival (its last byte) -> add_frames returned"},
            "grid": None if grid is None else {"origin_mm": grid.origin.tolist(), "spacing_mm": grid.spacing.tolist(),
                                               "dims_ijk": list(grid.dims),
                                               "direction": np.asarray(grid.direction).tolist(),
                                               "auto_growing": self.request.roi is None, "regrids": self.regrids,
                                               "growth_refused": self.growth_refused},
            "options": jsonable(self.options),
            "poses": self.request.poses.method,
            "pose_source": ("image matrix" if self.pairer is None else f"TRANSFORM {self.request.transform_name}")
            if self.sliding is None else self.sliding.info(),
            "image_name": self.request.image_name,
            "other_messages": {"images": dict(self.other_images), "transforms": dict(self.other_transforms)},
            "snapshots": {"written": self.snapshots, "seconds": round(self.snapshot_seconds, 3),
                          "every_s": self.request.snapshot_every_s},
            "warnings": self.warnings,
            "outputs": list(LIVE_FILES),
        }
        if result is not None:
            covered = result.coverage > 0
            rep["coverage_fraction"] = round(float(covered.mean()), 4)
        if error:
            rep["error"] = error
        return rep

    def write_final(self, stopped_by: str, complete: bool, force: bool, error: str | None = None) -> dict:
        """volume.nrrd, coverage.nrrd and report.json into ``out_dir`` together (staged, then moved)."""
        self.wait_for_snapshot()
        result = self.rec.result()
        self.out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".freehandrecon-", dir=self.out_dir.absolute().parent))
        try:
            self._save_volumes(result, tmp)
            rep = self.report(stopped_by, complete, result, error)
            (tmp / "report.json").write_text(json.dumps(jsonable(rep), indent=2))
            install_results(tmp, self.out_dir, force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return rep

    def discard_partial(self, created_dir: bool) -> None:
        """Remove the snapshot files this run wrote (and ``out_dir`` when this run created it and it is empty)."""
        self.wait_for_snapshot()
        for p in self.written:
            p.unlink(missing_ok=True)
        if created_dir and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()


def run_live(host: str, port: int, request: LiveRequest, out_dir: Path, *, force: bool = False,
             progress: Callable[[LiveSession], None] | None = None,
             should_stop: Callable[[], bool] | None = None, connect_timeout: float = 5.0) -> dict[str, Any]:
    """Connect to ``host:port``, reconstruct until a stop condition, write the results; returns report.json's dict.

    Stops on ``request.max_frames`` images, ``request.max_seconds``, Ctrl-C/SIGTERM (KeyboardInterrupt), or
    ``should_stop()``; the server closing is a normal stop only when neither limit was given (an error
    otherwise: :class:`ConnectionFailed`)."""
    from .io.igtl import IgtlReceiver

    out_dir = Path(out_dir)
    check_outputs_free(out_dir, LIVE_FILES, force)
    created_dir = not out_dir.exists()
    session = LiveSession(request, out_dir)
    receiver = IgtlReceiver(host, port, connect_timeout)
    stopped_by = None
    try:
        try:
            stopped_by = _loop(session, receiver, request, progress, should_stop)
        except KeyboardInterrupt:
            stopped_by = "interrupted (Ctrl-C or SIGTERM)"
        session.finish_frames()
        if session.used == 0:
            raise InputError(f"No usable frame arrived from {host}:{port} ({session.received} IMAGE messages named "
                             f"'{request.image_name}', dropped: {dict(session.dropped) or 'none'}).",
                             "Check that the server streams images (--image-name) with valid poses, or stream "
                             "longer (--seconds, --frames).")
        return session.write_final(stopped_by, True, force)
    except BaseException as exc:
        if request.keep_partial and session.rec is not None and session.used:
            text = exc.problem if hasattr(exc, "problem") else f"{type(exc).__name__}: {exc}"
            try:
                session.write_final(stopped_by or "error", False, force, error=text)
            except Exception:  # noqa: BLE001 - the original error is what the user must see
                log.exception("Could not write the partial result")
        else:
            session.discard_partial(created_dir)
        raise
    finally:
        receiver.close()


def _loop(session: LiveSession, receiver: Any, request: LiveRequest,
          progress: Callable[[LiveSession], None] | None, should_stop: Callable[[], bool] | None) -> str:
    """Receive and compound until a stop condition; returns what stopped it."""
    t0 = time.perf_counter()
    limit_at = None
    while True:
        session.poll(receiver)
        if progress is not None:
            progress(session)
        if session.snapshot_due():
            session.write_snapshot()
        if session.frames_limit_reached:
            # let the transforms of the last images arrive (the server may send them after the images)
            limit_at = limit_at or time.perf_counter()
            if session.pairer is None or not session.pairer.pending or time.perf_counter() - limit_at > 0.5:
                return f"--frames {request.max_frames}"
        if session.closed:
            if request.max_frames is not None or request.max_seconds is not None:
                want = f"{request.max_frames} frames" if request.max_frames is not None else \
                    f"{request.max_seconds:g} s"
                raise ConnectionFailed(f"The server closed the connection after {session.received} frames, before "
                                       f"the {want} asked for.",
                                       "Check the server (it stopped streaming); pass --keep-partial to keep what was "
                                       "reconstructed, or leave out --frames/--seconds to stop when the server does.")
            return "server closed the connection"
        if request.max_seconds is not None and time.perf_counter() - t0 >= request.max_seconds:
            return f"--seconds {request.max_seconds:g}"
        if should_stop is not None and should_stop():
            return "stopped by the caller"
