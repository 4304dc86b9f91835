"""The Python packages the Lib needs, read from ``requirements/*.txt`` (the one place they are declared), and a
check of the installed versions with :mod:`importlib.metadata` (an importable but too old package counts as missing).

The Slicer module and the batch script install what :func:`missing` lists, with the user's consent, through
``slicer.util.pip_install``; pyproject.toml reads the same files for the wheel's metadata.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import tempfile
from pathlib import Path

REQUIREMENTS_FOLDER = Path(__file__).resolve().parents[1] / "requirements"
GROUPS = ("core", "dicom", "deep", "serve")
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
        with _keep_installed(skip) as constraints:
            pip_install((["-c", constraints] if constraints else []) + list(needed))
        importlib.invalidate_caches()
    return needed


@contextlib.contextmanager
def _keep_installed(names: frozenset[str]):
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
