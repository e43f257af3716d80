"""A sweep as an OpenIGTLink stream: ``freehandrecon stream SWEEP --port P`` (tests, benchmarks, no probe).

A pyigtl server sends every frame as an IMAGE message (one slice, uint8/int16/float as read) with, by
default, its pixel -> world matrix embedded (as PLUS with ``EmbeddedTransformToFrame``), and with
``transform_name`` also a TRANSFORM message of that name (pixel -> world, PLUS's Image frame being in
pixels) sent just before its image; both carry the sweep's timestamps. It waits for a client, streams at
the sweep's own pace (``real_time``), a fixed rate, or as fast as the connection takes, then closes.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import geometry
from ..errors import ConnectionFailed, InputError
from ..sweep import Sweep

QUEUE_HIGH_WATER = 32  # pyigtl's send queue drops its oldest message beyond 100: never let it fill
SEND_TIMEOUT_S = 10.0  # pyigtl's server sends with its 10 ms receive timeout: a busy client fails a 300 kB frame


def _server_class(pyigtl):
    """pyigtl's server, sending each message with a timeout a busy client can meet (pyigtl 0.3.4 keeps the
    socket's 10 ms polling timeout for ``sendall`` and drops the connection when a large IMAGE takes longer)."""

    class PatientServer(pyigtl.OpenIGTLinkServer):
        def _send_queued_message_from_socket(self, sock):
            sock.settimeout(SEND_TIMEOUT_S)
            try:
                return super()._send_queued_message_from_socket(sock)
            finally:
                sock.settimeout(0.01)

    return PatientServer


