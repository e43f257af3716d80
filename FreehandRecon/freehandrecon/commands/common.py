"""Shared helpers of the command line (public: the lab's commands use them too): progress bars, input arguments.

Sub-command modules each expose ``add_parser(sub)``; :mod:`freehandrecon.commands.main` assembles them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model_files import DEFAULT_POSE_MODEL


class Progress:
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


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The input sweep and how to read it (calibration, spacing, crop): every command that reads a sweep."""
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


def add_pose_args(p: argparse.ArgumentParser, with_tracked: bool) -> None:
    """Where poses come from (reconstruct: ``--poses``; estimate-poses: ``--method``) and the model/curve options."""
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
                   help="learned: the pose model (.json with its .safetensors beside it, or the name of a shipped "
                   f"one such as posenet_sim_v2; default: the shipped {DEFAULT_POSE_MODEL}); speckle: a decorrelation "
                   "curve from 'freehandrecon calibrate-speckle' (default: a typical probe's curve, or the "
                   "simulator's for simulated sweeps)")
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


def read_input(args: argparse.Namespace):
    """The sweep named by :func:`add_input_args`' options."""
    from ..io import read_sweep

    return read_sweep(args.input, plus_config=args.plus_config, image_to_reference=args.image_to_reference,
                      calibration=args.calibration,
                      pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None,
                      crop=getattr(args, "crop", None))
