"""``freehandrecon train``: train the learned pose estimator on simulated and/or tracked sweeps.

Also runnable alone (``python -m freehandrecon.lab.train ...``), which is handy under
``torchrun --nproc_per_node K -m freehandrecon.lab.train ...`` before the main CLI wires it in.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from ...errors import InputError
from ...poses.config import LossWeights, PoseNetConfig
from .datasets import SPLIT_BY, TRAJECTORY_KINDS, check_curve_mix

EXAMPLE = """examples:
  freehandrecon train --data sim --cache /tmp/fr_cache --out /tmp/run1 --epochs 20
  freehandrecon train --data sim /data/tracked --split-by subject --out runs/mix --device cuda --amp
  torchrun --nproc_per_node 4 -m freehandrecon.commands.main train --data sim --out runs/ddp --device cuda
  freehandrecon train --data sim --out /tmp/run1 --epochs 30 --resume   # continue a run
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    d = PoseNetConfig()
    w = LossWeights()
    p = sub.add_parser("train", help="train the learned (MoGLo-style) pose estimator; writes .safetensors + .json",
                       description=__doc__.split("\n\n")[0] + " Writes checkpoints (last.pt each epoch, best.pt by "
                       "validation loss), log.jsonl and finally <name>.safetensors + <name>.json into --out.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=["sim"], metavar="SRC",
                   help="'sim' (simulated sweeps) and/or tracked sweep files or folders searched recursively "
                   "(.igs.mha/.mha PLUS, TUS-REC .h5, .seq.nrrd, .npz) (default: sim)")
    g.add_argument("--sites", nargs="+", metavar="SITE",
                   help="simulator sites for training and validation (default: simulate.TRAIN_SITES)")
    g.add_argument("--train-seeds", type=int, nargs=2, default=[0, 60], metavar=("START", "STOP"),
                   help="simulated training seeds START..STOP-1, one sweep per site and seed (default: 0 60)")
    g.add_argument("--val-seeds", type=int, nargs=2, default=[10000, 10004], metavar=("START", "STOP"),
                   help="held-out simulated validation seeds (default: 10000 10004)")
    g.add_argument("--extra-seeds", type=int, nargs=2, metavar=("START", "STOP"),
                   help="more simulated training sweeps, seeds START..STOP-1 per site, whose elevational step is "
                   "drawn from --extra-steps instead of the simulator's 0.1-0.6 mm/frame (a model regresses "
                   "towards its typical step, so steps at the edges of the range are over- or under-read)")
    g.add_argument("--extra-steps", type=float, nargs=2, default=[0.04, 0.8], metavar=("LO", "HI"),
                   help="elevational step range (mm/frame) of the --extra-seeds sweeps (default: 0.04 0.8)")
    g.add_argument("--frames", type=int, default=80, help="frames per simulated sweep (default: 80)")
    g.add_argument("--kinds", nargs="+", default=list(TRAJECTORY_KINDS), choices=TRAJECTORY_KINDS,
                   help="simulated trajectory kinds, cycled over seeds (default: all)")
    g.add_argument("--cache", type=Path, metavar="DIR",
                   help="folder caching simulated sweeps as .npz, reused by later runs (default: no cache)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes that simulate and prepare the simulated sweeps, one CPU core each (e.g. the "
                        "machine's cores; the data are the same for any N; default: 1)")
    g.add_argument("--split-by", choices=SPLIT_BY, default="subject",
                   help="held-out split of tracked files: subject (metadata 'subject', else the parent folder), "
                   "site (metadata 'site', else the grandparent folder) or file (default: subject)")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of tracked-file groups held out for validation (default: 0.2)")
    g.add_argument("--plus-config", type=Path, metavar="XML", help="PLUS config for tracked .igs.mha inputs")
    g.add_argument("--calibration", type=Path, metavar="FILE", help="image calibration for tracked inputs")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    g.add_argument("--steps-per-epoch", type=int, default=200, help="optimiser steps per epoch (default: 200)")
    g.add_argument("--batch-size", type=int, default=8, help="windows per step and process (default: 8)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 0.01)")
    g.add_argument("--warmup-steps", type=int, default=100,
                   help="linear warm-up steps before the cosine decay (default: 100)")
    g.add_argument("--no-augment", action="store_true", help="disable lateral-flip and time-reversal augmentation")
    g.add_argument("--loss-weights", type=float, nargs=4, metavar=("MAE", "CORR", "CORNER", "TRIPLET"),
                   default=[w.mae, w.correlation, w.corner, w.triplet],
                   help=f"weights of motion-weighted MAE, correlation, corner-point (mm) and margin-triplet "
                   f"losses (default: {w.mae} {w.correlation} {w.corner} {w.triplet})")
    g.add_argument("--triplet", action="store_true", help="enable the margin-triplet loss with weight 0.005 "
                   "(when --loss-weights gives it 0)")
    g.add_argument("--drift-rate-weight", type=float, default=w.drift_rate, metavar="W",
                   help="weight of the drift-rate loss: frame drift over a window divided by the true path length, "
                   f"so slow sweeps (fans) count as much as fast ones (default: {w.drift_rate}, off)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay per step (e.g. 0.998) "
                   "and validate, save and export it; 0 turns it off (default: 0)")
    g.add_argument("--chain", type=int, default=1, metavar="K",
                   help="draw K consecutive windows per sequence and take the drift-rate loss over the whole chain "
                   "(K x window pairs), so small rotation biases, whose drift grows with the square of the sweep "
                   "length, weigh as they do on whole sweeps; --batch-size then counts chains (default: 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g = p.add_argument_group("model")
    g.add_argument("--window", type=int, default=d.window, help=f"frame pairs per window (default: {d.window})")
    g.add_argument("--input-size", type=int, default=d.input_size,
                   help=f"model frame size in pixels, multiple of 32 (default: {d.input_size})")
    g.add_argument("--input-spacing", type=float, default=d.input_spacing,
                   help=f"model pixel spacing in mm (default: {d.input_spacing})")
    g.add_argument("--widths", type=int, nargs=4, default=list(d.widths), metavar="C",
                   help=f"encoder widths stem/stage1/stage2/stage3 (default: {' '.join(map(str, d.widths))})")
    g.add_argument("--decorrelation-lags", type=int, nargs="*", default=list(d.decorrelation_lags), metavar="J",
                   help="architecture v2: give the network calibrated speckle-decorrelation features at these frame "
                   "lags, e.g. 1 2 3 4 (default: none, architecture v1)")
    g.add_argument("--decorrelation-floor-lag", type=int, default=d.decorrelation_floor_lag, metavar="F",
                   help="with --decorrelation-lags: add structure-floor channels from the correlation at lag F "
                   "frames, e.g. 16 (default: 0, none)")
    g.add_argument("--curve", type=Path, metavar="JSON",
                   help="v2 with tracked files: the probe's decorrelation curve (freehandrecon calibrate-speckle); "
                   "simulated sweeps use their probe's beam model (default: a typical probe's curve)")
    g.add_argument("--curve-mix", type=float, nargs=3, metavar=("PHANTOM", "BEAM", "TYPICAL"),
                   help="v2 with simulated sweeps: shares (in tenths, adding up to 1) of sweeps whose features use a "
                   "curve calibrated on a simulated speckle phantom of the same probe (as a user calibrates), the "
                   "probe's beam model, and the typical probe's curve, e.g. 0.5 0.3 0.2 (default: all beam model)")
    g.add_argument("--init", type=Path, metavar="MODEL",
                   help="start from this model's weights (.json or .safetensors) and scales; input channels that "
                   "a v2 network adds start at zero")
    g.add_argument("--rescale-outputs", action="store_true",
                   help="with --init: compute the per-DoF output scales from this run's training data (98th "
                   "percentile of |motion|) and re-express the model's outputs in them before training (the start "
                   "model's predictions are unchanged; the losses then weigh the DoFs by the new scales)")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder for checkpoints and model")
    g.add_argument("--name", default="posenet", help="exported model name (default: posenet)")
    g.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default: cpu)")
    g.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    g.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    g.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop after the first epoch that ends past this many seconds from the start (data "
                        "preparation included) and export the --export checkpoint so far; the learning-rate schedule "
                        "still spans --epochs, so size --epochs to the budget (default: no limit)")
    g.add_argument("--drift-sweeps", type=int, default=4,
                   help="validation sweeps whose whole-sweep drift is measured each epoch (default: 4)")
    g.add_argument("--export", choices=("best", "last"), default="best",
                   help="which weights become <name>.json: 'best', the epoch with the lowest validation loss, or "
                        "'last', the final epoch (the end of the learning-rate schedule; a continuation stage whose "
                        "validation loss never goes below its first epoch's would otherwise export that epoch) "
                        "(default: best)")
    p.set_defaults(func=cmd_train)


