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


@pytest.mark.parametrize("order", ["F", "C"])
def test_label_boxes_and_extents_of_a_real_mask(shared_file, order):
    """Boxes, counts, centroids, edge contact and head-to-foot span of every label of a real VerSe mask (stored in F
    order, as NIfTI arrays are read, and in C order), against scipy's find_objects and every voxel counted directly;
    the mask is cropped so that labels touch the array's edge, and one value is left out (a gap in the ids)."""
    import nibabel as nib
    from scipy import ndimage

    from VertebralFractureLib.io import Volume

    image = nib.load(shared_file("verse19/sub-verse004_seg-vert_msk.nii.gz"))
    stored = np.asanyarray(image.dataobj).astype(np.int16)[:, 40:-60, :]
    stored[stored == 21] = 0
    array = np.asfortranarray(stored) if order == "F" else np.ascontiguousarray(stored)
    volume = Volume(array=array, ijk_to_ras=image.affine)
    boxes = labels.label_boxes(array)
    assert boxes == ndimage.find_objects(array)
    assert labels.present_labels(array) == [16, 17, 18, 19, 20, 22, 23, 24]
    extents = labels.label_extents(volume, boxes)
    assert sorted(extents) == labels.present_labels(array)
    superior = int(np.argmax(np.abs(volume.direction_ras[2])))
    for label, extent in extents.items():
        voxels = np.argwhere(array == label)
        assert extent.count == len(voxels)
        assert np.allclose(extent.centroid_ras, volume.ijk_to_world(voxels.mean(axis=0))[0], atol=1e-9)
        assert extent.touches_edge == bool(np.any(voxels == 0) or np.any(voxels == np.array(array.shape) - 1))
        planes = np.ptp(voxels[:, superior]) + 1
        assert extent.span_superior_mm == pytest.approx(
            planes * volume.spacing[superior] * abs(volume.direction_ras[2, superior]))
    assert any(extent.touches_edge for extent in extents.values())
    assert not all(extent.touches_edge for extent in extents.values())
    assert labels.label_boxes(np.zeros((3, 4, 5), dtype=np.uint8)) == []
