"""DICOM outputs for PACS and research archives, written with highdicom.

- :func:`write_segmentation`: the vertebra label map as a DICOM **SEG** (binary, one segment per vertebra, segmented
  property category SCT 91723000 "Anatomical Structure", type the vertebra's SCT code from DICOM CID 7603).
- :func:`write_measurement_report`: heights, Genant grades, morphology and trabecular attenuation as a
  **Comprehensive 3D SR** following TID 1500 (Measurement Report), one TID 1411 volumetric ROI group per vertebra
  referencing its SEG segment, standard concept codes (DCM, SCT) and UCUM units (mm, [hnsf'U], ml).

Both reference the source CT series (its Study/Series/SOP Instance UIDs). Sources that lack those UIDs (some
anonymised exports blank them) are given stable derived UIDs, and a warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from VertebralFractureLib import __version__
from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.io import LPS_TO_RAS, Volume, atomic_path
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.results import CaseResult

log = logging.getLogger(__name__)

VERTEBRA_SCT = labels_mod.VERTEBRA_SCT
# Concepts with no standard code (Genant grade, morphology) use a local coding scheme; PS3.16 section 8.2 reserves
# designators starting with "99" for that, and the SR names the scheme in its Coding Scheme Identification Sequence.
LOCAL_SCHEME = "99VFX"
LOCAL_SCHEME_NAME = "VertebralFracture local codes"
SEGMENT_COLORS_RGB = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                      (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def vertebra_code(level: str):
    from pydicom.sr.coding import Code

    if level not in VERTEBRA_SCT:
        raise KeyError(f"no SNOMED CT code for vertebra {level!r} (transitional levels have none)")
    value, meaning = VERTEBRA_SCT[level]
    return Code(value, "SCT", meaning)


def local_code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, LOCAL_SCHEME, meaning)


GENANT_CONCEPT = ("genant-grade", "Genant semiquantitative fracture grade")
MORPHOLOGY_CONCEPT = ("fracture-morphology", "Vertebral fracture morphology")
DENSITY_CATEGORY_CONCEPT = ("bmd-category", "Opportunistic CT bone density category")


def read_source_datasets(files: list[str], pixels: bool = False) -> tuple[list, list[str]]:
    """The source CT files (headers only unless ``pixels``), with missing UIDs filled in; returns
    (datasets, warnings)."""
    import pydicom

    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=not pixels))
        except Exception as error:  # pydicom raises several types on corrupt files
            raise InputError(path, f"is not a readable DICOM file ({error})") from None
    if not datasets:
        raise InputError(None, "no DICOM source files to reference")
    return datasets, repair_uids(datasets, files)


def repair_uids(datasets: list, files: list[str]) -> list[str]:
    """Fill in Study/Series/SOP Instance UIDs that anonymised exports sometimes blank (highdicom needs them to
    reference the source). Derived UIDs are stable: the same source always gets the same ones."""
    from pydicom.uid import generate_uid

    warnings = []
    first = datasets[0]
    anchor = [str(first.get("FrameOfReferenceUID", "")), str(Path(files[0]).parent.name)]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(first.get(keyword, "") or ""):
            uid = generate_uid(entropy_srcs=anchor + [keyword])
            for dataset in datasets:
                setattr(dataset, keyword, uid)
            warnings.append(f"source series has no {keyword}; a derived UID is used in the references")
    for path, dataset in zip(files, datasets):
        meta = getattr(dataset, "file_meta", None)
        if not str(dataset.get("SOPClassUID", "") or "") and meta is not None:
            dataset.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not str(dataset.get("SOPInstanceUID", "") or ""):
            stored = str(meta.get("MediaStorageSOPInstanceUID", "")) if meta is not None else ""
            dataset.SOPInstanceUID = stored or generate_uid(entropy_srcs=anchor + [Path(path).name])
            message = ("source files have no SOPInstanceUID in the data set; the file meta UID "
                       "(MediaStorageSOPInstanceUID) is used")
            if message not in warnings:
                warnings.append(message)
        if dataset.get("SeriesNumber", None) in (None, ""):
            dataset.SeriesNumber = 1
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    return warnings


def slice_indices(datasets: list, ct: Volume) -> list[int]:
    """For each source image, the CT volume's k index whose plane it is (matched by ImagePositionPatient, LPS)."""
    indices = []
    for dataset in datasets:
        if "ImagePositionPatient" not in dataset:
            raise InputError(getattr(dataset, "filename", None) or ct.path,
                             "has no Image Position (Patient): only single-frame CT series are supported for "
                             "DICOM SEG and SR")
        position_lps = np.array([float(v) for v in dataset.ImagePositionPatient] + [1.0])
        ras = (LPS_TO_RAS @ position_lps)[:3]
        ijk = ct.world_to_ijk(ras)[0]
        k = int(round(ijk[2]))
        if abs(ijk[0]) > 0.05 or abs(ijk[1]) > 0.05 or abs(ijk[2] - k) > 0.05 or not 0 <= k < ct.shape[2]:
            raise InputError(ct.path, f"source image {dataset.SOPInstanceUID} does not lie on a plane of the CT grid")
        indices.append(k)
    return indices


