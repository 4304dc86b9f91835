"""Bone density screening: trabecular region, screening level, contrast, recommendation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from screen_phantoms import spine_phantom

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import density as density_mod
from VertebralFractureLib.results import CaseResult
from VertebralFractureLib.screening import contrast
from VertebralFractureLib.screening import recommend as screen

NON_CONTRAST_120 = {"modality": "CT", "kvp": 120.0, "contrast_bolus_agent": None}
BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"


def _grade(case: CaseResult, level: str, grade: int, morphology: str = "wedge", heights=None, loss=None):
    vertebra = case.vertebra(level)
    vertebra.genant_grade = grade
    vertebra.morphology = morphology if grade else "normal"
    vertebra.heights_mm = heights
    vertebra.height_loss = loss


def _graded_case(labels, **grades) -> CaseResult:
    case = screen.case_from_labels(labels)
    case.warnings.clear()
    for vertebra in case.vertebrae:
        vertebra.genant_grade, vertebra.morphology = 0, "normal"
    for level, grade in grades.items():
        _grade(case, level, grade)
    return case


# ---------------------------------------------------------------------------------------------------------------
# Real data: the TotalSegmentator example against the peer tool's medians (same CT)
# ---------------------------------------------------------------------------------------------------------------
def test_lumbar_trabecular_hu_matches_peer_report(shared_file):
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    bodies = io.read_label_map(shared_file(BODIES),
                               "verse", reference=ct)
    peer = json.loads(shared_file("totalsegmentator-example/spine_report/spine_report.json").read_text())["results"]
    result = screen.screen_case(bodies.volume, ct)
    for level in ("L1", "L2", "L3", "L4", "L5"):
        density = result.densities[level]
        expected = peer[f"vertebrae_{level}_intensity_median"]
        assert abs(density.median_hu - expected) <= 15.0, (level, density.median_hu, expected)
        assert 10.0 < density.iqr_hu < 100.0
        assert density.volume_ml > 5.0
    assert result.level == "L1"
    assert result.contrast.status == "non-contrast"
    # The screening fields of the case are filled.


def test_full_vertebra_masks_give_body_values(shared_file):
    """TotalSegmentator's whole-vertebra labels (with posterior elements): the region stays in the body."""
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    full = io.read_label_map(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz"), "totalseg_v2",
                             reference=ct)
    bodies = io.read_label_map(shared_file(BODIES),
                               "verse", reference=ct)
    from_full = screen.screen_case(full.volume, ct).densities
    from_bodies = screen.screen_case(bodies.volume, ct).densities
    for level in ("L1", "L2", "L3", "L4", "L5"):
        assert abs(from_full[level].median_hu - from_bodies[level].median_hu) <= 10.0, level


def test_contrast_detected_on_real_enhanced_ct(shared_file):
    ct = io.read_ct(shared_file("totalsegmentator-example/chest_crop/ct_cropped.nii.gz"))
    mask = io.read_label_map(shared_file("totalsegmentator-example/chest_crop/vertebrae_T12.nii.gz"), "verse",
                             reference=ct).volume.array > 0
    result = screen.assess_contrast(ct, mask, screen.DensityThresholds())
    assert result.status == "contrast" and result.aorta_hu > 200
    # The aorta lies in front of the vertebral body.
    body_front = ct.ijk_to_world(np.argwhere(mask))[:, 1].max()
    assert result.aorta_center_ras[1] > body_front - 15


def test_contrast_and_kvp_from_real_dicom_series(shared_file):
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct_dicom"))
    labels = io.read_label_map(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz"), "totalseg_v2",
                               reference=ct)
    result = screen.screen_case(labels.volume, ct)
    assert result.kvp == 120.0
    assert result.contrast.dicom_agent == "APPLIED"
    assert result.contrast.status == "contrast" and result.contrast.aorta_hu is not None
    assert result.contrast.phase in ("portal venous", "arterial")
    # Only cut T11/T12 in this 4 cm series: no screening level, low confidence, said why.
    assert result.level is None
    assert "T12 incomplete" in result.level_reason and "L1 not in the label map" in result.level_reason
    assert result.recommendation.confidence == "low"
    # Neither a grade nor a density: not a "no action" (normal-looking) result.
    assert result.recommendation.action == "indeterminate"
    assert "screening not possible" in result.recommendation.statement


