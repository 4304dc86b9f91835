"""The screening's thresholds and rules, in one place (sources in docs/screening.md): density categories and
contrast corrections (:class:`DensityThresholds`), the patient-level recommendation (:class:`RecommendationRules`),
the words of grades and the research-use line."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from VertebralFractureLib.morphometry.grade import GRADE_THRESHOLDS, REDUCTION_SCALE

# The one rule for density statements (density_not_usable) lives with the records: quality control and the
# measurement front ends apply it too, below this layer. Screening reads it from here.
from VertebralFractureLib.results import (  # noqa: F401
    DOUBTFUL_LEVEL_STATUSES,
    LEVELS_UNCONFIRMED,
    density_not_usable,
    stated_l1_hu,
)
from VertebralFractureLib.results import FAILED as QUALITY_FAILED

GRADE_NAMES = {0: "normal", 1: "mild", 2: "moderate", 3: "severe"}
RESEARCH_USE = "Research use only — not a diagnosis. Not a medical device; a clinician must review the images."
"""Printed on every report (HTML, PDF, overview image, terminal)."""


# --------------------------------------------------------------------------------------------------------------
# Configuration: the one place where thresholds and rules live (documented in docs/screening.md).
# --------------------------------------------------------------------------------------------------------------
@dataclass
class DensityThresholds:
    """Trabecular attenuation thresholds in HU for a non-contrast 120 kVp CT.

    - ``osteoporosis_below_hu`` / ``normal_from_hu``: the common three-band heuristic derived from Pickhardt et al.
      (Ann Intern Med 2013;158:588-595): < 90 HU osteoporosis, 90-135 HU osteopenia, >= 135 HU normal.
    - ``specific_hu`` / ``sensitive_hu``: Pickhardt 2013 L1 cut-offs against DXA: <= 110 HU > 90 % specific,
      <= 160 HU 90 % sensitive for osteoporosis.
    - :meth:`bands` joins both into one verdict table: below 90 HU and up to the specific cut-off "osteoporosis
      likely", then osteopenia up to 135 HU, then normal (with osteoporosis not excluded up to 160 HU).
    - ``contrast_offset_hu``: how much contrast raises trabecular HU, by phase. TotalSegmentator's bone-density
      rule raises its threshold by +20 HU (arterial) and +14.75 HU (portal venous); here the same offsets are
      subtracted from the measured value, which is equivalent and keeps one set of thresholds.
      "unknown" (contrast given, phase not known) uses the portal-venous offset, the most common abdominal phase.
    """

    osteoporosis_below_hu: float = 90.0
    normal_from_hu: float = 135.0
    specific_hu: float = 110.0
    sensitive_hu: float = 160.0
    contrast_offset_hu: dict[str, float] = field(
        default_factory=lambda: {"non-contrast": 0.0, "arterial": 20.0, "portal venous": 14.75, "unknown": 14.75})
    # Aorta attenuation (HU) above which the scan counts as contrast enhanced, and above which the phase is arterial.
    aorta_contrast_hu: float = 150.0
    aorta_uncertain_hu: float = 110.0
    aorta_arterial_hu: float = 250.0
    # Fallback when no round aorta is found: a pool of blood this bright (unenhanced blood is 30-60 HU; enhanced
    # arterial blood 250-500 HU), whose core (voxels this deep inside it) holds at least this volume.
    blood_pool_hu: float = 200.0
    blood_pool_core_mm: float = 4.0
    blood_pool_min_ml: float = 5.0
    reference_kvp: float = 120.0

    def bands(self) -> tuple[DensityBand, ...]:
        """The one table of density verdicts, lowest band first: a corrected HU gets the first band it lies in,
        and every output words its density with that band's verdict (never a second one beside it)."""
        return (
            DensityBand(self.osteoporosis_below_hu, False, "osteoporosis", "osteoporosis likely", "refer",
                        f"< {self.osteoporosis_below_hu:g} HU (osteoporosis band)"),
            DensityBand(self.specific_hu, True, "osteoporosis", "osteoporosis likely", "refer",
                        f"<= {self.specific_hu:g} HU (Pickhardt 2013: > 90 % specific for osteoporosis)"),
            DensityBand(self.normal_from_hu, False, "osteopenia", "low bone density (osteopenia range)", "consider",
                        f"< {self.normal_from_hu:g} HU (osteopenia range)"),
            DensityBand(self.sensitive_hu, True, "normal", "bone density in the normal range, osteoporosis not "
                        "excluded", "none", f"<= {self.sensitive_hu:g} HU (Pickhardt 2013: 90 % sensitive "
                        "threshold)"),
            DensityBand(float("inf"), False, "normal", "bone density normal, osteoporosis unlikely", "none",
                        f"> {self.sensitive_hu:g} HU (Pickhardt 2013)"),
        )

    def band(self, hu: float) -> DensityBand:
        return next(b for b in self.bands() if hu < b.upper_hu or (b.inclusive and hu <= b.upper_hu))

    def category(self, hu: float) -> str:
        return self.band(hu).category

    def pickhardt_statement(self, hu: float) -> str:
        return self.band(hu).cut_off


