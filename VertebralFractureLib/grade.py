"""Genant semi-quantitative grade and morphology from quantitative-morphometry heights.

All rules and thresholds live here.

Genant et al., JBMR 1993: a vertebra is graded by its height reduction against the height it is expected to have:
grade 0 < 20 %, grade 1 (mild) 20–25 %, grade 2 (moderate) 25–40 %, grade 3 (severe) > 40 %.

Five height reductions are measured (Ha, Hm, Hp: anterior, middle, posterior heights, see measure.py):

* **own shape, wedge**: ``1 - (Ha/Hp) / r_a`` — the anterior height against the posterior height, where ``r_a`` is
  the ratio a normal vertebra of that level has: normal mid-thoracic vertebrae at the kyphosis apex are slightly
  wedged (Ha/Hp about 0.85–0.95, DOMAIN.md), so at T5–T10 ``r_a`` is 0.90, elsewhere 1.0. Anteriorly taller
  vertebrae (L5) are not a reduction.
* **own shape, biconcave**: ``1 - Hm / ((Ha + Hp) / 2)`` — the middle height against the height a vertebra with
  flat endplates would have there, halfway between its walls (this is Hm/Hp where Ha = Hp, and stays right for the
  trapezoid lumbar vertebrae of a lordosis).
* **against the neighbours**, for each of Ha, Hm, Hp: ``1 - H / H_expected``. The expected height comes from the
  adjacent levels (up to two above and two below) that are themselves of normal shape, each scaled by the normal
  ratio of the two levels' heights (vertebrae grow taller caudally, about 3–4 % a level through the thoracic spine,
  little in the lumbar spine; :data:`RELATIVE_NORMAL_HEIGHT`); the largest estimate is used, so one short
  (fractured) neighbour does not lower the expectation. This is Genant's "reduction against the expected height" and
  the only way a crush fracture (all heights lost) shows.

The largest reduction gives the grade. The morphology names the height that lost most: anterior — wedge, middle —
biconcave, posterior (or all heights alike) — crush. Below 20 % the vertebra is "normal". Comparing a vertebra's
own heights only (min/max) would over-call normal spines: the height differences of a normal lumbar spine reach
0.16–0.22 that way. Here a wall-height ratio counts only against what is normal for that level, and loss of height
only against the neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import labels as labels_mod
from .results import PatientSummary, VertebraResult

GRADE_THRESHOLDS = (0.20, 0.25, 0.40)
"""Reductions at or above these start grades 1, 2 and 3 (Genant 1993; 25–40 % is grade 2, above 40 % grade 3)."""


# Relative normal vertebral body height by level (approximate, from radiographic morphometry of normal adult spines):
# only ratios between adjacent levels are used, to carry a neighbour's height over to the vertebra being graded.
RELATIVE_NORMAL_HEIGHT = {
    "C3": 0.50,
    "C4": 0.50,
    "C5": 0.50,
    "C6": 0.50,
    "C7": 0.55,
    "T1": 0.60,
    "T2": 0.63,
    "T3": 0.66,
    "T4": 0.69,
    "T5": 0.72,
    "T6": 0.75,
    "T7": 0.78,
    "T8": 0.81,
    "T9": 0.84,
    "T10": 0.87,
    "T11": 0.91,
    "T12": 0.95,
    "T13": 0.96,
    "L1": 0.98,
    "L2": 1.00,
    "L3": 1.00,
    "L4": 0.99,
    "L5": 0.97,
    "L6": 0.97,
}


GRADED_LEVELS = ("T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "T13", "L1", "L2", "L3", "L4", "L5", "L6")
"""Levels Genant grading is defined for (Genant 1993; Eastell 1991 and McCloskey 1993 give normal ranges for T4-L5
only). The transitional T13 and L6 are graded with the references of T12 and L5 (:data:`REFERENCE_LEVEL_OF`)."""
UPPER_THORACIC_LEVELS = ("T1", "T2", "T3")
"""Graded on request only (GradingRules.include_upper_thoracic): the shoulders hide them on radiographs, so no
normative morphometry covers them."""
REFERENCE_LEVEL_OF = {"T13": "T12", "L6": "L5"}
"""Transitional vertebrae take the normal shape of the level they replace."""


def not_assessed_reason(level: str, include_upper_thoracic: bool = False) -> str | None:
    """Why Genant grading does not apply at this level, or None where it does."""
    if level in GRADED_LEVELS or (include_upper_thoracic and level in UPPER_THORACIC_LEVELS):
        return None
    if level == "S":
        return "sacrum: not a vertebral body that Genant grading applies to"
    if level == "Co":
        return "coccyx: not a vertebral body that Genant grading applies to"
    if level in UPPER_THORACIC_LEVELS:
        return f"{level}: Genant grading is defined for T4-L5 (T1-T3 on request)"
    return f"{level}: Genant grading is not defined for the cervical spine (C1 has no body, C2 carries the dens)"


@dataclass(frozen=True)
class GradingRules:
    include_upper_thoracic: bool = False
    """Grade T1-T3 too (outside the levels normative morphometry covers)."""
    grade_thresholds: tuple[float, float, float] = GRADE_THRESHOLDS
    kyphosis_apex_levels: tuple[str, ...] = ("T5", "T6", "T7", "T8", "T9", "T10")
    kyphosis_apex_wedge_ratio: float = 0.90
    normal_wedge_ratio: float = 1.0
    reference_levels: int = 2
    """How many levels above and below may serve as references for the expected heights."""
    relative_normal_height: dict = field(default_factory=lambda: dict(RELATIVE_NORMAL_HEIGHT))
    max_anterior_to_posterior: float = 1.5
    """Above this Ha/Hp the shape is no vertebral body's (normal L5, the most anteriorly tall, stays near 1.2-1.3):
    the segmentation is wrong there, and the vertebra is flagged for review instead of graded."""
    max_middle_to_walls: float = 1.25
    """Above this Hm / max(Ha, Hp) the endplates would bulge outwards, which no fracture does: likewise flagged."""


DEFAULT_RULES = GradingRules()
MORPHOLOGY_OF_HEIGHT = {"anterior": "wedge", "middle": "biconcave", "posterior": "crush"}


def grade_from_reduction(reduction: float | None, rules: GradingRules = DEFAULT_RULES) -> int | None:
    if reduction is None:
        return None
    return sum(1 for threshold in rules.grade_thresholds if reduction >= threshold)


def expected_wedge_ratio(level: str, rules: GradingRules = DEFAULT_RULES) -> float:
    return rules.kyphosis_apex_wedge_ratio if level in rules.kyphosis_apex_levels else rules.normal_wedge_ratio


def own_shape_reductions(heights: dict, level: str, rules: GradingRules = DEFAULT_RULES) -> dict[str, float]:
    """Wedge and biconcave reductions from a vertebra's own heights (0 when not reduced)."""
    anterior, middle, posterior = heights["anterior"], heights["middle"], heights["posterior"]
    wedge = 1.0 - (anterior / posterior) / expected_wedge_ratio(level, rules)
    biconcave = 1.0 - middle / (0.5 * (anterior + posterior))
    return {"wedge": max(0.0, wedge), "biconcave": max(0.0, biconcave)}


