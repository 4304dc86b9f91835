"""The MRML logic and every review rule, on real MRML (slicer-core) and real CT / masks from the shared data.

The example CT (TotalSegmentator, lumbar, 3 mm) with its vertebral-body label map is a normal spine; the VerSe
subject 004 mask (oblique PIR geometry) has a radiologist-graded severe L1 fracture.
"""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (PyPI) is needed for MRML tests")

from VertebralFractureLib import io
from VertebralFractureLib.io import labels
from VertebralFractureLib.morphometry import grade, measure
from VertebralFractureLib.results import HEIGHT_NAMES
from VertebralFractureLib.slicer import mrml

CT = "totalsegmentator-example/example_ct.nii.gz"
BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
TOTALSEG = "totalsegmentator-example/spine_report/totalseg.nii.gz"
VERSE004 = "verse19/sub-verse004_seg-vert_msk.nii.gz"


@pytest.fixture(scope="module")
def example(shared_file):
    """CT and VerSe-id body labels read by the Lib, and the case measured once on them (tests copy it)."""
    ct = io.read_ct(shared_file(CT))
    body_labels = io.read_label_map(shared_file(BODIES), reference=ct).volume
    case = measure.measure_case(body_labels, ct)
    return {"ct_path": shared_file(CT), "ct": ct, "labels": body_labels, "case": case}


@pytest.fixture()
def scene_with_case(example):
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "Patient Name CT")
    case = mrml.VertebralFractureCase.create(volume_node, labels=example["labels"],
                                             case=copy.deepcopy(example["case"]))
    case.start_observing()
    yield context, case
    case.stop_observing()


def _row(case, level):
    return next(r for r in mrml.table_rows(case.table_node) if r["Level"] == level)


def _comparable(rows):
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in rows]


def _move_point(case, level, height, side, distance_mm):
    """Move one morphometry point along the vertebra's cranio-caudal axis, as a drag in a view does."""
    node = case.line_node(level, height)
    index = 0 if side == "superior" else 1
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, position)
    superior = np.asarray(case.vertebra(level).axes_ras["superior"])
    node.SetNthControlPointPositionWorld(index, *(np.asarray(position) + distance_mm * superior))


# ---- geometry --------------------------------------------------------------------------------------------------


def test_volume_node_round_trip_keeps_voxels_and_geometry(example, shared_file):
    context = mrml.new_scene()
    node = mrml.load_volume_node(context.scene, example["ct_path"])
    volume = mrml.volume_from_node(node)
    assert volume.shape == example["ct"].shape  # IJK, not the KJI of arrayFromVolume
    assert np.array_equal(volume.array, example["ct"].array)
    assert np.allclose(volume.ijk_to_ras, example["ct"].ijk_to_ras, atol=1e-4)
    assert slicer.util.arrayFromVolume(node).shape == tuple(reversed(volume.shape))

    # Oblique PIR geometry (VerSe): Lib -> node -> Lib keeps matrix and voxels.
    verse = io.read_label_map(shared_file(VERSE004)).volume
    verse_node = mrml.add_volume_node(context.scene, verse, "verse", label_map=True)
    back = mrml.volume_from_node(verse_node)
    assert np.allclose(back.ijk_to_ras, verse.ijk_to_ras, atol=1e-4)
    assert np.array_equal(back.array, verse.array)
    assert back.axis_codes() == "PIR"


def test_parent_transform_is_part_of_the_geometry(example):
    context = mrml.new_scene()
    node = mrml.load_volume_node(context.scene, example["ct_path"])
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 12.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(mrml.volume_from_node(node).ijk_to_ras, shift @ example["ct"].ijk_to_ras, atol=1e-4)


# ---- building a case -------------------------------------------------------------------------------------------


