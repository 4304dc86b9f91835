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
