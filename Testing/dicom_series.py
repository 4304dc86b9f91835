"""Write a CT :class:`Volume` as a DICOM series with pydicom (tests: SEG/SR round trips, de-identification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(volume, folder: str | Path, attributes: dict | None = None, file_names=None,
                    uids: dict | None = None) -> Path:
    """One file per k plane. ``attributes`` are set on every file (identity fields for de-identification tests);
    ``uids`` may fix StudyInstanceUID / SeriesInstanceUID / FrameOfReferenceUID / SOPInstanceUID prefix."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = uids or {}
    study = uids.get("StudyInstanceUID", generate_uid())
    series = uids.get("SeriesInstanceUID", generate_uid())
    frame = uids.get("FrameOfReferenceUID", generate_uid())
    ijk_to_lps = volume.ijk_to_lps
    spacing = volume.spacing
    row_cosine = ijk_to_lps[:3, 0] / spacing[0]  # along i: DICOM columns
    column_cosine = ijk_to_lps[:3, 1] / spacing[1]  # along j: DICOM rows
    for k in range(volume.shape[2]):
        sop = f"{uids['SOPInstanceUIDPrefix']}.{k + 1}" if "SOPInstanceUIDPrefix" in uids else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = pydicom.Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = sop
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = series
        dataset.FrameOfReferenceUID = frame
        dataset.Modality = "CT"
        dataset.SeriesNumber = 3
        dataset.InstanceNumber = k + 1
        dataset.PatientName = ""
        dataset.PatientID = ""
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.KVP = "120"
        dataset.ImagePositionPatient = [float(v) for v in ijk_to_lps[:3, :3] @ [0, 0, k] + ijk_to_lps[:3, 3]]
        dataset.ImageOrientationPatient = [float(v) for v in np.r_[row_cosine, column_cosine]]
        dataset.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        dataset.SliceThickness = float(spacing[2])
        dataset.Rows, dataset.Columns = volume.shape[1], volume.shape[0]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1
        dataset.RescaleIntercept = 0
        dataset.RescaleSlope = 1
        dataset.RescaleType = "HU"
        dataset.PixelData = np.ascontiguousarray(np.round(volume.array[:, :, k].T).astype(np.int16)).tobytes()
        for keyword, value in (attributes or {}).items():
            setattr(dataset, keyword, value)
        name = file_names[k] if file_names else f"slice_{k:04d}.dcm"
        dataset.save_as(folder / name, enforce_file_format=True)
    return folder
