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

Nothing but this program's own files is ever replaced or removed. Each published set carries a manifest
(:data:`MANIFEST_NAME`) listing every file of the set with its size and SHA-256; a folder is replaced only when every
file in it is listed there unchanged. A folder holding any other file (one whose name merely matches an output
name included), or a changed one, is refused rather than emptied, and so is an output folder that holds an input of
the run (``-i case/ct.nii.gz -o case``). Staging and replaced folders are matched by their exact name
(``.staging-NAME-PID-XXXXXXXX``), so a run on ``P/res`` never touches those of ``P/res-2``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from VertebralFractureLib.errors import InputError, VertebralFractureError

DISPOSABLE_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
"""Files a file browser drops into any folder; they do not make an output folder foreign."""

MANIFEST_NAME = ".vertebral-fracture-manifest.json"
"""The list of the files of a published set (name, size, SHA-256): what a later run may replace."""
MANIFEST_FORMAT = "VertebralFracture output set 1"

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


_RANDOM_PART = "[a-z0-9_]{8}"
"""The 8 characters :func:`tempfile.mkdtemp` adds (staging folders; replaced folders reuse them)."""


def _leftover_owner(entry_name: str, prefix: str, out_name: str) -> int | None:
    """PID of the run that made ``PREFIX + OUT_NAME-PID-XXXXXXXX``; None when ``entry_name`` is not exactly such a
    name for this output folder (``.staging-res-2-...`` belongs to ``res-2``, never to ``res``)."""
    match = re.fullmatch(re.escape(prefix + out_name) + r"-(\d+)-" + _RANDOM_PART, entry_name)
    return int(match.group(1)) if match else None


def _leftovers(parent: Path, prefix: str, out_name: str) -> list[tuple[Path, int]]:
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        owner = _leftover_owner(entry.name, prefix, out_name)
        if owner is not None and entry.is_dir() and not entry.is_symlink():
            found.append((entry, owner))
    return found


