"""Opportunistic osteoporosis screening: trabecular bone density, contrast phase, referral recommendation.

Input: the VerSe-id label volume, the CT on the same grid (Hounsfield units) and the :class:`CaseResult` that
``measure.measure_case`` produced (heights, grades). :func:`screen_case` measures trabecular attenuation in an
interior region of each vertebral body, picks the screening level (L1, else T12 or L2), assesses contrast
enhancement, categorises bone density and writes a patient-level recommendation whose every statement names
the measurements behind it. It fills ``trabecular_hu`` / ``trabecular_hu_iqr`` / ``trabecular_voxels`` of the
vertebrae and ``patient.l1_trabecular_hu`` in the case and returns a :class:`ScreeningResult`.

All thresholds and rules live in three dataclasses (:class:`DensityThresholds`, :class:`RoiSettings`,
:class:`RecommendationRules`); ``docs/screening.md`` gives their sources. World coordinates are RAS mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import Volume
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry.density import (
    DensityMeasurement,
    RoiSettings,
    _unit,
    anterior_axis,
    measure_density,
)
from VertebralFractureLib.morphometry.qc import VERTEBRA_REASON_PREFIX
from VertebralFractureLib.results import BORDERLINE, CaseResult, PatientSummary, VertebraResult
from VertebralFractureLib.screening.calibration import CORRECTED, HuCalibration, on_checked_scale
from VertebralFractureLib.screening.contrast import ContrastAssessment, assess_contrast
from VertebralFractureLib.screening.rules import (
    ACTION_ORDER,
    FINDINGS_WITHHELD,
    GRADE_NAMES,
    QC_FAILED,
    DensityThresholds,
    RecommendationRules,
    case_status,
    contrast_words,
    density_not_usable,
    grade_words,
    graded_loss_text,
    height_loss_text,
    stated_l1_hu,
)


@dataclass
class Recommendation:
    action: str
    statement: str
    reasons: list[str]
    confidence: str
    confidence_reasons: list[str]


@dataclass
class ScreeningResult:
    level: str | None
    level_reason: str
    measured_hu: float | None
    corrected_hu: float | None
    category: str | None
    pickhardt: str | None
    contrast: ContrastAssessment
    kvp: float | None
    densities: dict[str, DensityMeasurement]
    recommendation: Recommendation
    caveats: list[str]
    thresholds: DensityThresholds
    roi: RoiSettings
    rules: RecommendationRules
    incomplete_levels: list[str] = field(default_factory=list)
    # The HU scale checked against the body's own tissues (None without a CT).
    calibration: HuCalibration | None = None
    # The measured trabecular regions (VerSe id per voxel, on the CT grid) for display; not serialised.
    roi_volume: Volume | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        def rounded(value, digits=1):
            return None if value is None else round(float(value), digits)

        densities = {}
        for level, d in self.densities.items():
            entry = dataclasses.asdict(d)
            for key in ("median_hu", "iqr_hu", "p25_hu", "p75_hu", "mean_hu", "sd_hu", "volume_ml"):
                entry[key] = rounded(entry[key], 2)
            densities[level] = entry
        contrast = dataclasses.asdict(self.contrast)
        contrast["aorta_hu"] = rounded(contrast["aorta_hu"])
        if contrast["aorta_center_ras"]:
            contrast["aorta_center_ras"] = [round(float(v), 1) for v in contrast["aorta_center_ras"]]
        return {
            "level": self.level,
            "level_reason": self.level_reason,
            "measured_hu": rounded(self.measured_hu),
            "corrected_hu": rounded(self.corrected_hu),
            "category": self.category,
            "pickhardt": self.pickhardt,
            "contrast": contrast,
            "kvp": self.kvp,
            "densities": densities,
            "recommendation": dataclasses.asdict(self.recommendation),
            "caveats": list(self.caveats),
            "incomplete_levels": list(self.incomplete_levels),
            "hu_calibration": None if self.calibration is None else self.calibration.to_dict(),
            "thresholds": dataclasses.asdict(self.thresholds),
            "roi": dataclasses.asdict(self.roi),
            "rules": {**dataclasses.asdict(self.rules), "screening_levels": list(self.rules.screening_levels)},
        }


# --------------------------------------------------------------------------------------------------------------
# Case without morphometry (labels only) and level choice
# --------------------------------------------------------------------------------------------------------------
def _spine_axis_at(case: CaseResult, label: int) -> np.ndarray | None:
    centroids = [(labels_mod.rank(v.label), np.asarray(v.centroid_ras, dtype=float))
                 for v in case.vertebrae if v.centroid_ras is not None]
    centroids.sort(key=lambda item: item[0])
    if len(centroids) < 2:
        return None
    points = np.array([c for _, c in centroids])
    ranks = np.array([r for r, _ in centroids])
    index = int(np.argmin(np.abs(ranks - labels_mod.rank(label))))
    a, b = max(index - 1, 0), min(index + 1, len(points) - 1)
    return _unit(points[a] - points[b])  # cranial minus caudal: points superiorly


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def _crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """A view of the volume inside an index box, with the voxel-to-world matrix moved to the box's corner."""
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = volume.ijk_to_world(np.array([[b.start for b in box]], dtype=float))[0]
    return Volume(array=volume.array[box], ijk_to_ras=matrix, path=volume.path, meta=volume.meta)