class SweepStreamer:
    """An OpenIGTLink server streaming ``sweep`` on 127.0.0.1:``port`` (0: a free port, see :attr:`port`).

    Create it in the main thread (pyigtl installs signal handlers there; they are restored at once so Ctrl-C
    stays with the caller); :meth:`run` may run in any thread.
    """

    def __init__(self, sweep: Sweep, port: int = 0, *, rate: float | None = None, real_time: bool = False,
                 transform_name: str | None = None, embedded: bool | None = None, image_name: str = "Image",
                 timestamp_offset: float = 0.0) -> None:
        import pyigtl

        self.pyigtl = pyigtl
        self.sweep = sweep
        self.p2w = sweep.pixel_to_world()
        self.rate, self.real_time = rate, real_time
        self.transform_name, self.image_name = transform_name, image_name
        self.embedded = transform_name is None if embedded is None else bool(embedded)
        if not self.embedded and transform_name is None:
            raise InputError("Without an embedded pose or a TRANSFORM the stream would carry no poses.",
                             "Pass --embedded, --transform-name NAME, or both.")
        ts = sweep.timestamps if sweep.timestamps is not None else np.arange(sweep.num_frames) / 30.0
        self.timestamps = np.asarray(ts, dtype=np.float64) + timestamp_offset
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.server = _server_class(pyigtl)(port=port, local_server=True, start_now=True)
        for s, h in handlers.items():
            signal.signal(s, h)
        self.port = int(self.server.server_address[1])
        self.sent = 0
        self.stop_requested = threading.Event()

    def messages(self, k: int, frame: np.ndarray | None = None) -> list:
        """The messages of frame ``k`` (``frame`` replaces its pixels, e.g. another size in tests)."""
        px = self.p2w[k]
        f = self.sweep.frames[k] if frame is None else frame
        out = []
        if self.transform_name:
            out.append(self.pyigtl.TransformMessage(px, timestamp=float(self.timestamps[k]),
                                                    device_name=self.transform_name))
        m = px if self.embedded else geometry.pixel_scale_matrix(self.sweep.pixel_spacing)
        out.append(self.pyigtl.ImageMessage(np.ascontiguousarray(f)[None], ijk_to_world_matrix=m,
                                            timestamp=float(self.timestamps[k]), device_name=self.image_name))
        return out

    def wait_for_client(self, timeout: float = 30.0) -> None:
        t0 = time.perf_counter()
        while not self.server.is_connected():
            if self.stop_requested.is_set() or time.perf_counter() - t0 > timeout:
                raise ConnectionFailed(f"No client connected to port {self.port} within {timeout:g} s.",
                                       f"Start 'freehandrecon live --connect 127.0.0.1:{self.port} ...' while the "
                                       "stream waits.")
            time.sleep(0.01)

    def send(self, messages: list) -> None:
        while len(self.server.outgoing_messages) > QUEUE_HIGH_WATER:
            if not self.server.is_connected():
                raise ConnectionFailed("The client disconnected.", "Keep the live client running until the end.")
            time.sleep(0.0005)
        for m in messages:
            self.server.send_message(m, wait=False)

    def run(self, frames: int | None = None, wait_timeout: float = 30.0,
            frame_hook: Callable[[int], np.ndarray | None] | None = None) -> int:
        """Wait for a client, send ``frames`` frames (default all), wait until sent; returns frames sent.
        ``frame_hook(k)`` may return replacement pixels for frame ``k`` (tests)."""
        self.wait_for_client(wait_timeout)
        n = self.sweep.num_frames if frames is None else min(int(frames), self.sweep.num_frames)
        t0 = time.perf_counter()
        for k in range(n):
            if self.stop_requested.is_set():
                break
            if self.real_time:
                due = self.timestamps[k] - self.timestamps[0]
            elif self.rate:
                due = k / self.rate
            else:
                due = 0.0
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send(self.messages(k, None if frame_hook is None else frame_hook(k)))
            self.sent = k + 1
        self.flush()
        return self.sent

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued message left (or the client went away)."""
        t0 = time.perf_counter()
        while self.server.outgoing_messages and self.server.is_connected() and time.perf_counter() - t0 < timeout:
            time.sleep(0.002)
        time.sleep(0.05)  # the last sendall returns after popping from the queue

    def close(self) -> None:
        """Close the connection and the listening socket."""
        self.stop_requested.set()
        self.server.stop()

    def __enter__(self) -> "SweepStreamer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..commands.common import add_input_args

    p = sub.add_parser("stream", help="stream a recorded sweep over OpenIGTLink (a stand-in for PLUS Server)",
                       description="Serve a sweep as an OpenIGTLink stream on 127.0.0.1:PORT: one IMAGE message per "
                       "frame with its pixel-to-world matrix embedded (as PLUS with EmbeddedTransformToFrame) and/or "
                       "a TRANSFORM message per frame, with the sweep's timestamps. Waits for one client, streams, "
                       "then closes. For testing 'freehandrecon live' without a probe.")
    add_input_args(p)
    p.add_argument("--port", type=int, default=18944, help="TCP port (default: %(default)s, PLUS's; 0: any free port)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="FPS", help="frames per second (default: --real-time)")
    pace.add_argument("--real-time", action="store_true", help="at the pace of the sweep's timestamps (default)")
    pace.add_argument("--fast", action="store_true", help="as fast as the client takes them")
    p.add_argument("--transform-name", metavar="NAME",
                   help="also send each pose as a TRANSFORM message of this name (e.g. ImageToReference)")
    p.add_argument("--embedded", action="store_true",
                   help="embed the pose in the IMAGE matrix (the default without --transform-name; with it, the "
                   "IMAGE matrix holds only the pixel spacing unless this is given)")
    p.add_argument("--image-name", default="Image", help="device name of the IMAGE messages (default: %(default)s)")
    p.add_argument("--frames", type=int, metavar="N", help="stream only the first N frames")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for a client (default: %(default)s)")
    p.set_defaults(func=cmd_stream)


def cmd_stream(args: argparse.Namespace) -> int:
    from ..commands.common import read_input

    if args.rate is not None and not args.rate > 0:
        raise InputError(f"--rate must be a positive number of frames per second, got {args.rate}.",
                         "Give e.g. --rate 30, or --real-time.")
    sweep = read_input(args)
    real_time = not args.fast and args.rate is None
    streamer = SweepStreamer(sweep, args.port, rate=args.rate, real_time=real_time,
                             transform_name=args.transform_name, embedded=True if args.embedded else None,
                             image_name=args.image_name)
    try:
        print(f"freehandrecon: streaming {Path(args.input).name} ({sweep.num_frames} frames) on "
              f"127.0.0.1:{streamer.port}; waiting for a client", flush=True)
        try:
            sent = streamer.run(args.frames, wait_timeout=args.wait)
        except ConnectionFailed:
            if not streamer.sent:
                raise
            print(f"freehandrecon: the client disconnected after {streamer.sent} frames", flush=True)
            return 0
        print(f"freehandrecon: sent {sent} frames", flush=True)
    finally:
        streamer.close()
    return 0