def test_case_nodes_from_label_volume(scene_with_case, example):
    _context, case = scene_with_case
    expected_levels = ["T12", "L1", "L2", "L3", "L4", "L5"]
    segments = mrml.vertebra_segments(case.segmentation_node)
    assert [labels.level_name(label) for label in labels.neighbours_in_order(segments)] == expected_levels
    segmentation = case.segmentation_node.GetSegmentation()
    for label, segment_id in segments.items():
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == labels.level_name(label)
        assert np.allclose(segment.GetColor(), mrml.level_color(label))
    # Colours tell neighbours apart.
    assert mrml.level_color(20) != mrml.level_color(21)

    rows = mrml.table_rows(case.table_node)
    assert [r["Level"] for r in rows] == expected_levels
    # A normal spine: every complete vertebra grade 0; T12 is cut by the field of view and not graded.
    assert _row(case, "T12")["Status"].startswith("not graded")
    for row in rows[1:]:
        assert row["Grade"] == 0 and row["Auto grade"] == 0 and row["Grade override"] is None
        assert 20.0 < row["Hp"] < 35.0
        assert 50.0 < row["Trabecular HU"] < 250.0

    # What the table view shows: T12 was not graded, so its grade cells are empty (never "nan" or a sentinel -1),
    # while its measured numbers keep their decimals; Reviewed is a check box column.
    table = case.table_node.GetTable()
    t12 = [r["Level"] for r in rows].index("T12")
    shown = {table.GetColumn(c).GetName(): table.GetColumn(c).GetVariantValue(t12).ToString()
             for c in range(table.GetNumberOfColumns())}
    assert shown["Grade"] == shown["Auto grade"] == shown["Grade override"] == ""
    assert not [name for name, text in shown.items() if text.lower() in ("nan", "-1")]
    assert _row(case, "T12")["Grade"] is None
    assert table.GetColumnByName("Reviewed").GetClassName() == "vtkBitArray"
    l1 = table.GetColumnByName("Hp").GetValue([r["Level"] for r in rows].index("L1"))
    assert l1 == f"{_row(case, 'L1')['Hp']:.1f}" and len(l1.split(".")[1]) == 1

    # Three height lines per measured vertebra; their lengths are the heights in the table.
    for vertebra in case.case.vertebrae:
        lines = case.line_nodes(vertebra.level)
        if not vertebra.complete:
            assert lines == []
            continue
        assert sorted(n.GetName() for n in lines) == sorted(f"{vertebra.level} {a}" for a in ("Ha", "Hm", "Hp"))
        for height in HEIGHT_NAMES:
            length = case.line_node(vertebra.level, height).GetLineLengthWorld()
            assert length == pytest.approx(vertebra.heights_mm[height], abs=0.01)
    assert "Fractures: none found" in case.summary_node.GetText()
    assert "L1 trabecular attenuation" in case.summary_node.GetText()


def test_mrml_path_measures_like_the_lib(scene_with_case, example):
    """Through MRML (node arrays, IJK<->KJI, matrices) the case equals measuring the files directly."""
    context, _case = scene_with_case
    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "again")
    measured = mrml.VertebralFractureCase.create(volume_node, labels=example["labels"])
    for direct, through_mrml in zip(example["case"].vertebrae, measured.case.vertebrae, strict=True):
        assert direct.level == through_mrml.level
        assert direct.genant_grade == through_mrml.genant_grade
        if direct.heights_mm:
            for name in HEIGHT_NAMES:
                assert through_mrml.heights_mm[name] == pytest.approx(direct.heights_mm[name], abs=0.01)
        if direct.trabecular_hu is not None:
            assert through_mrml.trabecular_hu == pytest.approx(direct.trabecular_hu, abs=0.5)