def case_from_labels(labels: Volume, inputs: dict | None = None) -> CaseResult:
    """A :class:`CaseResult` holding only level, completeness and centroid per vertebra (no heights, no grades),
    for screening when morphometry is not run. A vertebra touching the volume's border is incomplete (cut)."""
    vertebrae = []
    for label in labels_mod.neighbours_in_order(int(v) for v in np.unique(labels.array) if v != 0):
        if not labels_mod.is_vertebra(label):
            continue
        mask = labels.array == label
        cut = touches_border(mask)
        centroid = labels.ijk_to_world(np.argwhere(mask).mean(axis=0))[0]
        vertebrae.append(VertebraResult(
            label=label, level=labels_mod.level_name(label), complete=not cut,
            incomplete_reason="cut by the field of view" if cut else None, centroid_ras=centroid.tolist(),
            body_voxels=int(mask.sum()), body_volume_ml=float(mask.sum() * np.prod(labels.spacing) / 1000.0)))
    patient = PatientSummary(incomplete_levels=[v.level for v in vertebrae if not v.complete])
    return CaseResult(vertebrae=vertebrae, patient=patient, inputs=dict(inputs or {}),
                      warnings=["morphometry not run: heights and grades unavailable"])


def _quality_of(case: CaseResult, vertebra: VertebraResult):
    report = getattr(case, "quality", None)
    return None if report is None else report.vertebra(vertebra.label)


def _usability(case: CaseResult, vertebra: VertebraResult | None, density: DensityMeasurement | None) -> str | None:
    """None if the level can be the screening level, else why not: first the rule for every density statement
    (:func:`rules.density_not_usable`), then what screening asks beyond it (not fractured, a trabecular region)."""
    why_not = density_not_usable(case, vertebra)
    if why_not == "cut by the field of view":
        return f"incomplete ({vertebra.incomplete_reason or 'cut'})"
    if why_not == "not in view":
        return "not in the label map"
    if why_not == "failed quality control":
        return "failed quality control (" + "; ".join(_quality_of(case, vertebra).problems) + ")"
    if why_not is not None:
        return why_not
    grade = vertebra.final_grade
    if grade is not None and grade >= 1:
        return f"fractured (Genant grade {grade})"
    if density is None or not density.usable:
        return "no trabecular measurement" + (f" ({density.note})" if density is not None and density.note else "")
    return None


def density_not_assessed_reason(case: CaseResult, rules: RecommendationRules) -> str:
    """Why no density is stated, in a few words for the headline: the case's reason when one rules out every level
    (quality control failed, level names unconfirmed), else each screening level's."""
    status, _reason = case_status(case)
    if status == QC_FAILED:
        return "segmentation failed quality control"
    if status == FINDINGS_WITHHELD:
        return "level names unconfirmed"
    parts = []
    for level in rules.screening_levels:
        vertebra = next((v for v in case.vertebrae if v.level == level), None)
        why_not = density_not_usable(case, vertebra)
        if why_not is None:
            grade = vertebra.final_grade
            why_not = "fractured" if grade is not None and grade >= 1 else "no trabecular measurement"
        parts.append(f"{level} {why_not}")
    return "; ".join(parts)


