"""Per-level Dice and the VerSe identification rate: exact values on phantoms, and on real masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VertebralFractureLib import cli, evaluate, io

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
EXAMPLE_BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
EXAMPLE_TOTAL = "totalsegmentator-example/spine_report/totalseg.nii.gz"


def _boxes(spec, shape=(30, 30, 80), spacing=1.0):
    """spec: {label: (z_low, z_high)} boxes 10x10 voxels wide in x, y; RAS, isotropic."""
    array = np.zeros(shape, dtype=np.int16)
    for label, (low, high) in spec.items():
        array[10:20, 10:20, low:high] = label
    return io.Volume(array=array, ijk_to_ras=np.diag([spacing, spacing, spacing, 1.0]))


def test_exact_dice_and_identification_on_phantoms():
    reference = _boxes({20: (0, 20), 21: (25, 45), 22: (50, 70)})
    # L1 identical; L2 shifted by 5 voxels (overlap 15 of 20 -> Dice 0.75); L3 missing; an extra T12.
    predicted = _boxes({20: (0, 20), 21: (30, 50), 19: (55, 75)})
    result = evaluate.evaluate_labels(predicted, reference)
    by_level = {e["level"]: e for e in result["levels"]}
    assert by_level["L1"]["dice"] == 1.0 and by_level["L1"]["identified"]
    assert by_level["L2"]["dice"] == 0.75 and by_level["L2"]["centroid_distance_mm"] == 5.0
    assert by_level["L2"]["identified"]
    assert by_level["L3"]["dice"] == 0.0 and not by_level["L3"]["identified"]
    assert by_level["L3"]["closest_pred"] == "T12"
    assert result["identification_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["mean_dice"] == pytest.approx((1.0 + 0.75 + 0.0) / 3, abs=1e-4)
    assert result["extra_predicted_levels"] == ["T12"]


def test_identification_needs_closest_and_within_20_mm():
    reference = _boxes({20: (0, 20), 21: (40, 60)}, shape=(30, 30, 100))
    # Same labels, but L2's centroid 21 mm away: not identified even though it is the closest prediction.
    far = _boxes({20: (0, 20), 21: (61, 81)}, shape=(30, 30, 100))
    result = evaluate.evaluate_labels(far, reference)
    assert [e["identified"] for e in result["levels"]] == [True, False]
    # Swapped names: each reference centroid's closest prediction carries the other label.
    swapped = _boxes({21: (0, 20), 20: (40, 60)}, shape=(30, 30, 100))
    result = evaluate.evaluate_labels(swapped, reference)
    assert result["identification_rate"] == 0.0 and result["mean_dice"] == 0.0


def test_prediction_on_another_grid_is_resampled():
    reference = _boxes({20: (0, 20)}, shape=(30, 30, 40))
    fine = np.zeros((60, 60, 80), dtype=np.int16)
    fine[20:40, 20:40, 0:40] = 20
    # 0.5 mm grid, same world box: Dice 1 after nearest-neighbour resampling onto the reference grid.
    predicted = io.Volume(array=fine, ijk_to_ras=np.diag([0.5, 0.5, 0.5, 1.0]) @ _shift(-0.25))
    result = evaluate.evaluate_labels(predicted, reference)
    assert result["levels"][0]["dice"] == 1.0


def _shift(offset_mm):
    matrix = np.eye(4)
    matrix[:3, 3] = offset_mm / 0.5
    return matrix


def test_real_masks_totalsegmentator_full_against_bodies(shared_file):
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    bodies = io.read_label_map(shared_file(EXAMPLE_BODIES), reference=ct).volume
    full = io.read_label_map(shared_file(EXAMPLE_TOTAL), reference=ct).volume
    result = evaluate.evaluate_labels(full, bodies)
    # The full vertebrae (with posterior elements) contain the bodies: every level identified, Dice well below 1.
    assert result["identification_rate"] == 1.0
    assert all(0.4 < e["dice"] < 0.9 for e in result["levels"])
    assert all(e["centroid_distance_mm"] < 20.0 for e in result["levels"])
    # A map against itself: Dice 1, distance 0.
    self_result = evaluate.evaluate_labels(bodies, bodies)
    assert self_result["mean_dice"] == 1.0 and self_result["identification_rate"] == 1.0


def test_evaluate_command_prints_and_writes_json(shared_file, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = cli.main(["evaluate", "--pred", str(shared_file(EXAMPLE_TOTAL)), "--ref", str(shared_file(EXAMPLE_BODIES)),
                     "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    data = json.loads(out.read_text())
    assert data["identification_rate"] == 1.0 and data["reference_levels"][0] == "T12"
    assert "identification rate 1.000 (6/6)" in stdout
    # The TotalSegmentator map also holds T11 and the sacrum: reported as predicted levels not in the reference.
    assert "T11" in data["extra_predicted_levels"]


def test_evaluate_command_bad_input(shared_file, tmp_path, capsys):
    missing = tmp_path / "missing.nii.gz"
    code = cli.main(["evaluate", "--pred", str(missing), "--ref", str(shared_file(EXAMPLE_BODIES)), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.nii.gz" in err and "does not exist" in err
