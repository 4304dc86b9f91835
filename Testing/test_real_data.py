"""Measurement and grading on real spines: VerSe masks with radiologists' grades, the TotalSegmentator example,
the TPTBox crop and a real DICOM series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import measure
from VertebralFractureLib.results import BORDERLINE


def _case(shared_file, seg, ct=None, convention="auto"):
    ct_volume = io.read_ct(shared_file(ct)) if ct else None
    label_map = io.read_label_map(shared_file(seg), convention, reference=ct_volume)
    return measure.measure_case(label_map.volume, ct_volume), label_map


def _grades(case):
    return {v.level: v.genant_grade for v in case.vertebrae}


def test_verse004_radiologist_grades(shared_file):
    case, label_map = _case(shared_file, "verse19/sub-verse004_seg-vert_msk.nii.gz")
    assert label_map.convention == "verse"
    grades = _grades(case)
    # Radiologists: T9 2, T10 2, L1 3 (middle height ~10 mm against ~27 mm in its neighbours), others 0.
    assert grades["T9"] == 2
    assert grades["T10"] >= 1
    assert grades["L1"] == 3
    for level in ("T11", "T12", "L2", "L3"):
        assert grades[level] == 0, case.vertebra(level).grade_reason
    l1 = case.vertebra("L1")
    assert 7.0 <= l1.heights_mm["middle"] <= 12.0
    assert case.patient.worst_grade == 3
    assert {"T9", "T10", "L1"} <= set(case.patient.fractured_levels)


def test_verse004_t10_moderate(shared_file):
    case, _ = _case(shared_file, "verse19/sub-verse004_seg-vert_msk.nii.gz")
    assert case.vertebra("T10").genant_grade == 2, case.vertebra("T10").grade_reason


def test_verse005_mild_fractures_score_above_the_normal_level(shared_file):
    """The radiologists' mild fractures L1-L4 score above L5 (normal), which stays grade 0."""
    case, _ = _case(shared_file, "verse19/sub-verse005_seg-vert_msk.nii.gz")
    assert case.vertebra("L5").genant_grade == 0
    normal = case.vertebra("L5").fracture_score
    assert all(case.vertebra(level).fracture_score > normal for level in ("L1", "L2", "L3", "L4"))


def test_verse005_mild_fractures_are_borderline_not_normal(shared_file):
    """The mild fractures that reach the borderline band are reported for review (neither fracture nor normal), the
    normal L5 is not; the review summary names them."""
    case, _ = _case(shared_file, "verse19/sub-verse005_seg-vert_msk.nii.gz")
    mild = [level for level in ("L1", "L2", "L3", "L4") if case.vertebra(level).borderline_in_force]
    assert len(mild) >= 3, {level: case.vertebra(level).grade_reason for level in ("L1", "L2", "L3", "L4")}
    assert all(BORDERLINE in case.vertebra(level).grade_reason for level in mild)
    assert case.vertebra("L5").genant_grade == 0 and not case.vertebra("L5").borderline
    from VertebralFractureLib.slicer import review

    summary = review.summary_text(case)
    assert "Fractures: none found (mild, grade 1, fractures can be missed)" in summary
    assert ", ".join(mild) in summary.split("Borderline")[1].splitlines()[0]
    # The same status in results.json, vertebrae.csv and the report table.
    import csv
    import io as stdio

    from VertebralFractureLib.outputs import clinical, files

    assert [v["level"] for v in json.loads(files.case_to_json(case))["vertebrae"] if v["borderline"]] == mild
    rows = list(csv.DictReader(stdio.StringIO(files.case_to_csv(case))))
    assert [r["level"] for r in rows if r["borderline"] == "True"] == mild
    table = {r["level"]: r["grade_text"] for r in clinical.vertebra_rows(case)}
    assert [level for level, text in table.items() if BORDERLINE in text] == mild


@pytest.mark.xfail(
    strict=True,
    reason="the mild fractures of sub-verse005 measure 11-15 % reductions (middle height against the anterior wall "
    "and the neighbours, at 2.8 SD or less), below Genant's 20 % even after grade.REDUCTION_SCALE: graded 0 (three of "
    "them borderline), the radiologists graded them 1",
)
def test_verse005_mild_fractures(shared_file):
    case, _ = _case(shared_file, "verse19/sub-verse005_seg-vert_msk.nii.gz")
    grades = _grades(case)
    for level in ("L1", "L2", "L3", "L4"):
        assert 1 <= grades[level] <= 2, case.vertebra(level).grade_reason


@pytest.fixture(scope="module")
def totalseg_example(shared_file):
    return _case(
        shared_file,
        "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz",
        "totalsegmentator-example/example_ct.nii.gz",
    )


def test_totalseg_example_normal_spine_grades_zero(totalseg_example):
    case, _ = totalseg_example
    graded = {v.level: v.genant_grade for v in case.vertebrae if v.complete}
    assert set(graded) == {"L1", "L2", "L3", "L4", "L5"}
    assert all(grade == 0 for grade in graded.values()), {v.level: v.grade_reason for v in case.vertebrae}
    assert case.patient.fractured_levels == []
    assert case.patient.l1_trabecular_hu is not None