def choose_level(case: CaseResult, densities: dict[str, DensityMeasurement],
                 rules: RecommendationRules) -> tuple[str | None, str]:
    """First usable level of ``rules.screening_levels``; the reason names what ruled out the earlier ones."""
    excluded = []
    for level in rules.screening_levels:
        vertebra = next((v for v in case.vertebrae if v.level == level), None)
        why_not = _usability(case, vertebra, densities.get(level))
        if why_not is None:
            if not excluded:
                if level == "L1":
                    return level, "L1: default screening level (Pickhardt 2013 thresholds are for L1)"
                return level, f"{level}: first of the configured screening levels ({', '.join(rules.screening_levels)})"
            return level, f"{level} used because " + "; ".join(excluded)
        excluded.append(f"{level} {why_not}")
    return None, "no screening level usable: " + "; ".join(excluded)


# --------------------------------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------------------------------
def _fracture_phrase(vertebra: VertebraResult) -> str:
    grade = vertebra.final_grade
    morphology = vertebra.final_morphology
    kind = f" {morphology}" if morphology and morphology != "normal" else ""
    return f"{GRADE_NAMES.get(grade, '?').capitalize()} (grade {grade}){kind} fracture of {vertebra.level}"


def _fracture_evidence(vertebra: VertebraResult) -> str:
    """The grade, the loss it was given for, the heights, and every reduction the grading looked at."""
    parts = [f"{vertebra.level}: Genant {grade_words(vertebra)}"]
    if height_loss_text(vertebra):
        parts.append(graded_loss_text(vertebra))
    if vertebra.heights_mm:
        h = vertebra.heights_mm
        parts.append(f"Ha {h['anterior']:.1f} / Hm {h['middle']:.1f} / Hp {h['posterior']:.1f} mm")
    if vertebra.grade_reason:
        parts.append(f"measured: {vertebra.grade_reason}")
    return ", ".join(parts)


