"""Curated training data in VerSe layout, without patient-identifying names.

Pure Python (nibabel, scipy): the Slicer module, the batch script and scripts use it alike. A dataset folder holds
``rawdata/sub-ID/sub-ID_ct.nii.gz``, ``derivatives/sub-ID/sub-ID_seg-vert_msk.nii.gz`` (VerSe ids),
``derivatives/sub-ID/sub-ID_seg-subreg_ctd.json`` (VerSe centroids: axis codes, then label and X/Y/Z in voxel
coordinates) and one ``grades.csv`` for all subjects.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import re
from pathlib import Path

import numpy as np

from VertebralFractureLib.io import Volume, atomic_path, write_text_atomic
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.results import HEIGHT_NAMES, CaseResult

log = logging.getLogger(__name__)


_SUBJECT = re.compile(r"^[A-Za-z0-9]+$")
GRADES_COLUMNS = ("subject", "label", "level", "genant_grade", "morphology", "automatic_grade",
                  "automatic_morphology", "reviewed", "ha_mm", "hm_mm", "hp_mm")


def next_subject_id(dataset_folder: str | Path, prefix: str = "vf") -> str:
    """The next free generated subject id in a dataset folder (``vf0001``, ``vf0002``...): no patient names."""
    taken = set()
    for sub in ("rawdata", "derivatives"):
        folder = Path(dataset_folder) / sub
        if folder.is_dir():
            taken.update(p.name[4:] for p in folder.glob("sub-*"))
    number = 1
    while f"{prefix}{number:04d}" in taken:
        number += 1
    return f"{prefix}{number:04d}"


def _write_anonymous_nifti(volume: Volume, destination: Path, dtype) -> None:
    """NIfTI with only geometry and voxels: descrip, aux_file, db_name and intent name left empty."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(volume.array).astype(dtype), volume.ijk_to_ras)
    image.set_sform(volume.ijk_to_ras, code=1)
    image.set_qform(volume.ijk_to_ras, code=1)
    header = image.header
    header["descrip"] = b""
    header["aux_file"] = b""
    header["db_name"] = b""
    header["intent_name"] = b""
    header.set_xyzt_units("mm", "sec")
    with atomic_path(destination) as temporary:
        nib.save(image, str(temporary))


def verse_centroids(labels: Volume) -> list[dict]:
    """VerSe centroid list: ``{"direction": axis codes}`` then ``{"label", "X", "Y", "Z"}`` in voxel coordinates."""
    from scipy import ndimage

    array = np.clip(labels.array, 0, None).astype(np.int32, copy=False)
    present = [int(v) for v in np.unique(array) if v != 0]
    centres = ndimage.center_of_mass(np.ones_like(array, dtype=np.uint8), array, present) if present else []
    entries: list[dict] = [{"direction": list(labels.axis_codes())}]
    for label, centre in sorted(zip(present, centres), key=lambda item: labels_mod.rank(item[0])):
        entries.append({"label": label, "X": round(float(centre[0]), 1), "Y": round(float(centre[1]), 1),
                        "Z": round(float(centre[2]), 1)})
    return entries


def export_verse_case(folder: str | Path, ct: Volume, labels: Volume, case: CaseResult,
                      subject: str | None = None) -> dict[str, Path]:
    """Write one case as curated training data in VerSe layout under ``folder`` (a new or existing dataset).

    - ``rawdata/sub-ID/sub-ID_ct.nii.gz`` (CT, int16 HU when the values are whole numbers)
    - ``derivatives/sub-ID/sub-ID_seg-vert_msk.nii.gz`` (corrected label map, VerSe ids, on the CT grid)
    - ``derivatives/sub-ID/sub-ID_seg-subreg_ctd.json`` (centroids, VerSe format)
    - ``grades.csv`` at the dataset root: this subject's rows appended (rows of the same subject replaced)

    ``subject`` defaults to the next generated id; nothing derived from the patient (names, node names, DICOM
    fields) goes into file names or headers.
    """
    folder = Path(folder)
    subject = subject or next_subject_id(folder)
    if not _SUBJECT.match(subject):
        raise ValueError(f"subject id {subject!r}: use letters and digits only (it becomes part of file names)")
    if not labels.same_grid(ct):
        raise ValueError("the label map and the CT must share one grid")
    tag = f"sub-{subject}"
    raw = folder / "rawdata" / tag
    derivatives = folder / "derivatives" / tag
    written = {
        "ct": raw / f"{tag}_ct.nii.gz",
        "labels": derivatives / f"{tag}_seg-vert_msk.nii.gz",
        "centroids": derivatives / f"{tag}_seg-subreg_ctd.json",
        "grades": folder / "grades.csv",
    }
    array = np.asarray(ct.array)
    whole = array.dtype.kind in "iu" or bool(np.all(np.equal(np.mod(array, 1), 0)))
    in_range = array.size == 0 or (array.min() >= -32768 and array.max() <= 32767)
    _write_anonymous_nifti(ct, written["ct"], np.int16 if whole and in_range else np.float32)
    _write_anonymous_nifti(labels, written["labels"], np.uint8)
    write_text_atomic(written["centroids"], json.dumps(verse_centroids(labels)))
    rows = []
    if written["grades"].exists():
        with open(written["grades"], newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("subject") != tag]
    for vertebra in case.vertebrae:
        heights = vertebra.heights_mm or {}
        rows.append({
            "subject": tag, "label": vertebra.label, "level": vertebra.level,
            "genant_grade": "" if vertebra.final_grade is None else vertebra.final_grade,
            "morphology": vertebra.final_morphology or "",
            "automatic_grade": "" if vertebra.genant_grade is None else vertebra.genant_grade,
            "automatic_morphology": vertebra.morphology or "",
            "reviewed": int(vertebra.reviewed),
            **{f"h{name[0]}_mm": ("" if name not in heights else round(float(heights[name]), 2))
               for name in HEIGHT_NAMES},
        })
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GRADES_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(written["grades"], buffer.getvalue())
    log.info("exported %s to %s", tag, folder)
    return written
