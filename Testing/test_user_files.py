"""No input or other user file is ever deleted or replaced, and nothing is written outside the output folder: real
shared files copied into folders the way users lay them out, through the Lib and the command line."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import altered_inputs as altered
import pytest

from VertebralFractureLib import batch, cli, pipeline
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.outputs import publish
from VertebralFractureLib.segment import models


def _digests(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``folder`` (what must stay as it was)."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _refused(argv, capsys, *words) -> str:
    code = cli.main([*argv, "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---- an output folder that holds the run's inputs ---------------------------------------------------------------


def test_analyze_into_the_folder_of_its_ct_is_refused(root, tmp_path, capsys):
    """``analyze -i incase/ct.nii.gz -o incase`` deleted the CT (the old set it replaced held it)."""
    case = tmp_path / "incase"
    case.mkdir()
    shutil.copy(root / altered.EXAMPLE_CT, case / "ct.nii.gz")
    before = _digests(tmp_path)
    _refused(["analyze", "-i", str(case / "ct.nii.gz"), "-o", str(case), "--backend", "classical"], capsys,
             "incase: holds an input of this run")
    assert _digests(tmp_path) == before


def test_measure_into_the_folder_of_its_label_map_is_refused(root, tmp_path, capsys):
    """``measure --seg case/labels.nii.gz -o case`` deleted labels.nii.gz and ct.nii.gz."""
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(root / altered.EXAMPLE_BODIES, case / "labels.nii.gz")
    shutil.copy(root / altered.EXAMPLE_CT, case / "ct.nii.gz")
    before = _digests(tmp_path)
    _refused(["measure", "--seg", str(case / "labels.nii.gz"), "-o", str(case)], capsys, "holds an input")
    with pytest.raises(InputError, match="holds an input of this run"):
        pipeline.analyze(pipeline.AnalysisRequest(seg=case / "labels.nii.gz", screen=False, report=False), case)
    assert _digests(tmp_path) == before


def test_report_into_the_folder_of_its_inputs_is_refused(root, tmp_path, capsys):
    """``report --seg case2/segmentation.nii.gz -i case2/ct.nii.gz -o case2`` deleted the CT and replaced the
    segmentation: the inputs bear output names, and the folder has no manifest."""
    case = tmp_path / "case2"
    case.mkdir()
    shutil.copy(root / altered.EXAMPLE_BODIES, case / "segmentation.nii.gz")
    shutil.copy(root / altered.EXAMPLE_CT, case / "ct.nii.gz")
    before = _digests(tmp_path)
    _refused(["report", "--seg", str(case / "segmentation.nii.gz"), "-i", str(case / "ct.nii.gz"), "-o", str(case)],
             capsys, "holds an input")
    # The same files read from elsewhere: their names match output names, yet this program did not write them.
    _refused(["report", "--seg", str(root / altered.EXAMPLE_BODIES), "-i", str(root / altered.EXAMPLE_CT),
              "-o", str(case)], capsys, "did not write (ct.nii.gz, segmentation.nii.gz)")
    assert _digests(tmp_path) == before


def test_only_files_in_the_manifest_are_replaced(root, tmp_path, capsys):
    """A published set is replaced by the next run; a file added to it, or one of its files changed, makes the
    folder the user's: refused, nothing touched."""
    out = tmp_path / "out"
    argv = ["measure", "--seg", str(root / altered.EXAMPLE_BODIES), "-o", str(out), "-q"]
    assert cli.main(argv) == 0
    listed = publish.read_manifest(out)
    assert set(listed) == {"segmentation.nii.gz", "results.json", "vertebrae.csv", "overview.png"}
    assert cli.main(argv) == 0  # its own set: replaced
    capsys.readouterr()

    (out / "ct.nii.gz").write_bytes((root / altered.EXAMPLE_CT).read_bytes())  # a name outputs may bear
    before = _digests(out)
    _refused(argv[:-1], capsys, "did not write (ct.nii.gz)")
    assert _digests(out) == before
    (out / "ct.nii.gz").unlink()

    with open(out / "vertebrae.csv", "a") as handle:
        handle.write("my note\n")
    before = _digests(out)
    _refused(argv[:-1], capsys, "changed since this program wrote them (vertebrae.csv)")
    assert _digests(out) == before