def test_case_from_a_totalsegmentator_style_segmentation(example, shared_file):
    """Segments named like TotalSegmentator's ("vertebrae_L1", organs beside them) are read by name."""
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "CT")
    raw = io.read_volume(shared_file(TOTALSEG))
    source = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    source.CreateDefaultDisplayNodes()
    source.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    verse = labels.to_verse(raw.array.astype(np.int32), labels.TOTALSEG_V2)
    for value in (5, 27, 28, 29, 30, 31, 32):  # 5 = liver in TotalSegmentator v2, then L5..T12
        mask = raw.array == value
        name = "liver" if value == 5 else f"vertebrae_{labels.level_name(int(verse[mask][0]))}"
        image = mrml._oriented_image(mask, (0, 0, 0), raw.ijk_to_ras)
        source.AddSegmentFromBinaryLabelmapRepresentation(image, name, (0.5, 0.5, 0.5))

    from_segments = mrml.labels_from_segmentation(source, volume_node)
    expected = np.where(np.isin(verse, [19, 20, 21, 22, 23, 24]), verse, 0)
    assert np.array_equal(from_segments.array, expected)

    case = mrml.VertebralFractureCase.create(volume_node, segmentation_node=source)
    assert [v.level for v in case.case.vertebrae] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert source.GetSegmentation().GetNumberOfSegments() == 7  # the user's node is left as it was
    assert case.segmentation_node is not source
    with pytest.raises(ValueError, match="no segment is named after a vertebra"):
        empty = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
        empty.GetSegmentation().AddEmptySegment("liver")
        mrml.labels_from_segmentation(empty, volume_node)


# ---- review rules ----------------------------------------------------------------------------------------------


def test_dragging_a_point_updates_heights_and_grade_at_once(scene_with_case):
    _context, case = scene_with_case
    before = _row(case, "L2")
    _move_point(case, "L2", "anterior", "inferior", +10.0)  # anterior height 10 mm lower: a wedge
    after = _row(case, "L2")
    assert after["Ha"] == pytest.approx(before["Ha"] - 10.0, abs=0.2)
    assert after["Hp"] == pytest.approx(before["Hp"], abs=0.01)
    assert after["Grade"] >= 2 and after["Morphology"] == "wedge"
    assert "L2" in case.summary_node.GetText()
    assert json.loads(case.table_node.GetAttribute(mrml.CASE_ATTRIBUTE))["patient"]["fractured_levels"] == ["L2"]

    # The whole case was re-graded with the grading rules: identical to grading a copy directly.
    reference = copy.deepcopy(case.case.vertebrae)
    grade.grade_vertebrae(reference)
    assert [v.genant_grade for v in reference] == [v.genant_grade for v in case.case.vertebrae]
    assert [v.expected_posterior_mm for v in reference] == [v.expected_posterior_mm for v in case.case.vertebrae]

    _move_point(case, "L2", "anterior", "inferior", -10.0)
    assert _row(case, "L2")["Grade"] == 0


def test_reading_unmoved_points_reproduces_the_automatic_result(scene_with_case, example):
    _context, case = scene_with_case
    case.update_from_points()
    for automatic, current in zip(example["case"].vertebrae, case.case.vertebrae, strict=True):
        assert current.genant_grade == automatic.genant_grade
        if automatic.heights_mm:
            for name in HEIGHT_NAMES:
                assert current.heights_mm[name] == pytest.approx(automatic.heights_mm[name], abs=1e-3)


def test_override_keeps_the_automatic_grade_beside_it(scene_with_case):
    _context, case = scene_with_case
    case.set_grade_override("L1", 2)
    case.set_morphology_override("L1", "biconcave")
    row = _row(case, "L1")
    assert (row["Grade"], row["Auto grade"], row["Grade override"]) == (2, 0, 2)
    assert (row["Morphology"], row["Auto morphology"], row["Morphology override"]) == ("biconcave", "normal",
                                                                                         "biconcave")
    assert "L1 grade 2 moderate biconcave (set by the reviewer)" in case.summary_node.GetText()
    assert case.case.patient.worst_grade == 2

    # Moving points re-grades the automatic value only; the override stays in force.
    # 9 mm off the middle height of the 3 mm example: a loss beyond 3 SD even with its slices' uncertainty.
    _move_point(case, "L1", "middle", "superior", -9.0)
    row = _row(case, "L1")
    assert (row["Grade"], row["Grade override"]) == (2, 2) and row["Auto grade"] >= 1
    _move_point(case, "L1", "middle", "superior", +9.0)

    case.set_grade_override("L1", None)
    case.set_morphology_override("L1", None)
    row = _row(case, "L1")
    assert (row["Grade"], row["Grade override"], row["Morphology override"]) == (0, None, "")
    with pytest.raises(ValueError, match="Genant grade must be"):
        case.set_grade_override("L1", 4)
    with pytest.raises(ValueError, match="morphology must be one of"):
        case.set_morphology_override("L1", "fracture")


