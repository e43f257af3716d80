"""``freehandrecon estimate-poses`` and ``calibrate-speckle``: poses of untracked sweeps, a probe's speckle curve."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import Progress, add_input_args, add_pose_args, read_input


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``estimate-poses`` and ``calibrate-speckle`` sub-commands."""
    _estimate_poses_parser(sub)
    _calibrate_speckle_parser(sub)


def cmd_estimate_poses(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.common import check_output
    from ..io.pose_file import write_pose_output
    from ..logic import compare_with_tracked
    from ..poses import estimate_poses, sweep_with_poses

    check_output(args.out, args.force)  # before any slow work
    sweep = read_input(args)
    progress = Progress(args.quiet)
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
    add_input_args(p)
    add_pose_args(p, with_tracked=False)
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output: .seq.mha (transform sequence) or a sweep file (.igs.mha, .seq.nrrd, .h5, .npz)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the learned model runs "
                   "(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_estimate_poses)


def cmd_calibrate_speckle(args: argparse.Namespace) -> int:
    from ..io.common import check_output
    from ..logic import calibrate_speckle_curve

    check_output(args.out, args.force)  # before reading the sweep
    sweep = read_input(args)
    curve = calibrate_speckle_curve(sweep, args.out, model=args.model, check_learned=not args.no_learned_check,
                                    device=args.device, force=args.force)
    print(json.dumps({"frames": sweep.num_frames, "depth_bands_mm": [round(float(d), 2) for d in curve.depths_mm],
                      "max_distance_mm": round(float(curve.distances_mm[-1]), 3),
                      "static_patches_left_out": curve.meta.get("static_patches_left_out", 0),
                      "structure_pairs_left_out": curve.meta.get("structure_pairs_left_out", 0),
                      "structure_pairs_fraction": curve.meta.get("structure_pairs_fraction", 0.0),
                      **({"bands_with_structure_mm": curve.meta["bands_with_structure_mm"]}
                         if "bands_with_structure_mm" in curve.meta else {}),
                      "warnings": list(curve.meta.get("warnings", [])),
                      **({"learned_check": curve.meta["learned_check"]} if "learned_check" in curve.meta else {}),
                      "out": str(args.out)}, indent=2))
    return 0


def _calibrate_speckle_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-speckle", help="fit the speckle decorrelation curve of a probe from a tracked sweep",
                       description="Fit the depth-dependent speckle decorrelation curve (correlation against "
                       "elevational distance) of your probe and settings from a tracked sweep of a speckle phantom "
                       "or tissue, mostly elevational motion. Use the JSON with 'estimate-poses --curve FILE' or "
                       "'reconstruct --curve FILE' (speckle and learned poses). The learned model is then run on this "
                       "sweep with and without the new curve; its features use the curve only if it drifted no more "
                       "with it (the check is stored in the JSON, for that model).")
    add_input_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="curve JSON to write")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="learned model to check the curve with: a shipped model's name or a model .json / "
                   ".safetensors (default: the shipped model)")
    p.add_argument("--no-learned-check", action="store_true",
                   help="skip the check (no PyTorch model run); the learned model then uses the curve unchecked, "
                   "with a warning")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the check's learned model runs (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_calibrate_speckle)
