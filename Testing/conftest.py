"""Shared test fixtures.

Real data is read in place from ``$VERTEBRAL_FRACTURE_DATA`` (default: ``../shared/data`` beside the repository);
it is never copied into the repository. Where a file is absent, :func:`shared_file` fetches it from its public
source when a pinned URL is known and ``VERTEBRAL_FRACTURE_DOWNLOAD=1`` is set, else the test is skipped with the
reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "Testing"))

from data_sources import locate_shared_file


@pytest.fixture(scope="session")
def shared_file():
    """shared_file("verse19/sub-verse004_seg-vert_msk.nii.gz") -> Path, or skip with the reason."""

    def locate(relative: str) -> Path:
        path, reason = locate_shared_file(relative)
        if path is None:
            pytest.skip(reason)
        return path

    return locate


@pytest.fixture(scope="session")
def root():
    """The shared data folder holding the files :mod:`altered_inputs` alters; skip where they are not there."""
    import altered_inputs as altered
    from data_sources import data_root

    path = data_root()
    if not all((path / relative).exists() for relative in (altered.EXAMPLE_CT, altered.EXAMPLE_TOTALSEG)):
        pytest.skip(f"shared data not found in {path}")
    return path


@pytest.fixture(autouse=True)
def _private_model_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty model cache: `analyze --backend auto` must not pick a model the developer
    happens to have installed (tests that need one install it into their own cache)."""
    monkeypatch.setenv("VERTEBRAL_FRACTURE_CACHE", str(tmp_path_factory.mktemp("model-cache")))


@pytest.fixture()
def tmp_out(tmp_path):
    out = tmp_path / "out"
    return out


def pytest_report_header(config):
    return f"shared data: {os.environ.get('VERTEBRAL_FRACTURE_DATA', str(REPOSITORY.parent / 'shared' / 'data'))}"