def options_from_args(args: argparse.Namespace):
    """Build :class:`TrainOptions` from parsed arguments."""
    from .trainer import TrainOptions

    if args.epochs < 1 or args.steps_per_epoch < 1 or args.batch_size < 1:
        raise InputError("--epochs, --steps-per-epoch and --batch-size must be at least 1.", "Give positive values.")
    if args.window < 2:
        raise InputError(f"--window {args.window} is too small.", "Use a window of at least 2 frame pairs (e.g. 8).")
    if args.input_size % 32:
        raise InputError(f"--input-size {args.input_size} is not a multiple of 32.", "Use e.g. 96, 128 or 160.")
    weights = LossWeights(*args.loss_weights)
    weights.drift_rate = args.drift_rate_weight
    if weights.drift_rate < 0:
        raise InputError(f"--drift-rate-weight {weights.drift_rate} is negative.", "Use 0 (off) or a positive weight.")
    if not 0.0 <= args.ema < 1.0:
        raise InputError(f"--ema {args.ema} is not a decay in [0, 1).", "Use e.g. 0.998, or 0 to turn it off.")
    if args.triplet and not weights.triplet:
        weights.triplet = 0.005
    read_options = {}
    if args.plus_config:
        read_options["plus_config"] = args.plus_config
    if args.calibration:
        read_options["calibration"] = args.calibration
    if any(j < 1 for j in args.decorrelation_lags):
        raise InputError(f"--decorrelation-lags {args.decorrelation_lags} has a lag below 1.", "Use lags like 1 2 3 4.")
    if args.decorrelation_floor_lag < 0:
        raise InputError(f"--decorrelation-floor-lag {args.decorrelation_floor_lag} is negative.", "Use 0 or e.g. 16.")
    lo, hi = args.extra_steps
    if not 0 < lo < hi:
        raise InputError(f"--extra-steps {lo} {hi} is not a range of positive steps.", "Use e.g. 0.04 0.8 (mm/frame).")
    if args.extra_seeds and args.extra_seeds[0] >= args.extra_seeds[1]:
        raise InputError(f"--extra-seeds {args.extra_seeds[0]} {args.extra_seeds[1]} is empty.",
                         "Give START < STOP, e.g. 1000 1080.")
    if args.time_budget is not None and args.time_budget <= 0:
        raise InputError(f"--time-budget {args.time_budget} is not positive.", "Give seconds, e.g. --time-budget 300.")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} is below 1.", "Give 1 or more processes, e.g. --workers 4.")
    if args.chain < 1:
        raise InputError(f"--chain {args.chain} is below 1.", "Use 1 (plain windows) or e.g. 4.")
    if args.rescale_outputs and not args.init:
        raise InputError("--rescale-outputs needs --init.", "Give the model to start from with --init, or drop it.")
    if args.resume and args.init:
        raise InputError("--resume and --init cannot be combined.", "Resume a run, or start a new one from --init.")
    cfg = PoseNetConfig(input_size=args.input_size, input_spacing=args.input_spacing, widths=tuple(args.widths),
                        window=args.window, decorrelation_lags=tuple(sorted(set(args.decorrelation_lags))),
                        decorrelation_floor_lag=args.decorrelation_floor_lag if args.decorrelation_lags else 0)
    return TrainOptions(
        out=args.out, name=args.name, data=list(args.data), sites=args.sites, train_seeds=tuple(args.train_seeds),
        val_seeds=tuple(args.val_seeds), frames=args.frames, kinds=list(args.kinds), cache=args.cache,
        extra_seeds=tuple(args.extra_seeds) if args.extra_seeds else None, extra_steps=(lo, hi),
        split_by=args.split_by, val_fraction=args.val_fraction, read_options=read_options, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, augment=not args.no_augment,
        loss=weights, config=cfg, device=args.device, amp=args.amp, threads=args.threads, resume=args.resume,
        seed=args.seed, drift_sweeps=args.drift_sweeps, ema=args.ema, init=args.init, curve=args.curve,
        curve_mix=check_curve_mix(args.curve_mix) if args.curve_mix else None,
        rescale_outputs=args.rescale_outputs, chain=args.chain, workers=args.workers,
        time_budget=args.time_budget, export=args.export,
        quiet=bool(getattr(args, "quiet", False)),
        command="freehandrecon train " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) or []))


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``freehandrecon train``."""
    from .trainer import train

    if not getattr(args, "argv", None):
        args.argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else sys.argv[1:]
    opts = options_from_args(args)
    summary = train(opts)
    if "json" in summary and not opts.quiet:
        print(f"wrote {summary['weights']} and {summary['json']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m freehandrecon.train [train options]``."""
    from ...errors import FreehandReconError

    parser = argparse.ArgumentParser(prog="freehandrecon-train")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "--quiet" in argv
    argv = [a for a in argv if a != "--quiet"]
    if not argv or argv[0] != "train":
        argv = ["train"] + argv
    args = parser.parse_args(argv)
    args.quiet = quiet
    args.argv = argv[1:]
    try:  # error reporting as in the main CLI
        return cmd_train(args)
    except FreehandReconError as err:
        print(f"freehandrecon: error: {err.problem}", file=sys.stderr)
        if err.fix:
            print(f"freehandrecon: fix: {err.fix}", file=sys.stderr)
        return err.exit_code
