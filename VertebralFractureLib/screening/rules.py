"""The screening's thresholds and rules, in one place (sources in docs/screening.md): density categories and
contrast corrections (:class:`DensityThresholds`), the patient-level recommendation (:class:`RecommendationRules`),
the words of grades and the research-use line."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def category(self, hu: float) -> str:
        if hu < self.osteoporosis_below_hu:
            return "osteoporosis"
        if hu < self.normal_from_hu:
            return "osteopenia"
        return "normal"

    def pickhardt_statement(self, hu: float) -> str:
        if hu <= self.specific_hu:
            return f"<= {self.specific_hu:g} HU (Pickhardt 2013: > 90 % specific for osteoporosis)"
        if hu <= self.sensitive_hu:
            return f"<= {self.sensitive_hu:g} HU (Pickhardt 2013: 90 % sensitive threshold); osteoporosis possible"
        return f"> {self.sensitive_hu:g} HU (Pickhardt 2013): osteoporosis unlikely"


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
