"""Research tools: simulation commands, training, evaluation, benchmarks, plots."""