def test_reviewed_flag(scene_with_case):
    _context, case = scene_with_case
    case.set_reviewed("L3")
    assert _row(case, "L3")["Reviewed"] == 1 and _row(case, "L4")["Reviewed"] == 0
    assert "Reviewed: 1 of 6" in case.summary()
    case.set_reviewed("L3", False)
    assert _row(case, "L3")["Reviewed"] == 0


def test_fixing_the_level_count_renumbers_segments_points_and_rows(scene_with_case):
    _context, case = scene_with_case
    case.set_reviewed("L3")
    case.set_grade_override("L4", 1)
    heights_l3 = dict(case.vertebra("L3").heights_mm)
    case.set_level("L1", "T12")  # "this is T12": everything moves one level up
    expected = ["T11", "T12", "L1", "L2", "L3", "L4"]
    assert [r["Level"] for r in mrml.table_rows(case.table_node)] == expected
    segments = mrml.vertebra_segments(case.segmentation_node)
    assert sorted(labels.level_name(v) for v in segments) == sorted(expected)
    names = sorted({n.GetName().split()[0] for n in case.line_nodes()})
    assert names == sorted(expected[1:])  # T11 (formerly T12) has no lines: it is incomplete
    line = case.line_node("L2", "anterior")
    assert line.GetNthControlPointLabel(0) == "L2 sa"
    # Review state travels with the vertebra, not with the name.
    assert case.vertebra("L2").reviewed and case.vertebra("L2").heights_mm == heights_l3
    assert case.vertebra("L3").grade_override == 1
    assert case.case.levels_status == "anchored" and case.case.level_corrections == [{"from": "L1", "to": "T12"}]
    segment = case.segmentation_node.GetSegmentation().GetSegment(segments[labels.label_from_level("L2")])
    assert np.allclose(segment.GetColor(), mrml.level_color(labels.label_from_level("L2")))

    # A shift that would push L5 onto the sacrum is refused and changes nothing.
    with pytest.raises(ValueError, match="not a mobile vertebra"):
        case.set_level("L4", "sacrum")
    with pytest.raises(ValueError, match="not a mobile vertebra"):
        case.set_level("T12", "L2")  # L4 would go two down: past L5
    assert [r["Level"] for r in mrml.table_rows(case.table_node)] == expected


def test_remeasure_after_editing_the_segmentation(scene_with_case):
    _context, case = scene_with_case
    case.set_grade_override("L4", 1)
    case.set_reviewed("L4")
    labels_now = mrml.labels_from_segmentation(case.segmentation_node, case.volume_node)
    # Erase the anterior-superior part of L3 (a Segment Editor "erase"): its anterior height falls.
    l3 = labels_now.array == labels.label_from_level("L3")
    vertebra = case.vertebra("L3")
    ijk = np.argwhere(l3)
    world = labels_now.ijk_to_world(ijk)
    centre = np.asarray(vertebra.centroid_ras)
    superior = np.asarray(vertebra.axes_ras["superior"])
    anterior = np.asarray(vertebra.axes_ras["anterior"])
    cut = ((world - centre) @ superior > 2.0) & ((world - centre) @ anterior > 5.0)
    edited = l3.copy()
    edited[tuple(ijk[cut].T)] = False
    mrml.update_segment_from_mask(case.segmentation_node, "L3", labels_now.with_array(edited))
    before = case.vertebra("L3").heights_mm["anterior"]
    scene = case.scene
    nodes_before = scene.GetNumberOfNodes()

    case.remeasure()
    assert scene.GetNumberOfNodes() == nodes_before  # old lines replaced, no temporary nodes left behind
    assert case.vertebra("L3").heights_mm["anterior"] < before - 4.0
    assert case.vertebra("L3").genant_grade >= 1
    assert case.vertebra("L4").grade_override == 1 and case.vertebra("L4").reviewed
    assert len(case.line_nodes()) == 15
    assert _row(case, "L3")["Ha"] == pytest.approx(case.vertebra("L3").heights_mm["anterior"], abs=0.05)
    # Observation survives the rebuilt lines.
    _move_point(case, "L5", "posterior", "inferior", +2.0)
    assert _row(case, "L5")["Hp"] == pytest.approx(case.vertebra("L5").heights_mm["posterior"], abs=0.05)


