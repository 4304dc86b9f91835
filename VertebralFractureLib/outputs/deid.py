"""De-identification of DICOM data sets following the DICOM PS3.15 Basic Application Level Confidentiality Profile.

Exports meant to leave the hospital (curated training data, shared reports, SEG/SR) go through
:class:`Deidentifier`. The profile's actions (PS3.15 Annex E, Table E.1-1, "Basic Profile" column) are applied to
the attributes listed in :data:`BASIC_PROFILE`:

- ``X`` remove, ``Z`` replace by an empty value, ``D`` replace by a dummy value, ``K`` keep,
- ``U`` replace the UID by another one, consistently: the same original UID gives the same new UID everywhere in
  one export (so the SEG and SR still reference the exported CT images and frame of reference).

Beyond the table, and as the profile requires for attributes it does not list: every private element is removed,
every UID that is not a DICOM-defined one (root 1.2.840.10008) is replaced, every person name is removed, dates
and times not kept are removed, and overlays and curves (groups 50xx/60xx) are removed. Images with burned-in
annotation are refused. Geometry (Image Position/Orientation, Pixel Spacing, Slice Thickness) and the pixel data
are kept byte for byte. The result is flagged PatientIdentityRemoved = YES with the profile's code (DCM 113100).
"""

from __future__ import annotations

import copy
import secrets
from pathlib import Path

from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io import atomic_path
from VertebralFractureLib.results import json_text

