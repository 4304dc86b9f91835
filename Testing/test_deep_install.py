"""What the Slicer panel installs for a deep segmentation method, with one consent: the plan for each environment,
the question and licences, TotalSegmentator installed with Slicer's torch pinned, the whole-body model through
`models download` (served from a file here)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from VertebralFractureLib.segment import environment, models, totalseg
from VertebralFractureLib.slicer import deep_install, dependencies

THREE_MM = (0.8, 0.8, 3.0)
ONE_AND_A_HALF_MM = (1.5, 1.5, 1.5)


@pytest.fixture()
def without(monkeypatch):
    def hide(*modules):
        real = environment.importable
        monkeypatch.setattr(environment, "importable", lambda name: name not in modules and real(name))

    return hide


def test_nothing_to_install_for_the_classical_and_automatic_methods():
    assert deep_install.plan("classical") == [] and deep_install.plan("Automatic") == []


def test_totalsegmentator_in_a_fresh_slicer(without, tmp_path, monkeypatch):
    """No PyTorch, no TotalSegmentator: PyTorch (extension), the package, then the weights of the model the CT
    needs: the 3 mm model for 3 mm slices, the 1.5 mm model's five parts otherwise."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    without("torch", "totalsegmentator")
    steps = deep_install.plan("totalsegmentator", THREE_MM)
    assert [s.key for s in steps] == ["torch", "totalsegmentator", "totalsegmentator-weights"]
    assert steps[2].title == "the weights of TotalSegmentator's 3 mm model (Dataset297, Dataset298)"
    fine = deep_install.plan("totalsegmentator", ONE_AND_A_HALF_MM)[2]
    assert "1.5 mm model (Dataset291, Dataset292, Dataset293, Dataset294, Dataset295, Dataset298)" in fine.title
    question = deep_install.question("totalsegmentator", steps)
    assert question.startswith("Segmenting with totalsegmentator needs:") and "network connection" in question
    licences = deep_install.licences(steps)
    assert "Apache-2.0" in licences and "no licence key" in licences and "send_usage_stats" in licences
    assert licences.count("TotalSegmentator (Wasserthal") == 2  # once per step that brings its files


def test_totalsegmentator_weights_only_when_installed_without_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.setattr(environment, "importable", lambda name: True)
    assert [s.key for s in deep_install.plan("totalsegmentator", THREE_MM)] == ["totalsegmentator-weights"]
    for folder in (totalseg.WEIGHTS_FOLDERS[d] for d in totalseg.WEIGHTS_DATASETS[True]):
        (tmp_path / "home" / "nnunet" / "results" / folder).mkdir(parents=True)
    assert deep_install.plan("totalsegmentator", THREE_MM) == []


def test_totalsegmentator_is_installed_keeping_slicers_torch(monkeypatch):
    """One pip call: TotalSegmentator at the tested version, with the installed torch, torchvision, numpy, scipy,
    SimpleITK and requests pinned as constraints (pip keeps the PyTorch extension's build)."""
    installed = {"torch": "2.4.1+cu121", "torchvision": "0.19.1+cu121", "numpy": "2.0.2", "requests": "2.31.0",
                 "simpleitk": "2.4.1"}  # looked up by the lower-case names of SLICER_PROVIDED
    monkeypatch.setattr(dependencies, "installed_version", installed.get)
    calls = []

    def pip_install(arguments):
        constraints = Path(arguments[arguments.index("-c") + 1]).read_text().split()
        calls.append((arguments[2:], constraints))

    deep_install.install_totalsegmentator(pip_install)
    ((requirements, constraints),) = calls
    assert requirements == [f"TotalSegmentator=={totalseg.TESTED_VERSION}"]
    assert {"torch==2.4.1+cu121", "torchvision==0.19.1+cu121", "numpy==2.0.2", "requests==2.31.0",
            "simpleitk==2.4.1"} == set(constraints)


def test_weights_step_without_the_package_says_how_to_get_it(without):
    without("totalsegmentator")
    step = deep_install.Step("totalsegmentator-weights", "weights", "")
    with pytest.raises(Exception, match="needs the TotalSegmentator package"):
        deep_install.run_step(step, pip_install=None, spacing_mm=THREE_MM)


def test_monai_method_installs_monai_then_downloads_the_model(tmp_path, monkeypatch):
    """The whole-body model step is `models download` with the user's consent: the archive is checked against the
    pinned SHA-1 and installed in the cache (here served from a file)."""
    pytest.importorskip("monai")
    from deep_builders import make_wholebody_bundle, zip_folder

    steps = deep_install.plan("monai")
    assert [s.key for s in steps] == ["monai-model"]  # PyTorch and MONAI are here
    assert steps[0].title.endswith("version 0.2.5") and "Apache-2.0" in steps[0].licence
    archive = zip_folder(make_wholebody_bundle(tmp_path / "wholeBody_ct_segmentation", checksums=False),
                         tmp_path / "bundle.zip")
    entry = models.REGISTRY["wholeBody_ct_segmentation"]
    monkeypatch.setitem(models.REGISTRY, entry.name, dataclasses.replace(
        entry, url=archive.as_uri(), hash_val=hashlib.sha1(archive.read_bytes()).hexdigest()))
    deep_install.run_step(steps[0], pip_install=None)
    assert [m.name for m in models.installed_models()] == ["wholeBody_ct_segmentation"]
    assert deep_install.plan("monai") == []
    assert "wholeBody_ct_segmentation" in deep_install.installed_summary()


def test_monai_method_in_a_fresh_slicer(without, monkeypatch):
    without("torch", "monai")
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None)
    assert [s.key for s in deep_install.plan("monai")] == ["torch", "monai", "monai-model"]


def test_pytorch_comes_from_the_pytorch_extension_with_the_deep_requirement(monkeypatch):
    """SlicerPyTorch's PyTorchUtilsLogic.installTorch(askConfirmation, forceComputationBackend,
    torchVersionRequirement, ...) with the bound of requirements/deep.txt, only when torch is missing or too old."""
    import sys
    import types

    calls = []

    class Logic:
        def installTorch(self, askConfirmation=True, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None)
    assert deep_install.install_torch() and calls == [(False, dependencies.requirement_specifier("torch", "deep"))]
    monkeypatch.setattr(dependencies, "installed_version", lambda name: "99.0")
    assert deep_install.install_torch() and len(calls) == 1  # new enough: nothing installed
    monkeypatch.delitem(sys.modules, "PyTorchUtils")  # no PyTorch extension: say which extension to install
    with pytest.raises(Exception, match="install the 'PyTorch' extension from the Extensions Manager"):
        deep_install.install_torch()


def test_ensure_asks_once_then_installs_in_order(tmp_path, monkeypatch, without):
    """One question (with the licences) for every step; declined, nothing is installed; agreed, PyTorch first."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    without("torch", "totalsegmentator")
    questions, done = [], []
    assert not deep_install.ensure("totalsegmentator", THREE_MM, done.append,
                                   confirm=lambda q, licences: questions.append((q, licences)) or False)
    assert len(questions) == 1 and done == [] and "TotalSegmentator (Wasserthal" in questions[0][1]
    with pytest.raises(Exception, match="needs the TotalSegmentator package"):  # pip here records, installs nothing
        deep_install.ensure("totalsegmentator", THREE_MM, done.append, confirm=lambda q, licences: True,
                            torch_installer=lambda: done.append("torch") or True)
    assert done[0] == "torch" and done[1][-1] == f"TotalSegmentator=={totalseg.TESTED_VERSION}"
