"""Which vertebrae are measured and graded: the field of view's truncation against a tight crop, and the levels
Genant grading is defined for. Real VerSe masks (two of them stored cropped to their labels' bounding box)."""

from __future__ import annotations

import numpy as np
import pytest

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import grade, measure
from VertebralFractureLib.results import VertebraResult


def _sub_volume(volume: io.Volume, region: tuple[slice, slice, slice]) -> io.Volume:
    """A crop of a volume that keeps every voxel where it was in the world."""
    offset = np.array([s.start or 0 for s in region], dtype=float)
    cropped = volume.with_array(np.ascontiguousarray(volume.array[region]))
    cropped.ijk_to_ras = volume.ijk_to_ras.copy()
    cropped.ijk_to_ras[:3, 3] = volume.ijk_to_world(offset)[0]
    return cropped


@pytest.mark.parametrize(
    "subject, edge_levels",
    [("sub-verse007", ("T9", "L3")), ("sub-verse008", ("T12", "L4", "L5"))],
)
def test_bodies_touching_the_edge_of_a_bounding_box_crop_are_measured(shared_file, subject, edge_levels):
    labels = io.read_label_map(shared_file(f"verse19/{subject}_seg-vert_msk.nii.gz")).volume
    case = measure.measure_case(labels)
    for level in edge_levels:
        vertebra = case.vertebra(level)
        assert vertebra.complete, vertebra.incomplete_reason
        assert vertebra.genant_grade == 0, vertebra.grade_reason  # radiologists: normal
    assert case.patient.incomplete_levels == []


@pytest.fixture(scope="module")
def verse010(shared_file):
    return io.read_label_map(shared_file("verse19/sub-verse010_seg-vert_msk.nii.gz")).volume


@pytest.mark.parametrize("keep", ["cranial", "caudal"])
def test_a_body_truncated_through_its_middle_stays_incomplete(verse010, keep):
    # PIR: axis 1 runs inferior. Cut through the middle of L3 (VerSe id 22), keeping one side of it.
    middle = int(np.median(np.argwhere(verse010.array == 22)[:, 1]))
    region = (slice(None), slice(0, middle) if keep == "cranial" else slice(middle, None), slice(None))
    case = measure.measure_case(_sub_volume(verse010, region))
    l3 = case.vertebra("L3")
    assert not l3.complete and l3.genant_grade is None
    assert "edge" in l3.incomplete_reason
    kept = ("L1", "L2") if keep == "cranial" else ("L4", "L5")
    assert all(case.vertebra(level).complete for level in kept)


def test_a_stray_voxel_on_the_edge_does_not_cut_a_body(verse010):
    # Crop to the labels' bounding box, then put one voxel of L2 on the array's edge beside it.
    inside = np.argwhere(verse010.array > 0)
    region = tuple(slice(low, high + 1) for low, high in zip(inside.min(axis=0), inside.max(axis=0)))
    cropped = _sub_volume(verse010, region)
    l2 = np.argwhere(cropped.array == 21)
    stray = l2[np.argmin(l2[:, 0])].copy()
    cropped.array[0, stray[1], stray[2]] = 21
    case = measure.measure_case(cropped)
    assert all(v.complete for v in case.vertebrae if v.level != "S"), case.patient.incomplete_levels
    assert case.vertebra("L2").genant_grade == 0


@pytest.mark.slow
def test_cervical_levels_are_listed_not_graded(shared_file):
    labels = io.read_label_map(shared_file("ungraded-masks/sub-gl017_seg-vert_msk.nii.gz")).volume
    case = measure.measure_case(labels)
    for level in ("C1", "C2", "C3", "C7", "T1", "T3"):
        vertebra = case.vertebra(level)
        assert vertebra.genant_grade is None and vertebra.fracture_score is None
        assert vertebra.not_assessed_reason and vertebra.centroid_ras is not None
    assert "cervical" in case.vertebra("C2").not_assessed_reason
    assert case.vertebra("T4").genant_grade == 0 and case.vertebra("T4").not_assessed_reason is None
    assert case.patient.graded_levels == ["T4"]
    assert not any(level.startswith("C") for level in case.patient.fractured_levels)
    assert not any(warning.startswith("C") for warning in case.warnings)


def _normal(level, label):
    return VertebraResult(label=label, level=level, heights_mm={"anterior": 20.0, "middle": 19.5, "posterior": 21.0})


def test_upper_thoracic_on_request_and_transitional_levels():
    spine = [_normal("T2", 9), _normal("T3", 10), _normal("T4", 11), _normal("T12", 19), _normal("T13", 28),
             _normal("L1", 20), _normal("L5", 24), _normal("L6", 25), _normal("S", 26)]
    grade.grade_vertebrae(spine)
    graded = {v.level for v in spine if v.genant_grade is not None}
    assert graded == {"T4", "T12", "T13", "L1", "L5", "L6"}
    assert spine[-1].not_assessed_reason.startswith("sacrum")
    grade.grade_vertebrae(spine, grade.GradingRules(include_upper_thoracic=True))
    assert {v.level for v in spine if v.genant_grade is not None} == graded | {"T2", "T3"}


def test_new_fields_round_trip():
    vertebra = VertebraResult(label=3, level="C3", fracture_score=0.1234, not_assessed_reason="cervical")
    data = vertebra.to_dict()
    assert data["fracture_score"] == 0.123 and data["not_assessed_reason"] == "cervical"
    assert VertebraResult.from_dict(data).not_assessed_reason == "cervical"


def test_a_notch_on_the_mid_sagittal_plane_is_not_a_fracture(shared_file):
    """sub-verse007 T10 (radiologists: normal): on the single mid-sagittal plane its anterior line falls into a notch
    of the mask (11.9 mm against 21.3 mm in the middle); over the central planes its heights are those of a normal
    vertebra."""
    labels = io.read_label_map(shared_file("verse19/sub-verse007_seg-vert_msk.nii.gz")).volume
    case = measure.measure_case(labels)
    t10 = case.vertebra("T10")
    assert t10.genant_grade == 0, t10.grade_reason
    assert t10.heights_mm["anterior"] > 0.9 * t10.heights_mm["posterior"]
    grades = {v.level: v.genant_grade for v in case.vertebrae}
    assert grades["T12"] >= 2 and grades["L1"] >= 2  # radiologists: grade 2 both