def test_a_file_added_while_the_run_works_is_kept(root, tmp_path, monkeypatch):
    """The check is repeated at publishing; a file slipped in between is kept, never emptied with the old set."""
    out = tmp_path / "out"
    request = pipeline.AnalysisRequest(seg=root / altered.EXAMPLE_BODIES, screen=False, report=False)
    pipeline.analyze(request, out)
    original = pipeline.write_files

    def write_then_user_drops_a_file(*args, **kwargs):
        written = original(*args, **kwargs)
        (out / "mine.txt").write_text("mine")
        return written

    monkeypatch.setattr(pipeline, "write_files", write_then_user_drops_a_file)
    with pytest.raises(InputError, match=r"did not write \(mine.txt\)"):
        pipeline.analyze(request, out)
    assert (out / "mine.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".staging-", ".replaced-"))]


def test_recovery_touches_only_its_own_staging_folder(root, tmp_path):
    """A run on ``P/res`` removed the live staging folder of a run on ``P/res-2`` (the glob matched it)."""
    neighbour = tmp_path / f".staging-res-2-{os.getpid() + 1}-abcd1234"
    neighbour.mkdir()
    (neighbour / "results.json").write_text("{}")
    dead = tmp_path / ".staging-res-999999999-abcd1234"  # this folder's own, of a dead run
    dead.mkdir()
    with publish.OutputSet(tmp_path / "res") as staging:
        (staging / "results.json").write_text("{}")
    assert (neighbour / "results.json").exists()
    assert not dead.exists()
    assert publish.read_manifest(tmp_path / "res") == {
        "results.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}}


# ---- batch: case names, links, duplicates ----------------------------------------------------------------------


def _batch(argv, capsys) -> tuple[int, str]:
    code = cli.main(["batch", *argv, "--no-report", "-q"])
    return code, capsys.readouterr().err


def test_batch_case_names_stay_inside_the_output_folder(root, tmp_path, capsys):
    """CSV case names ``../../escaped`` and ``/abs_case`` wrote whole output sets outside the output folder."""
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    case_list = work / "cases.csv"
    with open(case_list, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "ct", "seg"])
        for name in ("../../escaped", "/abs_case"):
            writer.writerow([name, root / altered.EXAMPLE_CT, root / altered.EXAMPLE_BODIES])
    outside_before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    code, err = _batch(["--input", str(case_list), "--output", str(work / "out")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (work / "out").iterdir() if p.is_dir()) == ["abs_case", "escaped"]
    assert (work / "out" / "escaped" / "results.json").is_file()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert [p for p in written if p not in outside_before and not p.startswith("deep/work/out")] == []
    assert not Path("/abs_case").exists()
    assert batch.safe_case_name("../../escaped", "x") == "escaped" and batch.safe_case_name("..", "row2") == "row2"


def test_batch_reads_each_series_once_through_a_symlink_loop(root, tmp_path):
    """A symlink loop around a DICOM series made the batch analyse one series 41 times."""
    studies = tmp_path / "studies"
    series = studies / "patient" / "series"
    series.mkdir(parents=True)
    for path in sorted((root / altered.EXAMPLE_DICOM).iterdir()):
        (series / path.name).symlink_to(path)
    (series / "loop").symlink_to(studies / "patient", target_is_directory=True)
    (studies / "again").symlink_to(series, target_is_directory=True)
    cases = batch.find_cases(studies)
    assert len(cases) == 1 and cases[0].path.resolve() == series.resolve()  # the first way there in name order


def test_batch_cases_sharing_a_name_get_their_own_folders(root, tmp_path, capsys):
    """``case1.nii.gz`` and ``case1.nrrd`` shared one folder (the second case's report replaced the first's)."""
    import SimpleITK as sitk

    studies, out = tmp_path / "studies", tmp_path / "out"
    studies.mkdir()
    shutil.copy(root / altered.EXAMPLE_CT, studies / "case1.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(root / altered.EXAMPLE_CT)), str(studies / "case1.nrrd"))
    segs = tmp_path / "segs"
    segs.mkdir()
    shutil.copy(root / altered.EXAMPLE_BODIES, segs / "case1_seg.nii.gz")
    before = _digests(studies)
    code, err = _batch(["--input", str(studies), "--output", str(out), "--seg-dir", str(segs)], capsys)
    assert code == 0, err
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"case1.nii.gz", "case1.nrrd"}
    assert {Path(row["input"]).name for row in rows.values()} == {"case1.nii.gz", "case1.nrrd"}
    assert all((out / name / "results.json").is_file() for name in rows)
    assert _digests(studies) == before


def test_batch_output_holding_its_inputs_is_refused(root, tmp_path, capsys):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(root / altered.EXAMPLE_CT, studies / "ct.nii.gz")
    before = _digests(studies)
    code, err = _batch(["--input", str(studies), "--output", str(studies)], capsys)
    assert code == 2 and err.strip() == (f"error: {studies}: holds an input of this run ({studies}); the output "
                                         "folder is replaced as a whole: choose another output folder")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.csv").write_text("my own table\n")
    code, err = _batch(["--input", str(studies), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "summary.csv this program did not write" in err
    assert (tmp_path / "out" / "summary.csv").read_text() == "my own table\n"
    assert _digests(studies) == before


# ---- models remove ----------------------------------------------------------------------------------------------


def test_models_remove_deletes_only_inside_the_cache(tmp_path, capsys):
    """``models remove PATH --yes`` deleted a folder outside the model cache."""
    elsewhere = tmp_path / "my_model"
    (elsewhere / "configs").mkdir(parents=True)
    (elsewhere / "model.json").write_text("{}")
    cache = models.models_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "linked").symlink_to(elsewhere, target_is_directory=True)
    for name in (str(elsewhere), f"../../{elsewhere.name}", "linked"):
        code = cli.main(["models", "remove", name, "--yes"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "deletes only inside" in err
        assert (elsewhere / "model.json").is_file()
