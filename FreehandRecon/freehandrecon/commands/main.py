"""The ``freehandrecon`` command line: every headless job behind one entry point.

Exit codes: 0 success; 1 other FreehandRecon error; 2 bad input or usage; 3 an output
exists (use --force); 4 not enough memory/device or a damaged model file; 5 the quality guard
found the sweep out of distribution (quality --fail-on); 70 internal error (a bug: please
report it with the traceback); 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..errors import Cancelled, FreehandReconError

EXIT_INTERNAL = 70
log = logging.getLogger("freehandrecon")


class _Progress:
    """tqdm bars keyed by stage name (one bar per stage), silent with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: dict = {}

    def __call__(self, stage: str, fraction: float) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            for other in self.bars.values():  # one stage at a time: finish the previous bar
                other.close()
            bar = self.bars[stage] = tqdm(total=100, desc=f"{stage:>10}", unit="%", file=sys.stderr,
                                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        bar.update(round(100 * fraction) - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# --- reconstruct ----------------------------------------------------------------------------------

def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="sweep file: PLUS sequence (.igs.mha, .mha, .mhd), TUS-REC scan "
                   "(.h5 with calib_matrix.csv beside it), Slicer image sequence (.seq.nrrd), .npz, DICOM ultrasound "
                   "cine loop (.dcm) or screen/video capture (.mp4, .mov, .avi, .mkv; needs --pixel-spacing)")
    p.add_argument("--plus-config", type=Path, metavar="XML",
                   help="PLUS configuration XML: image-to-probe calibration (CoordinateDefinitions) and, for "
                   "reconstruct, its VolumeReconstruction settings as defaults (options given here win)")
    p.add_argument("--image-to-reference", default="ImageToReference", metavar="NAME",
                   help="name of the pixel-to-world transform to build from the transforms in the file and the "
                   "calibration, e.g. ImageToReference = inv(ReferenceToTracker) ProbeToTracker ImageToProbe "
                   "(default: %(default)s)")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="image calibration instead of --plus-config: a text file with a 4x4 matrix, or a TUS-REC "
                   "calib_matrix.csv")
    p.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("SX", "SY"),
                   help="override the pixel spacing in mm (columns, rows) read from the file")
    p.add_argument("--crop", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="DICOM and video inputs: the image region in pixels (left, top, width, height) instead of "
                   "the DICOM ultrasound region or the detected one")


def _reconstruct_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct a sweep into a 3D volume with tracked, learned or speckle poses (nrrd, mrb, png, json)",
                       description="Compound a freehand sweep into a volume. Writes volume.nrrd, coverage.nrrd "
                       "(accumulated weight), scene.mrb (opens in 3D Slicer), render.png (3D view) and "
                       "report.json into --out. Nothing existing is overwritten without --force.")
    _add_input_args(p)
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
                   "truncating stick filling) to match its volumes voxel for voxel; the default computes the "
                   "exact weighted mean")
    _add_pose_args(p, with_tracked=True)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="where to compound and run the learned pose model (default: cpu)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="refuse outputs whose estimated memory exceeds this (default: 80%% of the available RAM or GPU memory)")
    p.add_argument("--no-render", action="store_true", help="skip the 3D view PNG")
    p.add_argument("--no-mrb", action="store_true", help="skip the Slicer scene bundle")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    p.set_defaults(func=cmd_reconstruct)


def _add_pose_args(p: argparse.ArgumentParser, with_tracked: bool) -> None:
    methods = ["tracked", "learned", "speckle"] if with_tracked else ["learned", "speckle"]
    if with_tracked:
        p.add_argument("--poses", choices=methods, default="tracked",
                       help="where frame poses come from: tracked (the tracker transforms in the input and its "
                       "calibration), learned (the sensorless network, no tracker needed) or speckle (classical "
                       "speckle decorrelation, no tracker needed) (default: %(default)s)")
        p.add_argument("--poses-file", type=Path, metavar="FILE",
                       help="take the poses from a file written by 'freehandrecon estimate-poses' (a .seq.mha "
                       "transform sequence, or a sweep file with poses) instead of --poses")
    else:
        p.add_argument("--method", choices=methods, default="learned",
                       help="learned: the sensorless network shipped in Resources/Models (or --model); speckle: "
                       "classical speckle decorrelation (default: %(default)s)")
    p.add_argument("--model", type=Path, metavar="FILE",
                   help="learned: the pose model (.json with its .safetensors beside it; default: the shipped "
                   "model); speckle: a decorrelation curve from 'freehandrecon calibrate-speckle' (default: a "
                   "typical probe's curve, or the simulator's for simulated sweeps)")
    p.add_argument("--curve", type=Path, metavar="JSON",
                   help="the probe's speckle decorrelation curve from 'freehandrecon calibrate-speckle', for speckle "
                   "and for learned models that use it (architecture v2, e.g. the shipped one); default: the "
                   "simulated probe's beam model for simulated sweeps, else a typical probe's curve")
    if with_tracked:
        p.add_argument("--no-quality-check", action="store_true",
                       help="with --poses learned, skip the quality guard that otherwise checks first whether the "
                       "sweep looks like the model's training data (its verdict goes into report.json)")
    p.add_argument("--sweep-direction", choices=["auto", "forward", "backward"], default="auto",
                   help="direction of the elevational sweep, which speckle cannot see: forward (+z, towards the "
                   "probe marker side), backward, or auto (from the file's metadata or tracked poses, else "
                   "forward) (default: %(default)s)")


