"""The ``freehandrecon`` command line: every headless job behind one entry point.

Exit codes: 0 success; 1 other FreehandRecon error; 2 bad input or usage; 3 an output
exists (use --force); 4 not enough memory/device or a damaged model file; 5 the quality guard
found the sweep out of distribution (quality --fail-on); 6 an OpenIGTLink connection was refused or
lost (live); 70 internal error (a bug: please report it with the traceback); 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
import warnings
from typing import Sequence

from ..errors import Cancelled, FreehandReconError
from ..adapt import command as adapt
from . import files, live, poses, quality, reconstruct

EXIT_INTERNAL = 70
log = logging.getLogger("freehandrecon")


def _plain_help(top: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Strip reST markup (``code``, **bold**) that descriptions borrowed from docstrings carry into --help."""
    for parser in (top, *sub.choices.values()):
        if parser.description:
            parser.description = parser.description.replace("``", "'").replace("**", "")
        for action in parser._actions:
            if action.help:
                action.help = action.help.replace("``", "'").replace("**", "")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line: the product's command families, then the lab's.

    When ``argv`` names a product command, the lab's parsers are left out: importing the research tools costs
    about 0.13 s of start-up, which a reconstruction should not wait for."""
    parser = argparse.ArgumentParser(prog="freehandrecon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="log details (and tracebacks of errors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (reconstruct, live, poses, adapt, quality, files):
        family.add_parser(sub)
    if _command_word(argv) not in sub.choices:
        from . import lab

        lab.add_parser(sub)
    _plain_help(parser, sub)
    return parser


def _command_word(argv: Sequence[str] | None) -> str | None:
    """The sub-command ``argv`` asks for: its first word that is not an option (the top-level options take no
    value), or None (no ``argv``: the whole parser is wanted)."""
    return next((w for w in argv if not w.startswith("-")), None) if argv is not None else None


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (a batch system, ``kill``) takes the same clean path as Ctrl-C: finally blocks remove temp files."""
    raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line, without the source path and line of the code that raised them."""
    print(f"freehandrecon: warning: {message}", file=sys.stderr if file is None else file)


def _cli_text(text: str) -> str:
    """Messages written for Python callers, in command-line words."""
    return text.replace("force=True (--force)", "--force").replace("pass force=True", "pass --force")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    previous_term = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    previous_show = warnings.showwarning
    if previous_term is not None:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if not args.verbose:
        warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("freehandrecon: cancelled; no output was written.", file=sys.stderr)
        return Cancelled.exit_code
    except FreehandReconError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"freehandrecon: error: {_cli_text(err.problem)}", file=sys.stderr)
        if err.fix:
            print(f"freehandrecon: fix: {_cli_text(err.fix)}", file=sys.stderr)
        return err.exit_code
    except MemoryError:
        print("freehandrecon: error: the computation ran out of memory.", file=sys.stderr)
        print("freehandrecon: fix: use a coarser --spacing, a smaller --roi, or a machine with more memory.",
              file=sys.stderr)
        return 4
    except Exception:  # noqa: BLE001 - last resort: report a bug with its traceback
        traceback.print_exc()
        print("freehandrecon: internal error (a bug); please report it with the traceback above.", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = previous_show
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
