"""The research tools' sub-commands (simulate, train, evaluate, quality-eval/-train, vessels, bench) in the one parser.

The lab's own modules define their parsers (``add_parser``) beside the code they drive; this module adds them.
"""

from __future__ import annotations

import argparse

from ..lab import evaluate, igtl_stream, independent_sim, simulate_command, vessels
from ..lab.quality import command as quality_command
from ..lab.train import command as train_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the lab's sub-commands and ``bench``."""
    for module in (simulate_command, evaluate, train_command, quality_command, vessels, independent_sim, igtl_stream):
        module.add_parser(sub)
    p = sub.add_parser("bench", help="print speed and memory figures")
    p.add_argument("what", choices=["compound", "sensorless", "live"],
                   help="compound: the compounding engines side by side (numba and torch on 1 and 2 threads, numpy; "
                   "spine sweep, nearest and linear mean at 0.5 and 1 mm: median seconds, frames/s, peak memory); "
                   "sensorless: the learned network, both pose estimators end to end, the quality guard and the "
                   "simulator (frames/s); live: a local OpenIGTLink stream into 'live', tracked and learned "
                   "(frames/s, latency, peak memory)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    p.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    p.add_argument("--repeats", type=int, default=5,
                   help="compound: timed runs per case after a warm-up run; the median is shown (default: 5)")
    p.add_argument("--plus", action="store_true",
                   help="compound: also time PLUS-compatible arithmetic (numba and torch)")
    p.add_argument("--all-cases", action="store_true",
                   help="compound: the older table instead (spine and generated sweeps, hole filling) on one engine")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "live":
        from ..lab.bench_live import format_live_table, run_live_benchmark

        print(format_live_table(run_live_benchmark(quick=args.quick)))
        return 0
    if args.what == "sensorless":
        from ..lab.bench_sensorless import format_sensorless_table, run_sensorless_benchmark

        print(format_sensorless_table(run_sensorless_benchmark(quick=args.quick)))
        return 0
    from ..lab.bench import format_engine_table, format_table, run_compound_benchmark, run_engine_benchmark

    if args.all_cases or args.device != "cpu":
        print(format_table(run_compound_benchmark(device=args.device, quick=args.quick)))
        return 0
    print(format_engine_table(run_engine_benchmark(repeats=max(1, args.repeats), quick=args.quick, plus=args.plus)))
    return 0
