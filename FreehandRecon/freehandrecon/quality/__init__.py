"""Quality guard: tells, frame by frame, whether a sweep looks like the learned pose model's training data.

``check_sweep(sweep)`` is the product entry point (see :mod:`.guard`); :mod:`.train` and
:mod:`.evaluate` build and measure the guard; ``freehandrecon quality | quality-eval |
quality-train`` are in :mod:`.command`.
"""

from .guard import (DEFAULT_GUARD_NAME, VERDICTS, Guard, QualityReport, check_sweep, guard_available, load_guard,
                    save_guard)

__all__ = ["check_sweep", "QualityReport", "Guard", "load_guard", "save_guard", "guard_available", "VERDICTS",
           "DEFAULT_GUARD_NAME"]