@dataclass(frozen=True)
class DensityBand:
    """One row of the density verdict table (:meth:`DensityThresholds.bands`)."""

    upper_hu: float
    """The band holds corrected values below this (or equal to it when ``inclusive``)."""
    inclusive: bool
    category: str
    """"osteoporosis", "osteopenia" or "normal": the category written to screening.json and the DICOM SR."""
    verdict: str
    """The words every output uses for a density in this band."""
    action: str
    """Key of :data:`ACTION_ORDER`: what a density in this band asks for."""
    cut_off: str
    """The threshold that puts a value in this band, with its source."""


@dataclass
class RecommendationRules:
    """Patient-level recommendation rules (in order of priority: the strongest action wins).

    - A fracture of Genant grade >= ``refer_fracture_grade`` (moderate/severe) is itself a sign of osteoporosis
      (a prevalent vertebral fracture predicts further fractures whatever the density): fracture-liaison referral.
    - A mild (grade ``dxa_fracture_grade``) deformity asks for a DXA and review of the images.
    - Density category "osteoporosis" (below ``DensityThresholds.osteoporosis_below_hu``, or at/below the
      Pickhardt specific cut-off): DXA / fracture-liaison referral.
    - "osteopenia": DXA if other risk factors.
    """

    screening_levels: tuple[str, ...] = ("L1", "T12", "L2")
    refer_fracture_grade: int = 2
    dxa_fracture_grade: int = 1
    refer_text: str = "recommend DXA / fracture-liaison referral"
    dxa_text: str = "recommend DXA"
    consider_text: str = "consider DXA if other risk factors"
    none_text: str = "no bone-health action from this scan"
    indeterminate_text: str = "screening not possible on this scan (review the images)"


ACTION_ORDER = {"indeterminate": -1, "none": 0, "consider": 1, "dxa": 2, "refer": 3}


@dataclass
class TissueReferences:
    """The body's own reference tissues that check the CT's HU scale (internal, phantomless calibration).

    The Hounsfield scale fixes air at -1000 HU (and water at 0). Adipose tissue reads about -100 HU and skeletal
    muscle 30-100 HU in non-contrast CT (adipose window -190 to -30 HU, muscle -29 to +150 HU: Kvist et al., Am J Clin
    Nutr 1988;48:1351-1361; Mitsiopoulos et al., J Appl Physiol 1998;85:115-122; normal- and low-density muscle
    31-100 and 0-30 HU: Goodpaster et al., J Appl Physiol 2000;89:104-110). Internal calibration with air and
    adipose (Lee et al., Bone 2017;103:325-333) or with air, fat, muscle and blood (Michalski et al., Med Eng Phys
    2020;78:55-63) agrees with phantom calibration within a few percent of trabecular density (Kaesmacher et al.,
    J Comput Assist Tomogr 2017;41:217-223: RMS 7.8 % against QCT on non-contrast CT).

    Air and fat fix the line (they are far apart and stable: ``air_sd_hu``, ``fat_sd_hu`` are the spread expected
    between scanners and patients); muscle only checks it, because age, fat infiltration and contrast move it by tens
    of HU. Blood is not used: contrast changes it by hundreds of HU.
    """

    air_hu: float = -1000.0
    fat_hu: float = -100.0
    air_sd_hu: float = 5.0
    fat_sd_hu: float = 10.0
    # Muscle and enhanced soft tissue after calibration: outside this range the tissues were not found as described.
    muscle_min_hu: float = -10.0
    muscle_max_hu: float = 150.0
    # Without air in view, fat and muscle are only checked against their usual ranges (no line can be fitted).
    fat_range_hu: tuple[float, float] = (-125.0, -75.0)  # -100 ± 2.5 SD
    # Air decides whether the scale is off: it is the scale's own anchor, read with little noise, and any error of
    # slope moves it by 10 HU per 1 % (an offset by the offset itself). Within this of -1000 HU the CT's own HU are
    # used as they are (a 1 % slope error changes 110 HU by about 1 HU); beyond it air and fat correct the scale.
    # Tighter than the ACR CT phantom's acceptance for air (-1005 to -970 HU), because a 30 HU offset would move a
    # density across a screening threshold.
    air_tolerance_hu: float = 10.0
    # The HU at which a correction's uncertainty is stated: the specific screening threshold (Pickhardt 2013).
    judged_at_hu: float = 110.0
    # A correction whose uncertainty at ``judged_at_hu`` exceeds this is not applied: density is refused instead.
    max_correction_sd_hu: float = 15.0
    # Sampling: tissues are found on a grid of about this spacing; air this far outside the body, fat and muscle this
    # far inside (away from the skin's partial volume); at least this much air to count as in view.
    sampling_mm: float = 3.0
    air_margin_mm: float = 10.0
    skin_margin_mm: float = 5.0
    min_air_ml: float = 50.0
