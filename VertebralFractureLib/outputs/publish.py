"""Output folders that hold the files of exactly one run.

A run writes every file of its set into a *staging folder* beside the output folder
(``PARENT/.staging-NAME-PID-XXXX``) and publishes the set in one step: the staging folder takes the output folder's
place (an atomic exchange of the two folders where the system offers one, Linux ``renameat2``; elsewhere two
renames, between which the old set waits complete under ``PARENT/.replaced-NAME-*`` and is put back by the next
run). So an output folder holds the old set or the new one, never a mix, whatever stops the run (an error, a full
disk, Ctrl-C, SIGKILL, a power cut).

One run at a time per folder: a lock file ``PARENT/.NAME.lock`` holds the writer's PID and host. A second run is
refused (or waits, with ``wait_s``) while the first is alive; a lock, staging or replaced folder left by a dead run
is cleaned up by the next run.

The output folder holds only files this program writes (:data:`OUTPUT_NAMES`): publishing replaces the folder, so a
folder with other files in it is refused rather than emptied.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from VertebralFractureLib.errors import InputError, VertebralFractureError

OUTPUT_NAMES = frozenset({
    "segmentation.nii.gz", "results.json", "vertebrae.csv", "overview.png", "report.html", "report.pdf",
    "screening.json", "vertebrae_seg.dcm", "measurements_sr.dcm", "dicom", "labels.nii.gz", "ct.nii.gz",
    "error.txt",
})
# A batch case folder may also hold its review scene (CASE.mrb): any .mrb is accepted as an output.
OUTPUT_SUFFIXES = (".mrb",)
"""Every name a run may publish (files and the de-identified ``dicom/`` series folder)."""

DISPOSABLE_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
"""Files a file browser drops into any folder; they do not make an output folder foreign."""

STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"
LOCK_POLL_S = 0.2


class OutputBusyError(VertebralFractureError):
    """Another live run is writing the same output folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":
        # os.kill(pid, 0) would terminate the process on Windows: ask the kernel for its exit code instead.
        process_query_limited_information, still_active = 0x1000, 259
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_of(name: str, prefix: str) -> int | None:
    """PID in ``PREFIX + NAME-PID-XXXX`` names."""
    try:
        return int(name[len(prefix):].rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def resolve_output_folder(out_dir: str | Path) -> Path:
    """The real path of an output folder (symlinks followed); a file, a symlink loop or a bad name is an
    :class:`InputError`."""
    path = Path(out_dir).expanduser()
    try:
        path = path.resolve()
    except (RuntimeError, OSError) as error:  # Python 3.11 raises RuntimeError on a symlink loop
        raise InputError(out_dir, f"cannot be used as an output folder ({error})") from None
    if path.parent == path:
        raise InputError(out_dir, "is a file-system root; choose a folder for the outputs")
    if path.exists() and not path.is_dir():
        raise InputError(out_dir, "is a file, not a folder")
    return path


class OutputSet:
    """``with OutputSet(out_dir) as staging:`` write the files into ``staging``; on a normal exit they replace
    ``out_dir`` as one set, on an exception nothing changes.

    ``wait_s``: how long to wait for another run on the same folder before giving up (0: refuse at once).
    """

    def __init__(self, out_dir: str | Path, wait_s: float = 0.0):
        self.requested = Path(out_dir)
        self.out_dir = resolve_output_folder(out_dir)
        self.parent = self.out_dir.parent
        self.wait_s = wait_s
        self.staging: Path | None = None
        self._lock_path = self.parent / f".{self.out_dir.name}.lock"
        self._locked = False

    # ---- lock -----------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            owner = self._try_lock()
            if owner is None:
                return
            if time.monotonic() >= deadline:
                raise OutputBusyError(f"{self.requested}: another run ({owner}) is writing this folder; wait for it "
                                      f"to finish or choose another output folder")
            time.sleep(LOCK_POLL_S)

    def _try_lock(self) -> str | None:
        """Take the lock; None when taken, else a description of the live owner."""
        record = f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode()
        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = self._read_lock()
            pid, host = owner
            if host == socket.gethostname() and not _pid_alive(pid):
                # A dead run's lock: take it over by renaming (one of several racing takers wins).
                claimed = self.parent / f".{self.out_dir.name}.lock-stale-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    if self._read_lock() == owner:
                        os.replace(self._lock_path, claimed)
                        claimed.unlink()
                return self._try_lock() if not self._lock_path.exists() else f"PID {pid} on {host}"
            return f"PID {pid} on {host}" if pid > 0 else "a run starting now"
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        self._locked = True
        return None

    def _read_lock(self) -> tuple[int, str]:
        try:
            parts = self._lock_path.read_text(encoding="utf-8").split()
        except (FileNotFoundError, UnicodeDecodeError):
            return 0, ""
        try:
            return int(parts[0]), parts[1]
        except (IndexError, ValueError):
            return 0, ""

    def _unlock(self) -> None:
        if self._locked:
            with contextlib.suppress(FileNotFoundError):
                self._lock_path.unlink()
            self._locked = False

    # ---- leftovers of dead runs -----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Holding the lock, every staging or replaced folder of this output folder belongs to a dead run: put a
        replaced (complete, older) set back when the folder is missing, remove the rest."""
        name = self.out_dir.name
        replaced = sorted(self.parent.glob(f"{REPLACED_PREFIX}{name}-*"), key=lambda p: p.stat().st_mtime)
        if replaced and not self.out_dir.exists():
            os.rename(replaced.pop(), self.out_dir)
        for leftover in replaced + list(self.parent.glob(f"{STAGING_PREFIX}{name}-*")):
            if _owner_of(leftover.name, STAGING_PREFIX if leftover.name.startswith(STAGING_PREFIX)
                         else REPLACED_PREFIX) != os.getpid():
                shutil.rmtree(leftover, ignore_errors=True)
        if self.out_dir.is_dir():
            # Staging folders of earlier versions lay inside the output folder.
            for leftover in self.out_dir.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def _check_foreign(self) -> None:
        if not self.out_dir.is_dir():
            return
        foreign = sorted(entry.name for entry in self.out_dir.iterdir()
                         if entry.name not in OUTPUT_NAMES and entry.name not in DISPOSABLE_NAMES
                         and not entry.name.endswith(OUTPUT_SUFFIXES))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(self.requested, f"holds files that are not outputs of this program ({shown}); choose an "
                                             "empty or new output folder")

    # ---- context --------------------------------------------------------------------------------------------

    def __enter__(self) -> Path:
        self._lock()
        try:
            self._recover()
            self._check_foreign()
            self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{self.out_dir.name}-{os.getpid()}-",
                                                 dir=self.parent))
            os.chmod(self.staging, 0o777 & ~_umask())
        except BaseException:
            self._unlock()
            raise
        return self.staging

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.publish()
        finally:
            if self.staging is not None and self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()

    def publish(self) -> None:
        """Put the staged set in the output folder's place in one step."""
        staging = self.staging
        if not self.out_dir.exists():
            os.rename(staging, self.out_dir)
            return
        if _exchange(staging, self.out_dir):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old set
            return
        replaced = self.parent / f"{REPLACED_PREFIX}{self.out_dir.name}-{os.getpid()}-{staging.name[-8:]}"
        os.rename(self.out_dir, replaced)
        os.rename(staging, self.out_dir)
        shutil.rmtree(replaced, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Where ``name`` (written into the staging folder) lies once published."""
        return self.out_dir / name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
