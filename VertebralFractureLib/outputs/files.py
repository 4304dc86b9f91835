"""Measurement outputs: ``results.json``, ``vertebrae.csv``, a sagittal ``overview.png`` (drawn by
:mod:`.outputs.overview`) and the label map ``segmentation.nii.gz`` they were measured on.

:func:`write_measure_files` writes into a folder as is (a staging folder of :class:`.outputs.OutputSet`);
:func:`write_measure_outputs` publishes them as one set, so a failure never leaves a partial or mixed set behind.
"""

from __future__ import annotations

import contextlib
import csv
import io as stdio
from pathlib import Path

from VertebralFractureLib.io import Volume
from VertebralFractureLib.outputs.overview import render_overview
from VertebralFractureLib.results import DOUBTFUL_LEVEL_STATUSES, HEIGHT_NAMES, POINT_NAMES, CaseResult

CSV_COLUMNS = (
    ["level", "label", "levels_status", "complete", "genant_grade", "borderline", "morphology", "height_loss",
     "fracture_score"]
    + [f"{name}_height_mm" for name in HEIGHT_NAMES]
    + [
        "wedge_ratio",
        "biconcavity_ratio",
        "crush_ratio",
        "expected_posterior_mm",
        "depth_mm",
        "body_volume_ml",
        "trabecular_hu",
        "trabecular_hu_iqr",
        "grade_override",
        "morphology_override",
        "reviewed",
        "incomplete_reason",
        "not_assessed_reason",
    ]
    + [f"{point}_{axis}_ras" for point in POINT_NAMES for axis in "xyz"]
)


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path):
    """Yield a staging folder; on success its files replace ``out_dir``'s as one set (see :mod:`.outputs`)."""
    from VertebralFractureLib.outputs.publish import OutputSet

    with OutputSet(out_dir) as staging:
        yield staging


LEVELS_STATUS_TEXT = {
    "confirmed": "confirmed by an anatomical anchor in view",
    "conflicting": "NOT CONFIRMED: the anchors in view disagree, the names may be off by one or more levels",
    "unconfirmed": "UNCONFIRMED: nothing in view anchors the count, the names may be off by one or more levels",
    "anchored": "fixed by the user",
    "given": "as named in the given segmentation",
}


LEVELS_DOUBTFUL = DOUBTFUL_LEVEL_STATUSES
"""Level statuses a reader must be warned about: the names may be off by one or more levels."""


def levels_line(case: CaseResult) -> str | None:
    """One line on how the vertebrae got their names, for every place a reader sees the results."""
    if not case.levels_status:
        return None
    text = LEVELS_STATUS_TEXT.get(case.levels_status, case.levels_status)
    evidence = "; ".join(case.level_evidence)
    return f"Level names {text}" + (f" ({evidence})" if evidence else "")


def case_to_json(case: CaseResult) -> str:
    from VertebralFractureLib.results import json_text

    return json_text(case.to_dict())


def case_to_csv(case: CaseResult) -> str:
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for vertebra in case.vertebrae:
        row = {
            "level": vertebra.level,
            "label": vertebra.label,
            "levels_status": case.levels_status,
            "complete": vertebra.complete,
            "genant_grade": vertebra.genant_grade,
            "borderline": vertebra.borderline_in_force,
            "morphology": vertebra.morphology,
            "height_loss": _round(vertebra.height_loss, 3),
            "fracture_score": _round(vertebra.fracture_score, 3),
            "expected_posterior_mm": _round(vertebra.expected_posterior_mm),
            "depth_mm": _round(vertebra.depth_mm),
            "body_volume_ml": _round(vertebra.body_volume_ml),
            "trabecular_hu": _round(vertebra.trabecular_hu, 1),
            "trabecular_hu_iqr": _round(vertebra.trabecular_hu_iqr, 1),
            "grade_override": vertebra.grade_override,
            "morphology_override": vertebra.morphology_override,
            "reviewed": vertebra.reviewed,
            "incomplete_reason": vertebra.incomplete_reason,
            "not_assessed_reason": vertebra.not_assessed_reason,
            "wedge_ratio": _round(vertebra.ratios.get("wedge"), 3),
            "biconcavity_ratio": _round(vertebra.ratios.get("biconcavity"), 3),
            "crush_ratio": _round(vertebra.ratios.get("crush"), 3),
        }
        for name in HEIGHT_NAMES:
            row[f"{name}_height_mm"] = _round(vertebra.heights_mm[name]) if vertebra.heights_mm else None
        for point in POINT_NAMES:
            for axis, value in zip("xyz", (vertebra.points_ras or {}).get(point, [None] * 3)):
                row[f"{point}_{axis}_ras"] = _round(value)
        writer.writerow(row)
    return buffer.getvalue()


def _round(value, digits=2):
    return None if value is None else round(float(value), digits)


def write_measure_files(case: CaseResult, folder: str | Path, labels: Volume, ct: Volume | None = None,
                        segmentation: bool = True, labels_file: bytes | None = None) -> dict:
    """Write results.json, vertebrae.csv, overview.png (and the label map as segmentation.nii.gz) into
    ``folder``; returns {name: path}. ``labels_file``: the bytes of a .nii.gz that holds ``labels`` exactly (the
    label map given, read as it is stored: :attr:`.io.LabelMap.stored_file`), written as the segmentation instead of
    encoding the voxels again."""
    from VertebralFractureLib import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    if segmentation and labels_file is not None:
        with io.atomic_path(folder / "segmentation.nii.gz") as temporary:
            temporary.write_bytes(labels_file)
        written["segmentation"] = folder / "segmentation.nii.gz"
    elif segmentation:
        io.write_nifti(labels.with_array(labels.array.astype("int16", copy=False)), folder / "segmentation.nii.gz")
        written["segmentation"] = folder / "segmentation.nii.gz"
    io.write_text_atomic(folder / "results.json", case_to_json(case))
    io.write_text_atomic(folder / "vertebrae.csv", case_to_csv(case))
    render_overview(case, labels, ct, folder / "overview.png")
    written.update({name: folder / name for name in ("results.json", "vertebrae.csv", "overview.png")})
    return written


def write_measure_outputs(case: CaseResult, out_dir: str | Path, labels: Volume, ct: Volume | None = None) -> dict:
    """Publish segmentation.nii.gz, results.json, vertebrae.csv and overview.png as the one set in ``out_dir``
    (any earlier set there, a report included, is replaced); returns {name: path}."""
    from VertebralFractureLib.outputs.publish import OutputSet

    output_set = OutputSet(out_dir)
    with output_set as staging:
        written = write_measure_files(case, staging, labels, ct)
    return {name: output_set.path(Path(path).name) for name, path in written.items()}
