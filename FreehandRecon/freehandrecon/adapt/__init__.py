"""Calibrate once, then go trackerless: adapt the learned pose model, the decorrelation curve and the
quality guard to one probe from a few tracked sweeps (``freehandrecon adapt``).

The names below are loaded on first use: importing the package (the command line does at start-up) must not
import PyTorch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"adapt_probe": "job", "AdaptOptions": "job", "OUTPUT_FILES": "job", "FineTuneOptions": "options",
            "check_sweeps": "checks", "split_sweeps": "checks", "MIN_FRAMES": "checks", "MIN_PATH_MM": "checks"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module == "checks":
        from . import checks as loaded
    elif module == "job":
        from . import job as loaded
    elif module == "options":
        from . import options as loaded
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(loaded, name)
