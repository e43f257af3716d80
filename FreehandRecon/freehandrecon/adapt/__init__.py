"""Calibrate once, then go trackerless: adapt the learned pose model, the decorrelation curve and the
quality guard to one probe from a few tracked sweeps (``freehandrecon adapt``)."""

from .checks import MIN_FRAMES, MIN_PATH_MM, check_sweeps, split_sweeps
from .finetune import FineTuneOptions
from .job import OUTPUT_FILES, AdaptOptions, adapt_probe

__all__ = ["adapt_probe", "AdaptOptions", "FineTuneOptions", "check_sweeps", "split_sweeps", "OUTPUT_FILES",
           "MIN_FRAMES", "MIN_PATH_MM"]