# ---- save / load -----------------------------------------------------------------------------------------------


def test_scene_bundle_round_trip_restores_the_review(scene_with_case, tmp_path):
    context, case = scene_with_case
    _move_point(case, "L2", "anterior", "inferior", +10.0)  # a wedge beyond 3 SD on the 3 mm example
    case.set_grade_override("L3", 1)
    case.set_morphology_override("L3", "crush")
    case.set_reviewed("L4")
    case.set_level("L1", "T12")
    saved = case.case.to_dict()
    saved_rows = mrml.table_rows(case.table_node)
    path = mrml.save_scene(context.scene, tmp_path / "review.mrb")
    assert path.stat().st_size > 100_000

    loaded_context = mrml.new_scene()
    cases = mrml.load_scene(loaded_context.scene, path)
    assert len(cases) == 1
    loaded = cases[0]
    assert loaded.case.to_dict() == saved
    assert _comparable(mrml.table_rows(loaded.table_node)) == _comparable(saved_rows)
    # Renumbered one level up before saving: the former L3 is L2, the former L4 is L3.
    assert loaded.vertebra("L2").grade_override == 1 and loaded.vertebra("L2").morphology_override == "crush"
    assert loaded.vertebra("L3").reviewed and not loaded.vertebra("L2").reviewed
    assert loaded.vertebra("L1").genant_grade >= 1  # the former L2, dragged
    assert sorted(labels.level_name(v) for v in mrml.vertebra_segments(loaded.segmentation_node)) == \
        ["L1", "L2", "L3", "L4", "T11", "T12"]
    assert np.array_equal(mrml.volume_from_node(loaded.volume_node).array,
                          mrml.volume_from_node(case.volume_node).array)
    assert loaded.summary_node.GetText() == case.summary_node.GetText()

    # The loaded case is live: dragging still updates its table.
    loaded.start_observing()
    _move_point(loaded, "L1", "anterior", "inferior", -8.0)
    assert next(r for r in mrml.table_rows(loaded.table_node) if r["Level"] == "L1")["Auto grade"] == 0
    loaded.stop_observing()

    with pytest.raises(ValueError, match="ends with .mrb"):
        mrml.save_scene(context.scene, tmp_path / "review.mrml")
    with pytest.raises(FileNotFoundError):
        mrml.load_scene(mrml.new_scene().scene, tmp_path / "missing.mrb")


# ---- curated training data -------------------------------------------------------------------------------------


