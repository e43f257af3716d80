"""Exceptions that carry a message naming the problem and the fix.

Every user-facing failure in FreehandRecon raises a subclass of
:class:`FreehandReconError`. The command line maps each class to its own exit
code, so scripts can tell bad input from a cancelled run.
"""

from __future__ import annotations


class FreehandReconError(Exception):
    """Base class: ``problem`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}" if fix else problem)


class InputError(FreehandReconError):
    """The input sweep, file or parameter is unusable as given."""

    exit_code = 2


class CalibrationError(InputError):
    """A calibration or transform chain is missing, unknown or invalid."""


class OutputExistsError(FreehandReconError):
    """An output would overwrite a user's file or node without permission."""

    exit_code = 3


class ResourceError(FreehandReconError):
    """The requested work would not fit in memory or on the device."""

    exit_code = 4


class ConnectionFailed(FreehandReconError):
    """A network source (an OpenIGTLink server) could not be reached or stopped sending mid-stream."""

    exit_code = 6


class Cancelled(FreehandReconError):
    """The user cancelled a long-running operation."""

    exit_code = 130

    def __init__(self, problem: str = "Cancelled by the user.", fix: str = "") -> None:
        super().__init__(problem, fix)
