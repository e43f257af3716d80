"""Live benchmark: a local OpenIGTLink stream into ``freehandrecon live`` on loopback, tracked and learned.

The stream server (:class:`~freehandrecon.lab.igtl_stream.SweepStreamer`) runs in this process; each live
client runs in a fresh process (:func:`freehandrecon.live.run_live`), so its peak memory (VmHWM) is its own.
Frames are synthetic 640x480 speckle on a smooth freehand path (:func:`~freehandrecon.lab.bench.synthetic_sweep`),
sent at a fixed rate (the targets' rates: 60 frames/s tracked, 25 frames/s sensorless) and as fast as the
client takes them. Tracked cases grow the grid with the frames; the learned case uses the tracked sweep's box
(``--roi``), since learned poses of speckle-only frames wander. Figures: frames/s (used frames over first arrival -> last paste), latency from a frame's
arrival to ``add_frames`` returning (median, p95), the final write, peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENT = r"""
import json, sys, time
from pathlib import Path
from freehandrecon.live import LiveRequest, run_live
from freehandrecon.logic import PoseRequest, Roi
case = json.loads(sys.argv[1])
roi = Roi(*case["roi"]) if case["roi"] else None
req = LiveRequest(spacing_mm=(case["spacing"],) * 3, poses=PoseRequest(method=case["poses"]), roi=roi,
                  max_frames=case["frames"], snapshot_every_s=case["snapshot_every"], pose_window=16)
t0 = time.perf_counter()
rep = run_live("127.0.0.1", case["port"], req, Path(case["out"]), force=True)
wall = time.perf_counter() - t0
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"report": {k: rep[k] for k in ("frames_used", "frames_dropped", "frames_per_second", "latency_ms",
                                                  "snapshots")} | {"grid": rep["grid"]["dims_ijk"]},
                  "wall_s": round(wall, 2), "peak_rss_mb": round(hwm, 1)}))
"""


def _case(name: str, sweep, poses: str, rate: float | None, frames: int, spacing: float, snapshot_every: float,
          workdir: Path, roi: tuple | None = None) -> dict:
    from .igtl_stream import SweepStreamer

    streamer = SweepStreamer(sweep, 0, rate=rate)
    sender = threading.Thread(target=lambda: _serve(streamer, frames), daemon=True)
    sender.start()
    case = {"port": streamer.port, "poses": poses, "frames": frames, "spacing": spacing,
            "snapshot_every": snapshot_every, "out": str(workdir / name), "roi": roi}
    pkg = str(Path(__file__).resolve().parents[2])  # this checkout's package first
    env = dict(os.environ, PYTHONPATH=pkg + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(case)], capture_output=True, text=True,
                              env=env, timeout=900)
    finally:
        sender.join(timeout=30)
        streamer.close()
    if done.returncode != 0:
        return {"case": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"case": name, "poses": poses, "rate": rate or "max", "frames": frames, **out}


def _serve(streamer, frames: int) -> None:
    try:
        streamer.run(frames, wait_timeout=120)
    except Exception:  # noqa: BLE001 - the client's report says what went wrong
        pass
    finally:
        streamer.close()


def run_live_benchmark(quick: bool = False) -> list[dict]:
    """Tracked (60 frames/s and max) and learned (25 frames/s and max) 640x480 live cases; one dict per case."""
    import numpy as np

    from ..compound import fit_grid
    from .bench import synthetic_sweep

    n_tracked = 120 if quick else 600
    n_learned = 48 if quick else 200
    sweep = synthetic_sweep(max(n_tracked, n_learned), 480, 640)
    rows = []
    with tempfile.TemporaryDirectory(prefix="freehandrecon-bench-live-") as tmp:
        work = Path(tmp)
        rows.append(_case("tracked-60fps", sweep, "tracked", 60.0, n_tracked, 0.5, 2.0, work))
        rows.append(_case("tracked-max", sweep, "tracked", None, n_tracked, 0.5, 2.0, work))
        # learned poses of speckle-only frames wander: a fixed box (the tracked sweep's) keeps the grid comparable
        g = fit_grid(sweep.subset(slice(0, n_learned)), 0.5)
        box = (tuple(g.origin + (np.asarray(g.dims) - 1) * g.spacing / 2), tuple(np.asarray(g.dims) * g.spacing))
        rows.append(_case("learned-25fps", sweep, "learned", 25.0, n_learned, 0.5, 2.0, work, roi=box))
        rows.append(_case("learned-max", sweep, "learned", None, n_learned, 0.5, 2.0, work, roi=box))
        time.sleep(0.1)
    return rows


def format_live_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`run_live_benchmark`'s rows."""
    head = f"{'case':<15} {'frames':>6} {'rate':>5} {'fps':>7} {'lat med ms':>10} {'lat p95 ms':>10} " \
           f"{'wall s':>7} {'peak MB':>8}  grid"
    lines = ["live reconstruction over OpenIGTLink on loopback, 640x480 frames, 0.5 mm", head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:<15} error: {r['error']}")
            continue
        rep = r["report"]
        lat = rep["latency_ms"]
        lines.append(f"{r['case']:<15} {rep['frames_used']:>6} {str(r['rate']):>5} {rep['frames_per_second'] or 0:>7} "
                     f"{lat['median'] or 0:>10} {lat['p95'] or 0:>10} {r['wall_s']:>7} {r['peak_rss_mb']:>8}  "
                     f"{'x'.join(str(d) for d in rep['grid'])}")
    lines.append("fps: used frames / (first arrival -> last add_frames); latency: arrival -> add_frames returned; "
                 "wall: whole client run incl. connect and the final write")
    return "\n".join(lines)
