"""Morphometry and grading on synthetic spines with known truth (realistic HU, deformities of each grade)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from phantoms import make_spine

from VertebralFractureLib.morphometry import grade, measure

GRADE_REDUCTION = {1: 0.225, 2: 0.32, 3: 0.50}  # the middle of each Genant band
EXACT_HEIGHTS = dataclasses.replace(grade.DEFAULT_RULES, reduction_scale=1.0)
"""A phantom's heights are exact, so its grades follow Genant's bands unscaled (grade.REDUCTION_SCALE maps what a
mask of a real spine shows to a radiologist's visual estimate)."""


def _half_voxel_diagonal(volume) -> float:
    return 0.5 * float(np.linalg.norm(volume.spacing))


def _check(case, truth, tolerance_mm):
    for vertebra in case.vertebrae:
        assert vertebra.complete, vertebra.incomplete_reason
        for name, value in truth.heights_mm[vertebra.level].items():
            assert vertebra.heights_mm[name] == pytest.approx(value, abs=tolerance_mm), (vertebra.level, name)
        assert vertebra.genant_grade == truth.grades[vertebra.level], (vertebra.level, vertebra.grade_reason)
        assert vertebra.morphology == truth.morphology[vertebra.level], (vertebra.level, vertebra.grade_reason)
        # Heights are the distances between the reported points.
        for name in ("anterior", "middle", "posterior"):
            top = np.array(vertebra.points_ras[f"superior_{name}"])
            bottom = np.array(vertebra.points_ras[f"inferior_{name}"])
            assert np.linalg.norm(top - bottom) == pytest.approx(vertebra.heights_mm[name], abs=1e-6)


@pytest.mark.parametrize("morphology", ["wedge", "biconcave", "crush"])
def test_every_grade_of_every_morphology(morphology):
    """1 mm isotropic spine T10-L5: grades 1, 2, 3 of one morphology with normal vertebrae between them."""
    levels = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
    deformed = {"T11": 1, "L1": 2, "L3": 3}
    deformities = {level: (morphology, GRADE_REDUCTION[grade]) for level, grade in deformed.items()}
    ct, labels, truth = make_spine(levels, deformities, spacing=(1.0, 1.0, 1.0), posterior_elements=False, seed=1)
    case = measure.measure_case(labels, ct, rules=EXACT_HEIGHTS)
    _check(case, truth, _half_voxel_diagonal(labels))
    found = {v.level: v.genant_grade for v in case.vertebrae if v.genant_grade}
    assert found == deformed
    assert case.patient.worst_grade == 3
    assert case.patient.fractured_levels == ["T11", "L1", "L3"]


def test_crush_grade_3_with_posterior_elements():
    deformities = {"L2": ("crush", GRADE_REDUCTION[3])}
    ct, labels, truth = make_spine(("T12", "L1", "L2", "L3", "L4"), deformities, spacing=(1.0, 1.0, 1.0))
    case = measure.measure_case(labels, ct, rules=EXACT_HEIGHTS)
    _check(case, truth, _half_voxel_diagonal(labels))


@pytest.mark.parametrize(
    "spacing, tilt_deg, grid_rotation_deg, posterior_elements, tolerance_mm",
    [
        # Thick slices, tilted spine, oblique grid. A binary mask of 3 mm slices places each endplate only to within
        # +-1.5 mm (half a slice), so a height between two endplates is known to one slice thickness.
        ((0.7, 0.7, 3.0), (12.0, 8.0, 5.0), (0.0, 0.0, 20.0), True, 3.0),
        ((1.5, 1.5, 1.5), (-15.0, 5.0, 30.0), (10.0, -5.0, 0.0), False, None),  # bodies only, strong rotation
    ],
)
def test_oblique_anisotropic(spacing, tilt_deg, grid_rotation_deg, posterior_elements, tolerance_mm):
    # Moderate deformities: a mild one (20-25 %) lies within 3 SD of normal once the 3 mm slices' uncertainty of the
    # endplates is counted (the two-criteria rule of grade.py); mild grades are checked on 1 mm masks above.
    deformities = {
        "L1": ("wedge", GRADE_REDUCTION[2]),
        "L2": ("biconcave", GRADE_REDUCTION[2]),
        "L4": ("crush", GRADE_REDUCTION[2]),
    }
    ct, labels, truth = make_spine(
        ("T12", "L1", "L2", "L3", "L4", "L5"),
        deformities,
        spacing=spacing,
        tilt_deg=tilt_deg,
        grid_rotation_deg=grid_rotation_deg,
        posterior_elements=posterior_elements,
        seed=2,
    )
    case = measure.measure_case(labels, ct, rules=EXACT_HEIGHTS)
    _check(case, truth, tolerance_mm or _half_voxel_diagonal(labels))
    # The frame follows the anatomy, not the scanner: the superior axis is the phantom's tilted axis.
    for vertebra in case.vertebrae:
        assert np.dot(vertebra.axes_ras["superior"], truth.superior_axis_ras) > np.cos(np.radians(3))


def test_trabecular_attenuation_is_the_interior_median():
    ct, labels, truth = make_spine(("L1", "L2", "L3"), spacing=(1.0, 1.0, 1.0), trabecular_hu=95.0, noise_hu=25.0)
    case = measure.measure_case(labels, ct, rules=EXACT_HEIGHTS)
    for vertebra in case.vertebrae:
        # The 700 HU cortex and 90 HU discs must stay out of the region.
        assert vertebra.trabecular_hu == pytest.approx(95.0, abs=5.0)
        assert vertebra.trabecular_voxels > 1000
    assert case.patient.l1_trabecular_hu == pytest.approx(95.0, abs=5.0)


def test_vertebra_cut_by_the_field_of_view_is_not_graded():
    ct, labels, _ = make_spine(("L1", "L2", "L3"), spacing=(1.0, 1.0, 1.0), noise_hu=0)
    centre_l1 = np.argwhere(labels.array == 20).mean(axis=0)
    superior_index_axis = int(np.argmax(np.abs(labels.direction_ras[2])))
    cut = [slice(None)] * 3
    # Keep everything below the middle of L1 along the superior axis.
    if labels.direction_ras[2, superior_index_axis] > 0:
        cut[superior_index_axis] = slice(0, int(centre_l1[superior_index_axis]))
    else:
        cut[superior_index_axis] = slice(int(centre_l1[superior_index_axis]), None)
    offset = np.array([s.start or 0 for s in cut], dtype=float)
    cropped = labels.with_array(labels.array[tuple(cut)])
    cropped.ijk_to_ras = labels.ijk_to_ras.copy()
    cropped.ijk_to_ras[:3, 3] = labels.ijk_to_world(offset)[0]
    case = measure.measure_case(cropped, rules=EXACT_HEIGHTS)
    l1 = case.vertebra("L1")
    assert not l1.complete and l1.genant_grade is None and "edge" in l1.incomplete_reason
    assert case.vertebra("L2").complete and case.vertebra("L2").genant_grade == 0
    assert "L1" in case.patient.incomplete_levels


def test_vertebrae_measured_on_several_threads_as_on_one(shared_file, monkeypatch):
    """The vertebrae of a real mask with its fractures (sub-verse004: T9, T10, L1) give the same record, to the
    last digit, measured one after another and on three threads."""
    from VertebralFractureLib import io
    from VertebralFractureLib.results import json_text

    labels = io.read_label_map(shared_file("verse19/sub-verse004_seg-vert_msk.nii.gz")).volume
    records = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        assert measure.measuring_threads() == int(threads)
        records[threads] = json_text(measure.measure_case(labels).to_dict())
    assert records["1"] == records["3"]
    assert '"level": "L1"' in records["3"] and '"genant_grade": 3' in records["3"]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= measure.measuring_threads() <= measure.MAX_MEASURING_THREADS


def test_cleft_bridging_closes_as_scipys_binary_closing():
    """The one-axis closing that bridges short clefts gives the voxels of ndimage.binary_closing by the same line on
    the padded array, on random stacks of every density and gap."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 15)), int(rng.integers(1, 40)))
        inside = rng.random(shape) < rng.random()
        gap = int(rng.integers(1, 6))
        padded = np.pad(inside, ((0, 0), (0, 0), (gap, gap)))
        expected = ndimage.binary_closing(padded, structure=np.ones((1, 1, 2 * gap + 1), dtype=bool))[:, :, gap:-gap]
        assert np.array_equal(measure._closed_along_last_axis(inside, gap), expected)


def test_sections_keep_the_largest_piece_of_each_plane():
    """Known truth: a stack of planes holding pieces of known sizes (a hole in one); each section is the largest
    piece of its plane with its holes filled, the first of two equal ones, and None for an empty plane or one whose
    section is below MIN_SECTION_MM2."""
    pixel_mm2 = measure.DEPTH_STEP_MM * measure.SAMPLE_STEP_MM
    side = int(np.ceil(np.sqrt(measure.MIN_SECTION_MM2 / pixel_mm2))) + 2  # a square just above the minimum
    inside = np.zeros((5, 80, 80), dtype=bool)
    inside[0, 2:2 + side, 2:2 + side] = True
    inside[0, 40:42 + side, 40:42 + side] = True  # larger: kept
    inside[1, 5:45, 5:45] = True
    inside[1, 10:20, 10:20] = False  # a hole: filled
    inside[2, 1:1 + side, 1:1 + side] = True  # two equal pieces: the first in raster order is kept
    inside[2, 50:50 + side, 50:50 + side] = True
    inside[4, 3:6, 3:6] = True  # below the minimum section
    sections = measure._clean_sections(inside)
    expected = np.zeros((80, 80), dtype=bool)
    expected[40:42 + side, 40:42 + side] = True
    assert np.array_equal(sections[0], expected)
    assert sections[1].sum() == 1600 and sections[1][15, 15]
    assert sections[2][1:1 + side, 1:1 + side].all() and sections[2].sum() == side * side
    assert sections[3] is None and sections[4] is None


def test_median_of_a_fitted_line_is_numpys():
    rng = np.random.default_rng(3)
    for size in list(range(1, 40)) * 20:
        values = np.round(rng.normal(scale=rng.choice([1e-3, 1.0, 1e3]), size=size), int(rng.integers(0, 4)))
        assert measure._median(values) == float(np.median(values))