def write_segmentation(labels: Volume, ct: Volume, destination: str | Path, source_datasets: list | None = None,
                       algorithm_name: str = "VertebralFracture", series_number: int = 901):
    """Write the vertebra label map (VerSe ids on the CT grid) as a binary DICOM SEG; returns the SEG dataset."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if source_datasets is None:
        source_datasets, _ = read_source_datasets(ct.meta.get("dicom_files") or [])
    if not labels.same_grid(ct):
        raise ValueError("labels must lie on the CT grid")
    order = slice_indices(source_datasets, ct)
    present = [int(v) for v in np.unique(labels.array) if v != 0 and labels_mod.level_name(int(v)) in VERTEBRA_SCT]
    present = labels_mod.neighbours_in_order(present)
    if not present:
        raise InputError(labels.path, "has no vertebra with a standard code to write as DICOM SEG")
    lookup = np.zeros(int(labels.array.max()) + 1, dtype=np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    for number, label in enumerate(present, start=1):
        lookup[label] = number
        level = labels_mod.level_name(label)
        color = SEGMENT_COLORS_RGB[(number - 1) % len(SEGMENT_COLORS_RGB)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=level,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=vertebra_code(level),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"vertebra {level}",
            anatomic_regions=[codes.SCT.Spine],
            display_color=hd.color.CIELabColor.from_rgb(*color) if hasattr(hd.color.CIELabColor, "from_rgb")
            else None))
    # Frame d is CT plane k = order[d]; DICOM rows run along the volume's j axis, columns along i.
    frames = np.stack([lookup[labels.array[:, :, k].T.astype(np.int64)] for k in order])
    seg = hd.seg.Segmentation(
        source_images=source_datasets, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="VertebralFracture", manufacturer_model_name="VertebralFracture", software_versions=__version__,
        device_serial_number="0", series_description="Vertebrae segmentation",
        content_label="VERTEBRAE", content_description="Vertebra segmentation (one segment per level)")
    with atomic_path(destination) as temporary:
        seg.save_as(temporary)
    return seg


def _measurement(name, value, unit, finding_sites=None, derivation=None):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), unit=unit, finding_sites=finding_sites,
                             derivation=derivation)


ASSESSMENT_CONCEPT = ("fracture-assessment", "Vertebral fracture assessment")
QC_FINDING_CONCEPT = ("qc-failed-check", "Failed quality control check")
CODE_MEANING_MAX = 64
"""Code Meaning is a Long String (LO): at most 64 characters."""


def assessment_group(case: CaseResult):
    """Whether the findings of this SR stand: "assessed", or "not assessed" with the quality-control checks that
    withheld them, as coded evaluations (one per failed check) and the quality gate's headline as a comment."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    quality = getattr(case, "quality", None)
    withheld = quality is not None and quality.findings_withheld
    status = local_code("not-assessed", "Not assessed") if withheld else local_code("assessed", "Assessed")
    evaluations = [hd.sr.QualitativeEvaluation(local_code(*ASSESSMENT_CONCEPT), status)]
    if withheld:
        for check in quality.failed_checks:
            name = check.split(":", 1)[0].strip()
            evaluations.append(hd.sr.QualitativeEvaluation(
                local_code(*QC_FINDING_CONCEPT),
                local_code("qc-" + "-".join(name.lower().split()), check[:CODE_MEANING_MAX])))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="vertebral fracture assessment"),
        finding_type=codes.SCT.Spine, qualitative_evaluations=evaluations)
    if withheld:
        reason = "; ".join([quality.headline] + list(quality.failed_checks))
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=reason, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def write_measurement_report(case: CaseResult, destination: str | Path, source_datasets: list, seg=None,
                             screening=None, series_number: int = 902):
    """Write the case as a TID 1500 Comprehensive 3D SR; one volumetric ROI group per vertebra (referencing its SEG
    segment when ``seg`` is given), plus a patient-level bone-density group when ``screening`` is given."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    height_sites = {"anterior": codes.SCT.Anterior, "middle": codes.SCT.Central, "posterior": codes.SCT.Posterior}
    segment_numbers = {}
    if seg is not None:
        for item in seg.SegmentSequence:
            segment_numbers[str(item.SegmentLabel)] = int(item.SegmentNumber)
    groups = []
    for vertebra in case.vertebrae:
        if vertebra.level not in VERTEBRA_SCT:
            continue
        site = hd.sr.FindingSite(vertebra_code(vertebra.level))
        measurements = []
        if vertebra.heights_mm:
            for which, value in vertebra.heights_mm.items():
                if value is None or which not in height_sites:
                    continue
                sites = [hd.sr.FindingSite(vertebra_code(vertebra.level), topographical_modifier=height_sites[which])]
                measurements.append(_measurement(codes.DCM.Height, value, codes.UCUM.Millimeter, sites))
        if vertebra.trabecular_hu is not None:
            measurements.append(_measurement(codes.DCM.MedianAttenuationCoefficient, vertebra.trabecular_hu,
                                             codes.UCUM.HounsfieldUnit))
        if vertebra.trabecular_hu_iqr is not None:
            measurements.append(_measurement(codes.DCM.InterquartileRangeOfPopulation, vertebra.trabecular_hu_iqr,
                                             codes.UCUM.HounsfieldUnit))
        if vertebra.body_volume_ml is not None:
            measurements.append(_measurement(codes.SCT.Volume, vertebra.body_volume_ml,
                                             pydicom.sr.coding.Code("ml", "UCUM", "milliliter")))
        evaluations = []
        grade = vertebra.final_grade
        if grade is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                local_code(*GENANT_CONCEPT), local_code(f"genant-{grade}", f"Genant grade {grade}")))
        if vertebra.final_morphology:
            evaluations.append(hd.sr.QualitativeEvaluation(
                local_code(*MORPHOLOGY_CONCEPT), local_code(vertebra.final_morphology, vertebra.final_morphology)))
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"vertebra {vertebra.level}")
        if seg is not None and vertebra.level in segment_numbers:
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_numbers[vertebra.level]),
                finding_type=codes.SCT.Vertebra, finding_sites=[site], measurements=measurements or None,
                qualitative_evaluations=evaluations or None)
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=codes.SCT.Vertebra, finding_sites=[site],
                measurements=measurements or None, qualitative_evaluations=evaluations or None)
        groups.append(group)
    groups.append(assessment_group(case))
    if screening is not None and screening.level is not None and screening.level in VERTEBRA_SCT:
        site = hd.sr.FindingSite(vertebra_code(screening.level))
        measurements = [_measurement(codes.DCM.MedianAttenuationCoefficient, screening.measured_hu,
                                     codes.UCUM.HounsfieldUnit)]
        evaluations = [hd.sr.QualitativeEvaluation(
            local_code(*DENSITY_CATEGORY_CONCEPT), local_code(screening.category, screening.category))]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="bone density screening"),
            finding_type=codes.SCT.Bone, finding_sites=[site], measurements=measurements,
            qualitative_evaluations=evaluations))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="VertebralFracture", model_name=f"VertebralFracture {__version__}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    evidence = list(source_datasets) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="VertebralFracture", is_complete=True,
        series_description="Vertebral fracture measurements")
    # The quality gate's reasons and the level notes hold non-Latin-1 characters (dashes, multiplication signs):
    # UTF-8, whatever character set the source images declared.
    sr.SpecificCharacterSet = "ISO_IR 192"
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = LOCAL_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "VertebralFracture project"
    sr.CodingSchemeIdentificationSequence = pydicom.Sequence([scheme])
    with atomic_path(destination) as temporary:
        sr.save_as(temporary)
    return sr


def write_dicom_outputs(case: CaseResult, labels: Volume, ct: Volume, out_dir: str | Path, screening=None) -> dict:
    """SEG + SR for a CT read from a DICOM series (``ct.meta["dicom_files"]``); returns {name: path}."""
    files = ct.meta.get("dicom_files")
    if not files:
        raise InputError(ct.path, "is not a DICOM series: DICOM SEG and SR need the source DICOM files")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise VertebralFractureError("DICOM SEG and SR need the highdicom package: "
                                     "pip install 'VertebralFracture[dicom]'") from None
    out_dir = Path(out_dir)
    sources, warnings = read_source_datasets(files)
    for warning in warnings:
        log.warning("%s", warning)
        if warning not in case.warnings:
            case.warnings.append(warning)
    seg = write_segmentation(labels, ct, out_dir / "vertebrae_seg.dcm", sources)
    write_measurement_report(case, out_dir / "measurements_sr.dcm", sources, seg=seg, screening=screening)
    return {"dicom_seg": str(out_dir / "vertebrae_seg.dcm"), "dicom_sr": str(out_dir / "measurements_sr.dcm")}


ENCAPSULATED_PDF_SERIES_NUMBER = 903


def write_encapsulated_pdf(pdf_path: str | Path, source_dataset, destination: str | Path,
                           title: str = "Vertebral fracture and bone density screening",
                           source_datasets: list | None = None, series_number: int = ENCAPSULATED_PDF_SERIES_NUMBER):
    """The clinical report PDF as a DICOM Encapsulated PDF instance in the source CT's study (patient and study
    attributes copied from ``source_dataset``; Source Instance Sequence referencing ``source_datasets``)."""
    import datetime

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

    document = Path(pdf_path).read_bytes()
    if not document.startswith(b"%PDF"):
        raise InputError(pdf_path, "is not a PDF file")
    now = datetime.datetime.now()
    dataset = pydicom.Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "IssuerOfPatientID",
                    "StudyDescription"):
        if keyword in source_dataset:
            setattr(dataset, keyword, source_dataset.get(keyword))
        elif keyword not in ("IssuerOfPatientID", "StudyDescription"):
            setattr(dataset, keyword, "")
    sop_uid = generate_uid()
    dataset.SOPClassUID = EncapsulatedPDFStorage
    dataset.SOPInstanceUID = sop_uid
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = "Vertebral fracture screening report"
    dataset.Manufacturer = "VertebralFracture"
    dataset.ManufacturerModelName = "VertebralFracture"
    dataset.SoftwareVersions = __version__
    dataset.ConversionType = "WSD"
    dataset.InstanceNumber = 1
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S")
    dataset.InstanceCreationDate = dataset.ContentDate
    dataset.InstanceCreationTime = dataset.ContentTime
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "YES"  # the report shows the patient's name and ID
    dataset.DocumentTitle = title
    dataset.ConceptNameCodeSequence = pydicom.Sequence()
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocumentLength = len(document)
    dataset.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    references = []
    for source in source_datasets or [source_dataset]:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        references.append(item)
    dataset.SourceInstanceSequence = pydicom.Sequence(references)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    with atomic_path(destination) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return dataset
