"""TotalSegmentator backend: clear message when absent, v2 label mapping checked on its real output, and the call
it makes (with a stand-in for the package, which is not installed in CI)."""

from __future__ import annotations

import importlib.util
import sys
import types

import nibabel as nib
import numpy as np
import pytest

from VertebralFractureLib import cli, io, labels
from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.segment import get_backend, totalseg

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
TOTALSEG_OUTPUT = "totalsegmentator-example/spine_report/totalseg.nii.gz"
BODIES_VERSE = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
ABSENT = importlib.util.find_spec("totalsegmentator") is None


@pytest.mark.skipif(not ABSENT, reason="TotalSegmentator is installed here")
def test_absent_package_gives_one_line_install_hint(shared_file, tmp_path, capsys):
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    with pytest.raises(VertebralFractureError, match="pip install TotalSegmentator"):
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
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = run
    config = types.ModuleType("totalsegmentator.config")
    config.get_weights_dir = lambda: weights
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", config)
    return calls, weights


def test_calls_totalsegmentator_and_maps_onto_the_ct_grid(fake_totalsegmentator, shared_file):
    calls, weights = fake_totalsegmentator
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    with pytest.raises(VertebralFractureError, match="totalseg_download_weights -t total"):
        get_backend("totalsegmentator").segment(ct, device="cpu")
    assert calls == []  # no silent weight download
    (weights / "Dataset292_TotalSegmentator_part2_vertebrae_1559subj").mkdir(parents=True)
    output = get_backend("totalsegmentator").segment(ct, device="cpu")
    call = calls[0]
    assert call["task"] == "total" and call["ml"] is True and call["device"] == "cpu" and call["fast"] is False
    assert "vertebrae_L1" in call["roi_subset"] and "sacrum" in call["roi_subset"]
    assert np.allclose(call["input"].affine, ct.ijk_to_ras) and call["input"].shape == ct.shape
    assert output.labels.same_grid(ct) and output.backend == "totalsegmentator"
    reference = totalseg.totalseg_to_verse(np.asarray(nib.load(shared_file(TOTALSEG_OUTPUT)).dataobj))
    assert np.array_equal(output.labels.array, reference)
    fast = get_backend("totalsegmentator", fast=True, allow_download=True).segment(ct, device="auto")
    assert calls[1]["fast"] is True and fast.labels.same_grid(ct)


def test_no_vertebra_found_by_totalsegmentator(fake_totalsegmentator, shared_file, monkeypatch):
    from VertebralFractureLib.errors import NoVertebraeError

    calls, weights = fake_totalsegmentator
    (weights / "Dataset292_TotalSegmentator_part2_vertebrae_1559subj").mkdir(parents=True)
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    api = sys.modules["totalsegmentator.python_api"]
    monkeypatch.setattr(api, "totalsegmentator",
                        lambda image, output=None, **options: nib.Nifti1Image(np.zeros(image.shape, np.uint8),
                                                                              image.affine))
    with pytest.raises(NoVertebraeError, match="TotalSegmentator labelled no vertebra"):
        get_backend("totalsegmentator").segment(ct, device="cpu")