def test_export_training_data_in_verse_layout(scene_with_case, example, tmp_path):
    import nibabel as nib

    context, case = scene_with_case
    case.set_grade_override("L1", 1)
    case.set_reviewed("L1")
    dataset = tmp_path / "dataset"
    written = case.export_training_data(dataset)
    assert written["ct"] == dataset / "rawdata" / "sub-vf0001" / "sub-vf0001_ct.nii.gz"
    assert written["labels"] == dataset / "derivatives" / "sub-vf0001" / "sub-vf0001_seg-vert_msk.nii.gz"
    assert written["centroids"].name == "sub-vf0001_seg-subreg_ctd.json"

    ct_image = nib.load(written["ct"])
    assert ct_image.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(ct_image.dataobj), example["ct"].array)
    assert np.allclose(ct_image.affine, example["ct"].ijk_to_ras, atol=1e-4)
    for image in (ct_image, nib.load(written["labels"])):
        for field in ("descrip", "aux_file", "db_name", "intent_name"):
            assert image.header[field].item() == b""
    label_map = io.read_label_map(written["labels"], "verse")
    assert np.array_equal(label_map.volume.array, example["labels"].array)

    centroids = json.loads(written["centroids"].read_text())
    assert centroids[0] == {"direction": list(example["ct"].axis_codes())}
    l1 = next(c for c in centroids[1:] if c["label"] == 20)
    expected = np.argwhere(example["labels"].array == 20).mean(axis=0)
    assert np.allclose([l1["X"], l1["Y"], l1["Z"]], expected, atol=0.06)

    with open(written["grades"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    l1_row = next(r for r in rows if r["level"] == "L1")
    assert (l1_row["subject"], l1_row["genant_grade"], l1_row["automatic_grade"], l1_row["reviewed"]) == \
        ("sub-vf0001", "1", "0", "1")

    # Appending a second case gives a new generated id; nothing in the dataset names the patient.
    second = case.export_training_data(dataset)
    assert second["ct"].parent.name == "sub-vf0002"
    with open(written["grades"], newline="") as handle:
        subjects = {r["subject"] for r in csv.DictReader(handle)}
    assert subjects == {"sub-vf0001", "sub-vf0002"}
    everything = [p for p in dataset.rglob("*") if p.is_file()]
    assert not any("Patient" in p.name or "Name" in p.name for p in everything)
    for path in everything:
        if path.suffix == ".gz":
            assert b"Patient" not in nib.load(path).header.binaryblock
        else:
            assert "Patient" not in path.read_text()
    with pytest.raises(ValueError, match="letters and digits only"):
        case.export_training_data(dataset, subject="../x")


# ---- VerSe: oblique masks and a real fracture ----------------------------------------------------------------


def test_verse_subject_with_a_graded_fracture(shared_file):
    """sub-verse004: radiologists graded L1 severe (3) and T9/T10 moderate; the mask alone is measured."""
    label_map = io.read_label_map(shared_file(VERSE004))
    direct = measure.measure_case(label_map.volume)
    context = mrml.new_scene()
    reference = mrml.add_volume_node(context.scene, label_map.volume.with_array(
        label_map.volume.array.astype(np.int16)), "sub-verse004 grid")
    case = mrml.VertebralFractureCase.create(reference, labels=label_map.volume, volume_is_ct=False)
    assert [v.level for v in case.case.vertebrae] == ["T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    for a, b in zip(direct.vertebrae, case.case.vertebrae, strict=True):
        assert a.genant_grade == b.genant_grade
        if a.points_ras:
            for name, point in a.points_ras.items():
                assert np.allclose(point, b.points_ras[name], atol=0.01)
    assert case.vertebra("L1").genant_grade == 3
    assert _row(case, "L1")["Grade"] == 3
    assert "L1 grade 3" in case.summary()
    case.remeasure()  # no CT: re-measuring keeps to the mask
    assert case.vertebra("L1").genant_grade == 3 and case.vertebra("L1").trabecular_hu is None


def test_review_keeps_grading_upper_thoracic_levels_as_measured(shared_file, tmp_path, capsys):
    """A real T1-L5 mask measured by ``measure --include-upper-thoracic``, reviewed: every re-grade (a dragged
    point, a level fix, the scene read back, a re-measure) keeps T1-T3 graded, as results.json records; a case
    measured without the option keeps them not assessed. Graded against not assessed only, not the grades."""
    from grading_scope import UPPER_THORACIC_MASK, upper_thoracic_status

    from VertebralFractureLib import cli
    from VertebralFractureLib.results import CaseResult

    mask = shared_file(UPPER_THORACIC_MASK)
    assert cli.main(["measure", "--seg", str(mask), "--out", str(tmp_path / "out"), "--include-upper-thoracic",
                     "-q"]) == 0
    capsys.readouterr()
    measured = CaseResult.from_dict(json.loads((tmp_path / "out" / "results.json").read_text()))
    label_map = io.read_label_map(mask).volume
    context = mrml.new_scene()
    grid = mrml.add_volume_node(context.scene, label_map.with_array(label_map.array.astype(np.int16)), "sample grid")
    case = mrml.VertebralFractureCase.create(grid, labels=label_map, case=measured, volume_is_ct=False)
    case.start_observing()
    assert upper_thoracic_status(case.case.vertebrae) == "graded"
    _move_point(case, "T2", "anterior", "inferior", +2.0)
    assert upper_thoracic_status(case.case.vertebrae) == "graded"
    assert _row(case, "T2")["Ha"] == pytest.approx(case.vertebra("T2").heights_mm["anterior"], abs=0.05)
    assert upper_thoracic_status(mrml.VertebralFractureCase.from_table_node(case.table_node).case.vertebrae) == \
        "graded"
    case.set_level("T2", "T1")  # one level up: the former T2-T4 are T1-T3 now, the former T1 is C7
    assert upper_thoracic_status(case.case.vertebrae) == "graded"
    assert case.vertebra("C7").genant_grade is None
    case.remeasure()
    assert upper_thoracic_status(case.case.vertebrae) == "graded"
    assert case.case.inputs["include_upper_thoracic"] is True
    case.stop_observing()

    # Measured in the module without the option (its default), dragged: T1-T3 stay out of the grading.
    plain = mrml.VertebralFractureCase.create(grid, labels=label_map, volume_is_ct=False)
    assert plain.case.inputs["include_upper_thoracic"] is False
    plain.start_observing()
    _move_point(plain, "T2", "anterior", "inferior", +2.0)
    assert upper_thoracic_status(plain.case.vertebrae) == "not assessed"
    plain.stop_observing()
    # Asked for in the module: measured with T1-T3 graded.
    asked = mrml.VertebralFractureCase.create(grid, labels=label_map, volume_is_ct=False, include_upper_thoracic=True)
    assert upper_thoracic_status(asked.case.vertebrae) == "graded"


# ---- clear refusals ------------------------------------------------------------------------------------------


def test_unusable_inputs_are_refused_with_a_reason(scene_with_case):
    context, case = scene_with_case
    empty = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="holds no image data"):
        mrml.volume_from_node(empty)
    with pytest.raises(ValueError, match="give a segmentation node or a label volume"):
        mrml.VertebralFractureCase.create(case.volume_node)
    segmentation = case.segmentation_node.GetSegmentation()
    segmentation.AddEmptySegment("second_L1", "vertebrae_L1")
    with pytest.raises(ValueError, match="both name L1; rename one"):
        mrml.vertebra_segments(case.segmentation_node)
    segmentation.RemoveSegment("second_L1")
    with pytest.raises(KeyError):
        case.set_reviewed("C3")
    with pytest.raises(ValueError, match="not a vertebra level"):
        case.set_level("L1", "X9")


def test_height_lines_keep_exactly_two_points(scene_with_case):
    _context, case = scene_with_case
    line = case.line_node("L3", "middle")
    assert line.GetFixedNumberOfControlPoints()
    line.AddControlPoint(0.0, 0.0, 0.0)
    assert line.GetNumberOfControlPoints() == 2


def test_case_nodes_are_grouped_in_the_data_tree(scene_with_case):
    context, case = scene_with_case
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(case.table_node))
    assert hierarchy.GetItemName(folder) == "Patient Name CT review"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(case.segmentation_node)) == folder
    lines_folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(case.line_node("L1", "anterior")))
    assert hierarchy.GetItemName(lines_folder) == "height lines"
    assert hierarchy.GetItemParent(lines_folder) == folder
    case.remeasure()
    lines_folder_after = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(case.line_node("L1", "anterior")))
    assert lines_folder_after == lines_folder

    # A second analysis of the same CT has a folder of its own.
    second = mrml.VertebralFractureCase.create(case.volume_node, labels=mrml.labels_from_segmentation(
        case.segmentation_node, case.volume_node), case=copy.deepcopy(case.case))
    second_folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(second.table_node))
    assert second_folder != folder and hierarchy.GetItemName(second_folder).endswith("review")
    assert len(mrml.find_cases(context.scene)) == 2


