"""``freehandrecon simulate``: write simulated tracked sweeps to files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..simulate.sites import SITE_NAMES
from ..simulate.trajectory import KINDS

_DIRECTIONS = {"forward": 1, "backward": -1, "random": None}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` sub-command to ``sub``."""
    p = sub.add_parser("simulate", help="simulate tracked ultrasound sweeps (training and test data)",
                       description="Simulate freehand ultrasound sweeps with exact poses: a random scatterer "
                       "phantom with vessels, layers and inclusions imaged by a linear or curvilinear probe "
                       "(coherent IQ summation, depth-dependent elevation beam). One sweep to --out FILE, or "
                       "--count K sweeps sweep_000.npz ... into the folder --out DIR (seeds SEED ... SEED+K-1). "
                       "The same site, seed and options always give the same sweep.")
    p.add_argument("--out", type=Path, required=True, metavar="PATH",
                   help="output file (.npz, .h5, .igs.mha, .seq.nrrd; format by extension), or with --count "
                   "a folder (created if missing)")
    p.add_argument("--count", type=int, metavar="K",
                   help="write K sweeps sweep_000.npz ... into the folder --out (default: one sweep to the file "
                   "--out)")
    p.add_argument("--site", default="site-a", choices=sorted(SITE_NAMES),
                   help="acquisition-settings distribution (probe, frequency, depth, gain, dynamic range); "
                   "site-f is the held-out site; site-blend blends two same-probe training sites per sweep "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the (first) sweep (default: %(default)s)")
    p.add_argument("--frames", type=int, default=100, metavar="N", help="frames per sweep (default: %(default)s)")
    p.add_argument("--trajectory", choices=["random", *KINDS], default="random",
                   help="probe motion: linear (elevational), fan (rocking), tilt, s-curve, mixed, or random per "
                   "sweep (default: %(default)s)")
    p.add_argument("--direction", choices=sorted(_DIRECTIONS), default="random",
                   help="elevational sweep direction; random draws it per sweep (default: %(default)s)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="image rows and columns (default: 128 128)")
    p.add_argument("--channels", nargs="+", choices=["photoacoustic", "doppler"], default=[], metavar="NAME",
                   help="also simulate co-registered extra channels: photoacoustic (vessel absorption, "
                   "depth-dependent fluence, band-limited limited-view detection) and/or doppler (power Doppler of "
                   "the flow in the vessels); same pixel grid and poses as the B-mode frames (default: none)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=cmd_simulate)


def _check(args: argparse.Namespace) -> list[tuple[int, Path]]:
    """(seed, path) of every sweep to write; refuses existing files without --force."""
    if args.frames < 2:
        raise InputError(f"--frames {args.frames}: a sweep needs at least 2 frames.", "Use e.g. --frames 100.")
    if min(args.size) < 8:
        raise InputError(f"--size {args.size[0]} {args.size[1]} is too small.", "Use at least 8 8, e.g. 128 128.")
    if args.count is None:
        jobs = [(args.seed, args.out)]
    else:
        if args.count < 1:
            raise InputError(f"--count {args.count} must be at least 1.", "Give the number of sweeps to write.")
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out '{args.out}' is a file, but --count writes several sweeps into a folder.",
                             "Give a folder name with --count, or drop --count to write one sweep.")
        jobs = [(args.seed + k, args.out / f"sweep_{k:03d}.npz") for k in range(args.count)]
    existing = [str(p) for _, p in jobs if p.exists()]
    if existing and not args.force:
        raise OutputExistsError(f"{len(existing)} output file(s) already exist, e.g. '{existing[0]}'.",
                                "Choose another --out or pass --force to overwrite.")
    return jobs


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run ``freehandrecon simulate``; prints a JSON summary."""
    from ..io import write_sweep
    from ..simulate import random_sweep

    jobs = _check(args)
    (args.out if args.count is not None else args.out.parent).mkdir(parents=True, exist_ok=True)
    bar = None
    if not getattr(args, "quiet", False):  # the global --quiet of the freehandrecon command
        from tqdm import tqdm

        bar = tqdm(total=len(jobs) * args.frames, desc="  simulate", unit="frame", file=sys.stderr)
    written = []
    try:
        for seed, path in jobs:
            done = [0]

            def progress(stage: str, fraction: float, done: list = done) -> None:
                n = round(fraction * args.frames)
                if bar is not None:
                    bar.update(n - done[0])
                done[0] = n

            sweep = random_sweep(args.site, seed, args.frames, None if args.trajectory == "random" else args.trajectory,
                                 tuple(args.size), direction=_DIRECTIONS[args.direction], progress=progress,
                                 channels=tuple(getattr(args, "channels", ()) or ()))
            write_sweep(sweep, path, force=args.force)
            written.append({"path": str(path), "seed": seed, "trajectory": sweep.metadata["trajectory"],
                            "sweep_direction": sweep.metadata["sweep_direction"],
                            "pixel_spacing_mm": [round(v, 4) for v in sweep.pixel_spacing],
                            "channels": sorted(sweep.channels)})
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps({"site": args.site, "frames": args.frames, "sweeps": written}, indent=2))
    return 0
