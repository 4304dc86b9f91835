"""Dependencies declared once (requirements/*.txt, read by pyproject and the Slicer module), checked by installed
version, and the code paths that must work with Slicer 5.10's bundled packages (pydicom 2.4)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from VertebralFractureLib.outputs import deid
from VertebralFractureLib.slicer import dependencies

REPOSITORY = Path(__file__).resolve().parents[1]

SLICER_5_10 = {"numpy": "2.0.2", "scipy": "1.13.1", "pydicom": "2.4.4", "SimpleITK": "2.4.1"}
"""Python packages Slicer 5.10 bundles that the Lib needs (no matplotlib, nibabel, highdicom, scikit-image)."""


@pytest.fixture()
def slicer_5_10(monkeypatch):
    monkeypatch.setattr(dependencies, "installed_version", lambda name: SLICER_5_10.get(name))


def test_pyproject_reads_the_same_requirement_files():
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["VertebralFractureLib/requirements/core.txt"]
    for group in ("dicom", "deep", "serve"):
        assert dynamic["optional-dependencies"][group]["file"] == [f"VertebralFractureLib/requirements/{group}.txt"]
    assert "dependencies" not in project["project"]  # declared nowhere else
    names = [name for name, _ in dependencies.requirements("core")]
    assert {"nibabel", "matplotlib", "pydicom", "pylibjpeg"} <= set(names)
    assert all(minimum for _, minimum in dependencies.requirements("core"))  # lower bounds, no == pins


def test_fresh_slicer_lists_what_it_lacks_and_keeps_its_own_builds(slicer_5_10):
    missing = dependencies.missing("core", skip=dependencies.SLICER_PROVIDED)
    names = {requirement.split(">=")[0] for requirement in missing}
    assert {"matplotlib", "nibabel", "scikit-image", "pylibjpeg"} <= names
    assert not names & {"numpy", "scipy", "SimpleITK", "pydicom"}  # bundled, new enough (pydicom 2.4 is supported)
    assert dependencies.missing("dicom", skip=dependencies.SLICER_PROVIDED) == ["highdicom>=0.26"]
    assert dependencies.missing("deep", skip=dependencies.SLICER_PROVIDED) == ["monai>=1.4"]  # torch: extension


def test_too_old_counts_as_missing(monkeypatch):
    monkeypatch.setattr(dependencies, "installed_version", lambda name: {"pydicom": "2.3.1"}.get(name, "99"))
    assert dependencies.missing("core") == ["pydicom>=2.4"]


def test_ensure_asks_then_installs_with_one_pip_call(slicer_5_10, monkeypatch):
    calls = []
    assert dependencies.ensure("core", calls.append, confirm=lambda missing: False) is False
    assert calls == []
    installed = dict(SLICER_5_10)

    def pip_install(arguments):
        calls.append(arguments)
        constraints = Path(arguments[arguments.index("-c") + 1]).read_text()
        assert "numpy==2.0.2" in constraints and "scipy==1.13.1" in constraints  # Slicer's builds stay
        installed.update({r.split(">=")[0]: "99" for r in arguments if ">=" in r})

    monkeypatch.setattr(dependencies, "installed_version", installed.get)
    assert dependencies.ensure("core", pip_install, confirm=lambda missing: True) is True
    assert len(calls) == 1 and isinstance(calls[0], list) and "matplotlib>=3.8" in calls[0]
    assert not any(r.startswith(("numpy", "scipy", "SimpleITK")) for r in calls[0])


def test_deidentified_files_are_written_with_pydicom_2_api(monkeypatch, tmp_path):
    import pydicom

    written = {}

    class Pydicom24Dataset:
        def save_as(self, filename, write_like_original=True):
            written[str(filename)] = write_like_original

    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    deid.save_dataset(Pydicom24Dataset(), tmp_path / "a.dcm")
    assert written == {str(tmp_path / "a.dcm"): False}


def test_pip_runs_as_a_child_with_its_lines_to_the_caller_and_one_line_on_failure(tmp_path, monkeypatch):
    """What the panel and the batch get from an install: every pip line as it comes, the caller's idle function
    called while pip runs (the panel stays alive), and a failure as one line with pip's own reason, never a
    dialog. Here pip has no index to install from, as on a machine without network."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    lines, idle_calls = [], []
    pip_install = dependencies.pip_installer(on_output=lines.append, idle=lambda: idle_calls.append(1))
    with pytest.raises(dependencies.InstallError) as raised:
        pip_install(["--no-index", "--find-links", str(empty), "nibabel>=99"])
    message = str(raised.value)
    assert message == ("pip could not install nibabel>=99: Could not find a version that satisfies the requirement "
                       "nibabel>=99 (from versions: none)")
    assert any(line.startswith("ERROR: No matching distribution found") for line in lines)
    assert idle_calls


def test_torch_requirement_comes_from_the_deep_group():
    minimum = dict(dependencies.requirements("deep"))["torch"]
    assert dependencies.requirement_specifier("torch", "deep") == f">={minimum}"
    assert dependencies.requirement_specifier("highdicom", "dicom").startswith(">=")


def test_stale_imports_name_a_package_changed_on_disk_since_it_was_imported(monkeypatch):
    import pydicom

    assert not [found for found in dependencies.stale_imports() if found[0] == "pydicom"]
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")  # what Slicer 5.10 imported before highdicom's install
    assert ("pydicom", "2.4.4", pydicom_installed := dependencies.installed_version("pydicom")) in \
        dependencies.stale_imports()
    assert pydicom_installed != "2.4.4"