# ---- standard terminology, temporary folders, jobs and the scene -----------------------------------------------


def _terminology(case, level):
    segment_id = mrml.vertebra_segments(case.segmentation_node)[labels.label_from_level(level)]
    return case.segmentation_node.GetSegmentation().GetSegment(segment_id).GetTerminology()


def test_vertebra_segments_carry_the_snomed_codes_of_the_dicom_seg(scene_with_case):
    """Each vertebra segment has Slicer's terminology with the SNOMED CT code DICOM uses for it (CID 7603, the
    same the SEG output writes), and the code follows the level when the levels are renumbered."""
    from VertebralFractureLib.outputs import dicom as dicom_outputs

    _context, case = scene_with_case
    for level in ("T12", "L1", "L2", "L3", "L4", "L5"):
        context_name, category, kind, _modifier, region_context, _region, _region_modifier = \
            _terminology(case, level).split("~")
        assert context_name == "Segmentation category and type - DICOM master list"
        assert category == "SCT^91723000^Anatomical Structure"
        code = dicom_outputs.vertebra_code(level)
        assert kind == f"SCT^{code.value}^{code.meaning}"
        assert region_context == "Anatomic codes - DICOM master list"
    assert _terminology(case, "L1") == mrml.terminology_entry(labels.label_from_level("L1"))
    case.set_level("L1", "T12")  # "this is T12": every vertebra moves one level up, and so do the codes
    assert [labels.level_name(v) for v in labels.neighbours_in_order(mrml.vertebra_segments(case.segmentation_node))] \
        == ["T11", "T12", "L1", "L2", "L3", "L4"]
    assert _terminology(case, "T11").split("~")[2] == "SCT^12989004^T11 vertebra"
    assert _terminology(case, "L1").split("~")[2] == "SCT^66794005^L1 vertebra"
    # No standard code for a transitional level (L6, T13): none rather than a wrong one.
    assert mrml.terminology_entry(labels.label_from_level("L6")) == ""
    case.remeasure()
    assert _terminology(case, "L4").split("~")[2] == "SCT^11994002^L4 vertebra"


