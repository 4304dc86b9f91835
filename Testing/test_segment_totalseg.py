"""TotalSegmentator backend: clear message when absent, v2 label mapping checked on its real output, and the call
it makes (with a stand-in for the package, which is not installed in CI)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types

import nibabel as nib
import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.io import labels
from VertebralFractureLib.segment import get_backend, totalseg

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
TOTALSEG_OUTPUT = "totalsegmentator-example/spine_report/totalseg.nii.gz"
BODIES_VERSE = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
ABSENT = importlib.util.find_spec("totalsegmentator") is None


@pytest.mark.skipif(not ABSENT, reason="TotalSegmentator is installed here")
def test_absent_package_gives_one_line_install_hint(shared_file, tmp_path, capsys):
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    with pytest.raises(VertebralFractureError, match="-m pip install TotalSegmentator"):
        get_backend("totalsegmentator").segment(ct, device="cpu")
    code = cli.main(["infer", "--ct", str(shared_file(EXAMPLE_CT)), "--out", str(tmp_path / "seg.nii.gz"),
                     "--backend", "totalsegmentator", "-q"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: the totalsegmentator backend needs") and "\n" not in error
    assert not (tmp_path / "seg.nii.gz").exists()


def test_v2_labels_map_to_verse_on_real_output(shared_file):
    """TotalSegmentator's own output for the example CT, mapped, agrees level by level with the VerSe-numbered
    body masks of the same CT."""
    raw = np.asarray(nib.load(shared_file(TOTALSEG_OUTPUT)).dataobj).astype(np.int64)
    verse = totalseg.totalseg_to_verse(raw)
    assert sorted(int(v) for v in np.unique(verse) if v) == [18, 19, 20, 21, 22, 23, 24, labels.SACRUM]
    for ts_label, level in ((31, "L1"), (32, "T12"), (27, "L5"), (33, "T11")):
        assert np.count_nonzero(verse == labels.label_from_level(level)) == np.count_nonzero(raw == ts_label)
    assert np.count_nonzero(verse == labels.SACRUM) == np.count_nonzero((raw == 25) | (raw == 26))
    assert not np.any(verse[(raw > 0) & (raw < 25)])  # organs are not vertebrae
    bodies = np.asarray(nib.load(shared_file(BODIES_VERSE)).dataobj).astype(np.int64)
    for level in range(19, 25):  # T12..L5
        body = bodies == level
        assert np.count_nonzero(verse[body] == level) / np.count_nonzero(body) > 0.9, labels.level_name(level)


@pytest.fixture()
def fake_totalsegmentator(monkeypatch, tmp_path, shared_file):
    """Stand-in modules with TotalSegmentator's API: records the call, returns its real output for the example."""
    calls = []
    output = nib.load(shared_file(TOTALSEG_OUTPUT))

    def run(input, output_path=None, **options):
        calls.append({"input": input, "output": output_path, **options})
        return nib.Nifti1Image(np.asarray(output.dataobj), output.affine)

    weights = tmp_path / "weights"
    package = types.ModuleType("totalsegmentator")
    package.__spec__ = importlib.machinery.ModuleSpec("totalsegmentator", None)  # importable for the auto choice
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = run
    config = types.ModuleType("totalsegmentator.config")
    config.get_weights_dir = lambda: weights
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", config)
    return calls, weights


def _install_weights(weights, fast: bool):
    for dataset in totalseg.WEIGHTS_DATASETS[fast]:
        (weights / totalseg.WEIGHTS_FOLDERS[dataset]).mkdir(parents=True, exist_ok=True)


def test_calls_totalsegmentator_and_maps_onto_the_ct_grid(fake_totalsegmentator, shared_file):
    calls, weights = fake_totalsegmentator
    ct = io.read_ct(shared_file(EXAMPLE_CT))  # 3 mm voxels: its 3 mm (fast) model unless asked otherwise
    with pytest.raises(VertebralFractureError, match="Dataset297, Dataset298.*--no-download forbids"):
        get_backend("totalsegmentator", allow_download=False).segment(ct, device="cpu")
    assert calls == []  # refused before running
    _install_weights(weights, fast=True)
    output = get_backend("totalsegmentator", allow_download=False).segment(ct, device="cpu")
    call = calls[0]
    assert call["task"] == "total" and call["ml"] is True and call["device"] == "cpu" and call["fast"] is True
    assert set(call["roi_subset"]) == set(totalseg.VERTEBRA_CLASSES)
    assert "vertebrae_L1" in call["roi_subset"] and "sacrum" in call["roi_subset"] and "liver" not in call["roi_subset"]
    assert np.allclose(call["input"].affine, ct.ijk_to_ras) and call["input"].shape == ct.shape
    assert output.labels.same_grid(ct) and output.backend == "totalsegmentator" and output.full_vertebrae
    assert output.backend_details["model"].startswith("3 mm") and output.backend_reason == \
        "asked for with --backend totalsegmentator"
    reference = totalseg.totalseg_to_verse(np.asarray(nib.load(shared_file(TOTALSEG_OUTPUT)).dataobj))
    assert np.array_equal(output.labels.array, reference)
    # its 1.5 mm model when asked; it may fetch the missing weights itself (its default, and its own licence flow)
    fine = get_backend("totalsegmentator", fast=False).segment(ct, device="auto")
    assert calls[1]["fast"] is False and fine.labels.same_grid(ct)


