"""Run long work (segmentation) in a child process: progress from its stderr, cancel kills the whole process tree.

The Slicer module runs ``PythonSlicer -m VertebralFractureLib analyze ...`` through :class:`ProcessRunner` so the
GUI stays responsive: a timer calls :meth:`ProcessRunner.poll`, which hands progress to callbacks on the caller's
thread (never on the reader thread: Qt widgets may only be touched from the main thread). Scripts, the batch and
tests use the blocking path, :meth:`ProcessRunner.wait` (or ``run(wait=True)``).

Progress lines are the ones :class:`VertebralFractureLib.cli.common.Progress` prints when stderr is not a terminal::

    [  12.3 s]  42% separating vertebral bodies

No Qt, no Slicer: the module is tested with real child Python processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib import segment
from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.segment import environment

log = logging.getLogger(__name__)

PROGRESS_LINE = re.compile(r"^\[\s*[\d.]+ s\]\s+(\d{1,3})% (.*)$")
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])

IDLE, RUNNING, FINISHED, FAILED, CANCELLED = "idle", "running", "finished", "failed", "cancelled"


WINDOWS_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
"""Windows process creation flag: no console window (the constant exists in :mod:`subprocess` on Windows only)."""


class ProcessFailedError(VertebralFractureError):
    """The child process ended with a non-zero exit code; the message is its last error line."""


class ProcessCancelledError(VertebralFractureError):
    """The child process was cancelled."""


@dataclass
class ProgressEvent:
    fraction: float
    message: str


def parse_progress(line: str) -> ProgressEvent | None:
    """A progress line of the CLI -> (fraction 0..1, message); None for any other line."""
    match = PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    return ProgressEvent(min(int(match.group(1)), 100) / 100.0, match.group(2).strip())


def python_executable() -> str:
    """The Python to start children with: ``PythonSlicer`` inside Slicer (it has Slicer's packages), else ours."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def child_environment(device: str | None = None, extra: dict | None = None) -> dict[str, str]:
    """Environment for a child: finds this package (Slicer installs it outside site-packages), plain output.

    ``device="cpu"`` hides GPUs (``CUDA_VISIBLE_DEVICES=-1``) so torch cannot pick one up.
    """
    env = dict(os.environ)
    paths = [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.update(extra or {})
    return env


class ProcessRunner:
    """One child process: start, poll or wait, cancel (whole process tree).

    ``on_progress(fraction, message)`` and ``on_output(line)`` run on the thread that calls :meth:`poll` or
    :meth:`wait`. The last ``keep_lines`` output lines are kept for error messages.
    """

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None,
                 on_progress=None, on_output=None, keep_lines: int = 200, success_codes=(0,)):
        self.command = [str(part) for part in command]
        self.success_codes = tuple(success_codes)
        """Exit codes that mean the child did its job (``analyze`` ends with 5 when quality control failed: its
        outputs are complete and say so)."""
        self.env = env
        self.cwd = cwd
        self.on_progress = on_progress
        self.on_output = on_output
        self.state = IDLE
        self.returncode: int | None = None
        self.fraction = 0.0
        self.message = ""
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._cancel_requested = False

    # ---- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> ProcessRunner:
        if self.state == RUNNING:
            raise RuntimeError("the process is already running")
        options = {}
        if os.name == "posix":
            # Its own session (and process group), so cancel can signal every descendant with one killpg.
            options["start_new_session"] = True
        else:
            # No console window for the child on Windows (Slicer is a GUI application without a console).
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | WINDOWS_NO_WINDOW
        log.info("starting: %s", " ".join(self.command))
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, **options)
        self.state = RUNNING
        self.started_at = time.monotonic()
        self._cancel_requested = False
        self._reader = threading.Thread(target=self._read, name="VertebralFracture-child-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._queue.put(line.rstrip("\r\n"))
        self._queue.put(None)  # end of output

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def poll(self) -> str:
        """Hand new output to the callbacks; return the state (running, finished, failed or cancelled).

        Never blocks for long: the state changes only once the child has exited (its output may close earlier).
        """
        self._drain()
        if self.state == RUNNING and self._process is not None and self._process.poll() is not None:
            if self._reader is not None:
                self._reader.join(timeout=2.0)  # what the child wrote just before exiting
            self._drain()
            self.returncode = self._process.returncode
            self.ended_at = time.monotonic()
            if self._cancel_requested:
                self.state = CANCELLED
            elif self.returncode in self.success_codes:
                self.state = FINISHED
                self._progress(1.0, "done")
            else:
                self.state = FAILED
            log.info("child process %s (exit code %s)", self.state, self.returncode)
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self._handle_line(line)

    def _handle_line(self, line: str) -> None:
        self.lines.append(line)
        event = parse_progress(line)
        if event is not None:
            self._progress(event.fraction, event.message)
        if self.on_output is not None:
            self.on_output(line)

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = fraction, message
        if self.on_progress is not None:
            self.on_progress(fraction, message)

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int:
        """Block until the child ends (the path for scripts, batch and tests); raise if it failed or was cancelled.

        On ``timeout`` (seconds) the child is cancelled and :class:`ProcessCancelledError` raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise ProcessCancelledError(f"{self.command[0]}: stopped after {timeout:.0f} s")
            time.sleep(interval)
        self.raise_for_state()
        return int(self.returncode or 0)

    def raise_for_state(self) -> None:
        if self.state == CANCELLED:
            raise ProcessCancelledError("cancelled")
        if self.state == FAILED:
            raise ProcessFailedError(self.error_message())

    def error_message(self) -> str:
        """The child's own one-line error (``error: ...``) when it printed one, else its last output line."""
        for line in reversed(self.lines):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        last = next((line for line in reversed(self.lines) if line.strip()), "")
        return f"the process ended with exit code {self.returncode}" + (f": {last.strip()}" if last else "")

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the child and every process it started: SIGTERM to the group, SIGKILL after ``grace_s``."""
        process = self._process
        if process is None or process.poll() is not None:
            if self.state == RUNNING:
                self._cancel_requested = True
                self.poll()
            return
        self._cancel_requested = True
        log.info("cancelling child process %d and its descendants", process.pid)
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            # Descendants that ignored SIGTERM (or outlived the leader) are killed too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        else:
            # taskkill /T ends the tree on Windows, where process groups do not carry signals.
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False,
                           creationflags=WINDOWS_NO_WINDOW)
        process.wait()
        self.poll()


def run(command: list[str], wait: bool = True, **options) -> ProcessRunner:
    """Start ``command``; with ``wait=True`` block until it ends (raising on failure) and return the runner."""
    runner = ProcessRunner(command, **options).start()
    if wait:
        runner.wait()
    return runner


# ---- the segmentation job -------------------------------------------------------------------------------------



def analyze_command(ct_path: str | Path, out_dir: str | Path, backend: str | None = None,
                    device: str | None = None, python: str | None = None, extra: list[str] | None = None,
                    include_upper_thoracic: bool = False) -> list[str]:
    """``PYTHON -m VertebralFractureLib analyze --ct CT --out DIR --no-report [--backend B] [--device D]
    [--include-upper-thoracic]``: the measurements without the clinical report (the Slicer module writes that after
    review)."""
    command = [python or python_executable(), "-m", "VertebralFractureLib", "analyze", "--ct", str(ct_path),
               "--out", str(out_dir), "--no-report"]
    if backend:
        command += ["--backend", segment.PANEL_BACKENDS.get(backend, backend)]
    if device:
        command += ["--device", device]
    if include_upper_thoracic:
        command.append("--include-upper-thoracic")
    return command + list(extra or [])


class SegmentationJob:
    """Segment a CT :class:`~.io.Volume` in a child process and read back its VerSe-id label map.

    The CT is written to a temporary NIfTI (geometry kept), ``analyze`` writes ``segmentation.nii.gz`` on the CT
    grid and ``results.json``; :meth:`labels` and :meth:`case` read them. The temporary folder goes away with
    :meth:`cleanup`. ``on_progress(fraction, message)`` and ``on_output(line)`` (every line the child prints: the
    panel's live log) run on the thread that polls.
    """

    def __init__(self, ct, backend: str | None = None, device: str | None = None, on_progress=None,
                 python: str | None = None, work_dir: str | None = None, include_upper_thoracic: bool = False,
                 on_output=None):
        from VertebralFractureLib.io import write_nifti

        self.ct = ct
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="VertebralFracture-job-"))
        self.ct_path = self.work_dir / "ct.nii.gz"
        self.out_dir = self.work_dir / "out"
        write_nifti(ct, self.ct_path)
        from VertebralFractureLib.morphometry.qc import EXIT_QUALITY_FAILED

        command = analyze_command(self.ct_path, self.out_dir, backend, device, python,
                                  include_upper_thoracic=include_upper_thoracic)
        # The child's reasons and hints then name the panel's steps, not commands for a terminal.
        front_end = {environment.FRONT_END_ENVIRONMENT: environment.SLICER}
        self.runner = ProcessRunner(command, env=child_environment(device, front_end), on_progress=on_progress,
                                    on_output=on_output, success_codes=(0, EXIT_QUALITY_FAILED))

    def start(self) -> SegmentationJob:
        self.runner.start()
        return self

    def poll(self) -> str:
        return self.runner.poll()

    def cancel(self) -> None:
        self.runner.cancel()

    def wait(self, timeout: float | None = None):
        self.runner.wait(timeout)
        return self.labels()

    def labels(self):
        from VertebralFractureLib.io import read_label_map

        path = self.out_dir / "segmentation.nii.gz"
        if not path.exists():
            raise ProcessFailedError(f"{path}: the segmentation process wrote no label map")
        return read_label_map(path, "verse", reference=self.ct).volume

    def backend_summary(self) -> str:
        """Which segmentation backend ran and why, from the child's results.json (for the panel's status line)."""
        from VertebralFractureLib.results import CaseResult
        from VertebralFractureLib.segment import describe_backend

        try:
            case = CaseResult.from_dict(json.loads((self.out_dir / "results.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return "segmentation backend not recorded"
        return describe_backend(case.segmentation_backend, case.segmentation_backend_reason,
                                case.segmentation_backend_details)

    def case(self):
        """The child's :class:`~.results.CaseResult` (levels and how they were named, grades, warnings, quality
        findings), as the command line wrote it to results.json."""
        import json

        from VertebralFractureLib.results import CaseResult

        path = self.out_dir / "results.json"
        if not path.exists():
            raise ProcessFailedError(f"{path}: the segmentation process wrote no results")
        return CaseResult.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
