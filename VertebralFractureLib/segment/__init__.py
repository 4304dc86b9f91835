"""Vertebra segmentation backends behind one interface, and the automatic choice among them.

A backend takes a CT :class:`~VertebralFractureLib.io.Volume` (Hounsfield units) and returns a
:class:`SegmentationOutput` whose label volume lies **on the CT's grid** with **VerSe ids**.
Backends register themselves by name in :data:`BACKENDS`; heavy dependencies (torch, monai, totalsegmentator)
are imported inside the backend, never at package import.

``get_backend("auto")`` (the default of ``analyze``) picks, in this order (:func:`choose_backend`):

1. **TotalSegmentator** when the package is importable: a network trained on 1204 CTs with every vertebra
   (Wasserthal et al., Radiol AI 2023;5:e230024); missing weights are fetched first with its own downloader
   (``--no-download`` refuses), and when they cannot be, the next backend runs with the reason.
2. An **installed MONAI model** (``models download wholeBody_ct_segmentation``, or ``--model``) whose weight
   checksums are recorded in the cache, when torch and monai are importable.
3. The weight-free **classical** backend, with :func:`classical_fallback_warning`.

Reasons and hints name only steps that work where they are printed (:mod:`.environment`). Whatever ran, the
output says which backend and why (:attr:`SegmentationOutput.backend`,
:attr:`SegmentationOutput.backend_reason`), so every report can show it. The output then goes through the same
label-map path (measure, grade, quality control) as a label map the user brings.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from VertebralFractureLib.errors import NoVertebraeError, VertebralFractureError
from VertebralFractureLib.io import Volume

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
"""progress(fraction 0..1, message) — called on long steps."""

AUTO = "auto"
BACKEND_CHOICES = (AUTO, "classical", "monai", "totalsegmentator")
"""Values of ``--backend`` (``auto`` is the default)."""
PANEL_BACKENDS = {"Automatic": "auto"}
"""Segmentation methods as the Slicer panel names them -> ``--backend`` values (others are the same)."""

CLASSICAL_FALLBACK_WARNING = (
    "no deep segmentation model could run, so the weight-free classical backend ran: its results on thoracic and "
    "contrast-enhanced CT are less reliable")
"""The start of the classical backend's warning in an automatic choice; :func:`classical_fallback_warning` adds
what to do in this environment."""


def classical_fallback_warning() -> str:
    """:data:`CLASSICAL_FALLBACK_WARNING` with the steps to a deep backend that work here (one line)."""
    from VertebralFractureLib.segment import environment

    return f"{CLASSICAL_FALLBACK_WARNING} ({environment.deep_backend_hint()})"


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
    backend_reason: str = ""
    """Why this backend segmented the CT (the automatic choice's reason, or "asked for with --backend NAME")."""
    backend_details: dict = field(default_factory=dict)
    """What exactly ran: model name and version, weights SHA-256, resolution, device (JSON-serialisable)."""
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
    """The backend ``name`` ("auto" chooses at segmentation time, see :func:`choose_backend`)."""
    _import_builtin_backends()
    if name == AUTO:
        return AutoBackend(**options)
    if name not in BACKENDS:
        raise ValueError(f"unknown segmentation backend {name!r}; available: {', '.join(BACKEND_CHOICES)}")
    return _ExplicitBackend(BACKENDS[name](**options))


def _import_builtin_backends() -> None:
    import importlib

    for module in ("classical", "monai_backend", "totalseg"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{module}":
                raise


class _ExplicitBackend:
    """A backend the user named: its outputs say so."""

    def __init__(self, backend: SegmentationBackend):
        self.backend = backend
        self.name = backend.name

    def __getattr__(self, attribute):
        return getattr(self.backend, attribute)

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        output = self.backend.segment(ct, device=device, progress=progress)
        if not output.backend_reason:
            output.backend_reason = f"asked for with --backend {self.name}"
        return output


def describe_backend(backend: str | None, reason: str | None = None, details: dict | None = None) -> str:
    """One line for people: "totalsegmentator [3 mm (fast)] (automatic choice: TotalSegmentator is installed)".

    The arguments are a result's ``segmentation_backend``, ``segmentation_backend_reason`` and ``..._details``."""
    details = details or {}
    model = " ".join(str(details[key]) for key in ("model", "version") if details.get(key))
    text = (backend or "unknown backend") + (f" [{model}]" if model else "")
    return f"{text} ({reason})" if reason else text


# ------------------------------------------------------------------------------------------------ automatic choice


@dataclass
class BackendCandidate:
    """One backend the automatic choice may run, with why it qualifies."""

    name: str
    reason: str


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_monai_model(model=None) -> tuple[object | None, str]:
    """(model folder, "") of an installed MONAI model whose weights have recorded checksums, else (None, why not)."""
    if not (_importable("torch") and _importable("monai")):
        from VertebralFractureLib.segment import environment

        return None, f"{environment.monai_missing_reason() or 'PyTorch or MONAI is missing'} (no MONAI model can run)"
    from VertebralFractureLib.segment import models

    try:
        folder = models.find_model(model)
    except VertebralFractureError as error:
        return None, "no MONAI model is installed" if model is None else str(error)
    if models.model_kind(folder) == "monai-bundle" and not models.read_checksums(folder):
        return None, (f"the model in {folder} has no recorded weight checksums ({models.CHECKSUMS_FILE}); "
                      "run `models trust` on it or give it with --backend monai --model-sha256")
    return folder, ""


def needs_torch(backend: str) -> bool:
    """Whether a front end should install PyTorch and MONAI before running ``backend`` (a ``--backend`` value or the
    Slicer panel's name): always for "monai"; for "auto" when a MONAI model has been downloaded but this Python
    cannot run it yet (if the user declines, the automatic choice goes on without it)."""

    backend = PANEL_BACKENDS.get(backend, backend)
    if backend == "monai":
        return True
    if backend != AUTO or (_importable("torch") and _importable("monai")):
        return False
    from VertebralFractureLib.segment import models

    return bool(models.installed_models())


def choose_backend(model=None) -> tuple[list[BackendCandidate], list[str]]:
    """The backends ``auto`` tries, best first (the last is always classical), and notes on those left out.

    A model the user names (``--model``) puts the MONAI backend first: naming a model is asking for it."""
    candidates, notes = [], []
    if _importable("totalsegmentator"):
        candidates.append(BackendCandidate("totalsegmentator", "automatic choice: TotalSegmentator is installed"))
    else:
        notes.append("TotalSegmentator is not installed")
    folder, why_not = installed_monai_model(model)
    if folder is not None:
        monai = BackendCandidate("monai", f"automatic choice: the MONAI model {folder.name} is "
                                          + ("given with --model" if model else
                                             "installed (weights checksums recorded)"))
        candidates.insert(0, monai) if model else candidates.append(monai)
    else:
        notes.append(why_not)
    candidates.append(BackendCandidate("classical", "automatic choice: no deep segmentation model is available ("
                                       + "; ".join(notes) + ")"))
    return candidates, notes


DEVICES = ("auto", "cpu", "cuda", "mps")
"""``--device`` values: auto (an NVIDIA GPU, else Apple silicon's MPS, else the CPU), cpu, cuda (or cuda:N), mps."""


def _has_mps(torch) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def torch_device_name(device: str | None = "auto") -> str:
    """The torch device a ``--device`` value means here: "cpu", "cuda", "cuda:N" or "mps". "auto" takes what PyTorch
    offers (CUDA, else MPS, else the CPU; the CPU without PyTorch); a device asked for but absent is an error that
    says why."""
    device = (device or "auto").lower()
    if device == "cpu":
        return "cpu"
    if device != "auto" and not (device == "mps" or device == "cuda" or device.startswith("cuda:")):
        raise VertebralFractureError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise VertebralFractureError(f"--device {device} was asked for but PyTorch is not installed; "
                                     "use --device auto or cpu") from None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _has_mps(torch) else "cpu"
    if device == "mps":
        if not _has_mps(torch):
            raise VertebralFractureError(f"--device mps was asked for but PyTorch {torch.__version__} sees no Apple "
                                         "MPS device (Apple silicon, macOS 12.3 or newer); use --device auto or cpu")
        return "mps"
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise VertebralFractureError(f"--device {device} was asked for but PyTorch {torch.__version__} ({build}) "
                                     "sees no CUDA GPU; use --device auto or cpu")
    return device


def _check_device(device: str | None) -> None:
    if (device or "auto").lower() not in ("auto", "cpu"):
        torch_device_name(device)


class AutoBackend:
    """Runs the first available backend of :func:`choose_backend`; falls through when one cannot start.

    A backend that cannot start (its package fails to import, its model fails verification) hands over to the next
    with a warning that says why; a backend that ran and found no vertebrae ends the run (the CT is the problem).
    """

    name = AUTO

    def __init__(self, **options):
        self.options = options
        self._backends: dict[str, SegmentationBackend] = {}
        """The candidates made so far, kept: a model a backend loaded serves the next CT too."""

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        _check_device(device)  # a GPU asked for but missing is the user's to fix, not a reason to change backend
        candidates, notes = choose_backend(self.options.get("model"))
        skipped: list[str] = []
        for candidate in candidates:
            if candidate.name not in self._backends:
                self._backends[candidate.name] = BACKENDS[candidate.name](**self.options)
            backend = self._backends[candidate.name]
            try:
                output = backend.segment(ct, device=device, progress=progress)
            except NoVertebraeError:
                raise
            except (VertebralFractureError, OSError) as error:
                if candidate.name == "classical":
                    raise
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                skipped.append(f"{candidate.name} could not run ({message})")
                log.warning("automatic backend choice: %s", skipped[-1])
                continue
            output.backend_reason = candidate.reason
            if candidate.name == "classical" and skipped:  # say why the deep backends that were there did not run
                output.backend_reason = ("automatic choice: no deep segmentation model could run ("
                                         + "; ".join(skipped + notes) + ")")
            output.warnings[:0] = [f"automatic backend choice: {text}; used {candidate.name}" for text in skipped]
            if candidate.name == "classical":
                # Said once: the warning travels with the results to every output (the command line's summary,
                # the reports, the Slicer panel); the log keeps it at info level for library users.
                warning = classical_fallback_warning()
                output.warnings.insert(0, warning)
                log.info(warning)
            return output
        raise VertebralFractureError("no segmentation backend could run: " + "; ".join(skipped))
