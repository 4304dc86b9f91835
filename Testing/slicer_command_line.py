"""What 3D Slicer does with a Python script on its command line, in plain Python, for tests of the batch script.

Read from Slicer's source (v5.10.0 and v5.12, ``Base/QTCore/qSlicerCoreApplication.cxx`` and
``qSlicerCoreCommandOptions.cxx``): the script runs inside the application, with ``slicer`` (and ``slicer.app``)
already imported; an uncaught exception is printed and sets ``pythonErrorOccured``; afterwards Slicer exits only
when ``runPythonAndExit`` is set (a ``.py`` file as the first argument, or ``-c``; not ``--python-script``), with
EXIT_FAILURE after a Python error, or when the script called ``slicer.util.exit(code)`` (which clears
``runPythonAndExit`` and asks the event loop to end with ``code``). Otherwise the application keeps running: here,
it sleeps for ``--keeps-running-s`` and then exits with 99, so a test sees the hang as a timeout.

    python slicer_command_line.py [--python-script | --shebang] [--pip-offline] [--raise-in MODULE:FUNCTION]
        SCRIPT.py [ARGS...]

``--pip-offline``: ``PythonSlicer`` (what the module's pip runs under) is this Python with pip cut off from every
index, as on a machine without network; and a nibabel newer than the installed one is required, so the script
has something to install.
``--raise-in``: that function raises RuntimeError (an unexpected failure inside the batch).
"""

from __future__ import annotations

import argparse
import os
import runpy
import stat
import sys
import tempfile
import time
import traceback
import types


class _CommandOptions:
    def __init__(self, run_python_and_exit: bool):
        self.runPythonAndExit = run_python_and_exit


class _Application:
    def __init__(self, run_python_and_exit: bool):
        self.options = _CommandOptions(run_python_and_exit)
        self.exit_code: int | None = None

    def commandOptions(self):  # noqa: N802 (Slicer's name)
        return self.options

    def exit(self, code: int = 0) -> None:
        self.exit_code = int(code)


def _install_slicer(application: _Application) -> None:
    slicer = types.ModuleType("slicer")
    util = types.ModuleType("slicer.util")

    def exit(status=0):  # slicer.util.exit, as in Slicer 5.10/5.12
        application.commandOptions().runPythonAndExit = False
        application.exit(status)

    def pip_install(requirements):  # slicer.util.pip_install of 5.10: PythonSlicer -m pip install, blocking
        import shlex
        import subprocess

        arguments = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
        subprocess.run([_python_slicer(), "-m", "pip", "install", *arguments], check=True)

    util.exit, util.pip_install = exit, pip_install
    slicer.app, slicer.util = application, util
    sys.modules["slicer"], sys.modules["slicer.util"] = slicer, util


def _python_slicer() -> str:
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


def _cut_pip_off() -> None:
    folder = tempfile.mkdtemp(prefix="slicer-bin-")
    empty = tempfile.mkdtemp(prefix="no-wheels-")
    launcher = os.path.join(folder, "PythonSlicer")
    with open(launcher, "w") as handle:
        handle.write(f"#!/bin/sh\nPIP_CONFIG_FILE={os.devnull} PIP_NO_INDEX=1 PIP_FIND_LINKS={empty} "
                     f"exec {sys.executable} \"$@\"\n")
    os.chmod(launcher, os.stat(launcher).st_mode | stat.S_IEXEC)
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
    from VertebralFractureLib.slicer import dependencies

    requirements = dependencies.requirements
    # A nibabel newer than any release: pip must fetch it, and finds no index to fetch it from.
    dependencies.requirements = lambda group="core": [(name, "99" if name == "nibabel" else minimum)
                                                      for name, minimum in requirements(group)]


def _raise_in(target: str) -> None:
    import importlib

    module_name, function_name = target.split(":")
    module = importlib.import_module(module_name)

    def fail(*_args, **_kwargs):
        raise RuntimeError(f"{function_name} failed unexpectedly")

    setattr(module, function_name, fail)


def main() -> int:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--python-script", action="store_true")
    mode.add_argument("--shebang", action="store_true")
    parser.add_argument("--pip-offline", action="store_true")
    parser.add_argument("--raise-in")
    parser.add_argument("--keeps-running-s", type=float, default=120.0)
    parser.add_argument("script")
    options, script_arguments = parser.parse_known_args()
    application = _Application(run_python_and_exit=options.shebang)
    _install_slicer(application)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(options.script)))))
    if options.pip_offline:
        _cut_pip_off()
    if options.raise_in:
        _raise_in(options.raise_in)
    sys.argv = [options.script, *script_arguments]
    python_error = False
    try:
        runpy.run_path(options.script, run_name="__main__")
    except BaseException:  # PythonQt prints the exception and the application goes on
        traceback.print_exc()
        python_error = True
    sys.stdout.flush()
    sys.stderr.flush()
    if application.exit_code is not None:
        return application.exit_code
    if application.commandOptions().runPythonAndExit:
        return 1 if python_error else 0
    time.sleep(options.keeps_running_s)  # the event loop runs on: nobody is there to close Slicer
    return 99


if __name__ == "__main__":
    sys.exit(main())
