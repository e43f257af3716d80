"""OpenIGTLink input: IMAGE and TRANSFORM messages from a server (PLUS Server or any IGTL source) as frames.

The protocol (headers, message bodies) is pyigtl's; this module only frames the byte stream on its own
socket, because pyigtl's client keeps just the newest message per device name (frames would be lost when
the consumer is busy), retries a refused connection forever and does not notice a closed one.

- :class:`IgtlReceiver` connects, reads every message in a background thread and queues it with its
  arrival time; a closed connection and a read error arrive as :data:`CLOSED` / an exception item.
- :func:`image_frame` turns an IMAGE message into ``(frame [H, W], pixel_to_world [4, 4])``: the IMAGE
  matrix maps pixel (i, j, 0) to the reference in mm, spacing included, as PLUS sends it with
  ``EmbeddedTransformToFrame`` (no LPS/RAS flip: the reference frame is taken as the server defines it).
- :class:`TransformPairer` pairs images with the TRANSFORM of a given name by timestamp.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConnectionFailed, InputError, ResourceError

CLOSED = "closed"
"""Queue item: the server closed the connection."""


@dataclass
class Received:
    """One message and when its last byte arrived (``time.perf_counter()`` seconds)."""

    message: Any
    arrival: float


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; InputError when malformed."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--connect takes HOST:PORT, got '{text}'.",
                         "Give e.g. --connect localhost:18944 (PLUS Server's default OpenIGTLink port).")
    return host, int(port)


def _pyigtl():
    try:
        import pyigtl
    except ImportError as exc:  # an optional dependency of live reconstruction only
        raise ResourceError("Live reconstruction needs the pyigtl package (OpenIGTLink), which is not installed.",
                         "Install it: pip install pyigtl") from exc
    return pyigtl


class IgtlReceiver:
    """A connection to an OpenIGTLink server whose messages queue up as :class:`Received` items."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        self.host, self.port = host, int(port)
        self._base = _pyigtl().MessageBase
        self.queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        try:
            self._sock = socket.create_connection((host, self.port), timeout=connect_timeout)
        except ConnectionRefusedError:
            raise ConnectionFailed(f"Nothing accepts OpenIGTLink connections at {host}:{port} (connection refused).",
                                   "Start the server first (PLUS Server with an OpenIGTLink server, or "
                                   "'freehandrecon stream SWEEP --port PORT'), or correct --connect HOST:PORT.") from None
        except (socket.timeout, OSError) as exc:
            raise ConnectionFailed(f"Could not connect to {host}:{port} ({exc}).",
                                   "Check the host name, the port and that the server is running and reachable.") \
                from None
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read_loop, name="igtl-receiver", daemon=True)
        self._thread.start()

    def _read_exact(self, n: int) -> bytes | None:
        """``n`` bytes, or None when the connection closed (or we were asked to stop) first."""
        chunks, got = [], 0
        while got < n:
            if self._stop.is_set():
                return None
            try:
                chunk = self._sock.recv(min(n - got, 1 << 20))
            except socket.timeout:
                continue
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        base = self._base
        try:
            while not self._stop.is_set():
                header = self._read_exact(base.IGTL_HEADER_SIZE)
                if header is None:
                    break
                fields = base.parse_header(header)
                body = self._read_exact(int(fields["body_size"]))
                if body is None:
                    break
                arrival = time.perf_counter()
                message = base.create_message(fields["message_type"])
                if message is None:  # a type pyigtl does not know (STATUS, ...): not ours
                    continue
                message.unpack(fields, body)
                self.queue.put(Received(message, arrival))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            self.queue.put(exc)
            return
        self.queue.put(CLOSED)

    def get_all(self, timeout: float) -> list:
        """Every queued item, waiting up to ``timeout`` seconds for the first."""
        items = []
        try:
            items.append(self.queue.get(timeout=timeout))
            while True:
                items.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return items

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        finally:
            self._thread.join(timeout=2.0)


