"""``freehandrecon quality``: check whether a sweep looks like the learned pose model's training data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import Progress, add_input_args, read_input

EXAMPLES = """examples:
  freehandrecon quality sweep.igs.mha --plus-config config.xml --out quality.json
  freehandrecon quality sweep.igs.mha --fail-on out-of-distribution
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``quality`` sub-command (``quality-eval`` and ``quality-train`` are the lab's)."""
    p = sub.add_parser("quality", help="check whether a sweep looks like the learned pose model's training data "
                       "(per-frame out-of-distribution score and verdict)",
                       description="Score every frame with the quality guard (Mahalanobis feature-ensemble "
                       "distance of its autoencoder features, input texture and latent to the training sites, "
                       "and reconstruction error) and give a verdict "
                       "(ok, warning, out-of-distribution) against thresholds calibrated on held-out "
                       "in-distribution frames. Frames of any size and spacing are resampled to the guard grid.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(p)
    p.add_argument("--guard", type=Path, metavar="FILE",
                   help="guard .json (beside its .safetensors) (default: the shipped quality_guard_v1)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the report (verdict, per-frame scores) as JSON")
    p.add_argument("--fail-on", choices=["never", "warning", "out-of-distribution"], default="never",
                   help="exit with code 5 when the verdict is this bad or worse (default: never)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_quality)


def cmd_quality(args: argparse.Namespace) -> int:
    from ..quality.guard import check_sweep, load_guard

    if args.out is not None:
        from ..io.common import check_output

        check_output(args.out, args.force, create_folder=True)  # before any slow work
    guard = load_guard(args.guard)
    sweep = read_input(args)
    bar = Progress(bool(getattr(args, "quiet", False)))
    try:
        report = check_sweep(sweep, guard=guard, progress=bar)
    finally:
        bar.close()
    print(f"verdict: {report.verdict}")
    print(report.message)
    print(f"frames: {report.num_frames}, out of distribution: {100 * report.fraction_out:.1f} %, "
          f"median OOD score {float(sorted(report.ood_score)[report.num_frames // 2]):.2f} "
          f"(threshold {report.thresholds['ood']:.2f}), {report.ms_per_frame:.2f} ms/frame"
          + (" (frames resampled to the guard grid)" if report.resampled else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        data = report.to_json()
        data["input"] = str(args.input)
        args.out.write_text(json.dumps(data, indent=2))
        print(f"report: {args.out}")
    order = {"never": 99, "warning": 1, "out-of-distribution": 2}
    rank = {"ok": 0, "warning": 1, "out-of-distribution": 2}[report.verdict]
    return 5 if rank >= order[args.fail_on] else 0
