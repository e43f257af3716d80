"""``freehandrecon quality-eval | quality-train``: measure and retrain the quality guard (``quality``, the check
of one sweep, is :mod:`freehandrecon.commands.quality`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ...commands.common import Progress
from ...errors import InputError, OutputExistsError

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  freehandrecon quality-eval --out /tmp/quality-eval --cache /tmp/fr_quality_cache
  freehandrecon quality-train --out /tmp/guard --cache /tmp/fr_quality_cache
  freehandrecon quality-train --data /data/by-site --heldout-site hospital-c --roi-box 40 60 120 80 --out /tmp/guard
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``quality-eval`` and ``quality-train`` sub-commands."""
    p = sub.add_parser("quality-eval", help="evaluate the quality guard on simulated sites (site-held-out table, "
                       "site probe, OOD AUROC, speed)",
                       description="Reproduce the guard's evaluation table on the simulated site-held-out protocol: "
                       "PSNR, ROI MAE and ROI Edge-MAE after phase 1 and phase 2 on validation and held-out-site "
                       "frames, a frozen-latent site probe, OOD AUROC (Mahalanobis, kNN) for the held-out site and "
                       "for corrupted sweeps, and the time per frame. Writes eval.json and eval.md into --out.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guard", type=Path, metavar="FILE", help="guard .json to evaluate (default: the shipped one)")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for eval.json and eval.md (default: print only)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="folder caching the simulated sweeps (default: none)")
    _add_protocol_args(p)
    p.add_argument("--force", action="store_true", help="overwrite eval.json/eval.md in --out")
    p.set_defaults(func=cmd_quality_eval)

    p = sub.add_parser("quality-train", help="train the quality guard (two-stage ROI-aware autoencoder + latent "
                       "statistics + thresholds)",
                       description="Train the guard with the site-held-out protocol: phase 1 (MS-SSIM), phase 2 "
                       "(ROI L1 + ROI Sobel-edge + MS-SSIM, weights from gradient magnitudes at the last decoder "
                       "layer), fit per-site latent means and a shared Ledoit-Wolf covariance, calibrate the "
                       "thresholds on held-out frames, evaluate, and write <name>.safetensors + <name>.json, "
                       "eval.json and eval.md into --out.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--name", default="quality_guard_v1", help="guard file name (default: %(default)s)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="folder caching the simulated sweeps (default: none)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="train on your own sweeps instead of simulated ones: DIR holds one sub-folder per site "
                   "(hospital, scanner) with sweep files; needs --heldout-site and --roi-box")
    p.add_argument("--heldout-site", metavar="NAME", help="with --data: the site sub-folder kept out of training")
    p.add_argument("--roi-box", type=int, nargs=4, metavar=("X0", "Y0", "W", "H"),
                   help="with --data: the ROI as a pixel box on the native frames")
    p.add_argument("--plus-config", type=Path, metavar="XML", help="with --data: PLUS config for .igs.mha files")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="with --data: fraction of each training site's sweeps kept for validation (default: 0.25)")
    _add_protocol_args(p)
    p.add_argument("--epochs1", type=int, default=40, help="phase-1 epochs (default: 40)")
    p.add_argument("--epochs2", type=int, default=20, help="phase-2 epochs (default: 20)")
    p.add_argument("--budget1", type=float, default=720.0, metavar="S",
                   help="phase-1 wall-clock budget in seconds (default: 720)")
    p.add_argument("--budget2", type=float, default=420.0, metavar="S",
                   help="phase-2 wall-clock budget in seconds (default: 420)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--from-guard", type=Path, metavar="FILE",
                   help="skip training: keep this guard's network weights and refit only the latent statistics "
                   "and thresholds on the given data (e.g. your own sites)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    p.set_defaults(func=cmd_quality_train)


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated protocol")
    g.add_argument("--train-sweeps", type=int, default=12, help="training sweeps per training site (default: 12)")
    g.add_argument("--val-sweeps", type=int, default=16,
                   help="validation sweeps per training site; even-numbered ones calibrate the thresholds, odd-numbered "
                   "ones test (default: 16)")
    g.add_argument("--heldout-sweeps", type=int, default=10, help="sweeps of the held-out site (default: 10)")
    g.add_argument("--anatomy-sweeps", type=int, default=8, help="fetal-like (other anatomy) sweeps (default: 8)")
    g.add_argument("--frames", type=int, default=24, help="frames per simulated sweep (default: 24)")
    g.add_argument("--stats-sweeps", type=int, default=80,
                   help="extra sweeps per training site for the latent statistics only (default: 80; 0: none)")
    g.add_argument("--stats-frames", type=int, default=12, help="frames per statistics sweep (default: 12)")


def _protocol(args: argparse.Namespace):
    from .evaluate import Protocol

    for name in ("train_sweeps", "val_sweeps", "heldout_sweeps", "anatomy_sweeps", "frames", "stats_frames"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.",
                             "Give a positive number.")
    if args.val_sweeps < 2:
        raise InputError(f"--val-sweeps must be at least 2, got {args.val_sweeps}.",
                         "Keep two or more validation sweeps per site (one calibrates the thresholds, one tests).")
    return Protocol(args.train_sweeps, args.val_sweeps, args.heldout_sweeps, args.anatomy_sweeps, args.frames,
                    max(0, args.stats_sweeps), args.stats_frames)


def _free(paths: list[Path], force: bool) -> None:
    taken = [p for p in paths if p.exists()]
    if taken and not force:
        raise OutputExistsError(f"{', '.join(str(p) for p in taken)} already exist(s).",
                                "Choose another output or pass --force to overwrite.")


def _progress(args: argparse.Namespace):
    return Progress(bool(getattr(args, "quiet", False)))


def _write_eval(res: dict[str, Any], out: Path | None, force: bool) -> None:
    from .evaluate import format_table

    text = format_table(res)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(res, indent=2))
        (out / "eval.md").write_text(text + "\n")
        print(f"\nwritten: {out / 'eval.json'}, {out / 'eval.md'}")