def expected_heights(
    vertebra: VertebraResult, references: list[VertebraResult], rules: GradingRules = DEFAULT_RULES
) -> dict[str, float] | None:
    """Heights expected from reference levels within ``reference_levels`` (largest scaled estimate per height)."""
    own_rank = labels_mod.rank(vertebra.label)
    scale = rules.relative_normal_height
    estimates = {name: [] for name in ("anterior", "middle", "posterior")}
    for reference in references:
        if reference.label == vertebra.label:
            continue
        if abs(labels_mod.rank(reference.label) - own_rank) > rules.reference_levels + 0.6:
            continue
        ratio = scale.get(vertebra.level, 1.0) / scale.get(reference.level, 1.0)
        for name in estimates:
            estimates[name].append(reference.heights_mm[name] * ratio)
    if not estimates["posterior"]:
        return None
    return {name: max(values) for name, values in estimates.items()}


def implausible_shape(heights: dict, rules: GradingRules = DEFAULT_RULES) -> str | None:
    """Why these heights cannot be a vertebral body's (a segmentation error), or None."""
    anterior, middle, posterior = heights["anterior"], heights["middle"], heights["posterior"]
    if anterior > rules.max_anterior_to_posterior * posterior:
        return f"anterior height {anterior:.1f} mm is {anterior / posterior:.1f} times the posterior {posterior:.1f} mm"
    if middle > rules.max_middle_to_walls * max(anterior, posterior):
        return f"middle height {middle:.1f} mm exceeds both wall heights ({anterior:.1f}, {posterior:.1f} mm)"
    return None