def test_model_resolution_follows_the_slice_spacing(shared_file):
    coarse = io.read_ct(shared_file(EXAMPLE_CT))  # 3 mm
    fine = io.read_ct(shared_file("tptbox/sub-ct_label-22_ct.nii.gz"))  # 1.5 mm
    assert totalseg.use_fast_model(coarse, None) and not totalseg.use_fast_model(fine, None)
    assert totalseg.use_fast_model(fine, True) and not totalseg.use_fast_model(coarse, False)


def test_auto_picks_totalsegmentator_when_installed(fake_totalsegmentator, shared_file, tmp_path, capsys):
    """`analyze` without --backend runs TotalSegmentator, says so and why, and measures its labels on the same
    label-map path as a label map given with --seg (same levels, heights and grades)."""
    calls, _weights = fake_totalsegmentator
    ct_path, seg_path = shared_file(EXAMPLE_CT), shared_file(TOTALSEG_OUTPUT)
    assert cli.main(["analyze", "--ct", str(ct_path), "--out", str(tmp_path / "auto"), "--device", "cpu", "-q"]) == 0
    assert ("segmentation: totalsegmentator [3 mm (fast)] (automatic choice: TotalSegmentator is installed)"
            in capsys.readouterr().out)
    assert calls and calls[0]["fast"] is True
    auto = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert auto["segmentation_backend"] == "totalsegmentator"
    assert auto["segmentation_backend_reason"] == "automatic choice: TotalSegmentator is installed"
    assert auto["segmentation_backend_details"]["task"] == "total"
    assert cli.main(["analyze", "--ct", str(ct_path), "--seg", str(seg_path), "--out", str(tmp_path / "given"),
                     "-q"]) == 0
    given = json.loads((tmp_path / "given" / "results.json").read_text())
    assert [v["level"] for v in auto["vertebrae"]] == [v["level"] for v in given["vertebrae"]] == \
        ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S"]
    for mine, theirs in zip(auto["vertebrae"], given["vertebrae"]):
        assert mine.get("genant_grade") == theirs.get("genant_grade"), mine["level"]
        assert mine.get("heights_mm") == theirs.get("heights_mm"), mine["level"]


def test_totalsegmentator_labels_of_the_example_grade_no_fracture(fake_totalsegmentator, shared_file, tmp_path):
    """No fracture is known in the example CT: TotalSegmentator's own full-vertebra labels, through the automatic
    backend and the label-map path, must grade every measured vertebra 0."""
    assert cli.main(["analyze", "--ct", str(shared_file(EXAMPLE_CT)), "--out", str(tmp_path / "auto"),
                     "--device", "cpu", "-q"]) == 0
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert results["segmentation_backend"] == "totalsegmentator"
    graded = {v["level"]: v.get("genant_grade") for v in results["vertebrae"] if v.get("genant_grade") is not None}
    assert set(graded) >= {"L1", "L2", "L3", "L4", "L5"}
    assert all(grade == 0 for grade in graded.values()), graded


def test_no_vertebra_found_by_totalsegmentator(fake_totalsegmentator, shared_file, monkeypatch):
    from VertebralFractureLib.errors import NoVertebraeError

    calls, weights = fake_totalsegmentator
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    api = sys.modules["totalsegmentator.python_api"]
    monkeypatch.setattr(api, "totalsegmentator",
                        lambda image, output=None, **options: nib.Nifti1Image(np.zeros(image.shape, np.uint8),
                                                                              image.affine))
    with pytest.raises(NoVertebraeError, match="TotalSegmentator labelled no vertebra"):
        get_backend("totalsegmentator").segment(ct, device="cpu")
