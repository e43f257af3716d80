"""``freehandrecon reconstruct``: a sweep -> volume.nrrd, coverage.nrrd, scene.mrb, render.png, report.json."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from .common import Progress, add_input_args, add_pose_args, read_input


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct a sweep into a 3D volume with tracked, learned or speckle poses (nrrd, mrb, png, json)",
                       description="Compound a freehand sweep into a volume. Writes volume.nrrd, coverage.nrrd "
                       "(accumulated weight), scene.mrb (opens in 3D Slicer), render.png (3D view) and "
                       "report.json into --out. Nothing existing is overwritten without --force.")
    add_input_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="output voxel spacing in mm, one value or three (default: the PLUS config's "
                   "OutputSpacing, else 1.0)")
    p.add_argument("--interpolation", choices=["nearest", "linear"],
                   help="nearest: each pixel to its nearest voxel; linear: trilinear splat over 8 voxels "
                   "(default: nearest)")
    p.add_argument("--compounding", choices=["mean", "max", "latest", "importance"],
                   help="how overlapping pixels combine (default: mean); importance needs --importance-mask")
    p.add_argument("--channel-compounding", action="append", metavar="CHANNEL=MODE",
                   help="compounding of an extra channel, e.g. doppler=mean (repeatable; default: max for "
                   "photoacoustic and doppler, whatever --compounding says for B-mode)")
    p.add_argument("--importance-mask", type=Path, metavar="FILE",
                   help="per-pixel weights for --compounding importance: .npy [H,W] or a grey .png/.mha image")
    p.add_argument("--fill-holes", choices=["none", "normalized", "stick"],
                   help="fill voxels no pixel reached: normalized convolution or PLUS-like stick kernel "
                   "(default: none, or the PLUS config's FillHoles)")
    p.add_argument("--hole-size", type=int, metavar="N",
                   help="hole-filling kernel width in voxels (normalized) or stick length limit (stick)")
    p.add_argument("--sticks", type=int, metavar="N", help="number of best sticks to average (stick; default 1)")
    p.add_argument("--clip", type=int, nargs=4, metavar=("X0", "Y0", "W", "H"),
                   help="use only pixels inside this rectangle (pixels)")
    p.add_argument("--fan", nargs="+", metavar="V",
                   help="curvilinear fan mask: 'auto' to detect it from the frames, or OX OY A0 A1 R0 R1 "
                   "(origin pixel, angles in degrees, start and stop radius in pixels)")
    p.add_argument("--pixel-threshold", type=float, metavar="T", help="ignore pixels darker than T")
    p.add_argument("--roi", type=float, nargs=6, metavar=("CX", "CY", "CZ", "SX", "SY", "SZ"),
                   help="output box centre and size in world mm (default: fitted to all frames)")
    p.add_argument("--oriented", action="store_true",
                   help="fit the output box along the sweep instead of the world axes (smaller volume)")
    p.add_argument("--plus-compatible", action="store_true",
                   help="reproduce PLUS/IGSIO's integer arithmetic (running mean rounded at every insertion, "
                   "truncating stick filling) on PLUS's grid (the box around the clip rectangles, the fan ignored) to match "
                   "its volumes voxel for voxel; needs PyTorch; the default computes the exact weighted mean")
    add_pose_args(p, with_tracked=True)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="where to compound and run the learned pose model (default: cpu)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="refuse outputs whose estimated memory exceeds this (default: 80%% of the available RAM or GPU memory)")
    p.add_argument("--no-render", action="store_true", help="skip the 3D view PNG")
    p.add_argument("--no-mrb", action="store_true", help="skip the Slicer scene bundle")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    p.set_defaults(func=cmd_reconstruct)


MAX_HOLE_SIZE = 64  # voxels: a normalized kernel of 64^3 or 64-voxel sticks is already far beyond any gap


def check_reconstruct_numbers(args: argparse.Namespace) -> None:
    """Refuse zero, negative, NaN or absurd numeric options before any work (argparse takes any float)."""
    from ..errors import InputError

    if args.max_memory_gb is not None and not (math.isfinite(args.max_memory_gb) and args.max_memory_gb > 0):
        raise InputError(f"--max-memory-gb must be a positive number of GB, got {args.max_memory_gb}.",
                         "Give e.g. --max-memory-gb 8, or leave it out for 80 % of the available memory.")
    if args.hole_size is not None and not 1 <= args.hole_size <= MAX_HOLE_SIZE:
        raise InputError(f"--hole-size must be 1..{MAX_HOLE_SIZE} voxels, got {args.hole_size}.",
                         "Give a kernel width (normalized) or stick length limit (stick) of a few voxels, e.g. 3 "
                         "or 9; leave it out for the default.")
    if args.sticks is not None and not 1 <= args.sticks <= 13:
        raise InputError(f"--sticks must be 1..13, got {args.sticks}.", "Use 1 (PLUS default) to 13.")
    if args.pixel_threshold is not None and not math.isfinite(args.pixel_threshold):
        raise InputError(f"--pixel-threshold must be a finite number, got {args.pixel_threshold}.",
                         "Give e.g. --pixel-threshold 5, or leave it out.")
    if args.pixel_spacing is not None and not all(math.isfinite(v) and v > 0 for v in args.pixel_spacing):
        raise InputError(f"--pixel-spacing must be two positive numbers, got {args.pixel_spacing}.",
                         "Give the true spacing in mm, e.g. --pixel-spacing 0.2 0.2.")
    if args.clip is not None and (args.clip[0] < 0 or args.clip[1] < 0 or args.clip[2] <= 0 or args.clip[3] <= 0):
        raise InputError(f"--clip X0 Y0 W H must have X0, Y0 >= 0 and W, H > 0, got {args.clip}.",
                         "Give the rectangle of pixels to keep, e.g. --clip 0 0 640 480.")


def build_request(args: argparse.Namespace):
    """Merge PLUS config defaults with explicit command-line options into a ReconstructionRequest."""
    from ..compound import CompoundOptions, FanMask, options_from_plus_config
    from ..errors import InputError
    from ..logic import ReconstructionRequest, Roi

    check_reconstruct_numbers(args)
    spacing = (1.0, 1.0, 1.0)
    opts = CompoundOptions()
    if args.plus_config is not None:
        from ..io.plus_config import read_plus_config

        read_plus_config(args.plus_config)  # refuses a broken or wrong XML with a clear message first
        opts, spacing = options_from_plus_config(args.plus_config)
    if args.spacing:
        if len(args.spacing) not in (1, 3):
            raise InputError(f"--spacing takes one or three values, got {len(args.spacing)}.",
                             "Use e.g. --spacing 0.5 or --spacing 0.5 0.5 1.0.")
        spacing = tuple(args.spacing) * (3 if len(args.spacing) == 1 else 1)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"Output spacing must be positive, got {spacing} mm.", "Use e.g. --spacing 0.5.")
    changes = {}
    if args.interpolation:
        changes["interpolation"] = args.interpolation
    if args.compounding:
        changes["compounding"] = args.compounding
    if args.importance_mask:
        from ..io.mask_image import read_mask_image

        changes["importance_mask"] = read_mask_image(args.importance_mask)
    if args.clip:
        changes["clip_rectangle"] = tuple(args.clip)
    if args.pixel_threshold is not None:
        changes["pixel_threshold"] = args.pixel_threshold
    if args.device:
        changes["device"] = args.device
    if args.plus_compatible:
        changes["plus_arithmetic"] = True
    if args.max_memory_gb is not None:
        changes["max_memory_bytes"] = int(args.max_memory_gb * 2**30)
    fan = None  # the logic detects an automatic fan in the frames it compounds
    if args.fan:
        if args.fan == ["auto"]:
            fan = "auto"
        elif len(args.fan) == 6:
            try:
                v = [float(x) for x in args.fan]
            except ValueError:
                raise InputError(f"--fan takes 'auto' or 6 numbers, got {args.fan}.",
                                 "Use --fan auto or --fan OX OY A0 A1 R0 R1 (pixels, degrees, pixels).") from None
            if not all(math.isfinite(x) for x in v) or v[2] >= v[3] or not 0 <= v[4] < v[5]:
                raise InputError(f"--fan {' '.join(args.fan)}: the angles must be finite with A0 < A1 and the "
                                 "radii 0 <= R0 < R1.", "Use e.g. --fan 380 20 -45 45 120 360, or --fan auto.")
            fan = FanMask((v[0], v[1]), (v[2], v[3]), v[4], v[5])
        else:
            raise InputError(f"--fan takes 'auto' or 6 numbers, got {args.fan}.", "Use --fan auto or --fan OX OY A0 A1 R0 R1.")
    if args.fill_holes or args.hole_size is not None or args.sticks is not None:
        hf = opts.hole_filling
        hf = replace(hf, method=args.fill_holes or (hf.method if hf.method != "none" else "normalized"))
        if args.hole_size is not None:
            hf = replace(hf, size=args.hole_size)
        if args.sticks is not None:
            hf = replace(hf, sticks=args.sticks)
        changes["hole_filling"] = hf
    opts = replace(opts, **changes)
    if opts.compounding == "importance" and opts.importance_mask is None:
        raise InputError("--compounding importance needs per-pixel weights.", "Pass --importance-mask FILE.")
    roi = Roi(tuple(args.roi[:3]), tuple(args.roi[3:])) if args.roi else None
    if roi is not None:
        roi.validate()
    from ..logic import PoseRequest

    poses = PoseRequest(method=args.poses, model=str(args.model) if args.model else None,
                        curve=str(args.curve) if args.curve else None,
                        sweep_direction=args.sweep_direction, device=args.device or "cpu",
                        check_quality=not args.no_quality_check)
    from ..compound.options import parse_channel_compounding

    return ReconstructionRequest(spacing_mm=spacing, options=opts, roi=roi, oriented_grid=args.oriented,
                                 poses=poses, fan=fan, require_fan=True,
                                 channel_compounding=parse_channel_compounding(getattr(args, "channel_compounding",
                                                                                       None)))


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..logic import check_outputs_free, run_reconstruct_job

    check_outputs_free(args.out, ("volume.nrrd", "report.json"), args.force)  # before any slow work
    check_reconstruct_numbers(args)
    sweep = read_input(args)
    if args.poses_file is not None:
        from ..io.pose_file import read_pose_file

        if args.poses != "tracked":
            from ..errors import InputError

            raise InputError("--poses-file and --poses learned|speckle both say where poses come from.",
                             "Give one of them.")
        sweep = sweep.with_poses(read_pose_file(args.poses_file, sweep.num_frames), poses=f"file {args.poses_file}")
    request = build_request(args)
    progress = Progress(args.quiet)
    try:
        report = run_reconstruct_job(sweep, request, args.out, force=args.force, render=not args.no_render,
                                     mrb=not args.no_mrb, progress=progress)
    finally:
        progress.close()
    summary = {k: report[k] for k in ("frames", "poses", "coverage_fraction", "compound_seconds",
                                      "frames_per_second", "memory_estimate_mb", "outputs")}
    if "quality" in report:
        summary["quality"] = {k: report["quality"][k] for k in ("verdict", "fraction_out_of_distribution", "message")
                              if k in report["quality"]}
    summary["grid_dims"] = report["grid"]["dims_ijk"]
    print(json.dumps(summary, indent=2))
    return 0
