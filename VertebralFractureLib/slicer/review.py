"""Review rules on a measured case, without Slicer: what a reviewer may change and what follows from it.

The Slicer module applies them through :class:`.mrml.VertebralFractureCase` (which also renames segments and
lines and publishes the table); the command line, batch and a browser front end can apply the same rules to a
:class:`~.results.CaseResult` read from results.json.
"""

from __future__ import annotations

import colorsys

import numpy as np

from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import grade as grade_mod
from VertebralFractureLib.outputs import files as report_mod
from VertebralFractureLib.results import (
    BORDERLINE,
    HEIGHT_NAMES,
    MORPHOLOGIES,
    CaseResult,
    VertebraResult,
    stated_l1_hu,
)
from VertebralFractureLib.segment.renumber import renumbering


def level_of(value) -> int:
    """VerSe id from a level name ("L1"), a VerSe id, or a VertebraResult."""
    if isinstance(value, VertebraResult):
        return value.label
    if isinstance(value, (int, np.integer)):
        return int(value)
    return labels_mod.label_from_level(str(value))


def level_color(label: int) -> tuple[float, float, float]:
    """A fixed colour per VerSe id: one hue family per region, lightness alternating so neighbours differ."""
    label = int(label)
    if label == labels_mod.SACRUM:
        return (0.85, 0.75, 0.45)
    if label == labels_mod.COCCYX:
        return (0.75, 0.65, 0.40)
    if label <= 7:  # cervical: blues
        hue, index = 0.58, label - 1
    elif label <= 19 or label == labels_mod.T13:  # thoracic: greens
        hue, index = 0.33, (label - 8) if label != labels_mod.T13 else 12
    else:  # lumbar (and L6): oranges to reds
        hue, index = 0.07, label - 20
    hue = (hue + 0.025 * (index % 4)) % 1.0
    lightness = 0.45 if index % 2 else 0.62
    return tuple(float(c) for c in colorsys.hls_to_rgb(hue, lightness, 0.65))


def heights_from_points(points_ras: dict[str, list[float]]) -> dict[str, float]:
    """Ha, Hm, Hp as distances between the superior and inferior points (the definition measure.py uses)."""
    heights = {}
    for name in HEIGHT_NAMES:
        top = np.asarray(points_ras[f"superior_{name}"], dtype=float)
        bottom = np.asarray(points_ras[f"inferior_{name}"], dtype=float)
        heights[name] = float(np.linalg.norm(top - bottom))
    return heights


def regrade(case: CaseResult) -> None:
    """Grade every vertebra again from its heights (neighbours' expected heights stay consistent) with the rules the
    case was measured with (T1-T3 graded when it was measured with them), pass the grades through quality control
    again (a withheld finding is not resurrected by a re-grade; a reviewer's explicit grade override stays in force)
    and summarise."""
    from VertebralFractureLib.morphometry import qc

    case.vertebrae.sort(key=lambda v: labels_mod.rank(v.label))
    grade_mod.grade_vertebrae(case.vertebrae, grade_mod.rules_from_inputs(case.inputs))
    qc.apply_quality_gate(case)
    # The voxel-size warnings are replaced where they stood, so a re-graded case lists its warnings in the order
    # the measurement gave them.
    stale = [i for i, w in enumerate(case.warnings) if grade_mod.VOXEL_SIZE_WARNING in w]
    at = stale[0] if stale else len(case.warnings)
    kept = [w for w in case.warnings if grade_mod.VOXEL_SIZE_WARNING not in w]
    case.warnings = kept[:at] + grade_mod.voxel_size_warnings(case.vertebrae) + kept[at:]


