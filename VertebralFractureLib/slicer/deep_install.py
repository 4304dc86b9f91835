"""What the Slicer panel installs, with one consent, before a deep segmentation method runs; plain Python.

Choosing TotalSegmentator or MONAI in the panel when something it needs is missing gives one question listing every
step with its licence, then the steps with progress (the module passes ``slicer.util.pip_install``, its dialogs and
the PyTorch extension's installer):

* **TotalSegmentator**: PyTorch from the PyTorch extension (the build for the GPU driver) when missing; the
  TotalSegmentator package installed into Slicer's Python with the installed torch, torchvision, numpy, scipy,
  SimpleITK and requests pinned as constraints, so pip keeps those builds (as SlicerTotalSegmentator keeps them);
  then the weights of the model the CT needs (3 mm or 1.5 mm, :func:`VertebralFractureLib.segment.totalseg
  .use_fast_model`) with TotalSegmentator's own downloader.
* **MONAI**: PyTorch from the PyTorch extension, MONAI (``requirements/deep.txt``), then the public whole-body model
  through ``models download`` (its pinned SHA-1 checked).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.segment import AUTO, PANEL_BACKENDS, environment, inventory, models, needs_torch, totalseg
from VertebralFractureLib.slicer import dependencies

TOTALSEGMENTATOR_REQUIREMENT = f"TotalSegmentator=={totalseg.TESTED_VERSION}"
"""The release the project's tests run end to end (its class names and weights layout checked)."""
KEEP_FOR_TOTALSEGMENTATOR = dependencies.SLICER_PROVIDED | {"torchvision", "requests"}
"""Installed packages pinned while TotalSegmentator installs: Slicer's own builds, the PyTorch extension's torch and
torchvision, and Slicer's requests (replacing it needs a restart)."""
TOTALSEGMENTATOR_LICENCE = ("TotalSegmentator (Wasserthal et al., Radiol AI 2023): code Apache-2.0; the weights of "
                            "its 'total' task need no licence key; it sends anonymous usage statistics unless its "
                            "config.json says send_usage_stats false")
PYTORCH_LICENCE = "PyTorch (BSD-3-Clause), installed by the PyTorch extension"
MONAI_LICENCE = "MONAI (Apache-2.0)"


@dataclass(frozen=True)
class Step:
    """One thing to install: ``key`` is torch | totalsegmentator | totalsegmentator-weights | monai | monai-model."""

    key: str
    title: str
    licence: str


def plan(backend: str, spacing_mm=None) -> list[Step]:
    """What the method ``backend`` (a panel or ``--backend`` name) lacks in this Python, in install order.

    ``spacing_mm`` (the CT's voxel spacing) chooses which TotalSegmentator model's weights are needed."""
    backend = PANEL_BACKENDS.get(backend, backend)
    steps = []
    if backend in ("totalsegmentator", "monai") and not environment.importable("torch"):
        steps.append(Step("torch", "PyTorch (from the PyTorch extension)", PYTORCH_LICENCE))
    if backend == "totalsegmentator":
        if not environment.importable("totalsegmentator"):
            steps.append(Step("totalsegmentator", f"the TotalSegmentator package ({TOTALSEGMENTATOR_REQUIREMENT})",
                              TOTALSEGMENTATOR_LICENCE))
        fast = _fast(spacing_mm)
        if not environment.importable("totalsegmentator") or totalseg.missing_weights(fast):
            steps.append(Step("totalsegmentator-weights",
                              f"the weights of TotalSegmentator's {totalseg.model_name(fast)} model "
                              f"({', '.join(f'Dataset{d}' for d in totalseg.WEIGHTS_DATASETS[fast])})",
                              TOTALSEGMENTATOR_LICENCE))
    elif backend == AUTO and needs_torch(AUTO):  # a downloaded MONAI model this Python cannot run yet
        if not environment.importable("torch"):
            steps.append(Step("torch", "PyTorch (from the PyTorch extension)", PYTORCH_LICENCE))
        if dependencies.missing("deep", dependencies.SLICER_PROVIDED):
            steps.append(Step("monai", "MONAI", MONAI_LICENCE))
    elif backend == "monai":
        if dependencies.missing("deep", dependencies.SLICER_PROVIDED):
            steps.append(Step("monai", "MONAI", MONAI_LICENCE))
        if not models.installed_models():
            entry = models.registry()[environment.WHOLEBODY_MODEL]
            steps.append(Step("monai-model", f"{entry.title}, version {entry.version}", entry.license))
    return steps