def _read(args: argparse.Namespace):
    from ..io import read_sweep

    return read_sweep(args.input, plus_config=args.plus_config, image_to_reference=args.image_to_reference,
                      calibration=args.calibration,
                      pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None,
                      crop=getattr(args, "crop", None))


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


def build_request(args: argparse.Namespace, sweep):
    """Merge PLUS config defaults with explicit command-line options into a ReconstructionRequest."""
    from ..compound import CompoundOptions, FanMask, detect_fan, options_from_plus_config
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
    if args.fan:
        if args.fan == ["auto"]:
            fan = detect_fan(sweep.frames)
            if fan is None:
                raise InputError("--fan auto found no curvilinear fan in the frames.",
                                 "Give the fan explicitly: --fan OX OY A0 A1 R0 R1, or drop --fan for linear probes.")
            changes["fan"] = fan
        elif len(args.fan) == 6:
            try:
                v = [float(x) for x in args.fan]
            except ValueError:
                raise InputError(f"--fan takes 'auto' or 6 numbers, got {args.fan}.",
                                 "Use --fan auto or --fan OX OY A0 A1 R0 R1 (pixels, degrees, pixels).") from None
            if not all(math.isfinite(x) for x in v) or v[2] >= v[3] or not 0 <= v[4] < v[5]:
                raise InputError(f"--fan {' '.join(args.fan)}: the angles must be finite with A0 < A1 and the "
                                 "radii 0 <= R0 < R1.", "Use e.g. --fan 380 20 -45 45 120 360, or --fan auto.")
            changes["fan"] = FanMask((v[0], v[1]), (v[2], v[3]), v[4], v[5])
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
                                 poses=poses,
                                 channel_compounding=parse_channel_compounding(getattr(args, "channel_compounding",
                                                                                       None)))


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..logic import check_outputs_free, run_reconstruct_job

    check_outputs_free(args.out, ("volume.nrrd", "report.json"), args.force)  # before any slow work
    check_reconstruct_numbers(args)
    sweep = _read(args)
    if args.poses_file is not None:
        from ..io.pose_file import read_pose_file

        if args.poses != "tracked":
            from ..errors import InputError

            raise InputError("--poses-file and --poses learned|speckle both say where poses come from.",
                             "Give one of them.")
        sweep = sweep.with_poses(read_pose_file(args.poses_file, sweep.num_frames), poses=f"file {args.poses_file}")
    request = build_request(args, sweep)
    progress = _Progress(args.quiet)
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


# --- estimate-poses -------------------------------------------------------------------------------

def cmd_estimate_poses(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.common import check_output
    from ..io.pose_file import write_pose_output
    from ..logic import compare_with_tracked
    from ..poses import estimate_poses, sweep_with_poses

    check_output(args.out, args.force)  # before any slow work
    sweep = _read(args)
    progress = _Progress(args.quiet)
    try:
        est = estimate_poses(sweep, args.method, model=args.model, curve=args.curve,
                             sweep_direction=args.sweep_direction,
                             device=args.device, progress=progress)
    finally:
        progress.close()
    written = write_pose_output(sweep_with_poses(sweep, est), args.out, force=args.force)
    summary = {"frames": sweep.num_frames, "method": est.method, "sweep_direction": est.info["sweep_direction"],
               "seconds": round(est.seconds, 3), "frames_per_second": round(est.frames_per_second, 1),
               "path_length_mm": round(float(np.linalg.norm(np.diff(est.image_to_world[:, :3, 3], axis=0),
                                                            axis=1).sum()), 2),
               "warnings": est.warnings, "outputs": [str(p) for p in written]}
    if est.info.get("decorrelation_curve"):
        summary["decorrelation_curve"] = est.info["decorrelation_curve"]
    against = compare_with_tracked(sweep, est, digits=3)  # the input was tracked: how far the estimate is
    if against is not None:
        summary["against_tracked"] = against
    print(json.dumps(summary, indent=2))
    return 0


def _estimate_poses_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate-poses", help="estimate per-frame poses of an untracked sweep (learned or speckle)",
                       description="Estimate the image-to-world transform of every frame from the images alone. "
                       "--out FILE.seq.mha writes a Slicer transform sequence (poses only; pair it with the image "
                       "sequence in Slicer, or pass it to 'reconstruct --poses-file'); a sweep file name (.igs.mha, "
                       ".seq.nrrd, .h5, .npz) writes the frames with the estimated poses. When the input is tracked, "
                       "the errors against the tracker are printed too.")
    _add_input_args(p)
    _add_pose_args(p, with_tracked=False)
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output: .seq.mha (transform sequence) or a sweep file (.igs.mha, .seq.nrrd, .h5, .npz)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the learned model runs "
                   "(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_estimate_poses)


