"""The measure command end to end, and every bad input: one line naming the file, non-zero exit, no outputs."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from grading_scope import UPPER_THORACIC, UPPER_THORACIC_MASK, upper_thoracic_status

from VertebralFractureLib import cli, io
from VertebralFractureLib.cli import entry
from VertebralFractureLib.morphometry import grade
from VertebralFractureLib.outputs import publish
from VertebralFractureLib.results import CaseResult

SEG = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
CT = "totalsegmentator-example/example_ct.nii.gz"


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_measure_writes_results(shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["measure", "--seg", str(shared_file(SEG)), "--ct", str(shared_file(CT)), "--out", str(out)], capsys
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["coordinate_system"] == "RAS"
    l1 = next(v for v in results["vertebrae"] if v["level"] == "L1")
    assert l1["label"] == 20 and l1["complete"] is True and l1["genant_grade"] == 0
    assert set(l1["heights_mm"]) == {"anterior", "middle", "posterior"}
    assert len(l1["points_ras"]) == 6 and all(len(p) == 3 for p in l1["points_ras"].values())
    assert l1["trabecular_hu"] is not None
    assert results["patient"]["worst_grade"] == 0
    rows = list(csv.DictReader((out / "vertebrae.csv").open()))
    assert [r["level"] for r in rows] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    published = sorted(p.name for p in out.iterdir() if p.name != publish.MANIFEST_NAME)
    assert sorted(publish.read_manifest(out)) == published == ["overview.png", "results.json", "segmentation.nii.gz",
                                                               "vertebrae.csv"]
    assert "L1" in stdout


def test_measure_publishes_the_label_map_it_measured(shared_file, tmp_path, capsys):
    """segmentation.nii.gz holds the VerSe ids measured: a given .nii.gz of VerSe ids is published as it is (its
    bytes), a map in another convention as its VerSe ids; measuring either again gives the same results."""
    from VertebralFractureLib.io import labels as labels_mod

    verse = shared_file("verse19/sub-verse005_seg-vert_msk.nii.gz")
    totalseg = shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")
    for name, given in (("verse", verse), ("totalseg", totalseg)):
        out = tmp_path / name
        assert run(["measure", "--seg", str(given), "--out", str(out), "-q"], capsys)[0] == 0
        published = out / "segmentation.nii.gz"
        stored = np.asanyarray(nib.load(given).dataobj)
        voxels = np.asanyarray(nib.load(published).dataobj)
        assert np.array_equal(nib.load(published).affine, nib.load(given).affine)
        if name == "verse":
            assert published.read_bytes() == given.read_bytes()
        else:
            assert voxels.dtype == np.int16
            assert np.array_equal(voxels, labels_mod.to_verse(stored.astype(np.uint8), "totalseg_v2"))
        again = tmp_path / f"{name}-again"
        assert run(["measure", "--seg", str(published), "--out", str(again), "-q"], capsys)[0] == 0
        first, second = (json.loads((folder / "results.json").read_text()) for folder in (out, again))
        assert first["vertebrae"] == second["vertebrae"]


def test_measure_without_ct_reports_no_hu(shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run(
        ["measure", "--seg", str(shared_file("verse19/sub-verse005_seg-vert_msk.nii.gz")), "--out", str(out), "-q"],
        capsys,
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert all(v["trabecular_hu"] is None for v in results["vertebrae"])


def test_measure_grades_upper_thoracic_only_on_request(shared_file, tmp_path, capsys):
    """A real T1-L5 mask measured with and without --include-upper-thoracic: T1-T3 graded or not assessed, the
    choice recorded in results.json, and a re-grade of the case read back (the review's) keeps to it. Which grade
    is not checked, only graded against not assessed."""
    from VertebralFractureLib.slicer import review

    mask = str(shared_file(UPPER_THORACIC_MASK))
    results = {}
    for name, options in (("without", []), ("with", ["--include-upper-thoracic"])):
        code, stdout, _ = run(["measure", "--seg", mask, "--out", str(tmp_path / name), "-q", *options], capsys)
        assert code == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        t1 = next(line for line in stdout.splitlines() if line.split()[:1] == ["T1"])
        assert (grade.not_assessed_reason("T1") in t1) is (name == "without")
    assert results["without"]["inputs"]["include_upper_thoracic"] is False
    assert results["with"]["inputs"]["include_upper_thoracic"] is True
    assert upper_thoracic_status(results["without"]["vertebrae"]) == "not assessed"
    assert upper_thoracic_status(results["with"]["vertebrae"]) == "graded"
    assert not set(UPPER_THORACIC) & set(results["without"]["patient"]["graded_levels"])

    for name, status in (("with", "graded"), ("without", "not assessed")):
        case = CaseResult.from_dict(results[name])
        review.regrade(case)
        assert upper_thoracic_status(case.vertebrae) == status

    # Re-reporting an output from its published label map keeps the choice it was measured with.
    for name, status in (("with", "graded"), ("without", "not assessed")):
        again = tmp_path / f"{name}-again"
        code, _, _ = run(["measure", "--seg", str(tmp_path / name / "segmentation.nii.gz"), "--out", str(again),
                          "-q"], capsys)
        assert code == 0
        record = json.loads((again / "results.json").read_text())
        assert record["inputs"]["include_upper_thoracic"] is (name == "with")
        assert upper_thoracic_status(record["vertebrae"]) == status


def test_slicer_segmentation_by_segment_names(shared_file, tmp_path, capsys):
    import slicerio

    label_map = io.read_label_map(shared_file(SEG))
    volume = label_map.volume
    names = {19: "vertebrae_T12", 20: "vertebrae_L1", 21: "L2", 22: "Vertebra L3", 23: "L4", 24: "L5 vertebra"}
    # Stored label values deliberately differ from VerSe ids: only the names carry the levels.
    stored = np.zeros(volume.shape, dtype=np.uint8)
    segments = []
    for index, (label, name) in enumerate(names.items(), start=1):
        stored[volume.array == label] = index
        segments.append(
            {"id": f"Segment_{index}", "name": name, "labelValue": index, "layer": 0, "color": [0.5, 0.5, 0.5]}
        )
    path = tmp_path / "spine.seg.nrrd"
    slicerio.write_segmentation(
        str(path),
        {
            "voxels": stored,
            "ijkToLPS": (io.LPS_TO_RAS @ volume.ijk_to_ras).tolist(),
            "segments": segments,
            "encoding": "gzip",
        },
    )
    read = io.read_label_map(path)
    assert np.array_equal(read.volume.array, volume.array)
    assert np.allclose(read.volume.ijk_to_ras, volume.ijk_to_ras)


def test_help_on_every_command(capsys):
    parser = entry.build_parser()
    commands = [name for name in parser._subparsers._group_actions[0].choices]
    assert "measure" in commands
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage" in capsys.readouterr().out


# ---- bad inputs ------------------------------------------------------------------------------------------------


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def good_seg(shared_file):
    return shared_file(SEG)


def _bad_cases(tmp_path, good_seg, shared_file):
    data = good_seg.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n")
    plain = tmp_path / "report.txt"
    plain.write_text("hello")
    two_d = _write(tmp_path / "slice.nii.gz", np.zeros((64, 64), dtype=np.uint8))
    four_d = _write(tmp_path / "series.nii.gz", np.zeros((16, 16, 16, 3), dtype=np.uint8))
    empty = _write(tmp_path / "empty.nii.gz", np.zeros((16, 16, 16), dtype=np.uint8))
    organs = np.zeros((16, 16, 16), dtype=np.uint8)
    organs[4:8, 4:8, 4:8] = 1  # spleen in TotalSegmentator numbering, no vertebra
    organs[8:12, 8:12, 8:12] = 200
    unknown = _write(tmp_path / "organs.nii.gz", organs)
    fractional = _write(tmp_path / "fractional.nii.gz", np.full((16, 16, 16), 20.5, dtype=np.float32))
    ct_image = nib.load(str(shared_file(CT)))
    nan_ct_array = np.asanyarray(ct_image.dataobj).astype(np.float32)
    nan_ct_array[10, 10, 10] = np.nan
    nan_ct = _write(tmp_path / "nan_ct.nii.gz", nan_ct_array, ct_image.affine)
    far_affine = ct_image.affine.copy()
    far_affine[:3, 3] += 5000.0
    far_ct = _write(tmp_path / "far_ct.nii.gz", np.asanyarray(ct_image.dataobj), far_affine)
    no_dicom = tmp_path / "no_dicom"
    no_dicom.mkdir()
    (no_dicom / "readme.txt").write_text("no images here")
    two_series = tmp_path / "two_series"
    two_series.mkdir()
    source = shared_file("totalsegmentator-example/example_ct_dicom")
    for index, file in enumerate(sorted(source.iterdir())):
        dataset = pydicom.dcmread(file)
        dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1" if index % 2 else "1.2.826.0.1.3680043.8.498.2"
        dataset.SeriesDescription = "odd" if index % 2 else "even"
        dataset.save_as(two_series / file.name)
    seg = str(good_seg)
    return {
        "missing file": (["--seg", str(tmp_path / "absent.nii.gz")], "absent.nii.gz", "does not exist"),
        "truncated gzip": (["--seg", str(truncated)], "truncated.nii.gz", "truncated or corrupt"),
        "not an image": (["--seg", str(text)], "notes.nii.gz", "not a readable NIfTI"),
        "unsupported file": (["--seg", str(plain)], "report.txt", "not a supported image"),
        "2-D image": (["--seg", str(two_d)], "slice.nii.gz", "2-D"),
        "4-D image": (["--seg", str(four_d)], "series.nii.gz", "4-D"),
        "empty label map": (["--seg", str(empty)], "empty.nii.gz", "empty"),
        "no vertebra labels": (["--seg", str(unknown)], "organs.nii.gz", "no vertebra labels"),
        "non-integer labels": (["--seg", str(fractional)], "fractional.nii.gz", "non-integer"),
        "NaN in CT": (["--seg", seg, "--ct", str(nan_ct)], "nan_ct.nii.gz", "NaN"),
        "no overlap": (["--seg", seg, "--ct", str(far_ct)], "far_ct.nii.gz", "do not overlap"),
        "DICOM folder without images": (["--seg", seg, "--ct", str(no_dicom)], "no_dicom", "no DICOM image"),
        "DICOM folder with two series": (["--seg", seg, "--ct", str(two_series)], "two_series", "--series"),
    }


CASE_NAMES = [
    "missing file",
    "truncated gzip",
    "not an image",
    "unsupported file",
    "2-D image",
    "4-D image",
    "empty label map",
    "no vertebra labels",
    "non-integer labels",
    "NaN in CT",
    "no overlap",
    "DICOM folder without images",
    "DICOM folder with two series",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(name, tmp_path, good_seg, shared_file, capsys):
    argv, file_name, problem = _bad_cases(tmp_path, good_seg, shared_file)[name]
    out = tmp_path / "out"
    code, stdout, stderr = run(["measure", *argv, "--out", str(out), "-q"], capsys)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert file_name in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir())


def test_two_series_listed_and_selectable(tmp_path, good_seg, shared_file, capsys):
    argv, _, _ = _bad_cases(tmp_path, good_seg, shared_file)["DICOM folder with two series"]
    folder = argv[-1]
    with pytest.raises(io.InputError) as error:
        io.read_ct(folder)
    assert "1.2.826.0.1.3680043.8.498.1" in str(error.value) and "1.2.826.0.1.3680043.8.498.2" in str(error.value)
    volume = io.read_ct(folder, series_uid="1.2.826.0.1.3680043.8.498.2")
    assert volume.shape[2] == 10


def test_failed_write_leaves_nothing(shared_file, tmp_path, monkeypatch, capsys):
    import errno

    from VertebralFractureLib.outputs import files as report

    def disk_full(case, labels, ct, destination, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(report, "render_overview", disk_full)
    out = tmp_path / "out"
    code = cli.main(["measure", "--seg", str(shared_file(SEG)), "--out", str(out), "-q"])
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith("error: ") and "overview.png: No space left on device" in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
