"""De-identification (DICOM PS3.15 basic profile): no identifying value survives an export; geometry and pixels do."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from VertebralFractureLib.cli.entry import main
from VertebralFractureLib.outputs import deid

# Every token is long and distinctive so that finding it by chance inside compressed or base64 data is impossible.
IDENTITY = {
    "PatientName": "Zyxwvutski^Quirinius",
    "PatientID": "MRN83726154",
    "PatientBirthDate": "19410923",
    "OtherPatientIDs": "ALTID5550193",
    "PatientAddress": "Kwellenstrasse 17, Obertupfingen",
    "AccessionNumber": "ACC90817263",
    "StudyID": "STU4471902",
    "StudyDate": "20230412",
    "SeriesDate": "20230413",
    "AcquisitionDate": "20230414",
    "ContentDate": "20230415",
    "StudyTime": "101112.131415",
    "InstitutionName": "Sankt Elsewhere Klinikum",
    "InstitutionAddress": "Hospitalgasse 99, Vorderbergheim",
    "ReferringPhysicianName": "Houseworth^Gregorius",
    "OperatorsName": "Radiographer^Philomena",
    "StationName": "CTSCANNERX7",
    "StudyDescription": "Abdomen for Zyxwvutski",
    "SeriesDescription": "Series of MRN83726154",
    "DeviceSerialNumber": "SN99887766",
    "RequestingPhysician": "Requestmann^Theodor",
}
UID_ROOT = "1.2.826.0.1.3680043.2.1143.777"
PRIVATE_VALUE = "PRIVATEPAYLOAD3141"
FOLDER_NAME = "Zyxwvutski_Quirinius_MRN83726154"


def _tokens() -> list[str]:
    tokens = [v.split("^")[0] if "^" in v else v for v in IDENTITY.values()]
    tokens += [v.split("^")[1] for v in IDENTITY.values() if "^" in v]
    tokens += [UID_ROOT, PRIVATE_VALUE, "Kwellenstrasse", "Hospitalgasse", "Sankt Elsewhere"]
    return tokens


@pytest.fixture(scope="module")
def identified_series(shared_file, tmp_path_factory) -> Path:
    """The real JPEG 2000 example series, filled with identifying values, private tags, nested names and
    hospital UIDs, in a folder and files named after the patient."""
    source = shared_file("totalsegmentator-example/example_ct_dicom")
    folder = tmp_path_factory.mktemp("in") / FOLDER_NAME
    folder.mkdir()
    for index, path in enumerate(sorted(source.iterdir())):
        dataset = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(dataset, keyword, value)
        sop = f"{UID_ROOT}.3.{index + 1}"
        dataset.SOPInstanceUID = sop
        dataset.file_meta.MediaStorageSOPInstanceUID = sop
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.StudyInstanceUID = f"{UID_ROOT}.1"
        dataset.SeriesInstanceUID = f"{UID_ROOT}.2"
        dataset.FrameOfReferenceUID = f"{UID_ROOT}.4"
        dataset.IrradiationEventUID = f"{UID_ROOT}.5"
        block = dataset.private_block(0x0011, "ACME HOSPITAL", create=True)
        block.add_new(0x01, "LO", PRIVATE_VALUE)
        # A name and a UID nested in sequences.
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID = dataset.SOPClassUID
        reference.ReferencedSOPInstanceUID = f"{UID_ROOT}.3.{index + 2}"
        dataset.ReferencedImageSequence = [reference]
        performer = pydicom.Dataset()
        performer.HumanPerformerName = "Performer^Zyxwvutski"
        dataset.PerformedProtocolCodeSequence = [performer]
        dataset.file_meta.SourceApplicationEntityTitle = "STELSEWHERE"
        dataset.save_as(folder / f"{sop}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def exported(identified_series, shared_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "share"
    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/example_seg_dicom.nii.gz")),
                 "--labels", "totalseg_v2", "--ct", str(identified_series), "--out", str(out), "--dicom-out",
                 "--deidentify", "--pseudonym", "CASE-0001", "-q"])
    assert code == 0
    return out


def test_no_identifying_value_in_any_exported_file_or_name(exported):
    files = [p for p in exported.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"report.html", "report.pdf", "screening.json", "vertebrae_seg.dcm", "measurements_sr.dcm",
            "labels.nii.gz", "results.json", "vertebrae.csv", "overview.png"} <= names
    assert len([p for p in files if p.parent.name == "dicom"]) == 20
    tokens = _tokens()
    for path in files:
        relative = str(path.relative_to(exported.parent))
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        for token in tokens:
            assert token not in relative, (token, relative)
            assert token.encode() not in data, (token, relative)
            assert token.encode("utf-16-le") not in data, (token, relative)
        assert b"STELSEWHERE" not in data


def test_exported_dicom_follows_the_profile(exported, identified_series):
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
                 for p in identified_series.iterdir()}
    for path in sorted((exported / "dicom").iterdir()) + [exported / "vertebrae_seg.dcm",
                                                          exported / "measurements_sr.dcm"]:
        dataset = pydicom.dcmread(path)
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert dataset.PatientName.family_name == "CASE-0001" and dataset.PatientID == "CASE-0001"
        assert str(dataset.get("StudyDate", "")) == ""
        assert "InstitutionName" not in dataset and "ReferringPhysicianName" not in dataset or \
            str(dataset.get("ReferringPhysicianName", "")) == ""
        assert dataset.StudyInstanceUID not in originals
        for element in dataset.iterall():
            assert not element.tag.is_private
            if element.VR == "PN" and element.keyword not in ("PatientName",):
                assert str(element.value) in ("", "ANONYMIZED"), element
            if element.VR == "DA":
                assert str(element.value) not in IDENTITY.values(), element


def test_geometry_pixels_and_references_stay_intact(exported, identified_series):
    sources = [pydicom.dcmread(p) for p in identified_series.iterdir()]
    by_position = {tuple(float(v) for v in s.ImagePositionPatient): s for s in sources}
    exported_images = [pydicom.dcmread(p) for p in sorted((exported / "dicom").iterdir())]
    frame_uids = {str(d.FrameOfReferenceUID) for d in exported_images}
    assert len(frame_uids) == 1 and len({str(d.SeriesInstanceUID) for d in exported_images}) == 1
    for image in exported_images:
        source = by_position[tuple(float(v) for v in image.ImagePositionPatient)]
        for keyword in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
                        "RescaleSlope", "RescaleIntercept", "KVP"):
            assert image[keyword].value == source[keyword].value, keyword
        assert image.PixelData == source.PixelData  # compressed bytes untouched
        assert np.array_equal(image.pixel_array, source.pixel_array)
        assert image.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert image.SOPInstanceUID == image.file_meta.MediaStorageSOPInstanceUID
    # The SEG and SR reference the exported images (UIDs replaced consistently), not the originals.
    exported_uids = {str(d.SOPInstanceUID) for d in exported_images}
    seg = pydicom.dcmread(exported / "vertebrae_seg.dcm")
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced and referenced <= exported_uids
    assert str(seg.FrameOfReferenceUID) in frame_uids
    sr = pydicom.dcmread(exported / "measurements_sr.dcm")
    evidence = {str(i.SeriesInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for i in s.ReferencedSeriesSequence}
    assert str(exported_images[0].SeriesInstanceUID) in evidence and str(seg.SeriesInstanceUID) in evidence


def test_uid_replacement_is_consistent_and_keeps_standard_uids():
    deidentifier = deid.Deidentifier(salt="fixed")
    first = deidentifier.new_uid("1.2.3.4.5")
    assert first == deidentifier.new_uid("1.2.3.4.5") and first != "1.2.3.4.5" and first.startswith("2.25.")
    assert deidentifier.new_uid("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    assert deid.Deidentifier(salt="other").new_uid("1.2.3.4.5") != first


def test_burned_in_annotation_is_refused():
    dataset = pydicom.Dataset()
    dataset.BurnedInAnnotation = "YES"
    dataset.PatientName = "Someone^Else"
    with pytest.raises(deid.InputError, match="burned-in"):
        deid.Deidentifier().dataset(dataset)


def test_profile_table_uses_dicom_keywords():
    unknown = [keyword for keyword in deid.BASIC_PROFILE if tag_for_keyword(keyword) is None]
    assert not unknown
    assert set(deid.BASIC_PROFILE.values()) <= {"X", "Z", "D", "K", "U"}


def test_source_folder_is_not_modified(identified_series, exported):
    dataset = pydicom.dcmread(next(identified_series.iterdir()), stop_before_pixels=True)
    assert str(dataset.PatientName) == IDENTITY["PatientName"]


def test_deidentify_without_dicom_input(shared_file, tmp_path):
    """A NIfTI CT has no DICOM header, but paths can carry names: the export must not repeat them."""
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    ct = folder / "ct.nii.gz"
    shutil.copy(shared_file("totalsegmentator-example/example_ct.nii.gz"), ct)
    out = tmp_path / "share"
    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")),
                 "--ct", str(ct), "--out", str(out), "--deidentify", "--include-upper-thoracic", "-q"])
    assert code == 0
    assert {"ct.nii.gz", "labels.nii.gz", "report.html", "results.json"} <= {p.name for p in out.iterdir()}
    # Paths are scrubbed, the grading choice a re-grade needs is not.
    inputs = json.loads((out / "results.json").read_text())["inputs"]
    assert inputs["ct"] == "(de-identified)" and inputs["include_upper_thoracic"] is True
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            assert b"Zyxwvutski" not in data and b"MRN83726154" not in data


def test_input_paths_do_not_travel_in_the_level_evidence(exported, identified_series):
    """File and folder names may name the patient: the level evidence quoting the given label map is scrubbed."""
    for name in ("results.json", "screening.json", "report.html", "vertebrae.csv"):
        text = (exported / name).read_text(encoding="utf-8")
        assert "example_seg_dicom" not in text and str(identified_series) not in text, name
    results = json.loads((exported / "results.json").read_text())
    assert results["levels_status"] == "given" and results["level_evidence"] == ["levels as named in (de-identified)"]