# --------------------------------------------------------------------------------------------------------------
# What a case may state: one status per case, one rule for density statements.
# --------------------------------------------------------------------------------------------------------------
ASSESSED = "assessed"
FINDINGS_WITHHELD = "findings withheld"
QC_FAILED = "qc-failed"
FAILED = "failed"
CASE_STATUSES = (ASSESSED, FINDINGS_WITHHELD, QC_FAILED, FAILED)
"""The status of a case in every output: ``assessed`` (findings stated), ``findings withheld`` (measured, but the
level names are not confirmed), ``qc-failed`` (the segmentation failed quality control), ``failed`` (the analysis
stopped with an error; set by the batch, never by a finished case)."""

def case_status(case) -> tuple[str, str]:
    """(status, reason) of a finished case: one of :data:`CASE_STATUSES` but ``failed``; the reason is "" for
    ``assessed``."""
    quality = getattr(case, "quality", None)
    if quality is not None and quality.status == QUALITY_FAILED:
        return QC_FAILED, "; ".join(quality.failed_checks) or quality.headline or "quality control failed"
    if quality is not None and quality.status == LEVELS_UNCONFIRMED:
        return FINDINGS_WITHHELD, f"level names {quality.levels_status}"
    if quality is None and getattr(case, "levels_status", None) in DOUBTFUL_LEVEL_STATUSES:
        return FINDINGS_WITHHELD, f"level names {case.levels_status}"
    return ASSESSED, ""


def count_text(statuses: list[str]) -> str:
    """"4 cases: 2 assessed, 1 findings withheld, 1 qc-failed, 0 failed": every status counted apart."""
    counts = ", ".join(f"{statuses.count(status)} {status}" for status in CASE_STATUSES)
    return f"{len(statuses)} case{'s' if len(statuses) != 1 else ''}: {counts}"


EXIT_FAILED = 1


def exit_code_of(statuses: list[str]) -> int:
    """A batch's exit code: 1 when a case failed, else 5 (``morphometry.qc.EXIT_QUALITY_FAILED``, as ``analyze``)
    when one failed quality control, else 0 (withheld findings are a finished case that says why)."""
    from VertebralFractureLib.morphometry.qc import EXIT_QUALITY_FAILED

    if FAILED in statuses:
        return EXIT_FAILED
    return EXIT_QUALITY_FAILED if QC_FAILED in statuses else 0


def fractures_text(status: str, fractured_levels: str, worst_grade) -> str:
    """What a case found about fractures, in the words its status allows: "fractured: L1 T9", "fractured: none",
    or "fractures not assessed" (never "none" for a case whose grades were withheld or never given)."""
    if status != ASSESSED:
        return "fractures not assessed"
    if worst_grade in (None, ""):
        return "fractures not assessed (no vertebra graded)"
    return f"fractured: {fractured_levels or 'none'}"


def status_text(status: str, reason: str) -> str:
    """``assessed`` or ``STATUS (reason)``: how a case's status is written in sentences."""
    return status if not reason else f"{status} ({reason})"


# --------------------------------------------------------------------------------------------------------------
# Grades in words: one wording for every output.
# --------------------------------------------------------------------------------------------------------------
def grade_words(vertebra) -> str:
    """"grade 2 moderate wedge", "grade 0 normal", "grade 1 mild (set by the reviewer)", "not graded": the grade in
    force with its Genant name, the morphology only where it names a deformity of that grade."""
    grade = vertebra.final_grade
    if grade is None:
        return "not graded"
    text = f"grade {grade} {GRADE_NAMES.get(grade, '')}".rstrip()
    morphology = vertebra.final_morphology
    if grade >= 1 and morphology and morphology != "normal":
        text += f" {morphology}"
    if vertebra.grade_override is not None:
        text += " (set by the reviewer)"
    return text


