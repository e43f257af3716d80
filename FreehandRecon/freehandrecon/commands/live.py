"""``freehandrecon live``: reconstruct while scanning, from an OpenIGTLink server (PLUS Server or any source)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .common import add_pose_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="reconstruct live from an OpenIGTLink stream (PLUS Server): tracked or sensorless",
                       description="Connect to an OpenIGTLink server and compound its IMAGE messages as they arrive. "
                       "Poses: the IMAGE matrix (pixel to reference, as PLUS sends it with EmbeddedTransformToFrame), "
                       "a TRANSFORM message paired by timestamp (--transform-name), or estimated from the images "
                       "(--poses learned|speckle). Writes volume.nrrd and coverage.nrrd every --snapshot-every "
                       "seconds, and the final volume.nrrd, coverage.nrrd and report.json on stop (Ctrl-C, "
                       "--frames, --seconds, or the server closing when neither limit is given).")
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="the OpenIGTLink server, e.g. localhost:18944")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--frames", type=int, metavar="N", help="stop after N images")
    stop.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--image-name", default="Image", metavar="NAME",
                   help="device name of the IMAGE messages to use (default: %(default)s)")
    p.add_argument("--transform-name", metavar="NAME",
                   help="take each frame's pose (pixel to reference) from the TRANSFORM message of this name with the "
                   "nearest timestamp instead of the IMAGE matrix; images without one are dropped")
    p.add_argument("--pair-tolerance-ms", type=float, default=5.0, metavar="MS",
                   help="largest image/transform timestamp difference paired (default: %(default)s)")
    p.add_argument("--snapshot-every", type=float, default=2.0, metavar="SECONDS",
                   help="write volume.nrrd and coverage.nrrd this often while streaming (0: only at the end; "
                   "default: %(default)s)")
    p.add_argument("--keep-partial", action="store_true",
                   help="on an error (connection lost, frame size changed), keep what was reconstructed (report.json "
                   "says complete: false); otherwise nothing is left in --out")
    p.add_argument("--plus-config", type=Path, metavar="XML",
                   help="PLUS configuration XML: its VolumeReconstruction settings (spacing, interpolation, "
                   "compounding, clip rectangle, hole filling) as defaults; options given here win")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="output voxel spacing in mm, one value or "
                   "three (default: the PLUS config's OutputSpacing, else 1.0)")
    p.add_argument("--roi", type=float, nargs=6, metavar=("CX", "CY", "CZ", "SX", "SY", "SZ"),
                   help="output box centre and size in mm (default: grown with the frames, see --grid-margin)")
    p.add_argument("--grid-margin", type=float, default=20.0, metavar="MM",
                   help="without --roi: margin around the frames when the grid is made or grown (default: %(default)s)")
    p.add_argument("--interpolation", choices=["nearest", "linear"], help="(default: nearest)")
    p.add_argument("--compounding", choices=["mean", "max", "latest"], help="(default: mean)")
    p.add_argument("--fill-holes", choices=["none", "normalized", "stick"],
                   help="fill holes in the final volume (snapshots are not filled) (default: none)")
    p.add_argument("--hole-size", type=int, metavar="N", help="hole-filling kernel width or stick length (voxels)")
    p.add_argument("--sticks", type=int, metavar="N", help="number of best sticks to average (stick)")
    p.add_argument("--clip", type=int, nargs=4, metavar=("X0", "Y0", "W", "H"), help="use only pixels in this "
                   "rectangle")
    p.add_argument("--fan", nargs=6, metavar="V", help="curvilinear fan mask OX OY A0 A1 R0 R1 (pixels, degrees)")
    p.add_argument("--pixel-threshold", type=float, metavar="T", help="ignore pixels darker than T")
    add_pose_args(p, with_tracked=True)
    p.add_argument("--pose-window", type=int, default=16, metavar="N",
                   help="--poses learned|speckle: frames posed per estimator run (each run also sees N/2 earlier "
                   "and N/2 later frames, at least 8; a frame waits about 1.5 N frames) (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to compound and run the pose model (default: cpu)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="do not grow the grid past this memory estimate (default: 80%% of the available memory)")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    p.set_defaults(func=cmd_live)


def build_live_request(args: argparse.Namespace):
    """The command line's options -> :class:`~freehandrecon.live.LiveRequest` (with reconstruct's checks)."""
    from ..errors import InputError
    from ..live import LiveRequest
    from .reconstruct import build_request

    if args.poses_file is not None:
        raise InputError("--poses-file takes poses from a file; a live stream has none.",
                         "Use --poses tracked (the stream's matrices), learned or speckle.")
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}.", "Give e.g. --frames 200.")
    for name, value in (("--seconds", args.seconds), ("--snapshot-every", args.snapshot_every),
                        ("--pair-tolerance-ms", args.pair_tolerance_ms), ("--grid-margin", args.grid_margin)):
        if value is not None and not (math.isfinite(value) and value >= 0 and (value > 0 or name != "--seconds")):
            raise InputError(f"{name} must be a non-negative number, got {value}.", f"Give e.g. {name} 2.")
    if args.pose_window < 1:
        raise InputError(f"--pose-window must be at least 1 frame, got {args.pose_window}.", "Give e.g. 16.")
    # reconstruct's vocabulary and checks; options that need a recorded sweep are off here
    for name, value in (("importance_mask", None), ("channel_compounding", None),
                        ("plus_compatible", False), ("oriented", False), ("pixel_spacing", None)):
        setattr(args, name, value)
    req = build_request(args)
    return LiveRequest(spacing_mm=req.spacing_mm, options=req.options, roi=req.roi, poses=req.poses,
                       image_name=args.image_name, transform_name=args.transform_name,
                       pair_tolerance_s=args.pair_tolerance_ms / 1000.0, max_frames=args.frames,
                       max_seconds=args.seconds, snapshot_every_s=args.snapshot_every, keep_partial=args.keep_partial,
                       grid_margin_mm=args.grid_margin, pose_window=args.pose_window)


class _LiveProgress:
    """A tqdm line: frames received / used / dropped (off with --quiet)."""

    def __init__(self, quiet: bool, total: int | None) -> None:
        self.bar = None
        if not quiet:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="      live", unit="frame", file=sys.stderr)

    def __call__(self, session) -> None:
        if self.bar is not None and session.received != self.bar.n:
            self.bar.set_postfix(used=session.used, dropped=sum(session.dropped.values()), refresh=False)
            self.bar.update(session.received - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_live(args: argparse.Namespace) -> int:
    from ..io.igtl import parse_address
    from ..live import run_live

    host, port = parse_address(args.connect)
    request = build_live_request(args)
    progress = _LiveProgress(args.quiet, args.frames)
    try:
        report = run_live(host, port, request, args.out, force=args.force, progress=progress)
    finally:
        progress.close()
    summary = {k: report[k] for k in ("stopped_by", "frames_received", "frames_used", "frames_dropped",
                                      "dropped_by_reason", "frames_per_second", "latency_ms", "coverage_fraction")}
    summary["grid_dims"] = report["grid"]["dims_ijk"]
    print(json.dumps(summary, indent=2))
    return 0