def summary_text(case: CaseResult) -> str:
    """The patient summary as a few lines of plain text (module panel, text node, batch logs); the quality-control
    headline first when findings are withheld."""
    from VertebralFractureLib.morphometry import qc
    from VertebralFractureLib.screening.rules import (
        ASSESSED,
        case_status,
        density_not_usable,
        grade_words,
        status_text,
    )

    patient = case.patient
    status, reason = case_status(case)
    lines = [f"Status: {status_text(status, reason)}"]
    graded = [v for v in case.vertebrae if v.complete and v.final_grade is not None]
    fractured = [v for v in graded if (v.final_grade or 0) > 0]
    withheld = status != ASSESSED
    if fractured:
        lines.append("Fractures: " + "; ".join(f"{v.level} {grade_words(v)}" for v in fractured))
    elif withheld or not graded:
        lines.append("Fractures: not assessed")
    else:
        lines.append("Fractures: none found (mild, grade 1, fractures can be missed)")
    uncertain = [v for v in graded if v.withheld_for_voxel_size is not None and v.grade_override is None]
    # Borderline levels not already listed for the slices' uncertainty below.
    borderline = [v.level for v in graded if v.borderline_in_force and v not in uncertain]
    if borderline and not withheld:
        lines.append(f"{BORDERLINE[0].upper()}{BORDERLINE[1:]} (not a fracture, not normal): " + ", ".join(borderline))
    if uncertain and not withheld:
        lines.append("To review (a reduction within the slices' uncertainty): " + ", ".join(
            f"{v.level} {100 * v.withheld_for_voxel_size:.0f} %" for v in uncertain))
    if graded:
        lines.append(f"Worst Genant grade: {max(v.final_grade for v in graded)}")
    hu = patient.l1_trabecular_hu
    if hu is not None:
        lines.append(f"L1 trabecular attenuation: {hu:.0f} HU")
    else:
        l1 = next((v for v in case.vertebrae if v.level == "L1"), None)
        why = density_not_usable(case, l1) or "not measured"
        lines.append(f"L1 trabecular attenuation: not stated ({why})")
    lines.append(f"Graded levels: {', '.join(v.level for v in graded) or 'none'}")
    incomplete = [v for v in case.vertebrae if not v.complete]
    if incomplete:
        lines.append("Not graded: " + "; ".join(f"{v.level} ({v.incomplete_reason})" for v in incomplete))
    not_assessed = [v for v in case.vertebrae if v.complete and v.final_grade is None and v.not_assessed_reason]
    if not_assessed and not withheld:
        lines.append("Not assessed: " + "; ".join(f"{v.level} ({v.not_assessed_reason})" for v in not_assessed))
    reviewed = sum(1 for v in case.vertebrae if v.reviewed)
    lines.append(f"Reviewed: {reviewed} of {len(case.vertebrae)} vertebrae")
    levels = report_mod.levels_line(case)
    if levels:
        lines.insert(1, levels)
    if qc.headline(case):
        lines.insert(1, qc.headline(case))
    return "\n".join(lines)


def grades_in_force(case: CaseResult) -> dict[str, list]:
    """Level -> [grade, morphology] in force: what a screening saw, to tell when it is out of date."""
    return {v.level: [v.final_grade, v.final_morphology] for v in case.vertebrae}



def set_grade_override(case: CaseResult, level, grade: int | None) -> None:
    """Reviewer's Genant grade (0-3), or None to go back to the automatic grade (which stays recorded)."""
    if grade is not None and int(grade) not in (0, 1, 2, 3):
        raise ValueError(f"Genant grade must be 0, 1, 2 or 3, not {grade!r}")
    case.vertebra(level_of(level)).grade_override = None if grade is None else int(grade)
    _summarize(case)


def set_morphology_override(case: CaseResult, level, morphology: str | None) -> None:
    if morphology is not None and morphology not in MORPHOLOGIES:
        raise ValueError(f"morphology must be one of {', '.join(MORPHOLOGIES)}, not {morphology!r}")
    case.vertebra(level_of(level)).morphology_override = morphology
    _summarize(case)


def _summarize(case: CaseResult) -> None:
    """The patient summary after a reviewer's change: grades in force, and L1's density where it may be stated."""
    case.patient = grade_mod.summarize(case.vertebrae)
    case.patient.l1_trabecular_hu = stated_l1_hu(case)


def level_mapping(case: CaseResult, level, new_level) -> dict[int, int]:
    """Old -> new VerSe id of every vertebra when the one now called ``level`` is ``new_level`` (the shared rule of
    :mod:`.renumber`); {} when nothing changes. Raises KeyError for a level the case lacks, ValueError for a shift
    the spine does not allow."""
    old_label, new_label = level_of(level), level_of(new_level)
    case.vertebra(old_label)
    if old_label == new_label:
        return {}
    return renumbering([v.label for v in case.vertebrae], old_label, new_label)


def apply_level_mapping(case: CaseResult, mapping: dict[int, int], level, new_level) -> None:
    """Rename the vertebrae, record the correction and its evidence, mark the levels anchored, grade again."""
    old_label, new_label = level_of(level), level_of(new_level)
    for vertebra in case.vertebrae:
        vertebra.label = mapping[vertebra.label]
        vertebra.level = labels_mod.level_name(vertebra.label)
    case.level_corrections.append({"from": labels_mod.level_name(old_label), "to": labels_mod.level_name(new_label)})
    case.level_evidence.append(f"reviewer: {labels_mod.level_name(old_label)} is {labels_mod.level_name(new_label)}")
    case.levels_status = "anchored"
    regrade(case)
