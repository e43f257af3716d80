"""Compounding benchmark (thin wrapper):
``python benchmarks/bench_compound.py [--device cuda] [--quick] [--engine auto|torch|numpy]``."""

from freehandrecon.lab.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
