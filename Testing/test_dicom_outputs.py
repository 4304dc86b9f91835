"""DICOM SEG and TID 1500 SR written from the real DICOM series, read back with highdicom and pydicom."""

from __future__ import annotations

import numpy as np
import pytest

from VertebralFractureLib import io
from VertebralFractureLib.cli.entry import main
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.outputs import dicom as dicom_outputs
from VertebralFractureLib.screening import recommend as screen

highdicom = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def written(shared_file, tmp_path_factory):
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct_dicom"))
    labels = io.read_label_map(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz"), "totalseg_v2",
                               reference=ct)
    case = screen.case_from_labels(labels.volume)
    # Heights and a grade as a reviewer would set them on the partial T12, so every kind of value is written.
    t12 = case.vertebra("T12")
    t12.heights_mm = {"anterior": 19.25, "middle": 21.5, "posterior": 25.75}
    t12.grade_override, t12.morphology_override = 2, "wedge"
    result = screen.screen_case(labels.volume, ct, case)
    out = tmp_path_factory.mktemp("dicom")
    paths = dicom_outputs.write_dicom_outputs(case, labels.volume, ct, out, result)
    return ct, labels.volume, case, paths


def _code(item):
    return item.CodeValue, item.CodingSchemeDesignator


def _referenced_segment(group) -> tuple[str, int]:
    """(SEG SOP Instance UID, segment number) of a TID 1411 group's "Referenced Segment" (DCM 121191) item, read
    with pydicom (highdicom 0.28's parsed-content accessor for it fails on read-back content)."""
    for item in group[0].ContentSequence:
        if item.ValueType == "IMAGE" and _code(item.ConceptNameCodeSequence[0]) == ("121191", "DCM"):
            reference = item.ReferencedSOPSequence[0]
            return str(reference.ReferencedSOPInstanceUID), int(reference.ReferencedSegmentNumber)
    raise AssertionError("group has no Referenced Segment item")


def test_seg_segments_codes_and_references(written):
    ct, labels, _, paths = written
    seg = highdicom.seg.segread(paths["dicom_seg"])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [str(segments[n].SegmentLabel) for n in sorted(segments)] == ["T11", "T12"]
    assert _code(segments[1].SegmentedPropertyTypeCodeSequence[0]) == ("12989004", "SCT")
    assert _code(segments[2].SegmentedPropertyTypeCodeSequence[0]) == ("23215003", "SCT")
    assert _code(segments[1].SegmentedPropertyCategoryCodeSequence[0]) == ("91723000", "SCT")
    # It references the source series and each source image by the UIDs the source files carry.
    sources, _ = dicom_outputs.read_source_datasets(ct.meta["dicom_files"])
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced_uids = {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence}
    assert referenced_uids <= {s.file_meta.MediaStorageSOPInstanceUID for s in sources}
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_seg_voxels_match_the_label_map(written):
    ct, labels, _, paths = written
    seg = highdicom.seg.segread(paths["dicom_seg"])
    sources, _ = dicom_outputs.read_source_datasets(ct.meta["dicom_files"])
    order = dicom_outputs.slice_indices(sources, ct)
    uid_to_k = {s.SOPInstanceUID: k for s, k in zip(sources, order)}
    for number, verse_id in ((1, 18), (2, 19)):
        uids = [uid for uid in uid_to_k if (labels.array[:, :, uid_to_k[uid]] == verse_id).any()]
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number])
        for uid, frame in zip(uids, frames[..., 0]):
            expected = labels.array[:, :, uid_to_k[uid]].T == verse_id  # rows along j, columns along i
            assert np.array_equal(frame.astype(bool), expected)