# keyword -> action (PS3.15 Table E.1-1, Basic Profile; where the table offers a choice such as X/Z/D, the choice
# that keeps the output a valid object of its IOD is taken: Z for Type 2 attributes, D for Type 1, else X).
BASIC_PROFILE: dict[str, str] = {
    "AccessionNumber": "Z", "AcquisitionComments": "X", "AcquisitionContextSequence": "X", "AcquisitionDate": "X",
    "AcquisitionDateTime": "X", "AcquisitionDeviceProcessingDescription": "X", "AcquisitionProtocolDescription": "X",
    "AcquisitionTime": "X", "ActualHumanPerformersSequence": "X", "AdditionalPatientHistory": "X",
    "AdmissionID": "X", "AdmittingDate": "X", "AdmittingDiagnosesCodeSequence": "X",
    "AdmittingDiagnosesDescription": "X", "AdmittingTime": "X", "AffectedSOPInstanceUID": "X", "Allergies": "X",
    "Arbitrary": "X", "AuthorObserverSequence": "X", "BranchOfService": "X", "CassetteID": "X",
    "CommentsOnThePerformedProcedureStep": "X", "ConcatenationUID": "U",
    "ConfidentialityConstraintOnPatientDataDescription": "X", "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X", "ContentDate": "D", "ContentTime": "D",
    "ContextGroupExtensionCreatorUID": "U", "ContrastBolusAgent": "Z", "CountryOfResidence": "X",
    "CurrentPatientLocation": "X", "CurveDate": "X", "CurveTime": "X", "CustodialOrganizationSequence": "X",
    "DataSetTrailingPadding": "X", "DerivationDescription": "X", "DetectorID": "X", "DeviceSerialNumber": "D",
    "DeviceUID": "U", "DigitalSignaturesSequence": "X", "DigitalSignatureUID": "X", "DimensionOrganizationUID": "U",
    "DischargeDiagnosisDescription": "X", "DistributionAddress": "X", "DistributionName": "X",
    "DoseReferenceUID": "U", "EthnicGroup": "X", "FailedSOPInstanceUIDList": "U", "FiducialUID": "U",
    "FillerOrderNumberImagingServiceRequest": "Z", "FrameComments": "X", "FrameOfReferenceUID": "U",
    "GantryID": "X", "GeneratorID": "X", "GraphicAnnotationSequence": "X", "HumanPerformerName": "X",
    "HumanPerformerOrganization": "X", "IconImageSequence": "X", "IdentifyingComments": "X", "ImageComments": "X",
    "ImagePresentationComments": "X", "ImagingServiceRequestComments": "X", "Impressions": "X",
    "InstanceCreationDate": "X", "InstanceCreationTime": "X", "InstanceCreatorUID": "U",
    "InstitutionAddress": "X", "InstitutionCodeSequence": "X", "InstitutionName": "X",
    "InstitutionalDepartmentName": "X", "InsurancePlanIdentification": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X", "InterpretationApproverSequence": "X",
    "InterpretationAuthor": "X", "InterpretationDiagnosisDescription": "X", "InterpretationIDIssuer": "X",
    "InterpretationRecorder": "X", "InterpretationText": "X", "InterpretationTranscriber": "X",
    "IrradiationEventUID": "U", "IssuerOfAdmissionID": "X", "IssuerOfPatientID": "X",
    "IssuerOfServiceEpisodeID": "X", "LargePaletteColorLookupTableUID": "U", "MAC": "X",
    "MediaStorageSOPInstanceUID": "U", "MedicalAlerts": "X", "MedicalRecordLocator": "X", "MilitaryRank": "X",
    "ModifiedAttributesSequence": "X", "ModifiedImageDescription": "X", "ModifyingDeviceID": "X",
    "NameOfPhysiciansReadingStudy": "X", "NamesOfIntendedRecipientsOfResults": "X", "Occupation": "X",
    "OperatorIdentificationSequence": "X", "OperatorsName": "X", "OriginalAttributesSequence": "X",
    "OrderCallbackPhoneNumber": "X", "OrderEnteredBy": "X", "OrderEntererLocation": "X", "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X", "OtherPatientNames": "X", "OverlayDate": "X", "OverlayTime": "X",
    "ParticipantSequence": "X", "PatientAddress": "X", "PatientAge": "X",
    "PatientBirthDate": "Z", "PatientBirthName": "X", "PatientBirthTime": "X", "PatientComments": "X",
    "PatientID": "Z", "PatientInstitutionResidence": "X", "PatientInsurancePlanCodeSequence": "X",
    "PatientMotherBirthName": "X", "PatientName": "Z", "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X", "PatientReligiousPreference": "X", "PatientSex": "Z",
    "PatientSexNeutered": "X", "PatientSize": "X", "PatientState": "X", "PatientTelephoneNumbers": "X",
    "PatientTransportArrangements": "X", "PatientWeight": "X", "PerformedLocation": "X",
    "PerformedProcedureStepDescription": "X", "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X", "PerformedProcedureStepID": "X", "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X", "PerformedStationAETitle": "X",
    "PerformedStationGeographicLocationCodeSequence": "X", "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X", "PerformingPhysicianIdentificationSequence": "X",
    "PerformingPhysicianName": "X", "PersonAddress": "X", "PersonIdentificationCodeSequence": "X",
    "PersonName": "X", "PersonTelephoneNumbers": "X", "PhysicianApprovingInterpretation": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X", "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X", "PlacerOrderNumberImagingServiceRequest": "Z",
    "PlateID": "X", "PreMedication": "X", "PregnancyStatus": "X", "ProtocolName": "X",
    "ReasonForTheImagingServiceRequest": "X", "ReasonForStudy": "X", "ReferencedDigitalSignatureSequence": "X",
    "ReferencedFrameOfReferenceUID": "U", "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "ReferencedPatientAliasSequence": "X", "ReferencedPatientPhotoSequence": "X",
    "ReferencedPatientSequence": "X", "ReferencedPerformedProcedureStepSequence": "X",
    "ReferencedSOPInstanceMACSequence": "X", "ReferencedSOPInstanceUID": "U", "ReferencedStudySequence": "X",
    "ReferringPhysicianAddress": "X", "ReferringPhysicianIdentificationSequence": "X",
    "ReferringPhysicianName": "Z", "ReferringPhysicianTelephoneNumbers": "X", "RegionOfResidence": "X",
    "RelatedFrameOfReferenceUID": "U", "RequestAttributesSequence": "X", "RequestedContrastAgent": "X",
    "RequestedProcedureComments": "X", "RequestedProcedureDescription": "X", "RequestedProcedureID": "X",
    "RequestedProcedureLocation": "X", "RequestedProcedureCodeSequence": "X", "RequestedSOPInstanceUID": "U",
    "RequestingPhysician": "X", "RequestingService": "X", "ResponsibleOrganization": "X",
    "ResponsiblePerson": "X", "ResultsComments": "X", "ResultsDistributionListSequence": "X",
    "ResultsIDIssuer": "X", "ReviewerName": "X", "ScheduledHumanPerformersSequence": "X",
    "ScheduledPatientInstitutionResidence": "X", "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledPerformingPhysicianName": "X", "ScheduledProcedureStepEndDate": "X",
    "ScheduledProcedureStepStartDate": "X", "ScheduledStationAETitle": "X",
    "ScheduledStationGeographicLocationCodeSequence": "X", "ScheduledStationName": "X",
    "ScheduledStationNameCodeSequence": "X", "ScheduledStudyLocation": "X", "ScheduledStudyLocationAETitle": "X",
    "SeriesDate": "X", "SeriesDescription": "X", "SeriesInstanceUID": "U", "SeriesTime": "X",
    "ServiceEpisodeDescription": "X", "ServiceEpisodeID": "X", "SmokingStatus": "X", "SOPInstanceUID": "U",
    "SourceApplicationEntityTitle": "X", "SpecialNeeds": "X", "StationName": "X", "StorageMediaFileSetUID": "U",
    "StudyComments": "X", "StudyDate": "Z", "StudyDescription": "X", "StudyID": "Z", "StudyIDIssuer": "X",
    "StudyInstanceUID": "U", "StudyTime": "Z", "SynchronizationFrameOfReferenceUID": "U",
    "TemplateExtensionCreatorUID": "U", "TemplateExtensionOrganizationUID": "U", "TextComments": "X",
    "TextString": "X", "TimezoneOffsetFromUTC": "X", "TopicAuthor": "X", "TopicKeywords": "X",
    "TopicSubject": "X", "TopicTitle": "X", "TransactionUID": "U", "UID": "U",
    "VerifyingObserverIdentificationCodeSequence": "Z", "VerifyingObserverName": "D",
    "VerifyingObserverSequence": "D", "VerifyingOrganization": "X", "VisitComments": "X",
    # Free text and dates of the calibration/procedure that can carry identity or exact dates.
    "DateOfLastCalibration": "X", "TimeOfLastCalibration": "X", "DateOfLastDetectorCalibration": "X",
    "PerformedProcedureStepStartDateTime": "X", "ContrastBolusStartTime": "X", "ContrastBolusStopTime": "X",
    "ContentSequence": "X", "ReferencedRequestSequence": "X", "ProcedureCodeSequence": "X",
    "PerformedProtocolCodeSequence": "X", "DeviceDescription": "X", "InstitutionalDepartmentTypeCodeSequence": "X",
}
# Kept as they are: what the images mean geometrically and physically (never identifying).
DUMMY_VALUES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMIZED", "LO": "ANONYMIZED",
                "SH": "ANONYMIZED", "CS": "ANONYMIZED", "UI": None}
