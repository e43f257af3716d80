"""Quality-guard research: training, evaluation and the `quality` commands."""