def test_sr_values_codes_and_references(written):
    ct, _, case, paths = written
    seg = highdicom.seg.segread(paths["dicom_seg"])
    sr = highdicom.sr.srread(paths["dicom_sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert _code(sr.ConceptNameCodeSequence[0]) == ("126000", "DCM")  # Imaging Measurement Report (TID 1500)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # Evidence: the CT series and the SEG.
    evidence = {item.SeriesInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for item in study.ReferencedSeriesSequence}
    sources, _ = dicom_outputs.read_source_datasets(ct.meta["dicom_files"])
    assert {sources[0].SeriesInstanceUID, seg.SeriesInstanceUID} <= evidence
    groups = sr.content.get_volumetric_roi_measurement_groups()
    by_site = {}
    for group in groups:
        site = group.finding_sites[0].value.value
        by_site[site] = group
    assert set(by_site) == {"12989004", "23215003"}
    assert _referenced_segment(by_site["12989004"]) == (seg.SOPInstanceUID, 1)
    assert _referenced_segment(by_site["23215003"]) == (seg.SOPInstanceUID, 2)
    t12 = by_site["23215003"]
    heights = {}
    for measurement in t12.get_measurements(name=highdicom.sr.CodedConcept("121207", "DCM", "Height")):
        modifier = measurement.finding_sites[0].topographical_modifier.value
        heights[modifier] = measurement.value
        assert measurement.unit.value == "mm" and measurement.unit.scheme_designator == "UCUM"
    assert heights == {"255549009": 19.25, "26216008": 21.5, "255551008": 25.75}
    density = t12.get_measurements(name=highdicom.sr.CodedConcept("112182", "DCM", "Median Attenuation Coefficient"))
    expected = case.vertebra("T12").trabecular_hu
    assert len(density) == (0 if expected is None else 1)
    if expected is not None:
        assert density[0].value == pytest.approx(expected) and density[0].unit.value == "[hnsf'U]"
    evaluations = {e.name.value: e.value.value for e in t12.get_qualitative_evaluations()}
    assert evaluations[dicom_outputs.GENANT_CONCEPT[0]] == "genant-2"
    assert evaluations[dicom_outputs.MORPHOLOGY_CONCEPT[0]] == "wedge"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == dicom_outputs.LOCAL_SCHEME


def test_trabecular_value_round_trip_on_phantom_series(tmp_path):
    """A DICOM series written from a phantom: the SR's median attenuation equals the screening's value."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from dicom_series import write_ct_series
    from screen_phantoms import spine_phantom

    ct_phantom, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0}, spacing=2.0)
    ct_phantom.array[:, -2:, :] = -1000.0  # air in front of the body: a CT in HU holds some (read_ct checks)
    folder = write_ct_series(ct_phantom, tmp_path / "series")
    ct = io.read_ct(folder)
    label_volume = io.resample_labels_to(labels, ct)
    case = screen.case_from_labels(label_volume)
    result = screen.screen_case(label_volume, ct, case)
    assert result.measured_hu == pytest.approx(80.0, abs=1.0)
    paths = dicom_outputs.write_dicom_outputs(case, label_volume, ct, tmp_path / "out", result)
    sr = highdicom.sr.srread(paths["dicom_sr"])
    values = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        for m in group.get_measurements(name=highdicom.sr.CodedConcept("112182", "DCM", "Median Attenuation")):
            values[group.finding_sites[0].value.value] = m.value
    assert values == {"23215003": pytest.approx(150.0, abs=1.0), "66794005": pytest.approx(80.0, abs=1.0)}
    # The patient-level groups: whether the findings stand, and the screening level L1 with its median and density
    # category.
    groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert sorted(groups) == ["bone density screening", "vertebral fracture assessment"]
    assessment = {e.name.value: e.value.value for e in groups["vertebral fracture assessment"]
                  .get_qualitative_evaluations()}
    assert assessment == {dicom_outputs.ASSESSMENT_CONCEPT[0]: "assessed"}
    group = groups["bone density screening"]
    assert group.finding_sites[0].value.value == "66794005"
    (median,) = group.get_measurements()
    assert median.value == pytest.approx(result.measured_hu)
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations[dicom_outputs.DENSITY_CATEGORY_CONCEPT[0]] == "osteoporosis"


def test_cli_writes_dicom_outputs(shared_file, tmp_path, capsys):
    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz")),
                 "--labels", "totalseg_v2", "--ct", str(shared_file("totalsegmentator-example/example_ct_dicom")),
                 "--out", str(tmp_path), "--dicom-out", "-q"])
    assert code == 0
    for name in ("vertebrae_seg.dcm", "measurements_sr.dcm", "report.html", "report.pdf", "screening.json"):
        assert (tmp_path / name).is_file()


def test_cli_refuses_dicom_out_without_dicom_series(shared_file, tmp_path, capsys):
    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")),
                 "--ct", str(shared_file("totalsegmentator-example/example_ct.nii.gz")),
                 "--out", str(tmp_path / "out"), "--dicom-out", "-q"])
    error = capsys.readouterr().err
    assert code == 2 and "not a DICOM series" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_missing_highdicom_is_a_clear_error(written, tmp_path, monkeypatch):
    import sys

    from VertebralFractureLib.errors import VertebralFractureError

    ct, labels, case, _ = written
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    with pytest.raises(VertebralFractureError, match="pip install 'VertebralFracture\\[dicom\\]'"):
        dicom_outputs.write_dicom_outputs(case, labels, ct, tmp_path)
    assert not any(tmp_path.iterdir())


def test_sr_says_not_assessed_and_why_when_quality_control_fails(shared_file, tmp_path):
    """The real DICOM series, segmented by the classical backend, has its findings withheld by quality control (its
    bodies are cut by the 40 mm slab, its level names unconfirmed): the SR says so, with any failed checks as coded
    evaluations and the quality gate's headline as a comment."""
    from VertebralFractureLib import pipeline

    request = pipeline.AnalysisRequest(ct=shared_file("totalsegmentator-example/example_ct_dicom"),
                                       backend="classical", dicom_out=True)
    analysis = pipeline.analyze(request, tmp_path / "out")
    quality = analysis.case.quality
    assert quality.findings_withheld and quality.headline
    sr = highdicom.sr.srread(analysis.written["dicom_sr"])
    (group,) = [g for g in sr.content.get_image_measurement_groups()
                if g.tracking_identifier == "vertebral fracture assessment"]
    evaluations = [(e.name.value, e.value.value, e.value.meaning) for e in group.get_qualitative_evaluations()]
    assert evaluations[0] == (dicom_outputs.ASSESSMENT_CONCEPT[0], "not-assessed", "Not assessed")
    failed = [meaning for name, _, meaning in evaluations[1:] if name == dicom_outputs.QC_FINDING_CONCEPT[0]]
    assert failed == [check[:dicom_outputs.CODE_MEANING_MAX] for check in quality.failed_checks]
    comments = [item.TextValue for item in group[0].ContentSequence
                if item.ValueType == "TEXT" and _code(item.ConceptNameCodeSequence[0]) == ("121106", "DCM")]
    assert comments == ["; ".join([quality.headline, *quality.failed_checks])]
    assert sr.SpecificCharacterSet == "ISO_IR 192" and "—" in comments[0]  # the headline's dash, kept as written
    # No vertebra carries a grade the quality gate withheld.
    for roi in sr.content.get_volumetric_roi_measurement_groups():
        names = {e.name.value for e in roi.get_qualitative_evaluations()}
        assert dicom_outputs.GENANT_CONCEPT[0] not in names


def test_encapsulated_pdf_in_the_source_study(written, tmp_path):
    """The report PDF as an Encapsulated PDF instance: the source's patient and study, its own series, the PDF
    byte for byte, the source images referenced."""
    import pydicom

    ct, _, _, _ = written
    sources, _ = dicom_outputs.read_source_datasets(ct.meta["dicom_files"])
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n% a minimal body of odd length\n%%EOF")
    dicom_outputs.write_encapsulated_pdf(pdf, sources[0], tmp_path / "report_pdf.dcm", source_datasets=sources)
    dataset = pydicom.dcmread(tmp_path / "report_pdf.dcm")
    assert dataset.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage and dataset.Modality == "DOC"
    assert dataset.StudyInstanceUID == sources[0].StudyInstanceUID
    assert dataset.SeriesInstanceUID != sources[0].SeriesInstanceUID
    length = int(dataset.EncapsulatedDocumentLength)
    assert bytes(dataset.EncapsulatedDocument)[:length] == pdf.read_bytes() and length == len(pdf.read_bytes())
    assert [item.ReferencedSOPInstanceUID for item in dataset.SourceInstanceSequence] == \
        [s.SOPInstanceUID for s in sources]
    not_pdf = tmp_path / "report.txt"
    not_pdf.write_text("plain text")
    with pytest.raises(InputError, match="is not a PDF file"):
        dicom_outputs.write_encapsulated_pdf(not_pdf, sources[0], tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
