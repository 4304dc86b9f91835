"""The clinical report written from a case in an MRML scene (slicer-core): what the module's *Write report* does.

Real data: the example CT (NIfTI) with its vertebral-body label map, and the real JPEG 2000 DICOM series of the same
project with its TotalSegmentator v2 labels (copied with a patient name and ID filled in, so the header and the
de-identified export can be checked). The reviewer's overrides must be what the report, screening.json and the
DICOM SR show; the automatic values stay recorded beside them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (PyPI) is needed for MRML tests")
pydicom = pytest.importorskip("pydicom")

from VertebralFractureLib import io
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.morphometry import measure
from VertebralFractureLib.slicer import mrml

CT = "totalsegmentator-example/example_ct.nii.gz"
BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
DICOM_SERIES = "totalsegmentator-example/example_ct_dicom"
DICOM_LABELS = "totalsegmentator-example/example_seg_dicom.nii.gz"
PATIENT = {"PatientName": "Quirinius^Zyxwvut", "PatientID": "MRN83726154"}


@pytest.fixture(scope="module")
def example(shared_file):
    ct = io.read_ct(shared_file(CT))
    body_labels = io.read_label_map(shared_file(BODIES), reference=ct).volume
    return {"ct_path": shared_file(CT), "labels": body_labels, "case": measure.measure_case(body_labels, ct)}


@pytest.fixture()
def nifti_case(example):
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, example["ct_path"], "CT")
    case = mrml.VertebralFractureCase.create(volume_node, labels=example["labels"],
                                             case=copy.deepcopy(example["case"]))
    case.start_observing()
    yield context, case
    case.stop_observing()


@pytest.fixture(scope="module")
def dicom_series(shared_file, tmp_path_factory) -> list[str]:
    """The example series with a patient name and ID and the UIDs a PACS series has (its own are blank); files in
    slice order."""
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("series")
    study, series = generate_uid(), generate_uid()
    for path in sorted(shared_file(DICOM_SERIES).iterdir()):
        dataset = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(dataset, keyword, value)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.save_as(folder / f"{path.name}.dcm", enforce_file_format=True)
    return io.list_dicom_series(folder)[0]["files"]


@pytest.fixture()
def dicom_case(dicom_series, shared_file):
    context = mrml.new_scene()
    volume_node = mrml.load_dicom_series_node(context.scene, dicom_series, "3: CT abdomen")
    labels = io.read_label_map(shared_file(DICOM_LABELS), "totalseg_v2", reference=mrml.volume_from_node(volume_node))
    case = mrml.VertebralFractureCase.create(volume_node, labels=labels.volume)
    return context, case


def _rows(html: str, level: str) -> str:
    """The report table's row for one level (its cells up to the row's end)."""
    start = html.index(f"<td>{level}</td>")
    return html[start:html.index("</tr>", start)]


# ---- report from a NIfTI CT ------------------------------------------------------------------------------------


def test_report_shows_the_reviewers_grades(nifti_case, tmp_path):
    context, case = nifti_case
    assert case.vertebra("L2").genant_grade == 0  # a normal spine: the fracture below is the reviewer's
    case.set_grade_override("L2", 3)
    case.set_morphology_override("L2", "crush")
    case.set_reviewed("L2")
    written = mrml.write_screening_report(case.table_node, tmp_path / "report")

    for name in ("report_html", "report_pdf", "screening_json", "results.json", "vertebrae.csv", "overview.png"):
        assert written[name].is_file() and written[name].stat().st_size > 0, name
        assert written[name].parent == tmp_path / "report"
    assert written["report_pdf"].read_bytes().startswith(b"%PDF")

    data = json.loads(written["screening_json"].read_text())
    l2 = next(v for v in data["case"]["vertebrae"] if v["level"] == "L2")
    assert (l2["grade_override"], l2["morphology_override"], l2["reviewed"]) == (3, "crush", True)
    assert l2["genant_grade"] == 0  # the automatic grade stays recorded
    recommendation = data["screening"]["recommendation"]
    assert recommendation["action"] == "refer"  # a grade-3 fracture asks for a fracture-liaison referral
    assert "L2" in recommendation["statement"] and "grade 3" in recommendation["statement"]
    assert any("grade 3 severe crush (set by the reviewer)" in reason for reason in recommendation["reasons"])
    assert data["screening"]["level"] == "L1" and 50 < data["screening"]["measured_hu"] < 250

    html = written["report_html"].read_text(encoding="utf-8")
    assert "3 severe" in _rows(html, "L2") and "crush" in _rows(html, "L2")
    assert "0 normal" in _rows(html, "L3")
    assert "(set by the reviewer)" in html
    # No DICOM source: no patient header, and no SEG/SR asked for.
    assert "dicom_seg" not in written


def test_screening_is_kept_in_the_scene_and_shown_in_the_summary(nifti_case, tmp_path):
    context, case = nifti_case
    assert case.screening() is None and "Recommendation" not in case.summary()
    case.set_grade_override("L3", 2)
    case.write_report(tmp_path / "report", kvp=120, contrast_phase="non-contrast")
    stored = case.screening()
    # A NIfTI CT has no DICOM header: kVp and contrast phase stated by the caller are used.
    assert stored["screening"]["kvp"] == 120
    assert stored["screening"]["contrast"]["phase"] == "non-contrast"
    assert not any("kVp" in caveat for caveat in stored["screening"]["caveats"])
    with pytest.raises(ValueError, match="unknown contrast phase 'venous'"):
        case.write_report(tmp_path / "other", contrast_phase="venous")
    assert not (tmp_path / "other").exists()
    assert stored["grades"]["L3"] == [2, "normal"]
    assert stored["written"]["report_pdf"] == str(tmp_path / "report" / "report.pdf")
    assert stored["screening"]["recommendation"]["action"] == "refer"
    summary = case.summary_node.GetText()
    assert "Recommendation: " in summary and "recommend DXA / fracture-liaison referral" in summary
    assert "grades changed" not in summary
    # The table's trabecular HU is the screening's (one region for measure and screen).
    l1 = next(r for r in mrml.table_rows(case.table_node) if r["Level"] == "L1")
    assert l1["Trabecular HU"] == pytest.approx(stored["screening"]["densities"]["L1"]["median_hu"], abs=0.5)

    # A later review change makes the stored screening out of date, and the summary says so.
    case.set_grade_override("L3", None)
    assert "grades changed since the screening" in case.summary()

    # Saving the scene keeps the screening with the case.
    path = mrml.save_scene(context.scene, tmp_path / "review.mrb")
    other = mrml.new_scene()
    loaded = mrml.load_scene(other.scene, path)[0]
    assert loaded.screening() == stored
    assert "grades changed since the screening" in loaded.summary()


def test_points_moved_without_an_observer_are_used(nifti_case, tmp_path):
    _context, case = nifti_case
    case.stop_observing()
    node = case.line_node("L2", "anterior")
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(1, position)
    superior = case.vertebra("L2").axes_ras["superior"]
    node.SetNthControlPointPositionWorld(1, *[p + 12.0 * s for p, s in zip(position, superior)])
    assert case.vertebra("L2").final_grade == 0  # nothing observed the drag
    written = case.write_report(tmp_path / "report")
    l2 = next(v for v in json.loads(written["screening_json"].read_text())["case"]["vertebrae"] if v["level"] == "L2")
    assert l2["genant_grade"] >= 2 and l2["heights_mm"]["anterior"] < 20.0


def test_dicom_out_on_a_nifti_volume_is_a_clear_error(nifti_case, tmp_path):
    _context, case = nifti_case
    out = tmp_path / "report"
    with pytest.raises(InputError) as error:
        case.write_report(out, dicom_out=True)
    message = str(error.value)
    assert message.startswith("CT: is not a DICOM series") and "\n" not in message
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    assert case.screening() is None


def test_dicom_files_of_another_image_are_refused(nifti_case, dicom_series, tmp_path):
    _context, case = nifti_case
    with pytest.raises(InputError, match="does not lie on a plane of the CT grid"):
        case.write_report(tmp_path / "report", dicom_out=True, dicom_files=dicom_series)


# ---- report from a DICOM series --------------------------------------------------------------------------------


def test_dicom_seg_and_sr_from_explicit_files(dicom_case, dicom_series, tmp_path):
    _context, case = dicom_case
    assert [v.level for v in case.case.vertebrae] == ["T11", "T12"]
    case.set_grade_override("T12", 2)
    written = case.write_report(tmp_path / "report", dicom_out=True, dicom_files=dicom_series)
    source = pydicom.dcmread(dicom_series[0], stop_before_pixels=True)
    source_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in dicom_series}

    seg = pydicom.dcmread(written["dicom_seg"])
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == PATIENT["PatientID"]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} <= source_uids
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["T11", "T12"]

    sr = pydicom.dcmread(written["dicom_sr"])
    assert sr.Modality == "SR"
    evidence = {series.SeriesInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence}
    assert {source.SeriesInstanceUID, seg.SeriesInstanceUID} <= evidence
    codes = set()

    def walk(items):
        for item in items:
            if "ConceptCodeSequence" in item:
                codes.add(str(item.ConceptCodeSequence[0].CodeValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    assert "genant-2" in codes  # the reviewer's grade of T12 (automatic: not graded, cut by the field of view)

    # The report's header comes from the source images.
    html = written["report_html"].read_text(encoding="utf-8")
    assert "Zyxwvut Quirinius" in html or "Quirinius Zyxwvut" in html
    assert PATIENT["PatientID"] in html


def test_source_files_found_from_the_node(dicom_case, dicom_series, tmp_path, monkeypatch):
    """Without explicit files: the DICOM database (in Slicer), else the node's storage node."""
    _context, case = dicom_case
    node = case.volume_node
    uids = node.GetAttribute(mrml.DICOM_UIDS_ATTRIBUTE).split()
    assert len(uids) == len(dicom_series)

    # MRML core alone: no database; the storage node's files are those instances.
    assert getattr(slicer, "dicomDatabase", None) is None
    assert mrml.dicom_files_of_volume(node) == dicom_series

    class Database:  # the two members of ctkDICOMDatabase the lookup uses
        isOpen = True

        def __init__(self, files):
            self.files = files

        def fileForInstance(self, uid):  # noqa: N802 (ctk's name)
            return self.files.get(uid, "")

    by_uid = dict(zip(uids, dicom_series))
    monkeypatch.setattr(slicer, "dicomDatabase", Database(by_uid), raising=False)
    assert mrml.dicom_files_of_volume(node) == dicom_series
    written = case.write_report(tmp_path / "report", dicom_out=True)
    assert pydicom.dcmread(written["dicom_seg"], stop_before_pixels=True).Modality == "SEG"

    # A database without the series (e.g. loaded by a script): the storage node still knows the files...
    monkeypatch.setattr(slicer, "dicomDatabase", Database({uid: path for uid, path in list(by_uid.items())[1:]}))
    assert mrml.dicom_files_of_volume(node) == dicom_series
    # ... unless the volume no longer has them (saved as NRRD, or files moved): a clear error, nothing written.
    node.SetAndObserveStorageNodeID(None)
    with pytest.raises(InputError, match="1 of its 20 DICOM images are not in the DICOM database"):
        case.write_report(tmp_path / "again", dicom_out=True)
    assert not (tmp_path / "again").exists()
    # Without dicom_out the report is still written, only without the patient header from the DICOM files.
    assert case.write_report(tmp_path / "plain")["report_html"].is_file()


