"""Batch analysis of a folder of CTs (or a CSV list): the ``batch`` command of VertebralFractureLib.

Runs headless in 3D Slicer or with plain Python, with the command line's options::

    Slicer --no-main-window --python-script VertebralFractureBatch.py -i CT_DIR -o OUT_DIR [--seg-dir LABEL_DIR]
    python VertebralFractureBatch.py -i CT_DIR -o OUT_DIR          (= vertebral-fracture batch -i ... -o ...)

See :mod:`VertebralFractureLib.batch` for the cases, the per-case outputs, ``summary.csv`` and ``--resume``. In
Slicer the Python packages the Lib needs are installed first (the batch runs unattended, so without asking: running
this script is the consent). Exit code: 0 all cases done, 1 some failed, 2 unusable arguments or input.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _make_lib_importable() -> None:
    """Use the Lib that ships with this script: beside its folder when installed in Slicer, two folders up in a
    source checkout; an installed copy elsewhere is used only when neither exists."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1], here.parents[2]):
        if (candidate / "VertebralFractureLib" / "__init__.py").exists():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return


def _install_dependencies_in_slicer() -> None:
    slicer = sys.modules.get("slicer")
    if slicer is None or not hasattr(slicer, "app"):
        return
    from VertebralFractureLib.slicer import dependencies

    dependencies.install_missing(slicer.util.pip_install)


def main(argv: list[str] | None = None) -> int:
    _make_lib_importable()
    _install_dependencies_in_slicer()
    from VertebralFractureLib import cli

    try:
        return cli.main(["batch", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_request:  # argparse exits on --help (0) and on bad arguments (2)
        return int(exit_request.code or 0)


def find_label_map(seg_dir, case_name):
    """The label map in ``seg_dir`` named after the case (see :func:`VertebralFractureLib.batch.find_label_map`)."""
    _make_lib_importable()
    from VertebralFractureLib import batch

    return batch.find_label_map(Path(seg_dir), case_name)


def _exit(code: int) -> None:
    """Inside Slicer the application must be asked to exit (with the code); plain Python exits directly."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