def test_non_contrast_real_ct_has_unenhanced_aorta(shared_file):
    """Negative control: on the non-contrast example, a bright aorta is not found, but with a blood-level threshold
    the same search finds the unenhanced aorta (~40 HU) left-anterior of the spine."""
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    labels = io.read_label_map(shared_file(BODIES),
                               "verse", reference=ct)
    mask = np.isin(labels.volume.array, [20, 21])
    assert contrast.find_aorta(ct, mask, screen.DensityThresholds()) is None
    blood = contrast.find_aorta(ct, mask, screen.DensityThresholds(aorta_uncertain_hu=20.0))
    assert blood is not None and 20 < blood["hu"] < 80
    centre = ct.ijk_to_world(np.argwhere(mask)).mean(axis=0)
    assert blood["center_ras"][0] < centre[0] and blood["center_ras"][1] > centre[1]


# ---------------------------------------------------------------------------------------------------------------
# Phantoms with known truth
# ---------------------------------------------------------------------------------------------------------------
def test_region_avoids_cortex_endplates_and_vein():
    ct, labels, truth = spine_phantom({"L1": 123.0}, cortex_hu=900.0, vein_hu=-50.0)
    mask = labels.array == truth["L1"]["label"]
    settings = screen.RoiSettings()
    roi = density_mod.trabecular_roi(mask, ct, np.array([0.0, 1.0, 0.0]), settings)
    values = ct.array[roi]
    assert values.size > 2000
    assert np.all(values == 123.0), "region holds cortex, endplate or vein voxels"
    # Every region voxel lies at least the erosion depth below the body's surface.
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask, sampling=ct.spacing) - 0.5
    assert depth[roi].min() >= settings.erosion_mm
    # The posterior part is excluded: the region starts well in front of the posterior wall.
    y = ct.ijk_to_world(np.argwhere(roi))[:, 1]
    body_y = ct.ijk_to_world(np.argwhere(mask))[:, 1]
    assert y.min() > body_y.min() + 0.25 * (body_y.max() - body_y.min())
    density, _ = screen.measure_density(ct, mask, np.array([0.0, 1.0, 0.0]), settings, "L1", truth["L1"]["label"])
    assert density.median_hu == 123.0 and density.iqr_hu == 0.0


def test_whole_body_median_would_be_biased_by_cortex():
    """Why the interior region matters: the plain body median is pulled up by the cortex on a small body."""
    ct, labels, truth = spine_phantom({"L1": 60.0}, spacing=2.0, noise_sd=20.0)
    mask = labels.array == truth["L1"]["label"]
    result = screen.screen_case(labels, ct, dicom=NON_CONTRAST_120)
    assert abs(result.densities["L1"].median_hu - 60.0) < 5.0
    assert np.mean(ct.array[mask]) > 100.0


def test_screening_level_fallbacks():
    ct, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0, "L2": 120.0})
    # Default: L1.
    result = screen.screen_case(labels, ct, _graded_case(labels), dicom=NON_CONTRAST_120)
    assert result.level == "L1" and result.measured_hu == 80.0 and result.category == "osteoporosis"
    # L1 fractured (grade >= 1): T12, and the reason says so.
    result = screen.screen_case(labels, ct, _graded_case(labels, L1=1), dicom=NON_CONTRAST_120)
    assert result.level == "T12" and result.measured_hu == 150.0
    assert "L1 fractured (Genant grade 1)" in result.level_reason
    assert any("instead of L1" in caveat for caveat in result.caveats)
    # L1 and T12 fractured: L2.
    result = screen.screen_case(labels, ct, _graded_case(labels, L1=2, T12=3), dicom=NON_CONTRAST_120)
    assert result.level == "L2" and result.measured_hu == 120.0
    assert "T12 fractured" in result.level_reason
    # A reviewer's override counts, not the automatic grade.
    case = _graded_case(labels, L1=2)
    case.vertebra("L1").grade_override = 0
    assert screen.screen_case(labels, ct, case, dicom=NON_CONTRAST_120).level == "L1"
    # L1 missing from the label map: T12.
    without_l1 = labels.with_array(np.where(labels.array == 20, 0, labels.array).astype(np.int16))
    result = screen.screen_case(without_l1, ct, _graded_case(without_l1), dicom=NON_CONTRAST_120)
    assert result.level == "T12" and "L1 not in the label map" in result.level_reason
    # Configurable order.
    rules = screen.RecommendationRules(screening_levels=("L1", "L2", "T12"))
    result = screen.screen_case(labels, ct, _graded_case(labels, L1=2), rules=rules, dicom=NON_CONTRAST_120)
    assert result.level == "L2"


def test_cut_l1_falls_back_to_l2():
    # The field of view ends inside T12 and L1 is cut as well: L2 is the first usable level.
    ct, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0, "L2": 120.0}, cut_top_mm=45.0)
    case = screen.case_from_labels(labels)
    assert not case.vertebra("L1").complete and "T12" not in [v.level for v in case.vertebrae]
    result = screen.screen_case(labels, ct, case, dicom=NON_CONTRAST_120)
    assert result.level == "L2"
    assert "L1 incomplete" in result.level_reason and "T12 not in the label map" in result.level_reason
    assert any("cut by the field of view): L1" in reason for reason in result.recommendation.confidence_reasons)


