"""Errors a user can act on.

Every problem with an input file is raised as :class:`InputError` whose message is one line that names
the file and says what is wrong, so the CLI, the batch runner and the Slicer module can show it as is.
"""

from __future__ import annotations

from pathlib import Path


class VertebralFractureError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(VertebralFractureError):
    """An input file (or folder) cannot be used; the message names it and the reason."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class NoVertebraeError(VertebralFractureError):
    """Nothing that looks like a vertebra was found (or given)."""


def os_error_line(error: OSError) -> str:
    """``PATH: problem`` for an OSError (the second path of a rename too)."""
    problem = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return problem
    paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 else "")
    return f"{paths}: {problem}"
