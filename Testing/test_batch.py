"""The headless batch script on real CTs (NIfTI, a DICOM series) with label maps matched by case name."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "VertebralFracture" / "Batch" / "VertebralFractureBatch.py"


def _load_batch():
    spec = importlib.util.spec_from_file_location("VertebralFractureBatch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture()
def folders(shared_file, tmp_path):
    """An input folder mixing formats and a broken file, and a label-map folder matched by case name."""
    inputs, segs = tmp_path / "in", tmp_path / "seg"
    inputs.mkdir()
    segs.mkdir()
    example = shared_file("totalsegmentator-example/example_ct.nii.gz")
    (inputs / "lumbar.nii.gz").symlink_to(example)
    (inputs / "thoracolumbar_dicom").symlink_to(shared_file("totalsegmentator-example/example_ct_dicom"),
                                               target_is_directory=True)
    (inputs / "l3crop.nii.gz").symlink_to(shared_file("tptbox/sub-ct_label-22_ct.nii.gz"))
    (inputs / "broken.nii.gz").write_bytes(example.read_bytes()[:5000])  # truncated download
    (inputs / "notes.txt").write_text("not an image")
    (segs / "lumbar_seg.nii.gz").symlink_to(
        shared_file("totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"))
    (segs / "thoracolumbar_dicom.nii.gz").symlink_to(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz"))
    (segs / "l3crop_seg-vert_msk.nii.gz").symlink_to(shared_file("tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"))
    return inputs, segs, tmp_path / "out"


def test_batch_processes_every_case_and_records_failures(folders):
    inputs, segs, out = folders
    batch = _load_batch()
    code = batch.main(["--input", str(inputs), "--output", str(out), "--seg-dir", str(segs), "-q"])
    assert code == 1  # the broken file failed
    rows = _summary(out)
    assert set(rows) == {"lumbar", "thoracolumbar_dicom", "l3crop", "broken"}

    lumbar = rows["lumbar"]
    assert lumbar["status"] == "assessed" and lumbar["levels"] == "T12 L1 L2 L3 L4 L5"
    assert lumbar["worst_grade"] == "0" and lumbar["fractured_levels"] == ""
    assert 50 < float(lumbar["l1_trabecular_hu"]) < 250
    results = json.loads((out / "lumbar" / "results.json").read_text())
    assert [v["level"] for v in results["vertebrae"]] == ["T12", "L1", "L2", "L3", "L4", "L5"]

    dicom = rows["thoracolumbar_dicom"]
    assert dicom["status"] == "assessed", dicom["reason"]
    assert dicom["segmentation"].endswith("thoracolumbar_dicom.nii.gz")
    assert set(dicom["levels"].split()) == {"T11", "T12"}  # both cut by the 20-slice field of view
    assert dicom["worst_grade"] == ""

    crop = rows["l3crop"]
    assert crop["status"] == "assessed" and "L3" in crop["levels"].split()

    broken = rows["broken"]
    assert broken["status"] == "failed"
    assert "broken.nii.gz" in broken["reason"] and "\n" not in broken["reason"]
    assert (out / "broken" / "error.txt").exists()
    assert not (out / "broken" / "results.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("totalsegmentator") is not None,
                    reason="TotalSegmentator is installed here: its backend would not fail")
def test_case_without_a_label_map_goes_to_the_backend(folders):
    inputs, segs, out = folders
    (segs / "l3crop_seg-vert_msk.nii.gz").unlink()
    (inputs / "broken.nii.gz").unlink()
    batch = _load_batch()
    code = batch.main(["--input", str(inputs), "--output", str(out), "--seg-dir", str(segs), "--backend",
                       "totalsegmentator", "--no-report", "-q"])
    assert code == 1
    rows = _summary(out)
    assert rows["lumbar"]["status"] == "assessed"
    assert rows["l3crop"]["status"] == "failed"
    assert "the totalsegmentator backend needs" in rows["l3crop"]["reason"]
    # An unknown backend is an argument error: nothing runs.
    assert batch.main(["-i", str(inputs), "-o", str(out / "again"), "--backend", "none-such", "-q"]) == 2
    assert not (out / "again").exists()


def test_label_map_matching_by_case_name(tmp_path):
    batch = _load_batch()
    for name in ("case1.nii.gz", "case10_seg.nii.gz", "case1_seg-vert_msk.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    assert batch.find_label_map(tmp_path, "case1").name == "case1.nii.gz"  # the exact name wins
    assert batch.find_label_map(tmp_path, "case10").name == "case10_seg.nii.gz"
    assert batch.find_label_map(tmp_path, "case2") is None
    (tmp_path / "case1.nii.gz").unlink()
    assert batch.find_label_map(tmp_path, "case1").name == "case1_seg-vert_msk.nii.gz"
    (tmp_path / "case1.seg.nrrd").write_bytes(b"x")
    assert batch.find_label_map(tmp_path, "case1").name == "case1.seg.nrrd"
    (tmp_path / "case1.seg.nrrd").unlink()
    (tmp_path / "case1-other.nii.gz").write_bytes(b"x")
    from VertebralFractureLib.errors import InputError

    with pytest.raises(InputError, match="2 label maps match case 'case1'"):
        batch.find_label_map(tmp_path, "case1")


def test_script_runs_as_a_program_with_exit_codes(folders, tmp_path):
    inputs, segs, out = folders
    (inputs / "broken.nii.gz").unlink()
    (inputs / "thoracolumbar_dicom").unlink()
    (inputs / "l3crop.nii.gz").unlink()
    ok = subprocess.run([sys.executable, str(SCRIPT), "--input", str(inputs), "--output", str(out), "--seg-dir",
                         str(segs), "--save-scene"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "1 case: 1 assessed, 0 findings withheld, 0 qc-failed, 0 failed; summary:" in ok.stdout
    assert (out / "lumbar" / "lumbar.mrb").stat().st_size > 100_000

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = subprocess.run([sys.executable, str(SCRIPT), "--input", str(empty), "--output", str(out)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert nothing.returncode == 2 and "no CT found" in nothing.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "--input" in bad.stderr


def test_review_scene_written_by_the_batch_loads_with_its_case(folders):
    pytest.importorskip("slicer", reason="slicer-core (PyPI) is needed for scenes")
    from VertebralFractureLib.slicer import mrml

    inputs, segs, out = folders
    for name in ("broken.nii.gz", "thoracolumbar_dicom", "l3crop.nii.gz"):
        (inputs / name).unlink()
    batch = _load_batch()
    assert batch.main(["--input", str(inputs), "--output", str(out), "--seg-dir", str(segs), "--save-scene",
                       "-q"]) == 0
    cases = mrml.load_scene(mrml.new_scene().scene, out / "lumbar" / "lumbar.mrb")
    assert [v.level for v in cases[0].case.vertebrae] == ["T12", "L1", "L2", "L3", "L4", "L5"]


def test_batch_appends_cases_to_a_curated_dataset(folders):
    import nibabel as nib

    inputs, segs, out = folders
    (inputs / "broken.nii.gz").unlink()
    dataset = out.parent / "dataset"
    batch = _load_batch()
    assert batch.main(["--input", str(inputs), "--output", str(out), "--seg-dir", str(segs), "--export-dataset",
                       str(dataset), "-q"]) == 0
    rows = _summary(out)
    subjects = sorted(row["dataset_subject"] for row in rows.values())
    assert subjects == ["sub-vf0001", "sub-vf0002", "sub-vf0003"]
    lumbar = rows["lumbar"]["dataset_subject"]
    labels = nib.load(dataset / "derivatives" / lumbar / f"{lumbar}_seg-vert_msk.nii.gz")
    assert sorted(int(v) for v in set(labels.get_fdata().ravel().tolist()) if v) == [19, 20, 21, 22, 23, 24]
    with open(dataset / "grades.csv", newline="") as handle:
        graded = list(csv.DictReader(handle))
    assert {row["subject"] for row in graded} == set(subjects)
    names = [str(p.relative_to(dataset)) for p in dataset.rglob("*")]
    assert not any(case in name for case in rows for name in names)  # case names stay out of the dataset


# ---- headless in Slicer: every failure ends the application with a code ------------------------------------------

EMULATOR = REPOSITORY / "Testing" / "slicer_command_line.py"
HEADLESS_LIMIT_S = 60
"""The batch must end Slicer within this many seconds of a failure (an unattended run must never hang)."""


def _in_slicer(mode: str, *options: str, arguments=()) -> subprocess.CompletedProcess:
    """The batch script as Slicer runs it (see slicer_command_line.py); a hang fails the test at the limit."""
    return subprocess.run([sys.executable, str(EMULATOR), mode, *options, str(SCRIPT), *arguments],
                          capture_output=True, text=True, timeout=HEADLESS_LIMIT_S, cwd=REPOSITORY)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("mode", ["--python-script", "--shebang"])
def test_pip_failure_in_slicer_ends_the_batch_with_one_line(mode, shared_file, tmp_path):
    """Offline, the package install fails: Slicer must exit non-zero with pip's reason on one line (with
    ``--python-script`` Slicer stays open after an uncaught exception unless the script exits it)."""
    example = shared_file("totalsegmentator-example/example_ct.nii.gz")
    result = _in_slicer(mode, "--pip-offline", arguments=["-i", str(example.parent), "-o", str(tmp_path / "out")])
    assert result.returncode == 3, result.stderr[-3000:]
    assert _error_lines(result) == [_error_lines(result)[0]] and "nibabel" in _error_lines(result)[0]
    assert "pip could not install" in _error_lines(result)[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_unexpected_exception_in_slicer_ends_the_batch(shared_file, tmp_path):
    example = shared_file("totalsegmentator-example/example_ct.nii.gz")
    result = _in_slicer("--python-script", "--raise-in", "VertebralFractureLib.batch:run_batch",
                        arguments=["-i", str(example.parent), "-o", str(tmp_path / "out")])
    assert result.returncode == 3, result.stderr[-3000:]
    assert _error_lines(result) == ["error: run_batch failed unexpectedly"]


def test_bad_arguments_in_slicer_end_with_code_2(tmp_path):
    result = _in_slicer("--python-script", arguments=["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(_error_lines(result)) == 1