def grade_vertebrae(vertebrae: list[VertebraResult], rules: GradingRules = DEFAULT_RULES) -> None:
    """Fill ratios, expected heights, height loss, Genant grade, morphology and reason (in place)."""
    implausible = {v.label: implausible_shape(v.heights_mm, rules) for v in vertebrae if v.complete and v.heights_mm}
    # Thoracic levels above the graded range still serve as references for T4 and T5; cervical levels never do.
    measurable = [
        v
        for v in vertebrae
        if v.complete and v.heights_mm and not implausible[v.label] and labels_mod.rank(v.label) >= labels_mod.rank(8)
    ]
    own = {v.label: own_shape_reductions(v.heights_mm, v.level, rules) for v in measurable}
    references = [v for v in measurable if max(own[v.label].values()) < rules.grade_thresholds[0]]
    for vertebra in vertebrae:
        vertebra.not_assessed_reason = not_assessed_reason(vertebra.level, rules.include_upper_thoracic)
        vertebra.fracture_score = None
        if vertebra.not_assessed_reason:
            vertebra.genant_grade = None
            vertebra.morphology = None
            vertebra.height_loss = None
            vertebra.expected_posterior_mm = None
            vertebra.grade_reason = f"not assessed: {vertebra.not_assessed_reason}"
            continue
        if not (vertebra.complete and vertebra.heights_mm):
            vertebra.genant_grade = None
            vertebra.morphology = None
            vertebra.height_loss = None
            vertebra.expected_posterior_mm = None
            vertebra.grade_reason = f"not graded: {vertebra.incomplete_reason or 'no heights'}"
            continue
        if implausible[vertebra.label]:
            vertebra.genant_grade = None
            vertebra.morphology = None
            vertebra.height_loss = None
            vertebra.expected_posterior_mm = None
            vertebra.grade_reason = f"not graded, review the segmentation: {implausible[vertebra.label]}"
            continue
        heights = vertebra.heights_mm
        shape = own[vertebra.label]
        expected = expected_heights(vertebra, references, rules)
        loss = {name: 0.0 for name in ("anterior", "middle", "posterior")}
        if expected:
            loss = {name: max(0.0, 1.0 - heights[name] / expected[name]) for name in loss}
        # Each height's reduction is the larger of its shape-based and neighbour-based estimates.
        by_height = {
            "anterior": max(shape["wedge"], loss["anterior"]),
            "middle": max(shape["biconcave"], loss["middle"]),
            "posterior": loss["posterior"],
        }
        worst_height, reduction = max(by_height.items(), key=lambda item: item[1])
        morphology = MORPHOLOGY_OF_HEIGHT[worst_height]
        # All heights lost alike with the shape kept: a crush, whichever height lost a little more.
        if expected and min(loss.values()) >= 0.8 * reduction and max(shape.values()) < rules.grade_thresholds[0]:
            morphology = "crush"
        grade = grade_from_reduction(reduction, rules)
        vertebra.ratios = {
            "wedge": heights["anterior"] / heights["posterior"],
            "biconcavity": heights["middle"] / heights["posterior"],
            "middle_to_walls": heights["middle"] / (0.5 * (heights["anterior"] + heights["posterior"])),
            "crush": None if not expected else heights["posterior"] / expected["posterior"],
            "expected_wedge": expected_wedge_ratio(vertebra.level, rules),
        }
        vertebra.expected_posterior_mm = None if not expected else expected["posterior"]
        vertebra.expected_heights_mm = expected
        vertebra.height_loss = reduction
        vertebra.genant_grade = grade
        vertebra.morphology = morphology if grade >= 1 else "normal"
        parts = [f"wedge shape {100 * shape['wedge']:.0f} %", f"biconcave shape {100 * shape['biconcave']:.0f} %"]
        if expected:
            parts.append("against neighbours: " + ", ".join(f"{name} {100 * loss[name]:.0f} %" for name in loss))
        else:
            parts.append("no normal neighbour within two levels: height loss not assessable")
        vertebra.grade_reason = f"largest reduction {100 * reduction:.0f} % ({worst_height} height); " + "; ".join(
            parts
        )


def summarize(vertebrae: list[VertebraResult]) -> PatientSummary:
    graded = [v for v in vertebrae if v.final_grade is not None]
    fractured = [v.level for v in graded if v.final_grade >= 1]
    l1 = next((v for v in vertebrae if v.level == "L1"), None)
    return PatientSummary(
        fractured_levels=fractured,
        worst_grade=max((v.final_grade for v in graded), default=None),
        l1_trabecular_hu=None if l1 is None else l1.trabecular_hu,
        graded_levels=[v.level for v in graded],
        incomplete_levels=[v.level for v in vertebrae if not v.complete],
    )