def recommend(case: CaseResult, level: str | None, level_reason: str, measured_hu: float | None,
              corrected_hu: float | None, density: DensityMeasurement | None, contrast: ContrastAssessment | None,
              kvp: float | None, ct_given: bool, thresholds: DensityThresholds,
              rules: RecommendationRules, calibration: HuCalibration | None = None) -> Recommendation:
    reasons: list[str] = []
    confidence_reasons: list[str] = []
    penalty = 0.0
    actions = ["none"]
    phrases = []

    quality = getattr(case, "quality", None)
    withheld = quality is not None and quality.findings_withheld
    graded = [v for v in case.vertebrae if v.final_grade is not None]
    # Withheld by quality control (levels outside the grading's scope, such as the sacrum, are no loss).
    not_assessed = [v for v in case.vertebrae if v.complete and v.final_grade is None
                    and (v.not_assessed_reason or "").startswith(VERTEBRA_REASON_PREFIX)]
    if not_assessed and not withheld:
        penalty += 1
        confidence_reasons.append("not assessed: " + "; ".join(f"{v.level} ({v.not_assessed_reason})"
                                                               for v in not_assessed))
    fractured = sorted((v for v in graded if v.final_grade >= 1),
                       key=lambda v: (-v.final_grade, labels_mod.rank(v.label)))
    for vertebra in fractured:
        reasons.append(_fracture_evidence(vertebra))
    if fractured:
        worst = fractured[0]
        phrase = _fracture_phrase(worst)
        others = [v.level for v in fractured[1:]]
        if others:
            phrase += f" (also {', '.join(others)})"
        phrases.append(phrase)
        if worst.final_grade >= rules.refer_fracture_grade:
            actions.append("refer")
            reasons.append(f"a grade >= {rules.refer_fracture_grade} vertebral fracture indicates osteoporosis "
                           "whatever the bone density")
        elif worst.final_grade >= rules.dxa_fracture_grade:
            actions.append("dxa")
    elif withheld:
        why = "segmentation failed quality control" if quality.status == "failed" else quality.status
        phrases.append(f"Fractures not assessed ({why})")
        penalty += 2
        confidence_reasons.append(quality.headline)
        reasons.extend(f"quality control: {item}" for item in quality.failed_checks)
    elif graded:
        # Mild (grade 1) fractures overlap normal shapes: the method misses some, and says so.
        borderline = [v.level for v in graded if v.borderline_in_force]
        phrases.append(f"No vertebral fracture ({', '.join(v.level for v in graded)} graded; mild, grade 1, fractures "
                       "can be missed)")
        if borderline:
            phrases.append(f"{BORDERLINE}: {', '.join(borderline)}")
        reasons.append(f"Genant grade 0 at {', '.join(v.level for v in graded)}")
    else:
        phrases.append("Fracture grading not available")
        penalty += 2
        present = [v for v in case.vertebrae if labels_mod.is_vertebra(v.label)]
        why = ("every vertebra present is cut by the field of view" if present and not any(v.complete for v in present)
               else "morphometry not run")
        confidence_reasons.append(f"no vertebra graded ({why})")

    if corrected_hu is not None and level is not None:
        band = thresholds.band(corrected_hu)
        hu_text = f"{level} {measured_hu:.0f} HU"
        corrections = []
        if calibration is not None and calibration.status == CORRECTED:
            hu_text = (f"{level} {measured_hu:.0f} ± {calibration.uncertainty_hu(measured_hu):.0f} HU on the HU scale "
                       "corrected by the body's air and fat")
            corrections.append("at the lower bound of that uncertainty")
            penalty += 1
            confidence_reasons.append(calibration.note)
        if contrast is not None and contrast.offset_hu:
            corrections.append(f"after -{contrast.offset_hu:g} HU {contrast.phase} contrast correction")
        if corrections:
            hu_text += f" ({corrected_hu:.0f} HU {' and '.join(corrections)})"
        phrases.append(f"{hu_text}: {band.verdict}")
        reasons.append(
            f"{level} trabecular median {measured_hu:.0f} HU (IQR {density.iqr_hu:.0f} HU, {density.voxels} voxels, "
            f"{density.volume_ml:.1f} ml); {'corrected ' if corrected_hu != measured_hu else ''}{corrected_hu:.0f} HU "
            f"is {band.cut_off}")
        actions.append(band.action)
        if level != "L1":
            penalty += 1
            confidence_reasons.append(level_reason)
        if density.iqr_hu is not None and density.iqr_hu > 100:
            penalty += 1
            confidence_reasons.append(f"{level} trabecular HU spread is wide (IQR {density.iqr_hu:.0f} HU)")
    elif not ct_given:
        phrases.append("bone density not assessed (no CT)")
        penalty += 3
        confidence_reasons.append("no CT given: bone density not measured")
    else:
        # The HU scale refused by the body's own tissues rules out every level at once: said first.
        why = ("HU scale doubtful" if calibration is not None and not calibration.density_usable
               else density_not_assessed_reason(case, rules))
        phrases.append(f"bone density not assessed ({why})")
        penalty += 3
        confidence_reasons.append(level_reason)

    if contrast is not None and ct_given:
        # One wording of the contrast state (rules.contrast_words) here, in the report and in the PDF.
        if contrast.status == "contrast":
            reasons.append(f"contrast: {contrast_words(contrast)} — {contrast.note}")
            if not contrast.certain:
                penalty += 1
                confidence_reasons.append(f"contrast: {contrast_words(contrast)} — {contrast.note}")
        elif contrast.status == "uncertain":
            penalty += 2
            confidence_reasons.append(f"contrast: {contrast_words(contrast)} — {contrast.note}")
        elif not contrast.certain:
            penalty += 1
            confidence_reasons.append(f"contrast: {contrast_words(contrast)} — {contrast.note}")
    if ct_given:
        if kvp is None:
            penalty += 0.5
            confidence_reasons.append("tube voltage (kVp) unknown; thresholds assume 120 kVp")
        elif abs(kvp - thresholds.reference_kvp) > 1:
            penalty += 1
            confidence_reasons.append(f"{kvp:g} kVp scan; thresholds assume {thresholds.reference_kvp:g} kVp "
                                      "(HU differ by up to ~23 % between 80 and 120 kVp)")
    cut = [v.level for v in case.vertebrae if not v.complete]
    if cut:
        penalty += 1
        confidence_reasons.append(f"incomplete vertebrae (cut by the field of view): {', '.join(cut)}")

    # A whole vertebra of confirmed level and plausible segmentation below the osteoporosis band is never "no
    # action", whichever level it is: the wording says so. Vertebrae the density rule rules out are never quoted.
    offset = contrast.offset_hu if contrast is not None else 0.0
    # Nor on a HU scale the body's own tissues refuse.
    density_usable = calibration is None or calibration.density_usable
    low = sorted(((v.trabecular_hu - offset, v) for v in case.vertebrae
                  if density_usable and v.trabecular_hu is not None and v.level != level
                  and density_not_usable(case, v) is None
                  and v.trabecular_hu - offset < thresholds.osteoporosis_below_hu), key=lambda item: item[0])
    if low and max(actions, key=ACTION_ORDER.get) in ("none", "consider"):
        value, vertebra = low[0]
        if level is None:
            # The screening levels said nothing: the headline says where the density comes from.
            phrases = [p.replace("bone density not assessed (", "bone density not assessed at the screening "
                                 "levels (", 1) for p in phrases]
        phrases.append(f"{vertebra.level} {value:.0f} HU (not a screening level): "
                       f"{thresholds.band(value).verdict}")
        reasons.append(f"{vertebra.level} trabecular median {value:.0f} HU is {thresholds.band(value).cut_off}; "
                       "not a screening level")
        actions.append("dxa")
    action = max(actions, key=ACTION_ORDER.get)
    if action == "none" and not graded and corrected_hu is None:
        # Neither a grade nor a density: "no action" would read as a normal result.
        action = "indeterminate"
    action_text = {"refer": rules.refer_text, "dxa": rules.dxa_text, "consider": rules.consider_text,
                   "none": rules.none_text, "indeterminate": rules.indeterminate_text}[action]
    statement = "; ".join(phrases) + f" — {action_text}"
    # Weights: 2-3 for a missing measurement, 1 for a substitution or uncertainty, 0.5 for a minor unknown.
    confidence = "high" if penalty < 1 else "moderate" if penalty < 3 else "low"
    if not confidence_reasons:
        confidence_reasons.append("complete data: screening level measured, grading available, contrast state known")
    return Recommendation(action=action, statement=statement, reasons=reasons, confidence=confidence,
                          confidence_reasons=confidence_reasons)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def screen_case(labels: Volume, ct: Volume | None, case: CaseResult | None = None,
                thresholds: DensityThresholds | None = None, roi: RoiSettings | None = None,
                rules: RecommendationRules | None = None, dicom: dict | None = None,
                levels: list[int] | None = None) -> ScreeningResult:
    """Screen one case. ``labels`` holds VerSe ids on the CT's grid; ``case`` defaults to :func:`case_from_labels`.

    Fills the vertebrae's ``trabecular_*`` fields and ``case.patient.l1_trabecular_hu``. ``dicom`` defaults to
    ``ct.meta["dicom"]`` (the header summary :func:`io.read_ct` keeps for DICOM input).
    """
    thresholds = thresholds or DensityThresholds()
    roi = roi or RoiSettings()
    rules = rules or RecommendationRules()
    case = case if case is not None else case_from_labels(labels)
    if ct is not None and not labels.same_grid(ct):
        raise ValueError("the label volume must be on the CT's grid (use io.read_label_map(..., reference=ct))")
    if dicom is None and ct is not None:
        dicom = ct.meta.get("dicom")
    kvp = (dicom or {}).get("kvp")
    densities: dict[str, DensityMeasurement] = {}
    caveats: list[str] = []
    contrast = None
    roi_array = None
    calibration = None
    if ct is not None:
        # The HU scale first: a density on a scale that is off by a factor or an offset is a wrong density. The
        # pipeline checks (and corrects) it when it reads the CT; a CT from elsewhere is checked here.
        # Corrected, the CT is a new array: every density (and the contrast) is then measured again on it.
        ct = on_checked_scale(ct)
        calibration = ct.meta["hu_calibration"]
    if ct is not None and calibration.density_usable:
        # Bounding boxes of all labels in one pass; each vertebra is then handled inside its own box.
        boxes = ndimage.find_objects(labels.array.astype(np.int32, copy=False))
        for vertebra in case.vertebrae:
            if levels is not None and vertebra.label not in levels:
                continue
            if vertebra.label > len(boxes) or boxes[vertebra.label - 1] is None:
                continue
            measured = getattr(vertebra, "_trabecular", None)
            if measured is not None and measured.ct_array is ct.array and measured.settings == roi:
                # Measured with the body by measure.measure_case on this very CT: the same region, not again.
                density, box, region = measured.density, measured.crop, measured.region
            else:
                box = tuple(slice(max(b.start - 2, 0), min(b.stop + 2, n))
                            for b, n in zip(boxes[vertebra.label - 1], labels.shape))
                mask = labels.array[box] == vertebra.label
                axis = _spine_axis_at(case, vertebra.label)
                density, region = measure_density(_crop(ct, box), mask, anterior_axis(vertebra, axis), roi,
                                                  vertebra.level, vertebra.label)
            if roi_array is None:
                roi_array = np.zeros(labels.shape, dtype=np.int16)
            roi_array[box][region] = vertebra.label
            densities[vertebra.level] = density
            vertebra.trabecular_hu = density.median_hu
            vertebra.trabecular_hu_iqr = density.iqr_hu
            vertebra.trabecular_voxels = density.voxels
        # Search the aorta beside the thoracolumbar junction (where the screening levels are), or beside whatever
        # vertebrae the image holds.
        everything = labels.array > 0
        junction = np.isin(labels.array, [v.label for v in case.vertebrae if v.level in ("T11", "T12", "L1", "L2")])
        contrast = assess_contrast(ct, junction if junction.any() else everything, thresholds, dicom,
                                   bone_mask=everything)
    level, level_reason = choose_level(case, densities, rules)
    if calibration is not None and not calibration.density_usable:
        level_reason = calibration.note
    measured = corrected = None
    category = pickhardt = None
    density = densities.get(level) if level else None
    if density is not None:
        measured = density.median_hu
        corrected = measured - (contrast.offset_hu if contrast is not None else 0.0)
        if calibration is not None and calibration.status == CORRECTED:
            # A corrected scale is judged at the lower bound of its uncertainty: the correction never hides a referral.
            corrected -= calibration.uncertainty_hu(measured)
        category = thresholds.category(corrected)
        pickhardt = thresholds.pickhardt_statement(corrected)
    if calibration is not None and calibration.status != "consistent":
        # No vertebra keeps a density on the stored scale: refused, none at all; corrected, only those measured again.
        for vertebra in case.vertebrae:
            if vertebra.level not in densities:
                vertebra.trabecular_hu = vertebra.trabecular_hu_iqr = None
    # The patient-level L1 density follows the one rule for density statements (whole, passed quality control,
    # level confirmed): a cut L1's region may hold a sliver of bone, a failed segmentation's "L1" an unknown piece.
    # Nor is a density on a HU scale the body's tissues refuse.
    case.patient.l1_trabecular_hu = stated_l1_hu(case)
    if calibration is not None and not calibration.density_usable:
        case.patient.l1_trabecular_hu = None

    if ct is None:
        caveats.append("No CT given: bone density was not measured; the recommendation rests on fracture grades only.")
    elif not calibration.density_usable:
        caveats.append(f"{calibration.note}.")
    else:
        if calibration.status == CORRECTED:
            caveats.append(f"{calibration.note}.")
        if level is not None and level != "L1":
            caveats.append(f"Screening level {level} instead of L1: {level_reason}. Thresholds were derived at L1.")
        if level is None:
            caveats.append(level_reason)
        if contrast is not None and contrast.status == "contrast":
            caveats.append(f"Contrast-enhanced CT ({contrast.phase}): contrast raises trabecular HU; "
                           f"{contrast.offset_hu:g} HU subtracted before applying thresholds ({contrast.note}).")
        elif contrast is not None and contrast.status == "uncertain":
            caveats.append(f"Contrast state uncertain ({contrast.note}); values may be overestimated.")
        if kvp is None:
            caveats.append("Tube voltage (kVp) unknown; thresholds were derived at 120 kVp.")
        elif abs(kvp - thresholds.reference_kvp) > 1:
            caveats.append(f"Scan at {kvp:g} kVp; thresholds were derived at {thresholds.reference_kvp:g} kVp.")
    cut = [v.level for v in case.vertebrae if not v.complete]
    if cut:
        caveats.append(f"Vertebrae cut by the field of view (not graded / not measured): {', '.join(cut)}.")
    quality = getattr(case, "quality", None)
    if quality is not None and quality.findings_withheld:
        caveats.insert(0, quality.headline + ".")
    caveats.append("Opportunistic CT screening does not replace DXA; thresholds are population cut-offs.")
    recommendation = recommend(case, level, level_reason, measured, corrected, density, contrast, kvp,
                               ct is not None, thresholds, rules, calibration)
    return ScreeningResult(level=level, level_reason=level_reason, measured_hu=measured, corrected_hu=corrected,
                           category=category, pickhardt=pickhardt,
                           contrast=contrast or ContrastAssessment(status="not assessed", phase="unknown",
                                                                   note="no CT"),
                           kvp=kvp, densities=densities, recommendation=recommendation, caveats=caveats,
                           thresholds=thresholds, roi=roi, rules=rules, incomplete_levels=cut,
                           roi_volume=None if roi_array is None else labels.with_array(roi_array),
                           calibration=calibration)