def test_new_scene_leaves_no_cache_folder_behind(example, tmp_path):
    """Each new_scene() made a VertebralFracture-cache-* folder in the temporary folder and never removed it: 106
    after one test run. It now goes when its scene is deleted, or at exit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = f"""
import gc, glob, os, sys
from VertebralFractureLib.slicer import mrml
def count():
    return len(glob.glob(os.path.join({str(temporary)!r}, "VertebralFracture-cache-*")))
kept = mrml.new_scene()
for _ in range(3):
    context = mrml.new_scene()
    node = mrml.load_volume_node(context.scene, {str(example["ct_path"])!r})
    mrml.save_scene(context.scene, {str(tmp_path / "scene.mrb")!r})
    mrml.load_scene(mrml.new_scene().scene, {str(tmp_path / "scene.mrb")!r})
    del context, node
gc.collect()
print(count(), os.path.isdir(kept.cache_folder))
"""
    environment = dict(os.environ, TMPDIR=str(temporary), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "True"]  # only the live scene's folder, while it lives
    assert list(temporary.glob("VertebralFracture-cache-*")) == []  # and not even that one after exit


class _Job:
    def __init__(self):
        self.cancelled = 0

    def cancel(self):
        self.cancelled += 1


def test_closing_the_scene_or_removing_the_ct_cancels_the_job(example):
    """A segmentation running when the scene closes (or its CT is deleted) is cancelled, not read back into a scene
    that no longer has its CT."""
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "CT")
    other = mrml.load_volume_node(context.scene, example["ct_path"], "other CT")
    job = _Job()
    stop = mrml.cancel_job_with_scene(context.scene, job, volume_node)
    context.scene.RemoveNode(other)
    assert job.cancelled == 0
    context.scene.Clear(0)
    assert job.cancelled == 1
    context.scene.Clear(0)
    assert job.cancelled == 1  # it stopped watching

    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "CT")
    job = _Job()
    mrml.cancel_job_with_scene(context.scene, job, volume_node)
    context.scene.RemoveNode(volume_node)
    assert job.cancelled == 1

    job = _Job()
    stop = mrml.cancel_job_with_scene(context.scene, job)
    stop()  # the job ended: closing the scene later has nothing to cancel
    context.scene.Clear(0)
    assert job.cancelled == 0
