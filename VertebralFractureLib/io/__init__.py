"""Inputs with their geometry. ``volumes``: the :class:`Volume` (voxel array + voxel-to-RAS matrix) and label-map
operations, memory checks, atomic writes; ``dicom``: DICOM series discovery, checks and reading; ``read``: a CT or a
label map from any supported file; ``labels``: vertebra names and label conventions; ``download``: pinned,
checksummed downloads. The names most callers need are importable from here."""

from VertebralFractureLib.errors import InputError

from .dicom import (
    SLICE_POSITION_TOLERANCE_FRACTION,
    SLICE_POSITION_TOLERANCE_MIN_MM,
    check_dicom_series,
    dicom_header_summary,
    list_dicom_series,
    scan_dicom_folder,
    series_uids,
)
from .labels import (
    label_boxes,
    label_extents,
    present_labels,
)
from .read import (
    read_ct,
    read_label_map,
    read_volume,
)
from .volumes import (
    AIR_OR_FAT_MAX_HU,
    DENSE_BONE_HU,
    DENSE_BONE_MAX_FRACTION,
    HU_SAMPLE_PER_AXIS,
    ITK_SUFFIXES,
    LPS_TO_RAS,
    MEMORY_COPY_BYTES_PER_VOXEL,
    MIN_HU_SPAN,
    NIFTI_SUFFIXES,
    LabelMap,
    NotCTError,
    Volume,
    atomic_path,
    available_memory_bytes,
    check_ct_hounsfield,
    check_memory,
    check_overlap,
    resample_labels_to,
    write_nifti,
    write_text_atomic,
)

__all__ = [
    "InputError",
    "AIR_OR_FAT_MAX_HU",
    "DENSE_BONE_HU",
    "DENSE_BONE_MAX_FRACTION",
    "HU_SAMPLE_PER_AXIS",
    "ITK_SUFFIXES",
    "LPS_TO_RAS",
    "LabelMap",
    "MEMORY_COPY_BYTES_PER_VOXEL",
    "MIN_HU_SPAN",
    "NIFTI_SUFFIXES",
    "NotCTError",
    "Volume",
    "atomic_path",
    "available_memory_bytes",
    "check_ct_hounsfield",
    "check_memory",
    "check_overlap",
    "label_boxes",
    "label_extents",
    "present_labels",
    "resample_labels_to",
    "write_nifti",
    "write_text_atomic",
    "SLICE_POSITION_TOLERANCE_FRACTION",
    "SLICE_POSITION_TOLERANCE_MIN_MM",
    "check_dicom_series",
    "dicom_header_summary",
    "list_dicom_series",
    "series_uids",
    "scan_dicom_folder",
    "read_ct",
    "read_label_map",
    "read_volume",
]