# --- calibrate-speckle ----------------------------------------------------------------------------

def cmd_calibrate_speckle(args: argparse.Namespace) -> int:
    from ..io.common import check_output
    from ..poses.speckle import DecorrelationCurve

    from ..errors import InputError

    check_output(args.out, args.force)
    sweep = _read(args)
    if sweep.image_to_world is None:  # a calibration sweep must be tracked
        raise InputError(f"'{args.input}' has no poses; calibrate-speckle needs a tracked sweep (the tracker gives "
                         "the true elevational distances).",
                         "Give a tracked sweep with its calibration (--plus-config or --calibration).")
    curve = DecorrelationCurve.calibrate(sweep)
    curve.save(args.out, force=args.force)
    print(json.dumps({"frames": sweep.num_frames, "depth_bands_mm": [round(float(d), 2) for d in curve.depths_mm],
                      "max_distance_mm": round(float(curve.distances_mm[-1]), 3), "out": str(args.out)}, indent=2))
    return 0


def _calibrate_speckle_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-speckle", help="fit the speckle decorrelation curve of a probe from a tracked sweep",
                       description="Fit the depth-dependent speckle decorrelation curve (correlation against "
                       "elevational distance) of your probe and settings from a tracked sweep of a speckle phantom "
                       "or tissue, mostly elevational motion. Use the JSON with 'estimate-poses --curve FILE' or "
                       "'reconstruct --curve FILE' (speckle and learned poses).")
    _add_input_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="curve JSON to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_calibrate_speckle)


# --- info / convert ------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import sweep_format

    if sweep_format(args.input) == "tusrec":
        info = _tusrec_info(args)  # shapes and poses only: never reads every frame
    else:
        info = _sweep_info(args)
    print(json.dumps(info, indent=2))
    return 0


def _summary(num_frames: int, frame_shape, dtype, spacing, image_to_world, timestamps, channels, metadata) -> dict:
    import numpy as np

    info = {"frames": int(num_frames), "frame_size": [int(frame_shape[1]), int(frame_shape[0])], "dtype": str(dtype),
            "pixel_spacing_mm": [float(v) for v in spacing], "has_poses": image_to_world is not None,
            "channels": sorted(channels), "metadata": {k: str(v) for k, v in metadata.items()}}
    if image_to_world is not None:
        centres = np.asarray(image_to_world)[:, :3, 3]
        info["path_length_mm"] = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
    if timestamps is not None:
        info["duration_s"] = float(timestamps[-1] - timestamps[0])
    return info


def _sweep_info(args: argparse.Namespace) -> dict:
    from ..errors import CalibrationError
    from ..io import sweep_format

    try:
        sweep = _read(args)
        note = None
    except CalibrationError as err:
        if sweep_format(args.input) != "plus" or args.plus_config is not None or args.calibration is not None:
            raise  # a calibration the user gave must work; only a bare recording is summarised without poses
        # A PLUS recording without its config: summarise what the file holds instead of failing.
        from ..io import read_sweep

        sweep = read_sweep(args.input, image_to_reference=None,
                           pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None)
        note = f"{err.problem} Fix: {err.fix}"
    info = _summary(sweep.num_frames, sweep.frame_shape, sweep.frames.dtype, sweep.pixel_spacing, sweep.image_to_world,
                    sweep.timestamps, sweep.channels, sweep.metadata)
    if sweep_format(args.input) == "plus":
        from ..io.metaimage import read_metaimage_fields

        fields = read_metaimage_fields(args.input)
        info["transforms_in_file"] = sorted({k.split("_", 2)[2] for k in fields
                                             if k.startswith("Seq_Frame") and k.count("_") >= 2
                                             and k.endswith("Transform")})
    if note is not None:
        info["poses_note"] = note
    return info