def test_thresholds_are_configurable():
    ct, labels, _ = spine_phantom({"L1": 100.0})
    default = screen.screen_case(labels, ct, _graded_case(labels), dicom=NON_CONTRAST_120)
    # <= 110 HU (Pickhardt's specific cut-off): one verdict, "osteoporosis likely", and nothing beside it.
    assert default.category == "osteoporosis" and default.recommendation.action == "refer"
    refer = screen.RecommendationRules().refer_text
    assert default.recommendation.statement.endswith(f"L1 100 HU: osteoporosis likely — {refer}")
    strict = screen.DensityThresholds(osteoporosis_below_hu=105.0, specific_hu=95.0)
    custom = screen.screen_case(labels, ct, _graded_case(labels), thresholds=strict, dicom=NON_CONTRAST_120)
    assert custom.category == "osteoporosis"
    lenient = screen.DensityThresholds(specific_hu=90.0)
    custom = screen.screen_case(labels, ct, _graded_case(labels), thresholds=lenient, dicom=NON_CONTRAST_120)
    assert custom.recommendation.action == "consider"


@pytest.mark.parametrize(("aorta_hu", "status", "phase", "offset"), [
    (320.0, "contrast", "arterial", 20.0),
    (190.0, "contrast", "portal venous", 14.75),
    (130.0, "uncertain", "unknown", 0.0),
    (None, "non-contrast", "non-contrast", 0.0),
])
def test_contrast_phase_from_aorta(aorta_hu, status, phase, offset):
    ct, labels, _ = spine_phantom({"L1": 120.0}, aorta_hu=aorta_hu, noise_sd=10.0)
    result = screen.screen_case(labels, ct, _graded_case(labels), dicom=NON_CONTRAST_120)
    assert (result.contrast.status, result.contrast.phase, result.contrast.offset_hu) == (status, phase, offset)
    assert result.corrected_hu == pytest.approx(result.measured_hu - offset)
    if aorta_hu is not None:
        assert abs(result.contrast.aorta_hu - aorta_hu) < 10.0


def test_contrast_from_dicom_header_without_visible_aorta():
    ct, labels, _ = spine_phantom({"L1": 120.0})
    header = {"modality": "CT", "kvp": 120.0, "contrast_bolus_agent": "OMNIPAQUE 350"}
    result = screen.screen_case(labels, ct, _graded_case(labels), dicom=header)
    assert result.contrast.status == "contrast" and result.contrast.phase == "unknown"
    assert result.corrected_hu == pytest.approx(120.0 - 14.75)
    assert any(r.startswith("contrast: contrast-enhanced, phase unknown (14.75 HU subtracted) — ")
               for r in result.recommendation.confidence_reasons)
    assert result.recommendation.confidence == "moderate"


def test_recommendation_statement_names_measurements():
    ct, labels, _ = spine_phantom({"T12": 140.0, "L1": 82.0, "L2": 120.0})
    case = _graded_case(labels)
    _grade(case, "T12", 2, "wedge", heights={"anterior": 17.0, "middle": 22.0, "posterior": 26.0}, loss=0.33)
    result = screen.screen_case(labels, ct, case, dicom=NON_CONTRAST_120)
    rec = result.recommendation
    assert rec.statement == ("Moderate (grade 2) wedge fracture of T12; L1 82 HU: osteoporosis likely — "
                             "recommend DXA / fracture-liaison referral")
    assert rec.action == "refer"
    assert any("T12: Genant grade 2 moderate wedge" in r and "height loss 33 %" in r and "Ha 17.0" in r
               for r in rec.reasons)
    assert any(r.startswith("L1 trabecular median 82 HU") and "< 90" in r for r in rec.reasons)
    assert rec.confidence == "high"


def test_confidence_drops_with_missing_data():
    ct, labels, _ = spine_phantom({"T12": 160.0, "L1": 170.0, "L2": 165.0})
    complete = screen.screen_case(labels, ct, _graded_case(labels), dicom=NON_CONTRAST_120)
    assert complete.recommendation.confidence == "high"
    assert complete.recommendation.action == "none" and "osteoporosis unlikely" in complete.recommendation.statement
    # No CT: density not measured, said so, and the confidence is low.
    no_ct = screen.screen_case(labels, None, _graded_case(labels))
    assert no_ct.recommendation.confidence == "low"
    assert "bone density not assessed (no CT)" in no_ct.recommendation.statement
    assert any("No CT given" in caveat for caveat in no_ct.caveats)
    # Unknown kVp and no header to confirm the contrast state: moderate.
    unknown = screen.screen_case(labels, ct, _graded_case(labels), dicom={})
    assert unknown.recommendation.confidence == "moderate"
    assert any("kVp" in r for r in unknown.recommendation.confidence_reasons)
    # A non-120 kVp scan is reported.
    low_kvp = screen.screen_case(labels, ct, _graded_case(labels), dicom={"modality": "CT", "kvp": 80.0})
    assert any("80 kVp" in caveat for caveat in low_kvp.caveats)


