"""Command line: ``vertebral-fracture COMMAND ...`` (also ``python -m VertebralFractureLib COMMAND ...``).

Each command family registers its commands in a module of this folder; :func:`main` builds the parser from them and
turns errors into a one-line message and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from VertebralFractureLib import __version__
from VertebralFractureLib.cli.common import _COMMANDS
from VertebralFractureLib.errors import VertebralFractureError, os_error_line


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="vertebral-fracture",
                                     description="Vertebral fracture and bone density screening on CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (function, adder, help_text) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if adder:
            adder(sub)
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        sub.set_defaults(function=function)
    return parser


def _load_command_modules() -> None:
    """Modules that add commands of their own register them on import."""
    import importlib

    for module in ("measure", "segment", "screen", "deep", "batch", "benchmark", "serve"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__package__}.{module}":
                raise


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. ``argv``: the command's words (default: the command line's)."""
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        if argv is None:
            # Run as the program: the process ends next. The collections the interpreter makes while it shuts down
            # walk every object the libraries created (0.2-0.3 s after a ``measure`` run that drew with
            # matplotlib); frozen, they go back to the operating system with the rest of the memory. Callers in
            # the same process (argv given) keep their garbage collection.
            gc.freeze()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.function(args) or 0)
    except VertebralFractureError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # File-system trouble (read-only, disk full, a file where a folder must be, a name too long, a symlink
        # loop): the path and the system's words for the problem, on one line.
        print(f"error: {os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