def _tusrec_info(args: argparse.Namespace) -> dict:
    from ..io.tusrec import tusrec_summary

    s = tusrec_summary(args.input, calibration=args.calibration,
                       pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None)
    shape = s["frames_shape"]
    if s["timestamps"] is not None:
        from ..sweep import _checked_timestamps

        _checked_timestamps(s["timestamps"], shape[0])
    return _summary(shape[0], shape[1:3], s["dtype"], s["spacing"], s["image_to_world"], s["timestamps"],
                    s["channels"], s["metadata"])


def cmd_convert(args: argparse.Namespace) -> int:
    from ..io import sweep_format, write_sweep
    from ..io.common import check_output

    sweep_format(args.output)  # an unsupported output name is refused before reading
    check_output(args.output, args.force)
    sweep = _read(args)
    write_sweep(sweep, args.output, force=args.force)
    print(f"wrote {args.output} ({sweep.num_frames} frames)")
    return 0


# --- bench ---------------------------------------------------------------------------------------

def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "sensorless":
        from ..lab.bench_sensorless import format_sensorless_table, run_sensorless_benchmark

        print(format_sensorless_table(run_sensorless_benchmark(quick=args.quick)))
        return 0
    from ..lab.bench import format_table, run_compound_benchmark

    print(format_table(run_compound_benchmark(device=args.device, quick=args.quick)))
    return 0


def _plain_help(sub: argparse._SubParsersAction) -> None:
    """Strip reST markup (``code``, **bold**) that descriptions borrowed from docstrings carry into --help."""
    for parser in sub.choices.values():
        if parser.description:
            parser.description = parser.description.replace("``", "'").replace("**", "")
        for action in parser._actions:
            if action.help:
                action.help = action.help.replace("``", "'").replace("**", "")


_COMMAND_MODULES = ("..lab.simulate_command", "..lab.evaluate", "..lab.train.command", "..lab.quality.command", "..lab.vessels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freehandrecon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="log details (and tracebacks of errors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _reconstruct_parser(sub)
    _estimate_poses_parser(sub)
    _calibrate_speckle_parser(sub)
    for module in _COMMAND_MODULES:  # sub-commands that live beside the code they drive
        importlib.import_module(module, __package__).add_parser(sub)
    p = sub.add_parser("info", help="summarise a sweep file (frames, spacing, poses, channels)")
    _add_input_args(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("convert", help="convert a sweep between formats (.igs.mha, .seq.nrrd, .npz, .h5)")
    _add_input_args(p)
    p.add_argument("output", type=Path, help="output file; the format follows the extension")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("bench", help="print speed and memory figures")
    p.add_argument("what", choices=["compound", "sensorless"],
                   help="compound: the compounder (frames/s, MP/s, peak memory); sensorless: the learned network, "
                   "both pose estimators end to end, the quality guard and the simulator (frames/s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    p.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    p.set_defaults(func=cmd_bench)
    _plain_help(sub)
    return parser


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (a batch system, ``kill``) takes the same clean path as Ctrl-C: finally blocks remove temp files."""
    raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line, without the source path and line of the code that raised them."""
    print(f"freehandrecon: warning: {message}", file=sys.stderr if file is None else file)


def _cli_text(text: str) -> str:
    """Messages written for Python callers, in command-line words."""
    return text.replace("force=True (--force)", "--force").replace("pass force=True", "pass --force")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    previous_term = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    previous_show = warnings.showwarning
    if previous_term is not None:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if not args.verbose:
        warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("freehandrecon: cancelled; no output was written.", file=sys.stderr)
        return Cancelled.exit_code
    except FreehandReconError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"freehandrecon: error: {_cli_text(err.problem)}", file=sys.stderr)
        if err.fix:
            print(f"freehandrecon: fix: {_cli_text(err.fix)}", file=sys.stderr)
        return err.exit_code
    except MemoryError:
        print("freehandrecon: error: the computation ran out of memory.", file=sys.stderr)
        print("freehandrecon: fix: use a coarser --spacing, a smaller --roi, or a machine with more memory.",
              file=sys.stderr)
        return 4
    except Exception:  # noqa: BLE001 - last resort: report a bug with its traceback
        traceback.print_exc()
        print("freehandrecon: internal error (a bug); please report it with the traceback above.", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = previous_show
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
