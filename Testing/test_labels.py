"""Vertebra names and label conventions."""

from __future__ import annotations

import numpy as np
import pytest

from VertebralFractureLib.io import labels


def test_level_names_and_ids_round_trip():
    for label in list(range(1, 25)) + [labels.L6, labels.T13]:
        assert labels.label_from_level(labels.level_name(label)) == label
    assert labels.level_name(20) == "L1" and labels.level_name(19) == "T12" and labels.level_name(7) == "C7"


@pytest.mark.parametrize(
    "name, expected",
    [("L1", 20), ("vertebrae_L1", 20), ("Vertebra T12", 19), ("t9", 16), ("vertebrae_C7", 7), ("sacrum", 26),
     ("L5 vertebra", 24), ("liver", None), ("rib_left_12", None), ("Segment_1", None), ("L 1", 20),
     ("vertebrae_S1", 26), ("disc L1-L2", None), ("T12 rib", None), ("L5-S1 disc", None), ("L1 canal", None)],
)
def test_segment_names(name, expected):
    assert labels.label_from_segment_name(name) == expected


def test_totalsegmentator_v2_to_verse():
    v2 = np.array([0, 25, 26, 27, 31, 32, 43, 44, 50, 5, 60])  # sacrum, S1, L5, L1, T12, T1, C7, C1, organs
    assert labels.to_verse(v2, labels.TOTALSEG_V2).tolist() == [0, 26, 26, 24, 20, 19, 8, 7, 1, 0, 0]


def test_totalsegmentator_v1_to_verse():
    v1 = np.array([18, 22, 23, 34, 35, 41, 1])  # L5, L1, T12, T1, C7, C1, spleen
    assert labels.to_verse(v1, labels.TOTALSEG_V1).tolist() == [24, 20, 19, 8, 7, 1, 0]


def test_convention_detection():
    assert labels.detect_convention([16, 17, 20, 24]) == labels.VERSE
    assert labels.detect_convention([26, 27, 28, 29, 30, 31, 32, 33]) == labels.TOTALSEG_V2


def test_cranio_caudal_order_with_transitional_levels():
    assert labels.neighbours_in_order([26, 25, 20, 28, 19]) == [19, 28, 20, 25, 26]
    assert labels.shift_level(20, -1) == 19 and labels.shift_level(24, 1) == labels.SACRUM
    with pytest.raises(ValueError):
        labels.shift_level(1, -1)
