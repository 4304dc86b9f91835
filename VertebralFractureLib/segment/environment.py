"""What this Python can run of the deep backends, and how a person gets the rest: hints true where they are printed.

A hint names only steps that work in the environment that prints it:

* **Inside Slicer** (the module sets :data:`FRONT_END_ENVIRONMENT` to ``slicer`` for its child process, and Slicer's
  own Python has the ``slicer`` module), installing is done from the Vertebral Fracture panel, which asks first:
  choosing TotalSegmentator or MONAI as the segmentation method offers to install what is missing.
* **Anywhere else** (the development venv, a wheel installed with pip), commands run *this* interpreter
  (``python`` when that is the one on the PATH, else its full path), so they install into the environment that
  printed them: the packages of ``requirements/deep.txt`` (what the ``[deep]`` extra installs; the package is not on
  PyPI, so ``pip install 'VertebralFracture[deep]'`` would fail there) only where they are missing,
  ``models download`` only where MONAI can run it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

FRONT_END_ENVIRONMENT = "VERTEBRAL_FRACTURE_FRONT_END"
"""Set to ``slicer`` by the Slicer module for its child processes: their hints then name the panel's steps."""
SLICER = "slicer"
PACKAGE_NAME = "VertebralFracture"
WHOLEBODY_MODEL = "wholeBody_ct_segmentation"
TOTALSEGMENTATOR_TASKS = {True: "total_fast", False: "total"}
"""``totalseg_download_weights -t`` task that fetches the weights of the 3 mm (True) or 1.5 mm (False) model with the
6 mm model it crops with: ``total_fast`` -> 297, 298; ``total`` -> 291-295, 298 (its TASK_TO_ID table)."""


def in_slicer() -> bool:
    """Whether this process runs for (or inside) 3D Slicer."""
    if os.environ.get(FRONT_END_ENVIRONMENT, "").lower() == SLICER:
        return True
    return "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_command() -> str:
    """How to name this interpreter in a command: ``python`` when that is the one on the PATH, else its path."""
    executable = Path(sys.executable)
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and _same_file(Path(found), executable):
            return name
    return shlex.quote(str(executable))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def cli_command(*arguments: str) -> str:
    """``python -m VertebralFractureLib ARGS`` with this interpreter (works in a wheel and in the source tree)."""
    return " ".join([python_command(), "-m", "VertebralFractureLib", *arguments])


def pip_command(*requirements: str) -> str:
    return " ".join([python_command(), "-m", "pip", "install", *(shlex.quote(r) for r in requirements)])


def missing_for_monai() -> list[str]:
    """Of PyTorch and MONAI, the modules this Python lacks (names as imported)."""
    return [module for module in ("torch", "monai") if not importable(module)]


def monai_missing_reason() -> str:
    """Why no MONAI model can run here, naming exactly what is missing ("" when nothing is)."""
    missing = missing_for_monai()
    if not missing:
        return ""
    if missing == ["monai"]:
        return f"MONAI is not installed (PyTorch {version('torch') or ''} is)".replace(" )", ")")
    if missing == ["torch"]:
        return "PyTorch is not installed (MONAI is)"
    return "PyTorch and MONAI are not installed"


def deep_requirements() -> dict[str, str]:
    """{module: requirement} of ``requirements/deep.txt``, the file the ``[deep]`` extra is read from."""
    path = Path(__file__).resolve().parents[1] / "requirements" / "deep.txt"
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found[line.split(">=")[0].split("==")[0].strip().lower()] = line
    return found


def monai_install_hint() -> str:
    """The step that makes PyTorch and MONAI importable here."""
    if in_slicer():
        return ("choose 'monai' as the segmentation method in the Vertebral Fracture panel: it offers to install "
                "PyTorch and MONAI")
    requirements = deep_requirements()
    missing = missing_for_monai()
    command = pip_command(*(requirements[module] for module in missing))
    if missing == ["monai"]:
        return f"`{command}` (keeps the installed PyTorch)"
    return f"`{command}` (for a GPU, the PyTorch build for its driver first)"


def monai_model_hint() -> str:
    """The steps that give this environment the MONAI backend with the public whole-body model."""
    if in_slicer():
        return ("choose 'monai' as the segmentation method in the Vertebral Fracture panel: it offers to install "
                "PyTorch, MONAI and the whole-body model")
    download = f"`{cli_command('models', 'download', WHOLEBODY_MODEL, '--yes')}`"
    if not missing_for_monai():
        return f"run {download}"
    return f"{monai_install_hint()}, then {download}"


def totalsegmentator_install_hint() -> str:
    if in_slicer():
        return ("choose 'totalsegmentator' as the segmentation method in the Vertebral Fracture panel: it offers to "
                "install it")
    return f"`{pip_command('TotalSegmentator')}`"


def totalsegmentator_weights_hint(fast: bool) -> str:
    """The command that fetches the weights of TotalSegmentator's 3 mm (``fast``) or 1.5 mm model."""
    if in_slicer():
        return ("choose 'totalsegmentator' in the Vertebral Fracture panel again: it offers to download the "
                "weights")
    return (f"`{python_command()} -m totalsegmentator.bin.totalseg_download_weights -t "
            f"{TOTALSEGMENTATOR_TASKS[bool(fast)]}`")


def deep_backend_hint() -> str:
    """What to do for a deep backend here (for the classical backend's warning): one step per missing backend."""
    steps = []
    if not importable("totalsegmentator"):
        steps.append(f"for TotalSegmentator: {totalsegmentator_install_hint()}")
    steps.append(f"for the MONAI backend: {monai_model_hint()}")
    return "; ".join(steps)