def cmd_quality_eval(args: argparse.Namespace) -> int:
    from .evaluate import build_splits, evaluate_guard
    from ...quality.guard import load_guard
    from .train import with_state

    if args.out is not None:
        _free([args.out / "eval.json", args.out / "eval.md"], args.force)
    guard = load_guard(args.guard)
    phase1 = with_state(guard.phase1_state, guard.config) if guard.phase1_state else None
    bar = _progress(args)
    try:
        splits = build_splits(_protocol(args), args.cache, bar)
        res = evaluate_guard(guard, splits, phase1, bar)
    finally:
        bar.close()
    res["guard"] = str(guard.path)
    _write_eval(res, args.out, args.force)
    return 0


def cmd_quality_train(args: argparse.Namespace) -> int:
    from .evaluate import build_splits, evaluate_guard, fit_guard, user_splits
    from ...quality.guard import load_guard, save_guard
    from .train import TrainConfig, train_guard, with_state

    out = Path(args.out)
    _free([out / f"{args.name}.safetensors", out / f"{args.name}.json", out / "eval.json", out / "eval.md"],
          args.force)
    protocol = _protocol(args)
    bar = _progress(args)
    try:
        if args.data is not None:
            if not args.heldout_site or not args.roi_box:
                raise InputError("Training on your own data needs --heldout-site and --roi-box.",
                                 "Name the site sub-folder to hold out and give the ROI box in pixels.")
            splits = user_splits(args.data, args.heldout_site, args.roi_box, args.val_fraction, args.plus_config,
                                 bar)
        else:
            splits = build_splits(protocol, args.cache, bar)
        if args.from_guard is not None:
            # keep the trained weights; refit the statistics and thresholds on these splits
            old = load_guard(args.from_guard)
            net, phase1_state = old.net, old.phase1_state
            history = {"recipe": old.meta.get("training", {}).get("recipe", {}),
                       **{k: v for k, v in old.meta.get("training", {}).items() if k in ("phase1", "phase2")},
                       "weights_from": {"file": Path(args.from_guard).name, "sha256": old.meta.get("sha256")}}
            weights = old.meta.get("loss_weights", {})
        else:
            cfg = TrainConfig(epochs1=args.epochs1, epochs2=args.epochs2, budget1_s=args.budget1,
                              budget2_s=args.budget2, batch=args.batch, seed=args.seed, threads=args.threads)
            net, phase1_state, history = train_guard(splits.train, cfg, checkpoint_dir=out / "checkpoints",
                                                     progress=bar)
            weights = {k: history["phase2"]["weights"][k] for k in ("lambda_roi", "lambda_edge")}
        guard = fit_guard(net, splits, args.name)
        res = evaluate_guard(guard, splits, with_state(phase1_state, net.config) if phase1_state else None, bar)
    finally:
        bar.close()
    training = {k: v for k, v in history.items()}
    training.update({"train_frames": len(splits.train), "validation_frames": len(splits.val)})
    extra = {"training": training,
             "protocol": protocol.to_dict() if args.data is None else {"data": str(args.data),
                                                                       "heldout_site": args.heldout_site},
             "loss_weights": weights, "metrics": res}
    w, js = save_guard(net, guard.stats, guard.thresholds, guard.sites, out, args.name, phase1_state, extra)
    _write_eval(res, out, args.force)
    print(f"guard: {w}, {js}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one of the two sub-commands alone: ``python -m freehandrecon.lab.quality.command quality-train ...``."""
    from ...errors import FreehandReconError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m freehandrecon.lab.quality.command")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FreehandReconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