def _fast(spacing_mm) -> bool:
    return spacing_mm is not None and max(float(s) for s in spacing_mm) >= totalseg.FAST_MODEL_MIN_SLICE_MM


def question(backend: str, steps: list[Step]) -> str:
    """The one consent question: what will be installed (network needed, several minutes)."""
    backend = PANEL_BACKENDS.get(backend, backend)
    items = "\n".join(f"  - {step.title}" for step in steps)
    return (f"Segmenting with {backend} needs:\n{items}\n\nDownload and install them now? This needs a network "
            "connection and may take several minutes.")


def licences(steps: list[Step]) -> str:
    return "\n".join(dict.fromkeys(f"{step.title}: {step.licence}" for step in steps))


def install_totalsegmentator(pip_install) -> None:
    """``pip install TotalSegmentator==TESTED`` with the installed torch, numpy, ... pinned as constraints."""
    with dependencies.keep_installed(KEEP_FOR_TOTALSEGMENTATOR) as constraints:
        pip_install((["-c", constraints] if constraints else []) + [TOTALSEGMENTATOR_REQUIREMENT])
    importlib.invalidate_caches()


def run_step(step: Step, pip_install, spacing_mm=None, progress=None) -> None:
    """Install one step (not ``torch``: the PyTorch extension's installer does that, in the module)."""
    if step.key == "totalsegmentator":
        install_totalsegmentator(pip_install)
    elif step.key == "totalsegmentator-weights":
        if not environment.importable("totalsegmentator"):
            raise VertebralFractureError(totalseg.install_hint())
        totalseg.fetch_weights(_fast(spacing_mm), progress)
    elif step.key == "monai":
        dependencies.install_missing(pip_install, "deep")
    elif step.key == "monai-model":
        models.download(environment.WHOLEBODY_MODEL, consent=True, progress=False)
    else:
        raise ValueError(f"unknown install step {step.key!r}")


def install_torch() -> bool:
    """PyTorch through the PyTorch extension's installer (the build for this machine's GPU driver), in Slicer."""
    try:
        import PyTorchUtils
    except ImportError:
        raise VertebralFractureError("this segmentation method needs PyTorch: install the 'PyTorch' extension from "
                                     "the Extensions Manager, restart Slicer, and try again") from None
    # Absent or older than requirements/deep.txt allows: the extension installs the build for the GPU driver.
    if not any(name.split(">=")[0] == "torch" for name in dependencies.missing("deep")):
        return True
    requirement = dependencies.requirement_specifier("torch", "deep")
    logic = PyTorchUtils.PyTorchUtilsLogic()
    return logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is not None


def ensure(backend: str, spacing_mm, pip_install, confirm=None, progress=None, torch_installer=install_torch) -> bool:
    """Install what :func:`plan` lists, once ``confirm(question, licences)`` agrees (None: no question); False when
    declined or PyTorch could not be installed. ``progress(fraction, message)`` follows the steps."""
    steps = plan(backend, spacing_mm)
    if not steps:
        return True
    if confirm is not None and not confirm(question(backend, steps), licences(steps)):
        return False
    for number, step in enumerate(steps):
        if progress:
            progress(number / len(steps), f"installing {step.title}")
        if step.key == "torch":
            if not torch_installer():
                return False
            importlib.invalidate_caches()
        else:
            run_step(step, pip_install, spacing_mm, progress)
    if progress:
        progress(1.0, "installed")
    return True


class PanelProgress:
    """A Slicer progress dialog opened at the first progress call (after the consent), closed on leaving."""

    def __init__(self, slicer_module):
        self.slicer = slicer_module
        self.dialog = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.dialog is None:
            self.dialog = self.slicer.util.createProgressDialog(labelText=message, maximum=100)
        self.dialog.value = int(round(100 * fraction))
        self.dialog.labelText = message
        self.slicer.app.processEvents()

    def __enter__(self) -> PanelProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.dialog is not None:
            self.dialog.close()


def installed_summary() -> str:
    """What the deep backends have here, as `models list` says it (for the panel)."""
    return "\n".join(inventory.describe_inventory(inventory.inventory()))
