"""Downloads from public locations: streamed, checked against a pinned SHA-256, written atomically.

Used by :mod:`.benchmark` (the public VerSe sample; model archives go through MONAI's ``download_url``, see
:mod:`.models`) and for file hashes. Nothing here decides
whether a download is allowed: callers ask for consent first. A file is only ever seen under its final name after
its SHA-256 matched; a failed or interrupted download leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from VertebralFractureLib.errors import VertebralFractureError

TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


class DownloadError(VertebralFractureError):
    """A download failed or did not match its pinned SHA-256; the message names the URL."""


def stream_to_file(url: str, destination: str | Path, progress=None) -> str:
    """Stream ``url`` (https, http or file) into ``destination``; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(destination, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                handle.write(chunk)
                done += len(chunk)
                if progress and total:
                    progress(done / total, f"downloading {done / 1e6:.1f}/{total / 1e6:.1f} MB")
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: download failed ({getattr(error, 'reason', error)})") from None
    return digest.hexdigest()


def fetch_file(url: str, sha256: str, destination: str | Path, progress=None) -> Path:
    """Download ``url`` to ``destination`` unless a file with the pinned SHA-256 is already there.

    The bytes go to a temporary file in the destination's folder and are renamed into place only after their
    SHA-256 equals ``sha256``; a mismatch raises :class:`DownloadError` and nothing is kept.
    """
    destination = Path(destination)
    expected = sha256.strip().lower()
    if destination.is_file() and sha256_file(destination) == expected:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}-", suffix=".part", dir=destination.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        actual = stream_to_file(url, temporary, progress)
        if actual != expected:
            raise DownloadError(f"{url}: SHA-256 {actual} does not match the pinned {expected}; "
                                "the download is discarded")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return destination


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
