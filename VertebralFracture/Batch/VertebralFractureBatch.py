"""Batch analysis of a folder of CTs (or a CSV list): the ``batch`` command of VertebralFractureLib.

Runs headless in 3D Slicer or with plain Python, with the command line's options::

    Slicer --no-main-window /path/to/VertebralFractureBatch.py -i CT_DIR -o OUT_DIR [--seg-dir LABEL_DIR]
    python VertebralFractureBatch.py -i CT_DIR -o OUT_DIR          (= vertebral-fracture batch -i ... -o ...)

Slicer runs a ``.py`` file given as its first argument and exits when it ends (qSlicerCoreCommandOptions sets
``runPythonAndExit`` for it; ``--python-script`` alone leaves Slicer running). Whatever happens, this script asks
Slicer to exit with its code, so the ``--python-script`` form ends too: no failure leaves an unattended Slicer
running, and none opens a dialog.

See :mod:`VertebralFractureLib.batch` for the cases, the per-case outputs, ``summary.csv`` and ``--resume``. In
Slicer the Python packages the Lib needs are installed first (the batch runs unattended, so without asking: running
this script is the consent), pip's output going to stderr. Exit code: 0 every case assessed or its findings
withheld, 5 some failed quality control (none failed), 1 some failed, 2 unusable arguments or input, 3 the batch
could not run (the packages could not be installed, or an unexpected error: one ``error:`` line says which).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

EXIT_CANNOT_RUN = 3
"""The Python packages could not be installed, or an unexpected error stopped the batch."""


def _make_lib_importable() -> None:
    """Use the Lib that ships with this script: beside its folder when installed in Slicer, two folders up in a
    source checkout; an installed copy elsewhere is used only when neither exists."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1], here.parents[2]):
        if (candidate / "VertebralFractureLib" / "__init__.py").exists():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return


def _in_slicer() -> bool:
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def _install_dependencies_in_slicer() -> None:
    if not _in_slicer():
        return
    from VertebralFractureLib.slicer import dependencies

    # pip runs as a child process here (no Slicer dialog); its lines go to stderr, its failure is one line.
    # The batch group too: the cohort tables and parallel runs.
    for group in ("core", "batch"):
        dependencies.install_missing(dependencies.pip_installer(on_output=lambda line: print(line, file=sys.stderr)),
                                     group)


def main(argv: list[str] | None = None) -> int:
    """Run the batch; returns the exit code, never raises (an unattended Slicer must get a code to exit with)."""
    try:
        _make_lib_importable()
        _install_dependencies_in_slicer()
        from VertebralFractureLib import cli

        return cli.main(["batch", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_request:  # argparse exits on --help (0) and on bad arguments (2)
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BaseException as error:  # noqa: BLE001 (the one place that must turn every failure into an exit code)
        message = " ".join(str(error).split()) or type(error).__name__
        if not _is_expected(error):
            traceback.print_exc(file=sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_CANNOT_RUN


def _is_expected(error: BaseException) -> bool:
    """Failures whose one line says it all (a pip failure); others also get their traceback, above the line."""
    try:
        from VertebralFractureLib.slicer.dependencies import InstallError
    except ImportError:
        return False
    return isinstance(error, InstallError)


def find_label_map(seg_dir, case_name):
    """The label map in ``seg_dir`` named after the case (see :func:`VertebralFractureLib.batch.find_label_map`)."""
    _make_lib_importable()
    from VertebralFractureLib import batch

    return batch.find_label_map(Path(seg_dir), case_name)


def _exit(code: int) -> None:
    """Inside Slicer the application is asked to exit with the code (it ends once this script returns); plain
    Python exits directly."""
    if _in_slicer():
        sys.modules["slicer"].util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
