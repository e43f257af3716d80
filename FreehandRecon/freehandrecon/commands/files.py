"""``freehandrecon info`` and ``convert``: summarise a sweep file, convert it between formats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_input_args, read_input


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` and ``convert`` sub-commands."""
    p = sub.add_parser("info", help="summarise a sweep file (frames, spacing, poses, channels)")
    add_input_args(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("convert", help="convert a sweep between formats (.igs.mha, .seq.nrrd, .npz, .h5)")
    add_input_args(p)
    p.add_argument("output", type=Path, help="output file; the format follows the extension")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_convert)


def cmd_info(args: argparse.Namespace) -> int:
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
        sweep = read_input(args)
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
    sweep = read_input(args)
    write_sweep(sweep, args.output, force=args.force)
    print(f"wrote {args.output} ({sweep.num_frames} frames)")
    return 0