DICOM_UID_ROOT = "1.2.840.10008."
DATE_TIME_VRS = ("DA", "DT", "TM")


def save_dataset(dataset, path) -> None:
    """Write a dataset as a DICOM Part 10 file (preamble, file meta) under pydicom 3 and under the pydicom 2.4 that
    Slicer 5.8-5.10 bundle, where ``save_as`` has no ``enforce_file_format`` (``write_like_original=False`` is the
    same request there)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.save_as(path, write_like_original=False)


class Deidentifier:
    """Applies the basic profile; one instance per export so that UIDs are replaced consistently across files.

    ``salt`` makes the UID mapping unguessable from the original UIDs (a fresh random one by default; pass a fixed
    one to get the same new UIDs over several runs). ``pseudonym`` becomes PatientName and PatientID (empty by
    default, as the profile's Z action).
    """

    def __init__(self, salt: str | None = None, pseudonym: str = "", keep_content_sequence: bool = False):
        self.salt = salt if salt is not None else secrets.token_hex(16)
        self.pseudonym = pseudonym
        self.keep_content_sequence = keep_content_sequence
        self.uid_map: dict[str, str] = {}

    def new_uid(self, uid: str) -> str:
        from pydicom.uid import generate_uid

        uid = str(uid).strip()
        if not uid or uid.startswith(DICOM_UID_ROOT):
            return uid
        if uid not in self.uid_map:
            self.uid_map[uid] = generate_uid(prefix="2.25.", entropy_srcs=[self.salt, uid])
        return self.uid_map[uid]

    def _replace_uid_element(self, element) -> None:
        if element.VM > 1:
            element.value = [self.new_uid(v) for v in element.value]
        elif element.value:
            element.value = self.new_uid(element.value)

    def _clean(self, dataset) -> None:
        from pydicom.datadict import keyword_for_tag

        dataset.remove_private_tags()
        for element in list(dataset):
            tag = element.tag
            if tag.group in range(0x5000, 0x5100) or tag.group in range(0x6000, 0x6100):
                del dataset[tag]  # curves and overlays (may hold burned-in text)
                continue
            keyword = keyword_for_tag(tag)
            action = BASIC_PROFILE.get(keyword)
            if keyword == "ContentSequence" and self.keep_content_sequence:
                action = None
            if action == "X":
                del dataset[tag]
                continue
            if action == "Z":
                element.value = "" if element.VR != "SQ" else []
                continue
            if action == "D":
                if element.VR == "SQ":
                    del dataset[tag]
                else:
                    element.value = DUMMY_VALUES.get(element.VR, "")
                continue
            if action == "U" or element.VR == "UI":
                self._replace_uid_element(element)
                continue
            if element.VR == "PN":
                del dataset[tag]  # any person name the table does not list
                continue
            if element.VR in DATE_TIME_VRS:
                del dataset[tag]  # dates and times not required to stay
                continue
            if element.VR == "SQ":
                for item in element.value:
                    self._clean(item)

    def dataset(self, source):
        """A de-identified copy of a pydicom Dataset (file meta included)."""
        from pydicom.sr.codedict import codes

        burned = str(source.get("BurnedInAnnotation", "") or "").upper()
        if burned == "YES":
            raise InputError(getattr(source, "filename", None),
                             "has burned-in annotation (BurnedInAnnotation = YES): pixel data may show identity, "
                             "not exported")
        dataset = copy.deepcopy(source)
        self._clean(dataset)
        if "PatientName" in dataset or self.pseudonym:
            # A trailing caret marks a single-component name as the family name (PS3.5 6.2.1.2).
            name = self.pseudonym
            dataset.PatientName = name + "^" if name and "^" not in name else name
        if "PatientID" in dataset or self.pseudonym:
            dataset.PatientID = self.pseudonym
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            for element in list(meta):
                keyword = element.keyword
                if keyword == "SourceApplicationEntityTitle" or keyword.startswith(("Sending", "Receiving",
                                                                                     "PrivateInformation")):
                    del meta[element.tag]
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "") or \
                    self.new_uid(meta.MediaStorageSOPInstanceUID)
            from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            if "ImplementationVersionName" in meta:
                del meta.ImplementationVersionName
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = "DICOM PS3.15 Basic Application Level Confidentiality Profile"
        from pydicom import Dataset, Sequence

        method = Dataset()
        code = codes.DCM.BasicApplicationConfidentialityProfile
        method.CodeValue, method.CodingSchemeDesignator, method.CodeMeaning = code.value, code.scheme_designator, \
            code.meaning
        dataset.DeidentificationMethodCodeSequence = Sequence([method])
        return dataset

    def write_series(self, files: list[str], out_dir: str | Path, prefix: str = "CT") -> list[Path]:
        """De-identify a series file by file; output names are sequence numbers (never the source names)."""
        import pydicom

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for index, path in enumerate(files, start=1):
            try:
                source = pydicom.dcmread(path)
            except Exception as error:  # pydicom raises several types on corrupt files
                raise InputError(path, f"is not a readable DICOM file ({error})") from None
            clean = self.dataset(source)
            destination = out_dir / f"{prefix}_{index:04d}.dcm"
            with atomic_path(destination) as temporary:
                save_dataset(clean, temporary)
            written.append(destination)
        return written


def deidentified_header(dataset) -> dict:
    """Report header fields of a dataset (see :func:`.report_clinical.report_header`)."""
    from VertebralFractureLib.outputs.clinical import report_header

    return report_header(dataset)


_UID_PATTERN = None


def _scrub_uids(text: str, deidentifier: Deidentifier) -> str:
    """Replace every UID-looking string in free text by its de-identified counterpart."""
    import re

    global _UID_PATTERN
    if _UID_PATTERN is None:
        _UID_PATTERN = re.compile(r"\b\d+(?:\.\d+){3,}\b")
    return _UID_PATTERN.sub(lambda match: deidentifier.new_uid(match.group(0)), text)


def export_case(case, screening, labels, ct, out_dir: str | Path, pseudonym: str = "", salt: str | None = None,
                dicom_outputs: bool = True) -> dict:
    """Write a case for sharing outside the hospital: de-identified CT series (``dicom/CT_0001.dcm`` ...), DICOM SEG
    and SR built from the de-identified images (so their references stay valid), the clinical report,
    ``screening.json``, ``results.json``/``vertebrae.csv``/``overview.png``, the label map as ``labels.nii.gz``
    (and a non-DICOM CT as ``ct.nii.gz``), with no name, ID, date, institution, original UID or original file or
    folder name in any file or file name. Returns {name: path}."""

    from VertebralFractureLib.outputs import clinical as report_clinical
    from VertebralFractureLib.outputs import dicom as dicom_out

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deidentifier = Deidentifier(salt=salt, pseudonym=pseudonym, keep_content_sequence=True)
    written: dict[str, str] = {}
    header = {"patient_name": pseudonym, "patient_id": pseudonym, "study_date": "", "institution": "",
              "series_description": "", "deidentified": True}
    files = (ct.meta.get("dicom_files") if ct is not None else None) or []
    if files:
        import pydicom

        sources, _ = dicom_out.read_source_datasets(files, pixels=True)
        clean = [deidentifier.dataset(dataset) for dataset in sources]
        series_dir = out_dir / "dicom"
        series_dir.mkdir(parents=True, exist_ok=True)
        for index, dataset in enumerate(clean, start=1):
            with atomic_path(series_dir / f"CT_{index:04d}.dcm") as temporary:
                save_dataset(dataset, temporary)
        written["dicom_series"] = str(series_dir)
        header = deidentified_header(clean[0])
        if dicom_outputs and labels is not None:
            headers = [pydicom.dcmread(series_dir / f"CT_{i:04d}.dcm", stop_before_pixels=True)
                       for i in range(1, len(clean) + 1)]
            seg = dicom_out.write_segmentation(labels, ct, out_dir / "vertebrae_seg.dcm", headers)
            dicom_out.write_measurement_report(case, out_dir / "measurements_sr.dcm", headers, seg=seg,
                                               screening=screening)
            written["dicom_seg"] = str(out_dir / "vertebrae_seg.dcm")
            written["dicom_sr"] = str(out_dir / "measurements_sr.dcm")
    # Free text that travels with the case: original paths and UIDs must not.
    # File paths (which may name the patient) also appear inside the level evidence and the warnings quoting it.
    paths = sorted({str(value) for value in case.inputs.values() if isinstance(value, str) and value}, key=len,
                   reverse=True)

    def scrub(text: str) -> str:
        for path in paths:
            text = text.replace(path, "(de-identified)")
        return _scrub_uids(text, deidentifier)

    # Flags (volume_is_ct, include_upper_thoracic) name no one, and a re-grade of the export needs them.
    case.inputs = {key: ("(de-identified)" if value and not isinstance(value, bool) else value)
                   for key, value in case.inputs.items()}
    case.level_evidence = [scrub(e) for e in case.level_evidence]
    case.warnings = [scrub(w) for w in case.warnings]
    if case.segmentation_backend_reason:
        case.segmentation_backend_reason = scrub(case.segmentation_backend_reason)
    case.segmentation_backend_details = {
        key: scrub(value) if isinstance(value, str) else value
        for key, value in case.segmentation_backend_details.items()
    }
    screening.caveats = [_scrub_uids(c, deidentifier) for c in screening.caveats]
    written.update(report_clinical.write_clinical_report(case, screening, out_dir, labels, ct, header=header))
    # Curated training data: the label map (and a non-DICOM CT) as NIfTI, written from the arrays with a fresh
    # header (no description, no original file name), and the measurement tables.
    from VertebralFractureLib import io
    from VertebralFractureLib.outputs import files as measure_report

    if labels is not None:
        io.write_nifti(labels, out_dir / "labels.nii.gz")
        written["labels_nifti"] = str(out_dir / "labels.nii.gz")
        written.update({name: str(path) for name, path in
                        measure_report.write_measure_files(case, out_dir, labels, ct, segmentation=False).items()})
    if ct is not None and not files:
        io.write_nifti(ct, out_dir / "ct.nii.gz")
        written["ct_nifti"] = str(out_dir / "ct.nii.gz")
    data = {"case": case.to_dict(), "screening": screening.to_dict(), "deidentified": True}
    with atomic_path(out_dir / "screening.json") as temporary:
        temporary.write_text(json_text(data), encoding="utf-8")
    written["screening_json"] = str(out_dir / "screening.json")
    return written
