"""The Python packages the Lib needs, read from ``requirements/*.txt`` (the one place they are declared), and a
check of the installed versions with :mod:`importlib.metadata` (an importable but too old package counts as missing).

The Slicer module and the batch script install what :func:`missing` lists, with the user's consent, with
:func:`pip_installer`: ``PythonSlicer -m pip install`` in a child process whose output goes to the caller (the
panel's log, the batch's stderr) and whose failure is one :class:`InstallError` line, the same in Slicer 5.10 and
5.12 and without a dialog (Slicer 5.12's ``slicer.util.pip_install`` opens progress and error dialogs, which no one
can answer in a headless batch). pyproject.toml reads the same files for the wheel's metadata.

After an install, :func:`stale_imports` names the packages this process had imported whose version changed on
disk (Slicer 5.10's pydicom 2.4 once highdicom brought pydicom 3): their loaded modules and new files do not mix,
so work that needs them runs in a fresh process (see :mod:`.reporting`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

from VertebralFractureLib.errors import VertebralFractureError

REQUIREMENTS_FOLDER = Path(__file__).resolve().parents[1] / "requirements"
GROUPS = ("core", "dicom", "deep", "serve", "batch")
SLICER_PROVIDED = frozenset({"numpy", "scipy", "simpleitk", "torch"})
"""Packages Slicer ships (numpy, scipy, SimpleITK) or the PyTorch extension installs (torch): never installed or
replaced from here inside Slicer, whose own modules depend on its builds."""

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def requirements(group: str = "core") -> list[tuple[str, str | None]]:
    """[(distribution name, minimum version or None)] of a group, in file order."""
    if group not in GROUPS:
        raise ValueError(f"unknown dependency group {group!r}; one of {', '.join(GROUPS)}")
    result = []
    for line in (REQUIREMENTS_FOLDER / f"{group}.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT.match(line)
        if match is None:
            raise ValueError(f"{group}.txt: {line!r} is not NAME or NAME>=VERSION")
        result.append((match.group(1), match.group(2)))
    return result


class InstallError(VertebralFractureError):
    """pip could not install the packages; the message is one line (pip's own reason)."""


def requirement_specifier(name: str, group: str) -> str:
    """The version part of ``name``'s requirement in ``group`` (">=2.3" for torch in deep.txt; "" without a bound)."""
    for requirement, minimum in requirements(group):
        if requirement.lower() == name.lower():
            return f">={minimum}" if minimum else ""
    raise KeyError(f"{name} is not a requirement of the {group} group")


def version_tuple(text: str) -> tuple[int, ...]:
    """"2.4.4" -> (2, 4, 4); "3.0.0rc1" -> (3, 0, 0): enough to compare release numbers."""
    parts = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(group: str = "core", skip: frozenset[str] = frozenset()) -> list[str]:
    """Requirements (``name>=version``) not installed or installed older than required; ``skip`` names
    (lower case) are left out (e.g. :data:`SLICER_PROVIDED`)."""
    result = []
    for name, minimum in requirements(group):
        if name.lower() in skip:
            continue
        version = installed_version(name)
        if version is None or (minimum is not None and version_tuple(version) < version_tuple(minimum)):
            result.append(f"{name}>={minimum}" if minimum else name)
    return result


def install_missing(pip_install, group: str = "core", skip: frozenset[str] = SLICER_PROVIDED) -> list[str]:
    """Install what :func:`missing` lists with ``pip_install`` (``slicer.util.pip_install``, given a list: each
    item one argument, so ``>=`` needs no quoting), with the installed versions of ``skip`` as constraints;
    returns what was installed. Ask the user before calling this."""
    needed = missing(group, skip)
    if needed:
        with keep_installed(skip) as constraints:
            pip_install((["-c", constraints] if constraints else []) + list(needed))
        importlib.invalidate_caches()
    return needed


def pip_installer(on_output=None, idle=None, python: str | None = None):
    """A ``pip_install(arguments)`` for :func:`install_missing` and :func:`ensure`: ``PYTHON -m pip install ...`` in a
    child process (``PythonSlicer`` inside Slicer), each output line to ``on_output(line)`` as it comes,
    ``idle()`` called while waiting (``slicer.app.processEvents`` keeps the panel alive); raises
    :class:`InstallError` with pip's first ERROR line (the most specific one) when pip fails."""
    from VertebralFractureLib.slicer import process

    def pip_install(arguments: list[str]) -> None:
        command = [python or process.python_executable(), "-m", "pip", "install", "--progress-bar", "off", *arguments]
        runner = process.ProcessRunner(command, on_output=on_output, keep_lines=2000).start()
        while runner.poll() == process.RUNNING:
            if idle is not None:
                idle()
            time.sleep(PIP_POLL_S)
        if runner.state != process.FINISHED:
            errors = [line.strip() for line in runner.lines if line.strip().startswith("ERROR:")]
            reason = errors[0][len("ERROR:"):].strip() if errors else runner.error_message()
            raise InstallError(f"pip could not install {', '.join(_requirements_in(arguments))}: {reason}")

    return pip_install


_PIP_OPTIONS_WITH_VALUE = frozenset({"-c", "--constraint", "-r", "--requirement", "-f", "--find-links", "-i",
                                     "--index-url", "--extra-index-url", "-t", "--target"})


def _requirements_in(arguments: list[str]) -> list[str]:
    """The requirement specifiers among pip's arguments (not its options, nor their values)."""
    found, skip_next = [], False
    for argument in arguments:
        if skip_next:
            skip_next = False
        elif argument in _PIP_OPTIONS_WITH_VALUE:
            skip_next = True
        elif not argument.startswith("-"):
            found.append(argument)
    return found


PIP_POLL_S = 0.05
"""Seconds between checks of a running pip (and calls of ``idle``)."""


def stale_imports() -> list[tuple[str, str, str]]:
    """[(distribution, version loaded here, version installed now)] for the packages this process imported whose
    installed release differs from the one loaded (their ``__version__``); empty when nothing changed."""
    importlib.invalidate_caches()
    found = []
    for module_name, distributions in importlib.metadata.packages_distributions().items():
        module = sys.modules.get(module_name)
        with warnings.catch_warnings():  # some packages deprecate __version__ (jsonschema)
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = getattr(module, "__version__", None) if module is not None else None
        if not isinstance(loaded, str):
            continue
        for distribution in dict.fromkeys(distributions):
            installed = installed_version(distribution)
            if installed and version_tuple(installed) != version_tuple(loaded):
                found.append((distribution, loaded, installed))
    return sorted(set(found))


@contextlib.contextmanager
def keep_installed(names: frozenset[str]):
    """A pip constraints file pinning the installed versions of ``names`` (Slicer's numpy, scipy, SimpleITK): a
    new package may not pull another build of them under Slicer. Yields its path, or None when none is installed."""
    pins = [f"{name}=={version}" for name in sorted(names) if (version := installed_version(name))]
    if not pins:
        yield None
        return
    handle, path = tempfile.mkstemp(prefix="vertebral-fracture-keep-", suffix=".txt")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write("\n".join(pins) + "\n")
        yield path
    finally:
        os.unlink(path)


def ensure(group: str, pip_install, confirm=None, skip: frozenset[str] = SLICER_PROVIDED) -> bool:
    """True when every requirement of ``group`` is met, installing the missing ones if ``confirm(missing)`` (None:
    no question) agrees; what the Slicer module and the batch script run before importing the rest of the Lib."""
    needed = missing(group, skip)
    if not needed:
        return True
    if confirm is not None and not confirm(needed):
        return False
    install_missing(pip_install, group, skip)
    return not missing(group, skip)
