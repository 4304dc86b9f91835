"""Valid but unusual geometry, made from real shared files by the test: oblique and resampled fields of view, masks on
cropped grids, headers and data mirrored front to back. Each must be measured right or not graded, never graded
wrong (the example CT and its masks hold no fracture; sub-verse004's radiologists graded T9, T10 and L1)."""

from __future__ import annotations

import json

import altered_inputs as altered
import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.io import field_of_view
from VertebralFractureLib.morphometry import measure


def _run(argv, out, capsys):
    code = cli.main([*argv, "--out", str(out), "-q"])
    capsys.readouterr()
    assert code in (0, 5), code
    record = json.loads((out / "results.json").read_text())
    screening = out / "screening.json"
    return code, record, json.loads(screening.read_text())["screening"] if screening.exists() else None


def _grades(record) -> dict:
    return {v["level"]: v.get("genant_grade") for v in record["vertebrae"]}


def _measure(seg, ct=None):
    ct_volume = io.read_ct(ct) if ct is not None else None
    case = measure.measure_case(io.read_label_map(seg, reference=ct_volume).volume, ct_volume)
    return case, {v.level: v for v in case.vertebrae}


# ---- fields of view ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1])
def test_oblique_field_of_view_cut_is_not_a_fracture(root, tmp_path, capsys, axis):
    """The example CT with its affine rotated 10 degrees: the working grid's box around it held air where the field
    of view ends, whose oblique edge read as a sloping endplate ("grade 3 wedge fracture of T12", levels
    confirmed, exit 0)."""
    ct = altered.rotated_nifti(root / altered.EXAMPLE_CT, tmp_path, axis, 10.0, "rotated.nii.gz")
    _, record, _ = _run(["analyze", "-i", str(ct)], tmp_path / "out", capsys)
    grades = _grades(record)
    assert all(grade in (None, 0) for grade in grades.values()), grades
    cut = [v for v in record["vertebrae"] if not v.get("complete", True)]
    assert cut and all("field of view" in v["incomplete_reason"] or "edge" in v["incomplete_reason"] for v in cut)


def test_oblique_dicom_series_cut_is_not_a_fracture(root, tmp_path, capsys):
    folder = altered.rotated_dicom(root, tmp_path, 0, 10.0)
    assert io.read_ct(folder).direction_ras[2, 2] == pytest.approx(np.cos(np.deg2rad(10.0)), abs=1e-3)
    _, record, _ = _run(["analyze", "-i", str(folder)], tmp_path / "out", capsys)
    assert all(grade in (None, 0) for grade in _grades(record).values())
    assert not any(v.get("complete", True) and v.get("genant_grade") is not None and v["level"] == "T12"
                   for v in record["vertebrae"])


def test_resampled_ct_keeps_its_field_of_view(root, tmp_path, capsys):
    """The example CT resampled to 0.75 x 0.75 x 1 mm (padding beyond the old last slice): the cut T12 was counted
    complete ("grade 2 wedge fracture"), and L1's 3 mm-mask wedge was graded as if drawn on 1 mm voxels."""
    fine = altered.resampled_nifti(root / altered.EXAMPLE_CT, tmp_path, (0.75, 0.75, 1.0), "fine.nii.gz")
    assert field_of_view.padding_value(io.read_ct(fine).array) == -1024.0
    assert field_of_view.padding_value(io.read_ct(root / altered.EXAMPLE_CT).array) is None
    case, by_level = _measure(root / altered.EXAMPLE_BODIES, fine)
    assert not by_level["T12"].complete and "resampled from" in by_level["T12"].incomplete_reason
    assert by_level["L1"].voxel_extent_mm > 3.0  # the mask's own 3 mm voxels, not the CT's 1 mm
    assert all(v.genant_grade in (None, 0) for v in case.vertebrae)
    _, record, _ = _run(["analyze", "-i", str(fine)], tmp_path / "out", capsys)
    grades = _grades(record)
    assert grades.get("T12") is None and all(grade in (None, 0) for grade in grades.values()), grades


def test_mask_on_a_cropped_grid_is_cut_at_the_crop(root, tmp_path):
    """The example's body mask stored on a grid cropped through L1 ("fractured: L1; grade 3")."""
    crop = altered.cropped_nifti(root / altered.EXAMPLE_BODIES, tmp_path, (slice(None), slice(None), slice(0, 97)),
                                 "cropped.nii.gz")
    case, by_level = _measure(crop, root / altered.EXAMPLE_CT)
    assert not by_level["L1"].complete and "field of view" in by_level["L1"].incomplete_reason
    assert all(v.genant_grade in (None, 0) for v in case.vertebrae)
    # The same crop without the CT: the array's own edge cuts L1 (unchanged behaviour).
    _, alone = _measure(crop)
    assert not alone["L1"].complete and "boundary plane" in alone["L1"].incomplete_reason