def test_deidentified_export(dicom_case, dicom_series, tmp_path):
    _context, case = dicom_case
    case.set_grade_override("T12", 1)
    out = tmp_path / "share"
    written = case.write_report(out, dicom_out=True, deidentify=True, pseudonym="CASE-0001")
    assert {"report_html", "report_pdf", "screening_json", "dicom_seg", "dicom_sr", "dicom_series"} <= set(written)
    seg = pydicom.dcmread(written["dicom_seg"], stop_before_pixels=True)
    assert seg.PatientID == "CASE-0001" and seg.PatientIdentityRemoved == "YES"
    for path in (p for p in out.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for value in (*PATIENT.values(), "Quirinius", "Zyxwvut"):
            assert value.encode() not in content, f"{path.name} holds {value}"
    data = json.loads(written["screening_json"].read_text())
    assert data["deidentified"] is True
    assert next(v for v in data["case"]["vertebrae"] if v["level"] == "T12")["grade_override"] == 1
    # The case in the scene keeps its inputs: only the export is scrubbed.
    assert case.case.inputs["ct"] == "3: CT abdomen"


# ---- documentation ---------------------------------------------------------------------------------------------


def test_report_example_of_the_docs_runs(shared_file, tmp_path):
    """The report example in the README's Scripting section runs as written (outside Slicer)."""
    repository = Path(__file__).resolve().parents[1]
    section = (repository / "README.md").read_text(encoding="utf-8").split("### Scripting", 1)[1]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section.split("\n### ", 1)[0], re.DOTALL)
              if "write_report" in b]
    assert len(blocks) == 1, "the README has no report example in its Scripting section"
    data = shared_file(DICOM_SERIES).parents[1]
    env = dict(os.environ, VERTEBRAL_FRACTURE_DATA=str(data), PYTHONPATH=str(repository))
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("report.html", "report.pdf", "screening.json", "vertebrae_seg.dcm", "measurements_sr.dcm"):
        assert (tmp_path / "report" / name).is_file(), name
    assert "T12" in result.stdout.splitlines()[-1]  # the recommendation names the reviewer's grade-2 fracture


