"""``freehandrecon adapt``: fit a probe model (pose network, decorrelation curve, quality guard) to your probe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model_files import DEFAULT_POSE_MODEL
from .options import FineTuneOptions

DESCRIPTION = """\
From one or more tracked sweeps of your probe (60 frames or more, or a phantom on a stepper):
fit the probe's speckle decorrelation curve, fit the shipped pose model's elevational gain (one
number that rescales its elevational step to this probe), fine-tune the shipped pose model, and refit
the quality guard's statistics on the adaptation frames. The drift is measured before and after on
held-out frames (the last 30% of a single sweep, or the last sweeps of several). Of the shipped model
unchanged, with the gain (and the typical or the fitted curve), and fine-tuned, the one that drifts
least there is kept, and the report recommends learned or speckle poses for this probe (report.json,
"recommended_method").

Writes probe_model.json + .safetensors, with probe_curve.json and probe_guard.json (+ .safetensors)
beside it, all checksummed, and report.json into --out. Use it with 'estimate-poses --model
DIR/probe_model.json' or 'reconstruct --poses learned --model DIR/probe_model.json': the curve and
the guard come with it. Nothing is written unless the whole run succeeded.
"""

EXAMPLE = """examples:
  freehandrecon adapt tracked1.igs.mha tracked2.igs.mha --plus-config PlusDeviceSet.xml --out probe/
  freehandrecon estimate-poses untracked.igs.mha --model probe/probe_model.json --out poses.seq.mha
  freehandrecon reconstruct untracked.igs.mha --poses learned --model probe/probe_model.json --out volume/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``adapt`` sub-command (input options as in reconstruct/estimate-poses, several inputs)."""
    from ..commands.common import add_input_args

    d = FineTuneOptions()
    p = sub.add_parser("adapt", help="calibrate once on tracked sweeps of your probe, then go trackerless "
                       "(fine-tuned model + decorrelation curve + quality guard)",
                       description=DESCRIPTION,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(p)
    for action in p._actions:  # the shared input options, with several tracked sweeps instead of one
        if action.dest == "input":
            action.nargs, action.metavar = "+", "TRACKED"
            action.help = ("tracked sweeps of one probe and setting (PLUS .igs.mha with --plus-config, TUS-REC .h5, "
                           ".seq.nrrd, .npz with poses)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="fine-tuning epochs (default: %(default)s); 0 fits only the elevational gain (seconds)")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help="optimiser steps per epoch (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--holdout", type=float, default=0.3, metavar="F",
                   help="held-out fraction: of the frames of one sweep, or of the sweeps (default: %(default)s)")
    p.add_argument("--base-model", type=Path, metavar="FILE",
                   help="pose model to start from: a .json, or the name of a shipped one (default: the shipped "
                   f"{DEFAULT_POSE_MODEL})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training windows (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite the outputs of an earlier adapt in --out")
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    """Run ``freehandrecon adapt``."""
    from ..commands.common import Progress, read_input
    from ..logic import check_outputs_free
    from .job import OUTPUT_FILES, AdaptOptions, adapt_probe

    check_outputs_free(args.out, OUTPUT_FILES, args.force)  # before reading anything
    named = [(Path(p).name, read_input(argparse.Namespace(**{**vars(args), "input": p}))) for p in args.input]
    options = AdaptOptions(FineTuneOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                           batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                           base_model=args.base_model, device=args.device, threads=args.threads,
                           holdout_fraction=args.holdout)
    progress = Progress(args.quiet)
    try:
        report = adapt_probe(named, args.out, options, force=args.force, progress=progress)
    finally:
        progress.close()
    h = report["heldout"]
    print(json.dumps({"out": str(args.out / "probe_model.json"), "split": report["split"],
                      "heldout_fdr_pct": {"learned": {"before": h["learned"]["before_pct"],
                                                      "candidates": h["learned"]["candidates_pct"],
                                                      "after": h["learned"]["after_pct"],
                                                      "kept": h["learned"]["kept"]},
                                          "speckle": {"before": h["speckle"]["before_pct"],
                                                      "after": h["speckle"]["after_pct"]}},
                      "elevation_gain": h["learned"]["elevation_gain"],
                      "recommended_method": h["recommended_method"],
                      "quality_guard": report["quality_guard"], "epochs": report["epochs"],
                      "seconds": report["seconds"]["total"], "warnings": report["warnings"]}, indent=2))
    return 0