# ---- front and back ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axes", [(1,), (0, 1)], ids=["mirrored front to back", "LPS written as RAS"])
def test_header_front_and_back_checked_against_the_canal(root, tmp_path, capsys, axes):
    """sub-verse004 with a header that turns its front to the back: "fractured: T9, T10, L1, L4, L5" (radiologists:
    T9, T10, L1)."""
    source = root / altered.VERSE004
    mirrored = altered.header_mirrored(source, tmp_path, axes, "mirrored.nii.gz")
    _, reference, _ = _run(["measure", "--seg", str(source)], tmp_path / "reference", capsys)
    _, record, _ = _run(["measure", "--seg", str(mirrored)], tmp_path / "out", capsys)
    assert _grades(record) == _grades(reference)
    assert {level for level, grade in _grades(record).items() if grade} == {"T9", "T10", "L1"}
    assert any("front and back taken from the anatomy" in w and "spinal canal" in w for w in record["warnings"])
    assert not any("front and back" in w for w in reference["warnings"])
    for mine, theirs in zip(record["vertebrae"], reference["vertebrae"]):
        for name, value in (theirs.get("heights_mm") or {}).items():
            assert mine["heights_mm"][name] == pytest.approx(value, abs=0.3), (mine["level"], name)


def test_bodies_only_mask_mirrored_checked_against_the_lordosis(root, tmp_path):
    """The example's bodies-only mask mirrored front to back, no CT: "L3 grade 2, L5 grade 2"."""
    mirrored = altered.header_mirrored(root / altered.EXAMPLE_BODIES, tmp_path, (1,), "mirrored.nii.gz")
    case, _ = _measure(mirrored)
    assert all(v.genant_grade in (None, 0) for v in case.vertebrae)
    assert any("lordosis" in w for w in case.warnings)
    reference, _ = _measure(root / altered.EXAMPLE_BODIES)
    assert not any("front and back" in w for w in reference.warnings)


def test_ct_flipped_front_to_back_checked_against_its_canal(root, tmp_path, capsys):
    """The example CT's data flipped front to back, header unchanged: "grade 2 wedge fracture of L5"."""
    flipped = altered.data_flipped(root / altered.EXAMPLE_CT, tmp_path, 1, "flipped.nii.gz")
    _, record, _ = _run(["analyze", "-i", str(flipped)], tmp_path / "out", capsys)
    assert all(grade in (None, 0) for grade in _grades(record).values()), _grades(record)
    assert any("front and back taken from the anatomy" in w and "in the CT" in w for w in record["warnings"])


@pytest.mark.parametrize("voxels", [-7, -8])
def test_bodies_only_mask_moved_backwards_onto_the_arches_is_not_graded(root, tmp_path, capsys, voxels):
    """The example's bodies-only mask moved 21-24 mm backwards against its CT (3 mm voxels, RAS: axis 1 is
    posterior-anterior): it sits on the arches, the bone in front of it encloses the canal, and the CT's canal
    "turned" the header ("L5 grade 2 moderate wedge, height loss 44 %", exit 0). The lumbar curve contradicts it:
    no grade, quality control failed, and it says why."""
    moved = altered.shifted_labels(root, tmp_path, altered.EXAMPLE_BODIES, axis=1, voxels=voxels)
    code, record, screening = _run(["report", "--seg", str(moved), "-i", str(root / altered.EXAMPLE_CT)],
                                   tmp_path / "out", capsys)
    assert code == 5
    assert all(grade is None for grade in _grades(record).values()), _grades(record)
    assert record["quality"]["status"] == "failed"
    assert record["front_back_doubt"].startswith("not established: in ")
    assert any(w.startswith("quality control: front and back: not established") for w in record["warnings"])
    assert screening["level"] is None  # no density from a mask off its bodies
    # In place, the same mask and CT: front and back established, nothing in doubt.
    _, reference, _ = _run(["report", "--seg", str(root / altered.EXAMPLE_BODIES), "-i",
                            str(root / altered.EXAMPLE_CT)], tmp_path / "reference", capsys)
    assert reference["front_back_doubt"] is None and reference["quality"]["status"] == "passed"
