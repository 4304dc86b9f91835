"""Grading rules on hand-made heights: thresholds, normal anatomy, references, implausible shapes."""

from __future__ import annotations

import pytest

from VertebralFractureLib import grade
from VertebralFractureLib.results import VertebraResult


def _vertebra(level, label, anterior, middle, posterior):
    return VertebraResult(label=label, level=level,
                          heights_mm={"anterior": anterior, "middle": middle, "posterior": posterior})


@pytest.mark.parametrize("reduction, expected", [(0.0, 0), (0.19, 0), (0.20, 1), (0.24, 1), (0.25, 2), (0.40, 3)])
def test_genant_thresholds(reduction, expected):
    assert grade.grade_from_reduction(reduction) == expected


def test_normal_kyphotic_wedging_is_not_a_fracture():
    # Ha/Hp 0.82 at T7: 9 % below the 0.90 normal there, while at L2 the same shape is an 18 % wedge.
    spine = [_vertebra("T6", 13, 19.5, 19.0, 21.0), _vertebra("T7", 14, 18.0, 19.5, 22.0),
             _vertebra("T8", 15, 20.5, 20.0, 22.5)]
    grade.grade_vertebrae(spine)
    assert spine[1].genant_grade == 0
    assert grade.own_shape_reductions({"anterior": 18.0, "middle": 20.0, "posterior": 22.0}, "L2")["wedge"] == \
        pytest.approx(1 - 18 / 22)


def test_crush_needs_the_neighbours():
    spine = [_vertebra("L1", 20, 27.0, 26.0, 27.5), _vertebra("L2", 21, 18.0, 17.5, 18.5),
             _vertebra("L3", 22, 28.0, 27.0, 28.5)]
    grade.grade_vertebrae(spine)
    assert (spine[1].genant_grade, spine[1].morphology) == (2, "crush")
    alone = [_vertebra("L2", 21, 18.0, 17.5, 18.5)]
    grade.grade_vertebrae(alone)
    assert alone[0].genant_grade == 0 and "not assessable" in alone[0].grade_reason


def test_a_fractured_neighbour_does_not_lower_the_expectation():
    # T10 and T11 both lost height; T12 and T9 are normal. The largest scaled estimate is used.
    spine = [_vertebra("T9", 16, 21.0, 20.5, 22.0), _vertebra("T10", 17, 15.5, 15.0, 16.0),
             _vertebra("T11", 18, 16.0, 15.5, 16.5), _vertebra("T12", 19, 25.0, 24.5, 25.5)]
    grade.grade_vertebrae(spine)
    assert spine[1].genant_grade >= 2 and spine[2].genant_grade >= 2
    assert spine[0].genant_grade == 0 and spine[3].genant_grade == 0


@pytest.mark.parametrize("heights", [(26.0, 18.0, 8.0), (20.0, 30.0, 21.0)])
def test_implausible_shapes_are_flagged_not_graded(heights):
    spine = [_vertebra("L1", 20, 27.0, 26.0, 27.5), _vertebra("L2", 21, *heights),
             _vertebra("L3", 22, 28.0, 27.0, 28.5)]
    grade.grade_vertebrae(spine)
    assert spine[1].genant_grade is None and "review the segmentation" in spine[1].grade_reason
    assert spine[0].genant_grade == 0 and spine[2].genant_grade == 0
    assert grade.summarize(spine).graded_levels == ["L1", "L3"]