def image_frame(message: Any) -> tuple[np.ndarray, np.ndarray]:
    """An IMAGE message -> ``(frame [H, W], pixel_to_world [4, 4] float64)``.

    The image must be one slice (k = 1); several components (RGB) are averaged into grey.
    """
    img = np.asarray(message.image)
    if img.ndim == 4:  # (k, j, i, components)
        img = img.mean(axis=3) if img.shape[3] > 1 else img[..., 0]
    if img.ndim == 3 and img.shape[0] == 1:
        frame = img[0]
    elif img.ndim == 3 and img.shape[2] == 1:  # pyigtl's own 2D images are sent as (H, W, 1)
        frame = img[:, :, 0]
    elif img.ndim == 2:
        frame = img
    else:
        raise InputError(f"The IMAGE '{message.device_name}' is a {img.shape} volume, not a 2D frame.",
                         "Stream 2D ultrasound frames (one slice per IMAGE message).")
    if not frame.dtype.isnative:
        frame = frame.astype(frame.dtype.newbyteorder("="))
    return np.ascontiguousarray(frame), np.asarray(message.ijk_to_world_matrix, dtype=np.float64)


def matrix_valid(m: np.ndarray) -> bool:
    """Finite, affine, with non-degenerate in-plane axes (a pixel-to-world matrix can be used)."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], (0, 0, 0, 1)):
        return False
    a, b = m[:3, 0], m[:3, 1]
    return bool(np.linalg.norm(np.cross(a, b)) > 1e-9)


class TransformPairer:
    """Pairs images with the TRANSFORM of one name by timestamp (nearest within ``tolerance`` seconds).

    An image waits until a transform at or after its timestamp arrived (the server may send either first),
    or until images ``max_wait`` seconds newer arrived (the transforms stopped); it is paired with the nearest transform within the tolerance, or dropped as unpaired when none is.
    """

    def __init__(self, tolerance: float, keep_seconds: float = 5.0, max_wait: float = 1.0) -> None:
        self.tolerance = float(tolerance)
        self.max_wait = float(max_wait)  # seconds of later images after which a waiting image is decided
        self.keep = float(keep_seconds)
        self._times: list[float] = []
        self._mats: list[np.ndarray] = []
        self.pending: list[tuple[float, Any]] = []  # (timestamp, payload) of images waiting for a transform
        self.transforms_seen = 0

    def add_transform(self, timestamp: float, matrix: np.ndarray) -> None:
        self.transforms_seen += 1
        i = bisect_left(self._times, timestamp)
        self._times.insert(i, float(timestamp))
        self._mats.insert(i, np.asarray(matrix, dtype=np.float64))
        cut = bisect_left(self._times, self._times[-1] - self.keep)
        if cut:
            del self._times[:cut], self._mats[:cut]

    def add_image(self, timestamp: float, payload: Any) -> None:
        self.pending.append((float(timestamp), payload))

    def _nearest(self, t: float) -> np.ndarray | None:
        i = bisect_left(self._times, t)
        best, best_dt = None, self.tolerance
        for j in (i - 1, i):
            if 0 <= j < len(self._times) and abs(self._times[j] - t) <= best_dt:
                best, best_dt = self._mats[j], abs(self._times[j] - t)
        return best

    def ready(self, final: bool = False) -> tuple[list[tuple[Any, np.ndarray]], list[Any]]:
        """``(paired [(payload, matrix)], unpaired [payload])`` of the images that can be decided now
        (with ``final`` every waiting image is decided); arrival order is kept."""
        paired, unpaired, waiting = [], [], []
        newest = self._times[-1] if self._times else -np.inf
        newest_image = max((t for t, _ in self.pending), default=-np.inf)
        for t, payload in self.pending:
            if not final and newest < t - 1e-9 and newest_image - t < self.max_wait:
                waiting.append((t, payload))  # its transform may still come
                continue
            m = self._nearest(t)
            if m is None:
                unpaired.append(payload)
            else:
                paired.append((payload, m))
        self.pending = waiting
        return paired, unpaired