def test_totalseg_example_reduction_within_the_slices_uncertainty_is_said(totalseg_example):
    """L1 of the 3 mm mask reads a wedge of about a quarter (Ha/Hp 0.70): beyond 3 SD of the population's spread,
    within it once the 3 mm slices count. It is not called a fracture, and the case says so."""
    case, _ = totalseg_example
    l1 = case.vertebra("L1")
    assert l1.genant_grade == 0
    assert 0.20 <= l1.withheld_for_voxel_size <= 0.32
    assert "withheld" in l1.grade_reason
    said = [w for w in case.warnings if w.startswith("L1:")]
    assert len(said) == 1 and "thinner slices" in said[0]
    assert all(v.withheld_for_voxel_size is None for v in case.vertebrae if v.level in ("L2", "L3", "L4", "L5"))
    from VertebralFractureLib.slicer import review

    summary = review.summary_text(case)
    assert "Fractures: none found" in summary
    assert "To review (a reduction within the slices' uncertainty): L1" in summary


def test_totalseg_example_against_peer_report(totalseg_example, shared_file):
    """Middle heights within 1.5 voxels (4.5 mm) of the peer's; posterior heights within two voxels.

    The peer reads each height on one mid-sagittal plane, its middle height at 50 % of the depth where the endplates
    dip deepest. This project takes medians over the central 40 % of the body's width and over 40-60 % of the depth
    (posterior: at the corner of the fitted wall and endplate lines), where the endplates of this 3 mm CT dip less,
    so its heights are up to about 1.5 voxels taller; the volumes, counted alike, agree.
    """
    case, _ = totalseg_example
    peer = json.loads(shared_file("totalsegmentator-example/spine_report/spine_report.json").read_text())["results"]
    for level in ("L1", "L2", "L3", "L4", "L5"):
        ours = case.vertebra(level).heights_mm
        assert abs(ours["middle"] - peer[f"vertebrae_{level}_height_middle_mm"]) <= 4.5, level
        assert abs(ours["posterior"] - peer[f"vertebrae_{level}_height_posterior_mm"]) <= 6.0, level
        volume_peer = peer[f"vertebrae_{level}_volume_ml"]
        assert case.vertebra(level).body_volume_ml == pytest.approx(volume_peer, rel=0.02), level


def test_totalseg_numbered_full_vertebrae(shared_file):
    """TotalSegmentator v2 `total` labels (full vertebrae with posterior elements) read and measured."""
    case, label_map = _case(
        shared_file,
        "totalsegmentator-example/spine_report/totalseg.nii.gz",
        "totalsegmentator-example/example_ct.nii.gz",
    )
    assert label_map.convention == "totalseg_v2"
    levels = [v.level for v in case.vertebrae]
    assert levels == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S"]
    assert case.vertebra("S").genant_grade is None and case.vertebra("S").not_assessed_reason.startswith("sacrum")
    assert not case.vertebra("T11").complete  # 76 voxels at the edge of the field of view
    for level in ("L1", "L2", "L3", "L4"):
        assert case.vertebra(level).genant_grade == 0, case.vertebra(level).grade_reason


def test_tptbox_body_isolation_dice(shared_file):
    import nibabel as nib
    from scipy import ndimage

    label_map = io.read_label_map(shared_file("tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"))
    subregions = np.asanyarray(nib.load(str(shared_file("tptbox/sub-ct_seg-subreg_label-22_msk.nii.gz"))).dataobj)
    volume = label_map.volume
    objects = ndimage.find_objects(volume.array.astype(np.int32))
    work = {label: measure._load_vertebra(volume, label, objects[label - 1]) for label in (21, 22, 23)}
    measure._assign_superior_axes(work, lambda v: v.centroid)
    for vertebra in work.values():
        measure._isolate_body(vertebra, volume)
    l3 = work[22]
    assert l3.canal_centre is not None
    body = np.zeros(volume.shape, dtype=bool)
    voxels = np.argwhere(l3.mask)[l3.body] + np.array([s.start for s in l3.crop])
    body[tuple(voxels.T)] = True
    reference = np.isin(subregions, [49, 50]) & (volume.array == 22)
    dice = 2 * np.count_nonzero(body & reference) / (np.count_nonzero(body) + np.count_nonzero(reference))
    assert dice >= 0.90


def test_tptbox_crop_partial_neighbours(shared_file):
    case, _ = _case(shared_file, "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz", "tptbox/sub-ct_label-22_ct.nii.gz")
    assert [v.complete for v in case.vertebrae] == [False, True, False]
    assert case.vertebra("L3").heights_mm["posterior"] == pytest.approx(27.0, abs=3.0)


def test_dicom_series_with_totalseg_labels(shared_file):
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct_dicom"))
    assert ct.shape == (512, 512, 20)
    assert ct.spacing == pytest.approx([0.9765625, 0.9765625, 2.0])
    assert ct.axis_codes() == "LPS"
    assert ct.meta["dicom"]["kvp"] == 120.0
    assert -1100 < float(ct.array.min()) < -900  # JPEG 2000 decoded and rescaled to HU
    label_map = io.read_label_map(
        shared_file("totalsegmentator-example/example_seg_dicom.nii.gz"), "totalseg_v2", reference=ct
    )
    assert label_map.present == [18, 19]  # T11, T12
    case = measure.measure_case(label_map.volume, ct)
    assert [(v.level, v.complete) for v in case.vertebrae] == [("T11", False), ("T12", False)]
    assert case.patient.graded_levels == []


def test_label_map_on_another_grid_is_resampled(shared_file):
    """The LAS label map of the DICOM series lands on the DICOM (LPS) grid voxel for voxel."""
    import nibabel as nib

    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct_dicom"))
    label_map = io.read_label_map(
        shared_file("totalsegmentator-example/example_seg_dicom.nii.gz"), "totalseg_v2", reference=ct
    )
    assert label_map.volume.same_grid(ct)
    raw = nib.load(str(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz")))
    raw_t12 = np.count_nonzero(np.asanyarray(raw.dataobj) == 32)
    assert np.count_nonzero(label_map.volume.array == 19) == raw_t12
