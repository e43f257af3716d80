"""Compounding benchmark (thin wrapper): ``python benchmarks/bench_compound.py [--device cuda] [--quick]``."""

from freehandrecon.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