def loss_percent(fraction: float) -> int:
    """A height loss in whole percent, rounded down: a loss graded at or above a band's lower edge never reads as
    below it (40.2 % is "40 %", in grade 3's >= 40 %), and one below an edge never reads as at it (39.6 %: "39 %")."""
    return int(np.floor(100.0 * fraction + 1e-9))


def grade_from_loss(fraction: float) -> int:
    """The Genant grade whose band holds this height loss (:data:`morphometry.grade.GRADE_THRESHOLDS`)."""
    return sum(1 for threshold in GRADE_THRESHOLDS if fraction >= threshold - 1e-9)


def height_loss_text(vertebra) -> str:
    """"height loss 40 %": the loss the automatic grade was given for ("" when the vertebra has no grade in force
    or no loss was measured). A reviewer's grade is not the automatic one: the loss is then named as measured."""
    if vertebra.final_grade is None or vertebra.height_loss is None:
        return ""
    text = f"height loss {loss_percent(vertebra.height_loss)} %"
    if vertebra.genant_grade is not None and vertebra.genant_grade < grade_from_loss(vertebra.height_loss):
        # The severe call needs the body's section to agree (morphometry.grade.SEVERE_AREA_DEFICIT): said where
        # the loss is, so the loss and the grade never disagree unexplained.
        text += f" (graded {vertebra.genant_grade}, not {grade_from_loss(vertebra.height_loss)}: the mid-sagittal " \
                "area is not reduced enough)"
    if vertebra.withheld_for_voxel_size is not None:
        # The case's warning names this reduction: the line that states the loss names it too.
        text += (f" (a {100 * vertebra.withheld_for_voxel_size:.0f} % reduction not counted: within the mask's "
                 "voxel-size uncertainty)")
    if vertebra.grade_override is not None and vertebra.grade_override != vertebra.genant_grade:
        text += f" (measured; the automatic grade was {vertebra.genant_grade})"
    return text


def graded_loss_text(vertebra, reduction_scale: float = REDUCTION_SCALE) -> str:
    """"height loss 40 % (the largest reduction that counts, 34 %, x 1.2)": the loss graded and the measured
    reduction it comes from, in the figures the grading's own reason uses."""
    return (f"{height_loss_text(vertebra)} (the largest reduction that counts, "
            f"{100 * vertebra.height_loss / reduction_scale:.0f} %, x {reduction_scale:g})")


def grade_explanation(vertebra, reduction_scale: float = REDUCTION_SCALE) -> str:
    """Why the vertebra has its grade: the loss graded, how it comes from the measured reductions, and every
    reduction the grading looked at (its ``grade_reason``), withheld ones included."""
    if vertebra.final_grade is None:
        return vertebra.not_assessed_reason or vertebra.grade_reason or vertebra.incomplete_reason or "not graded"
    parts = []
    if vertebra.height_loss is not None:
        parts.append(graded_loss_text(vertebra, reduction_scale))
    if vertebra.grade_reason:
        parts.append(f"measured: {vertebra.grade_reason}")
    if vertebra.grade_override is not None:
        parts.append(f"grade {vertebra.grade_override} set by the reviewer (automatic grade "
                     f"{'none' if vertebra.genant_grade is None else vertebra.genant_grade})")
    return "; ".join(parts)


_MILD, _MODERATE, _SEVERE = (round(100 * t) for t in GRADE_THRESHOLDS)
BANDS_TEXT = f"grade 1 {_MILD}-{_MODERATE} %, grade 2 {_MODERATE}-{_SEVERE} %, grade 3 >= {_SEVERE} %"
"""Genant's height-loss bands as the grading applies them (:data:`morphometry.grade.GRADE_THRESHOLDS`: a loss at or
above each starts its grade); every legend and explanation quotes this text."""


def contrast_words(contrast) -> str:
    """The contrast state in the words every output uses (report, PDF, confidence list): "contrast-enhanced,
    arterial phase (+20 HU corrected)", "no contrast found (not confirmed)", "contrast uncertain (no correction)"."""
    if contrast is None or contrast.status == "not assessed":
        return "not assessed (no CT)"
    if contrast.status == "contrast":
        phase = "phase unknown" if contrast.phase == "unknown" else f"{contrast.phase} phase"
        text = f"contrast-enhanced, {phase}"
        if contrast.offset_hu:
            text += f" ({contrast.offset_hu:g} HU subtracted)"
        return text + ("" if contrast.certain or contrast.phase == "unknown" else ", phase not confirmed")
    if contrast.status == "uncertain":
        return "contrast uncertain (no correction applied)"
    return "no contrast found" + ("" if contrast.certain else " (not confirmed)")
