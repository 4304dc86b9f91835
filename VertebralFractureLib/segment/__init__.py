"""Vertebra segmentation backends behind one interface.

A backend takes a CT :class:`~VertebralFractureLib.io.Volume` (Hounsfield units) and returns a
:class:`SegmentationOutput` whose label volume lies **on the CT's grid** with **VerSe ids**.
Backends register themselves by name in :data:`BACKENDS`; heavy dependencies (torch, monai, totalsegmentator)
are imported inside the backend, never at package import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..io import Volume

ProgressCallback = Callable[[float, str], None]
"""progress(fraction 0..1, message) — called on long steps."""


@dataclass
class SegmentationOutput:
    labels: Volume
    backend: str
    full_vertebrae: bool
    """True when masks include the posterior elements, False for vertebral bodies only."""
    levels_status: str = "unconfirmed"
    """"confirmed" (anatomical anchors found and in agreement), "anchored" (the user fixed the count),
    "conflicting" (anchors in view disagree: not confirmed) or "unconfirmed" (no anchor, or implausible spacing)."""
    level_evidence: list[str] = field(default_factory=list)
    """Human-readable reasons behind the level names (e.g. "sacrum below the lowest vertebra: L5")."""
    warnings: list[str] = field(default_factory=list)
    vertebra_warnings: dict[int, list[str]] = field(default_factory=dict)
    """VerSe id -> notes on that vertebra's segmentation from the backend (e.g. a spacing to its neighbour that
    does not fit its level: over-split body or missed disc); for quality control."""


class SegmentationBackend(Protocol):
    name: str

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        ...


BACKENDS: dict[str, Callable[..., SegmentationBackend]] = {}


def register_backend(name: str):
    """Class decorator: make a backend available under ``name``."""

    def decorator(factory):
        BACKENDS[name] = factory
        return factory

    return decorator


def get_backend(name: str, **options) -> SegmentationBackend:
    _import_builtin_backends()
    if name not in BACKENDS:
        raise ValueError(f"unknown segmentation backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**options)


def _import_builtin_backends() -> None:
    import importlib

    for module in ("classical", "monai_backend", "totalseg"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{module}":
                raise