# ---- one output folder per case ---------------------------------------------------------------------------------


def test_two_cases_in_one_scene_write_to_their_own_folders(example, tmp_path):
    """One reports folder, two patients in one scene: each case's report goes to its own folder, named after the
    case, and stays there when the other case is written; the panel's record of each case (kept in the scene)
    points to that case's own files. With one folder for the scene, B's report replaced A's files while A's record
    still pointed there."""
    context = mrml.new_scene()
    cases = {}
    for name in ("Patient A CT", "Patient B CT"):
        volume_node = mrml.load_volume_node(context.scene, example["ct_path"], name)
        cases[name] = mrml.VertebralFractureCase.create(volume_node, labels=example["labels"],
                                                        case=copy.deepcopy(example["case"]))
    case_a, case_b = cases["Patient A CT"], cases["Patient B CT"]
    case_b.set_grade_override("L2", 3)
    reports = tmp_path / "reports"
    folder_a, folder_b = case_a.report_folder(reports), case_b.report_folder(reports)
    assert folder_a != folder_b and folder_a.parent == folder_b.parent == reports
    assert folder_a.name.startswith("Patient-A-CT-") and folder_b.name.startswith("Patient-B-CT-")
    case_a.write_report(folder_a)
    case_b.write_report(folder_b)
    case_a.write_report(case_a.report_folder(reports))  # again: the same folder, replaced as one set

    for case, grade in ((case_a, None), (case_b, 3)):  # B's reviewer graded L2 a 3; A's did not
        written = {key: Path(path) for key, path in case.screening()["written"].items()}
        assert {path.parent for path in written.values()} == {case.report_folder(reports)}
        results = json.loads(written["results.json"].read_text())
        assert next(v for v in results["vertebrae"] if v["level"] == "L2")["grade_override"] == grade
    assert sorted(p.name for p in reports.iterdir()) == sorted([folder_a.name, folder_b.name])

    # Two CTs of the same name still get two folders; the folder of a case survives saving and loading the scene.
    same_name = mrml.VertebralFractureCase.create(case_a.volume_node, labels=example["labels"],
                                                  case=copy.deepcopy(example["case"]))
    assert same_name.report_folder(reports) not in (folder_a, folder_b)
    path = mrml.save_scene(context.scene, tmp_path / "two.mrb")
    loaded = {case.volume_node.GetName(): case for case in mrml.load_scene(mrml.new_scene().scene, path)
              if case.screening() is not None}
    assert loaded["Patient A CT"].report_folder(reports) == folder_a
    assert loaded["Patient B CT"].report_folder(reports) == folder_b


