"""Where the tests find real data: the shared folder, or the original public source with a pinned SHA-256."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

# Public originals of shared files, pinned by commit and SHA-256 (TotalSegmentator's test reference files).
_TOTALSEG = "https://raw.githubusercontent.com/wasserth/TotalSegmentator"
PUBLIC_SOURCES = {
    "totalsegmentator-example/example_ct.nii.gz": (
        f"{_TOTALSEG}/0effae9d718aab0c118ce1f8982dcd16b9e32a50/tests/reference_files/example_ct.nii.gz",
        "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
    ),
}


def data_root() -> Path:
    return Path(os.environ.get("VERTEBRAL_FRACTURE_DATA", REPOSITORY.parent / "shared" / "data"))


def _download(url: str, destination: Path, sha256: str) -> None:
    """Pinned download, checked and written atomically by the package's own downloader."""
    from VertebralFractureLib.io.download import fetch_file

    fetch_file(url, sha256, destination)


def locate_shared_file(relative: str) -> tuple[Path | None, str]:
    """(path, "") when available, else (None, reason to skip)."""
    path = data_root() / relative
    if path.exists():
        return path, ""
    url, sha256 = PUBLIC_SOURCES.get(relative, (None, None))
    if url and os.environ.get("VERTEBRAL_FRACTURE_DOWNLOAD") == "1":
        cache = Path(os.environ.get("VERTEBRAL_FRACTURE_CACHE", Path.home() / ".cache" / "VertebralFracture")) / "data"
        cached = cache / relative
        if not cached.exists():
            _download(url, cached, sha256)
        return cached, ""
    hint = f"; set VERTEBRAL_FRACTURE_DOWNLOAD=1 to fetch it from {url}" if url else ""
    return None, f"shared test data {relative} not found under {data_root()}{hint}"
