"""The HU scale checked against the body's own tissues: real CTs whose stored values the test scales and shifts
(a lost or wrong rescale slope/intercept) are corrected by air and fat to the same density, or refused for density."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.screening.calibration import CONSISTENT, CORRECTED, REFUSED, calibrate_hu

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
EXAMPLE_BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
CHEST_CROP = "totalsegmentator-example/chest_crop/ct_cropped.nii.gz"
TPTBOX_CT = "tptbox/sub-ct_label-22_ct.nii.gz"
DICOM_SERIES = "totalsegmentator-example/example_ct_dicom"

# Linear changes of the stored values within the range the goal names (x0.5 to x2, -200 to +200 HU), and between.
ALTERATIONS = [(2.0, 0.0), (0.5, 0.0), (1.0, 200.0), (1.0, -200.0), (1.0, -150.0), (1.1, 0.0), (1.0, 40.0),
               (0.7, -100.0), (1.6, 150.0)]


def altered(volume, scale, offset):
    return volume.with_array(volume.array * np.float32(scale) + np.float32(offset))


@pytest.fixture(scope="module")
def example_ct(shared_file):
    return io.read_ct(shared_file(EXAMPLE_CT))


def test_a_correct_scale_is_used_as_it_is(example_ct, shared_file):
    calibration = calibrate_hu(example_ct)
    assert calibration.status == CONSISTENT
    assert abs(calibration.air_hu + 1000) <= 10 and -125 <= calibration.fat_hu <= -75
    assert calibration.to_hu(110.0) == 110.0
    assert calibrate_hu(io.read_ct(shared_file(DICOM_SERIES))).status == CONSISTENT  # padding outside the circle


@pytest.mark.parametrize("scale, offset", ALTERATIONS)
def test_a_scaled_or_shifted_ct_is_corrected_to_the_same_hu(example_ct, scale, offset):
    reference = calibrate_hu(example_ct)
    calibration = calibrate_hu(altered(example_ct, scale, offset))
    assert calibration.status == CORRECTED, calibration.note
    assert calibration.slope == pytest.approx(scale, rel=0.03)
    for hu in (50.0, 110.0, 200.0):
        # The same tissues found on the altered values: the corrected HU are those of the original's own references,
        # which lie within their stated uncertainty of the original's HU.
        stored = hu * scale + offset
        corrected = calibration.to_hu(stored)
        assert corrected == pytest.approx((hu - reference.intercept_hu) / reference.slope, abs=2.0)
        assert abs(corrected - hu) <= 10.0
    assert "HU scale corrected" in calibration.note and "±12 HU" in calibration.note


def test_without_air_a_crop_is_checked_against_fat_and_muscle(shared_file):
    crop = io.read_ct(shared_file(CHEST_CROP))
    assert calibrate_hu(crop).status == CONSISTENT
    for scale, offset in [(2.0, 0.0), (0.5, 0.0), (1.0, 200.0), (1.0, -200.0), (1.0, 40.0)]:
        calibration = calibrate_hu(altered(crop, scale, offset))
        assert calibration.status == REFUSED and "density not assessed" in calibration.note, (scale, offset)


def test_no_reference_tissue_refuses_density(shared_file):
    calibration = calibrate_hu(io.read_ct(shared_file(TPTBOX_CT)))
    assert calibration.status == REFUSED and not calibration.density_usable


def _write_altered(source, path, scale, offset):
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32) * np.float32(scale) + np.float32(offset)
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return path


def _report(capsys, args):
    code = cli.main(args)
    capsys.readouterr()
    return code


def test_report_on_an_altered_ct_states_the_corrected_density(shared_file, tmp_path, capsys):
    bodies = str(shared_file(EXAMPLE_BODIES))
    assert _report(capsys, ["report", "--seg", bodies, "-i", str(shared_file(EXAMPLE_CT)), "-o",
                            str(tmp_path / "original")]) == 0
    original = json.loads((tmp_path / "original" / "screening.json").read_text())["screening"]
    assert original["hu_calibration"]["status"] == CONSISTENT
    for scale, offset in [(2.0, 0.0), (1.0, -150.0)]:
        ct = _write_altered(shared_file(EXAMPLE_CT), tmp_path / f"ct-{scale}-{offset}.nii.gz", scale, offset)
        out = tmp_path / f"out-{scale}-{offset}"
        assert _report(capsys, ["report", "--seg", bodies, "-i", str(ct), "-o", str(out)]) == 0
        screening = json.loads((out / "screening.json").read_text())["screening"]
        assert screening["hu_calibration"]["status"] == CORRECTED
        assert screening["level"] == original["level"] == "L1"
        assert abs(screening["measured_hu"] - original["measured_hu"]) <= 10.0
        statement = screening["recommendation"]["statement"]
        assert "HU scale corrected by the body's air and fat" in statement and "±" in statement
        # Judged at the lower bound of its uncertainty: never a milder action than the original's.
        assert screening["recommendation"]["action"] == original["recommendation"]["action"]
        results = json.loads((out / "results.json").read_text())
        assert any("HU scale corrected" in warning for warning in results["warnings"])


def test_a_crop_whose_scale_cannot_be_checked_states_no_density(shared_file, tmp_path, capsys):
    crop = _write_altered(shared_file(CHEST_CROP), tmp_path / "crop-x2.nii.gz", 2.0, 0.0)
    labels = nib.load(shared_file("totalsegmentator-example/chest_crop/vertebrae_T12.nii.gz"))
    seg = tmp_path / "t12.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(labels.dataobj) > 0).astype(np.uint8) * 19, labels.affine), seg)
    out = tmp_path / "out"
    code = _report(capsys, ["report", "--seg", str(seg), "--labels", "verse", "-i", str(crop), "-o", str(out)])
    screening = json.loads((out / "screening.json").read_text())["screening"]
    results = json.loads((out / "results.json").read_text())
    assert code == (5 if results["quality"]["status"] == "failed" else 0)  # the crop's T12 mask may fail QC
    assert screening["hu_calibration"]["status"] == REFUSED
    assert screening["measured_hu"] is None and screening["densities"] == {}
    assert all(vertebra["trabecular_hu"] is None for vertebra in results["vertebrae"])
    assert results["patient"]["l1_trabecular_hu"] is None
    statement = screening["recommendation"]["statement"]
    assert " HU:" not in statement and "bone density not assessed (HU scale doubtful)" in statement
    assert "HU scale doubtful" in screening["level_reason"]