def test_deidentified_folder_names_carry_no_patient_detail(nifti_case, tmp_path):
    _context, case = nifti_case
    case.volume_node.SetName("Quirinius^Zyxwvut 1970")
    folder = case.report_folder(tmp_path, deidentify=True, pseudonym="CASE 0001")
    assert folder.name == f"CASE-0001-{case.case_id}"
    assert case.report_folder(tmp_path, deidentify=True).name.startswith("deidentified-")
    assert case.report_folder(tmp_path).name.startswith("Quirinius-Zyxwvut-1970-")  # the clinician's own copy


# ---- DICOM outputs in a Slicer whose pydicom changed on disk since it was imported -------------------------------


def test_dicom_seg_and_sr_after_pydicom_changed_under_the_running_process(dicom_series, shared_file, tmp_path):
    """Slicer 5.10 imports pydicom 2.4.4 at start-up; installing highdicom upgrades pydicom on disk, and from then on
    ``import highdicom`` fails in that Slicer (the loaded pydicom 2.4 lacks what highdicom 0.26 imports). Here a
    process is put in the same state (its pydicom module says 2.4.4, the installed one is newer, and highdicom
    cannot be imported in it); the report with DICOM SEG + SR must still be written, without a restart."""
    script = f"""
import json, sys
import pydicom
pydicom.__version__ = "2.4.4"  # what Slicer 5.10 loaded before the install
sys.modules["highdicom"] = None  # import highdicom fails here, as it does beside a stale pydicom
from VertebralFractureLib import io
from VertebralFractureLib.slicer import mrml
files = json.loads({json.dumps(json.dumps([str(f) for f in dicom_series]))})
context = mrml.new_scene()
node = mrml.load_dicom_series_node(context.scene, files, "3: CT abdomen")
labels = io.read_label_map({str(shared_file(DICOM_LABELS))!r}, "totalseg_v2", reference=mrml.volume_from_node(node))
case = mrml.VertebralFractureCase.create(node, labels=labels.volume)
case.set_grade_override("T12", 2)
written = case.write_report({str(tmp_path / "report")!r}, dicom_out=True)
row = next(r for r in mrml.table_rows(case.table_node) if r["Level"] == "T12")
print(json.dumps({{"written": {{k: str(v) for k, v in written.items()}}, "stored": case.screening(),
                  "t12_hu": row["Trabecular HU"], "highdicom_here": sys.modules["highdicom"] is not None}}))
"""
    repository = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(repository)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["highdicom_here"] is False  # written by a fresh process, not by this one
    seg = pydicom.dcmread(answer["written"]["dicom_seg"])
    assert seg.Modality == "SEG" and [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["T11", "T12"]
    assert pydicom.dcmread(answer["written"]["dicom_sr"]).Modality == "SR"
    stored = answer["stored"]
    assert stored["grades"]["T12"] == [2, "normal"] or stored["grades"]["T12"][0] == 2
    assert set(stored["written"]) >= {"report_pdf", "dicom_seg", "dicom_sr"}
    # The screening's trabecular HU reached the case in the scene (the table), as when written in-process.
    density = stored["screening"]["densities"].get("T12")
    if density is not None:
        assert answer["t12_hu"] == pytest.approx(density["median_hu"], abs=0.5)
