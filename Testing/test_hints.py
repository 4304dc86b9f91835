"""Reasons and hints of the deep backends name only steps that work where they are printed: this interpreter's own
commands in a venv (development or wheel), the panel's steps under Slicer; MONAI's download only where MONAI is."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from VertebralFractureLib.segment import choose_backend, environment, installed_monai_model


@pytest.fixture()
def without(monkeypatch):
    """without("torch", "monai"): this Python as if those modules were not installed."""

    def hide(*modules):
        real = environment.importable
        monkeypatch.setattr(environment, "importable", lambda name: name not in modules and real(name))
        import VertebralFractureLib.segment as segment

        monkeypatch.setattr(segment, "_importable", environment.importable)

    return hide


def test_printed_commands_run_this_interpreter(tmp_path):
    """The interpreter a hint names is this one: its `models path` command runs and prints this cache folder."""
    command = shlex.split(environment.cli_command("models", "path"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from VertebralFractureLib.segment import models

    assert done.stdout.strip() == str(models.models_dir())
    assert shlex.split(environment.pip_command("x"))[:4] == [*command[:1], "-m", "pip", "install"]


def test_dev_venv_hints(monkeypatch):
    """Development venv: PyTorch and MONAI are there, so the MONAI hint is the download itself."""
    pytest.importorskip("monai")
    monkeypatch.delenv(environment.FRONT_END_ENVIRONMENT, raising=False)
    assert environment.monai_missing_reason() == ""
    hint = environment.monai_model_hint()
    assert hint == f"run `{environment.cli_command('models', 'download', 'wholeBody_ct_segmentation', '--yes')}`"
    assert "pip" not in hint


def test_wheel_venv_hints(without, monkeypatch):
    """A wheel without extras: no PyTorch, no MONAI. The reason says exactly that, the hint installs the [deep]
    extra's packages before naming the download (which would fail without MONAI)."""
    monkeypatch.delenv(environment.FRONT_END_ENVIRONMENT, raising=False)
    without("torch", "monai", "totalsegmentator")
    folder, reason = installed_monai_model()
    assert folder is None and reason == "PyTorch and MONAI are not installed (no MONAI model can run)"
    hint = environment.monai_model_hint()
    deep = environment.deep_requirements()  # requirements/deep.txt, what the [deep] extra installs
    assert hint.startswith(f"`{environment.pip_command(deep['torch'], deep['monai'])}`")
    assert hint.index("monai>=") < hint.index("models download")
    assert "VertebralFracture[deep]" not in hint  # the package is not on an index: that command would fail
    candidates, notes = choose_backend()
    assert [c.name for c in candidates] == ["classical"] and notes[0] == "TotalSegmentator is not installed"


def test_torch_without_monai_says_which_is_missing(without, monkeypatch):
    """TotalSegmentator brings PyTorch but not MONAI: the reason must not say PyTorch is missing."""
    pytest.importorskip("torch")
    monkeypatch.delenv(environment.FRONT_END_ENVIRONMENT, raising=False)
    without("monai")
    _folder, reason = installed_monai_model()
    assert reason.startswith(f"MONAI is not installed (PyTorch {environment.version('torch')} is)")
    monai = environment.deep_requirements()["monai"]
    hint = environment.monai_model_hint()
    assert hint.startswith(f"`{environment.pip_command(monai)}` (keeps the installed PyTorch)"), hint


def test_slicer_hints_name_the_panel(without, monkeypatch):
    """Under Slicer (the module's child process) every hint is a panel step: no pip, no command line."""
    monkeypatch.setenv(environment.FRONT_END_ENVIRONMENT, "slicer")
    without("torch", "monai", "totalsegmentator")
    for hint in (environment.deep_backend_hint(), environment.totalsegmentator_weights_hint(True)):
        assert "Vertebral Fracture panel" in hint and "pip" not in hint and "python" not in hint.lower(), hint


@pytest.mark.deep
def test_totalsegmentator_weight_commands_match_its_task_table():
    """`totalseg_download_weights -t total_fast` fetches 297 and 298, `-t total` 291-295 and 298 (its TASK_TO_ID):
    the data sets the backend needs for its 3 mm and 1.5 mm models."""
    from VertebralFractureLib.segment import totalseg

    pytest.importorskip("totalsegmentator")
    from totalsegmentator.bin.totalseg_download_weights import TASK_TO_ID

    for fast, task in environment.TOTALSEGMENTATOR_TASKS.items():
        assert sorted(TASK_TO_ID[task]) == sorted(totalseg.WEIGHTS_DATASETS[fast])


def test_models_list_says_what_the_deep_backends_have(capsys, monkeypatch):
    """`models list` names PyTorch and MONAI as installed here, the (empty) model cache, and TotalSegmentator with
    the command that installs it into this environment."""
    from VertebralFractureLib import cli

    monkeypatch.delenv(environment.FRONT_END_ENVIRONMENT, raising=False)
    if environment.importable("totalsegmentator"):
        pytest.skip("TotalSegmentator is installed here (its listing is tested in test_deep_real.py)")
    assert cli.main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"PyTorch {environment.version('torch') or 'not installed'}; MONAI" in listing
    assert "MONAI models: none in" in listing
    assert f"TotalSegmentator: not installed ({environment.totalsegmentator_install_hint()})" in listing
    assert cli.main(["models", "list", "--json"]) == 0
    import json

    found = json.loads(capsys.readouterr().out)
    assert found["totalsegmentator"] == {"installed": False, "version": None} and found["monai_models"] == []