def test_screen_fills_case_and_serialises():
    ct, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0})
    case = _graded_case(labels)
    result = screen.screen_case(labels, ct, case, dicom=NON_CONTRAST_120)
    assert case.vertebra("L1").trabecular_hu == 80.0
    assert case.vertebra("L1").trabecular_voxels > 1000
    assert case.patient.l1_trabecular_hu == 80.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["level"] == "L1" and data["densities"]["T12"]["median_hu"] == 150.0
    assert data["thresholds"]["specific_hu"] == 110.0
    assert data["recommendation"]["confidence"] == "high"


def test_labels_on_another_grid_are_refused():
    ct, labels, _ = spine_phantom({"L1": 80.0})
    moved = labels.with_array(labels.array)
    moved.ijk_to_ras = moved.ijk_to_ras.copy()
    moved.ijk_to_ras[0, 3] += 5.0
    with pytest.raises(ValueError, match="CT's grid"):
        screen.screen_case(moved, ct)


def test_stated_contrast_phase_and_kvp():
    """Without a DICOM header (NIfTI), the user can state kVp and phase; a stated phase wins over detection."""
    ct, labels, _ = spine_phantom({"L1": 120.0}, aorta_hu=320.0)
    stated = screen.screen_case(labels, ct, _graded_case(labels), dicom={"kvp": 120.0,
                                                                        "contrast_phase": "portal venous"})
    assert stated.contrast.phase == "portal venous" and stated.contrast.offset_hu == 14.75
    assert "aorta 320 HU" in stated.contrast.note and stated.recommendation.confidence == "high"
    # kVp alone is not a DICOM header: a non-contrast verdict from the images stays unconfirmed.
    ct, labels, _ = spine_phantom({"L1": 120.0})
    nifti = screen.screen_case(labels, ct, _graded_case(labels), dicom={"kvp": 120.0})
    assert nifti.contrast.status == "non-contrast" and not nifti.contrast.certain
    with pytest.raises(ValueError, match="unknown contrast phase"):
        screen.screen_case(labels, ct, _graded_case(labels), dicom={"contrast_phase": "delayed"})


@pytest.mark.parametrize("geometry", [
    {"spacing": (3.0, 3.0, 3.0)},
    {"tilt_deg": (25.0, 0.0, 10.0), "grid_rotation_deg": (0.0, 15.0, 0.0), "spacing": (1.5, 1.5, 2.5)},
], ids=["coarse", "tilted-oblique-anisotropic"])
def test_end_to_end_with_morphometry_on_whole_vertebrae(geometry):
    """The morphometry phantom (bodies with pedicles, arch and spinous process at 500 HU, cortex 700 HU, noise),
    measured and graded by measure_case: the density is the trabecular truth and a wedge-fractured L1 hands the
    screening over to T12."""
    from phantoms import make_spine

    from VertebralFractureLib.morphometry import measure

    ct, labels, truth = make_spine(levels=("T12", "L1", "L2"), deformities={"L1": ("wedge", 0.3)},
                                   trabecular_hu=95.0, **geometry)
    case = measure.measure_case(labels, ct)
    result = screen.screen_case(labels, ct, case, dicom=NON_CONTRAST_120)
    for level in ("T12", "L1", "L2"):
        assert abs(result.densities[level].median_hu - truth.trabecular_hu) < 3.0, level
    assert case.vertebra("L1").final_grade >= 1
    assert result.level == "T12" and "L1 fractured" in result.level_reason
    assert result.recommendation.action == "refer"
    assert result.recommendation.statement.startswith(f"{screen.GRADE_NAMES[case.vertebra('L1').final_grade]}"
                                                      .capitalize())


def test_trabecular_regions_are_kept_for_display():
    ct, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0})
    result = screen.screen_case(labels, ct, _graded_case(labels), dicom=NON_CONTRAST_120)
    regions = result.roi_volume
    assert regions.same_grid(ct)
    assert set(np.unique(regions.array)) == {0, 19, 20}
    # Every region voxel lies inside its own vertebra and holds only trabecular bone.
    assert np.all(labels.array[regions.array == 20] == 20)
    assert np.all(ct.array[regions.array == 20] == 80.0)
    assert "roi_volume" not in result.to_dict()