# ---- manifest ---------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, as the manifest records it."""
    return _sha256(Path(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_entries(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """({relative path: path} of the regular files under ``folder``, [relative paths of anything else: links,
    devices, sockets]); folders are walked, never followed through a link."""
    files, others = {}, []
    for root, directories, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for name in list(directories):
            if (base / name).is_symlink():
                others.append((base / name).relative_to(folder).as_posix())
                directories.remove(name)
        for name in names:
            path = base / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_file():
                others.append(relative)
            else:
                files[relative] = path
    return files, others


def write_manifest(folder: Path) -> dict:
    """Record every file of a staged set in ``folder/MANIFEST_NAME``; returns the manifest."""
    files, _ = _folder_entries(folder)
    from VertebralFractureLib import __version__

    manifest = {"format": MANIFEST_FORMAT, "program": f"VertebralFractureLib {__version__}",
                "files": {name: {"size": path.stat().st_size, "sha256": _sha256(path)}
                          for name, path in sorted(files.items()) if name != MANIFEST_NAME}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, dict] | None:
    """{relative path: {size, sha256}} of the set published in ``folder``; None without a readable manifest."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data["files"]


def files_not_written_here(folder: Path) -> tuple[list[str], list[str]]:
    """([files in ``folder`` this program did not write], [files it wrote that were changed since]): both empty when
    the folder may be replaced. Files a file browser drops (:data:`DISPOSABLE_NAMES`) do not count."""
    files, others = _folder_entries(folder)
    for name in list(files):
        if Path(name).name in DISPOSABLE_NAMES:
            del files[name]
    manifest = read_manifest(folder)
    files.pop(MANIFEST_NAME, None)
    if manifest is None:
        # Without a manifest nothing here is known to be this program's: a name that matches an output name
        # (ct.nii.gz, segmentation.nii.gz) may be the user's own file.
        return sorted(others + list(files)), []
    foreign = sorted(others + [name for name in files if name not in manifest])
    changed = []
    for name, path in sorted(files.items()):
        record = manifest.get(name)
        if record is None:
            continue
        if not isinstance(record, dict) or path.stat().st_size != record.get("size") or \
                _sha256(path) != record.get("sha256"):
            changed.append(name)
    return foreign, changed


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_replaceable(folder: Path, shown_as: str | Path) -> None:
    """Refuse (:class:`InputError`) an existing folder unless it holds only files a run of this program published
    there, unchanged."""
    if not folder.is_dir():
        return
    foreign, changed = files_not_written_here(folder)
    if foreign:
        raise InputError(shown_as, f"holds files this program did not write ({_shown(foreign)}); they are never "
                                   "replaced: choose an empty or new output folder")
    if changed:
        raise InputError(shown_as, f"holds files changed since this program wrote them ({_shown(changed)}); they "
                                   "are never replaced: choose an empty or new output folder")


def check_inputs_outside(out_dir: Path, inputs, shown_as: str | Path) -> None:
    """Refuse an output folder that holds (or is) an input of the run: publishing would replace it."""
    for given in inputs:
        if given is None:
            continue
        try:
            path = Path(given).expanduser().resolve()
        except (RuntimeError, OSError):
            continue  # the reader says what is wrong with it
        if path == out_dir or out_dir in path.parents:
            raise InputError(shown_as, f"holds an input of this run ({given}); the output folder is replaced as a "
                                       "whole: choose another output folder")


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
    ``inputs``: the paths the run reads (CT, label map, case list); an output folder holding one is refused.
    """

    def __init__(self, out_dir: str | Path, wait_s: float = 0.0, inputs=()):
        self.requested = Path(out_dir)
        self.out_dir = resolve_output_folder(out_dir)
        check_inputs_outside(self.out_dir, inputs, self.requested)
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
        replaced = sorted(_leftovers(self.parent, REPLACED_PREFIX, name), key=lambda item: item[0].stat().st_mtime)
        if replaced and not self.out_dir.exists():
            os.rename(replaced.pop()[0], self.out_dir)
        for leftover, owner in replaced + _leftovers(self.parent, STAGING_PREFIX, name):
            if owner != os.getpid():
                shutil.rmtree(leftover, ignore_errors=True)

    def _check_foreign(self) -> None:
        check_replaceable(self.out_dir, self.requested)

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
        write_manifest(staging)
        if not self.out_dir.exists():
            os.rename(staging, self.out_dir)
            return
        self._check_foreign()  # again: a file may have been put there while the run worked
        if _exchange(staging, self.out_dir):
            _remove_old_set(staging, self.out_dir)  # now holds the old set
            return
        replaced = self.parent / f"{REPLACED_PREFIX}{self.out_dir.name}-{os.getpid()}-{staging.name[-8:]}"
        os.rename(self.out_dir, replaced)
        os.rename(staging, self.out_dir)
        _remove_old_set(replaced, self.out_dir)

    def path(self, name: str) -> Path:
        """Where ``name`` (written into the staging folder) lies once published."""
        return self.out_dir / name


def _remove_old_set(old: Path, out_dir: Path) -> None:
    """Remove a replaced set: the files its manifest lists; anything else (put there in the instant between the
    check and the exchange) is kept beside the output folder and named in a warning."""
    manifest = read_manifest(old) or {}
    files, others = _folder_entries(old)
    kept = sorted(others + [name for name in files if name not in manifest and name != MANIFEST_NAME
                            and Path(name).name not in DISPOSABLE_NAMES])
    if not kept:
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in manifest:
        with contextlib.suppress(OSError):
            (old / name).unlink()
    with contextlib.suppress(OSError):
        (old / MANIFEST_NAME).unlink()
    keep = out_dir.with_name(f"{out_dir.name}.kept-{os.getpid()}-{int(time.time())}")
    os.rename(old, keep)
    import logging

    logging.getLogger(__name__).warning("%s: files added while the run worked were kept in %s (%s)", out_dir, keep,
                                        _shown(kept))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
