"""Genant semi-quantitative grade, morphology and a continuous fracture score from morphometry heights.

All rules and thresholds live here, each named and cited.

Heights Ha, Hm, Hp (anterior, middle, posterior; see measure.py) give six reductions, each against what a normal
vertebra *of that level* has:

* **own shape** (McCloskey 1993, Eastell 1991): ``1 - ratio / normal_ratio`` for the wedge ratio Ha/Hp and the
  biconcavity ratios Hm/Hp and Hm/Ha, with per-level normal means (:data:`NORMAL_SHAPE`, for heights between the
  corner points): normal mid-thoracic vertebrae are wedged (Ha/Hp about 0.90), normal lower lumbar ones are
  anteriorly taller (L5 about 1.18), and the middle of a normal endplate lies below the line joining its rims. The
  biconcave reduction is the larger of the two (the middle height against the wall that kept its height).
* **against the neighbours** (Genant's "expected height"; McCloskey's predicted posterior height): for each of Ha,
  Hm, Hp, ``1 - H / H_expected``, the expected height coming from adjacent levels (up to two above and two below)
  that are themselves of normal shape, each carried over by the normal ratio of the two levels' heights
  (:data:`RELATIVE_NORMAL_HEIGHT`) and their normal shapes; the largest estimate is used, so a short (crushed)
  neighbour does not lower the expectation. This is the only way a crush fracture (all heights lost) shows.

**Two criteria** (McCloskey 1993: a deformity must meet an SD criterion and a second criterion, which cuts false
positives where normal shapes vary widely): a reduction counts only when its ratio is also at least
:data:`SD_CRITERION` standard deviations below the level's normal mean. The SD is the population's
(:data:`NORMAL_WEDGE_SD`, :data:`NORMAL_SHAPE_SD`, :data:`NEIGHBOUR_RATIO_SD`) combined with the measurement's own:
a binary mask places each endplate only to within one voxel along the spine (:func:`measurement_sd`), which on 3 mm
slices is larger than the population's. The largest reduction that counts gives the **Genant grade** through
Genant's bands (Genant 1993: 20, 25, 40 %), after :data:`REDUCTION_SCALE` (see there). A **severe** call (grade 3)
must agree with an independent measure: the body's mid-sagittal area must be at least :data:`SEVERE_AREA_DEFICIT`
below the area expected from its normal neighbours; otherwise the vertebra is graded 2.

The **fracture score** is the largest reduction of the six (before scaling, whether or not it meets the SD
criterion): continuous, higher for more likely fractured vertebrae, the score an ROC curve is drawn from.

**Posterior deformities** (Genant 1993's crush type: the posterior height reduced, or all heights): the posterior
height against the neighbours' (McCloskey's Hp/Hpp, above) and against the vertebra's own anterior height, ``1 -
(Hp/Ha) / normal(Hp/Ha)``, the mirror of the wedge (an L4 with Ha/Hp 1.38 where 1.07 is normal has lost 22 % of its
posterior height against its anterior). As in McCloskey-Kanis, a ratio of the vertebra's own heights counts only
when the height is also short against the neighbours: the posterior shape counts when Hp lies below the normal range of
Hp/Hpp (:data:`NORMAL_RANGE_Z`; Hpp predicted from the adjacent levels, as McCloskey's), for a tall anterior wall
(normal lower lumbar shapes, osteophytes) raises Ha/Hp as
much as a short posterior one; its size is then Hp against the mean of the two expected posterior heights (from the
vertebra's own anterior wall and from the neighbours), which must pass the SD criterion. Met on its own, the first
criterion makes the vertebra borderline.

**Borderline band** (Genant's SQ grade 0.5, "borderline or questionable deformity"): a vertebra graded 0 whose
largest reduction lies within :data:`READER_DISAGREEMENT_SD` below the grade-1 threshold and outside the normal range
of its ratio (:data:`NORMAL_RANGE_Z`), or one withheld for the voxel size, or whose posterior shape meets only the
first criterion, is ``borderline`` (reported as :data:`~VertebralFractureLib.results.BORDERLINE`): neither a
fracture nor normal. The band is
where readers disagree about grade 1: between two experts' six-point annotations of the same vertebrae on CT, the
height ratios differ by an SD of 0.07.

The morphology names the height that lost most: anterior - wedge, middle - biconcave, posterior (or all heights
alike against the neighbours) - crush. Comparing a vertebra's own heights only (min/max) would over-call normal
spines: the height differences of a normal lumbar spine reach 0.16-0.22 that way.

Grading is defined for T4-L5 (:data:`GRADED_LEVELS`); cervical levels, the sacrum and the coccyx are listed as not
assessed, T1-T3 on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.results import BORDERLINE, PatientSummary, VertebraResult

GRADE_THRESHOLDS = (0.20, 0.25, 0.40)
"""Reductions at or above these start grades 1, 2 and 3 (Genant 1993; 25–40 % is grade 2, above 40 % grade 3)."""


# Relative normal vertebral body height (the mean of the wall heights) by level (approximate, from radiographic
# morphometry of normal adult spines): only ratios between adjacent levels are used, to carry a neighbour's heights
# over to the vertebra being graded, each with the two levels' normal shapes (NORMAL_SHAPE).
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


NORMAL_CONCAVITY = 0.92
"""Normal middle height over the mean of the wall heights, Hm / ((Ha + Hp) / 2), at every level (see NORMAL_SHAPE)."""
NORMAL_SHAPE = {
    # level: (Ha/Hp mean, Hm / ((Ha + Hp) / 2) mean), heights between the six points; SDs in NORMAL_WEDGE_SD,
    # NORMAL_SHAPE_SD.
    "T4": (0.92, NORMAL_CONCAVITY),
    "T5": (0.91, NORMAL_CONCAVITY),
    "T6": (0.90, NORMAL_CONCAVITY),
    "T7": (0.89, NORMAL_CONCAVITY),
    "T8": (0.90, NORMAL_CONCAVITY),
    "T9": (0.94, NORMAL_CONCAVITY),
    "T10": (0.94, NORMAL_CONCAVITY),
    "T11": (0.90, NORMAL_CONCAVITY),
    "T12": (0.92, NORMAL_CONCAVITY),
    "L1": (0.94, NORMAL_CONCAVITY),
    "L2": (0.98, NORMAL_CONCAVITY),
    "L3": (1.03, NORMAL_CONCAVITY),
    "L4": (1.07, NORMAL_CONCAVITY),
    "L5": (1.18, NORMAL_CONCAVITY),
}
"""Normal vertebral shape by level, for heights between the six points of quantitative morphometry (the corners
where endplates meet walls, and the middle of the endplates; see measure.py).

Ha/Hp, T9-L5: from the CT wedge angles of normal vertebral bodies in women (Eur Spine J 2010;19:768, quoted in
DOMAIN.md: T9 2.8, T10 2.6, T11 4.6, T12 3.5, L1 2.6, L2 0.7, L3 -1.1, L4 -3.1, L5 -7.8 degrees, positive =
anterior shorter), converted with ``Ha/Hp = 1 - D tan(angle) / Hp`` for the depth D between the corners (typical
D / Hp: T9-T10 26-27 / 20-21 mm, T11-T12 28-30 / 22-23 mm, L1-L5 32-35 / 25-26 mm; thoracic dry-bone depths about
21-28 mm, normal L5 on CT: depth 35.5, Ha 30.3, Hp 26.3 mm, i.e. Ha/Hp 1.15). Men's angles are 1-3 degrees larger at
T9-L3 (the same paper): women's, the less wedged, are used, so that a man's normal wedging is not called a fracture
only where it exceeds 3 SD. MRI of healthy adults gives Ha/Hp T10-L2 of 0.89-0.92 (Surg Radiol Anat 2011;33:223), in
line. T4-T8: the normal wedging at the kyphosis apex (Ha/Hp about 0.85-0.95, DOMAIN.md; Eastell 1991 and McCloskey
1993 report per-level means of this order on radiographs).

The middle height is taken against the line joining the rims (the mean of the wall heights at mid-depth): its
normal ratio, the endplates' normal concavity, is the radiographic normal central-to-posterior ratio Hm/Hp of about
0.91-0.93 (Eastell 1991, McCloskey 1993, EVOS: values differ by sex and centre; **not verified per level in the
primary texts here**), which those report at levels whose walls are about equally tall: one value, 0.92, at every
level, as no per-level figures were verified (DOMAIN.md notes the normal concavity is deepest at L4/L5). Hm/Hp
and Hm/Ha of each level follow from it and the level's Ha/Hp (:func:`normal_ratios`): at L5 (Ha/Hp 1.18) a normal
Hm/Hp is 1.00 and Hm/Ha 0.85, at T7 (0.89) 0.87 and 0.98. At L3 the table gives Ha/Hp 1.03 and Hm/Hp 0.93, where
morphometric X-ray absorptiometry of 120 perimenopausal women found 0.995 (range 0.84-1.15) and 0.937 (0.88-0.98)
(PubMed 10091205: MXA beside QCT of L3). All are checked against the vertebrae the radiologists graded 0 in the
shared VerSe masks (Testing/benchmarks/validate_grades.py prints their z-scores)."""
NORMAL_WEDGE_SD = 0.06
"""SD of a normal Ha/Hp, as a fraction of its mean: 0.06-0.08 on MRI of healthy adults at T10-L2 (Surg Radiol Anat
2011;33:223: T12 0.06, L1 0.06, L2 0.07, T10-T11 0.08) and 0.05-0.08 for the wedging index of healthy adults aged
20-50; the lower end is used at every level (the fracture-prone thoracolumbar junction has it)."""
NORMAL_SHAPE_SD = 0.05
"""SD of a normal Hm/Hp or Hm/Ha, as a fraction of its mean: radiographic morphometry reports about 0.04-0.06 at
every level (Eastell 1991; McCloskey 1993; EVOS); not verified per level in the primary texts."""
NEIGHBOUR_RATIO_SD = 0.06
"""SD of a height against the height predicted from the neighbours (McCloskey 1993's posterior-height criterion;
about 0.05-0.07 in the EVOS Hp/Hp-above and Hp/Hp-below ratios); not verified in the primary texts."""
MEASUREMENT_ENDPLATES_PER_HEIGHT = 2
"""Endplate positions a height depends on, each known to within one voxel (see :func:`measurement_sd`)."""
SD_CRITERION = 3.0
"""A reduction counts only where its ratio is at least this many SDs below the normal mean (McCloskey 1993; Eastell
1991 grade 1 deformity: 3 SD)."""
REDUCTION_SCALE = 1.2
"""Factor from a reduction measured here to the reduction a radiologist's Genant grade reflects: the only number
fitted to grades. Heights read on a mask, as medians over several planes, show less loss than a radiologist's visual
estimate on the mid-sagittal image. Fitted on the 30 graded vertebrae of the five shared VerSe'19 subjects (smallest
mean absolute grade error over 1.00-2.00): 1.20 on all five, 1.10-1.20 leaving each subject out;
the leave-one-subject-out figures are printed by Testing/benchmarks/validate_grades.py and given in the README."""
SEVERE_AREA_DEFICIT = 0.15
"""A grade 3 call needs the mid-sagittal area at least this far below its expected value: a deformity of 40 % at its
worst height removes at least about 15 % of the section (a biconcave dip over the central third of the depth:
2/3 x 40 % over about half the depth; a wedge: 40 % / 2 over the anterior part; a crush: 40 %)."""


NORMAL_RANGE_Z = 1.96
"""The normal range of a ratio: its mean +- 1.96 SD, the 95 % reference interval by which normal values are
conventionally bounded (the ratios are close to normal in distribution). A reduction beyond it is not normal, one
short of :data:`SD_CRITERION` not a fracture: together with the band below it makes a vertebra borderline; it is
also McCloskey-Kanis's second criterion for a posterior deformity (the posterior height short against the
neighbours' predicted posterior height)."""
READER_DISAGREEMENT_SD = 0.07
"""SD of the difference between two expert readers' height ratios of one vertebra (Ha/Hp, Hm/Hp, Hm/Ha; log ratio)
on CT: 0.068-0.070 over 2971 pairs of readings of the six-point annotations of 100 chest CTs (MoscowRadiology-
CTLungCa-500, Pisov et al., MICCAI 2020; Testing/benchmarks/bench_reader_agreement.py computes it), i.e. 95 % limits
of agreement of +-13 %, in line with the +-12.5 % of percentage height loss between readers on CT (Buckens 2013).
A reduction within one such SD below Genant's 20 % could be read as a fracture by a second reader: the
borderline band is [20 % - 7 %, 20 %) of the graded (scaled) reduction."""


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
    normal_shape: dict = field(default_factory=lambda: dict(NORMAL_SHAPE))
    normal_wedge_sd: float = NORMAL_WEDGE_SD
    normal_shape_sd: float = NORMAL_SHAPE_SD
    neighbour_ratio_sd: float = NEIGHBOUR_RATIO_SD
    sd_criterion: float = SD_CRITERION
    reduction_scale: float = REDUCTION_SCALE
    severe_area_deficit: float = SEVERE_AREA_DEFICIT
    normal_range_z: float = NORMAL_RANGE_Z
    reader_disagreement_sd: float = READER_DISAGREEMENT_SD
    reference_levels: int = 2
    """How many levels above and below may serve as references for the expected heights."""
    relative_normal_height: dict = field(default_factory=lambda: dict(RELATIVE_NORMAL_HEIGHT))
    max_anterior_to_posterior: float = 1.5
    """Above this Ha/Hp the shape is no normal vertebral body's (normal L5, the most anteriorly tall, stays near
    1.2-1.3): unless the posterior height is short against the neighbours too (a posterior deformity: a 30 % loss of
    a normal L3's posterior height gives 1.5), the segmentation is wrong there, and the vertebra is flagged for review
    instead of graded."""
    max_middle_to_walls: float = 1.25
    """Above this Hm / max(Ha, Hp) the endplates would bulge outwards, which no fracture does: likewise flagged."""


DEFAULT_RULES = GradingRules()
MORPHOLOGY_OF_HEIGHT = {"anterior": "wedge", "middle": "biconcave", "posterior": "crush"}


def grade_from_reduction(reduction: float | None, rules: GradingRules = DEFAULT_RULES) -> int | None:
    if reduction is None:
        return None
    return sum(1 for threshold in rules.grade_thresholds if reduction >= threshold)


def normal_ratios(level: str, rules: GradingRules = DEFAULT_RULES) -> dict[str, float]:
    """Normal Ha/Hp, Hm/Hp and Hm/Ha of a level (transitional levels take their neighbour's; T1-T3 take T4's)."""
    level = REFERENCE_LEVEL_OF.get(level, level)
    wedge, concavity = rules.normal_shape.get(level, rules.normal_shape["T4"])
    # The middle of a normal endplate lies a fixed fraction below the line joining its rims, whose height at
    # mid-depth is the mean of the wall heights (Ha + Hp) / 2.
    rim = (1.0 + wedge) / 2.0
    return {
        "wedge": wedge,
        "middle_to_posterior": concavity * rim,
        "middle_to_anterior": concavity * rim / wedge,
        "middle_to_walls": concavity,
    }


def measurement_sd(vertebra: VertebraResult) -> float:
    """SD of a ratio of this vertebra's heights from the mask's voxel size alone (as a fraction).

    An endplate on a binary mask lies anywhere within one voxel along the superior axis (uniform: SD voxel / sqrt(12)).
    A height rests on two such endplate positions, and the corners are read off lines fitted to the stepped outline,
    which do not average its steps away (on the real vertebrae compressed by known amounts in
    Testing/test_synthetic_fractures.py a 1 mm mask gives a height to within about 1 mm): the SD of the shorter
    height of a ratio, ``sqrt(2) * voxel / sqrt(12)``, over that height, stands for the ratio's (the taller height's
    own error is smaller).
    """
    if not vertebra.voxel_extent_mm or not vertebra.heights_mm:
        return 0.0
    height = min(vertebra.heights_mm.values())
    return float(MEASUREMENT_ENDPLATES_PER_HEIGHT**0.5 * vertebra.voxel_extent_mm / np.sqrt(12.0) / max(height, 1.0))


def own_shape_reductions(heights: dict, level: str, rules: GradingRules = DEFAULT_RULES) -> dict[str, float]:
    """Wedge and biconcave reductions against the level's normal shape (0 when not reduced)."""
    anterior, middle, posterior = heights["anterior"], heights["middle"], heights["posterior"]
    normal = normal_ratios(level, rules)
    wedge = 1.0 - (anterior / posterior) / normal["wedge"]
    biconcave = max(
        1.0 - (middle / posterior) / normal["middle_to_posterior"],
        1.0 - (middle / anterior) / normal["middle_to_anterior"],
    )
    # The mirror of the wedge: the posterior height short against the anterior (Genant's crush type).
    posterior_shape = 1.0 - (posterior / anterior) * normal["wedge"]
    return {"wedge": max(0.0, wedge), "biconcave": max(0.0, biconcave), "posterior": max(0.0, posterior_shape)}


def expected_heights(
    vertebra: VertebraResult, references: list[VertebraResult], rules: GradingRules = DEFAULT_RULES
) -> dict[str, float] | None:
    """Heights (and mid-sagittal area) expected from reference levels within ``reference_levels``: the largest scaled
    estimate, so a crushed neighbour (whose shape is normal: fractures cluster) does not lower the expectation."""
    own_rank = labels_mod.rank(vertebra.label)
    scale = rules.relative_normal_height
    estimates = {name: [] for name in ("anterior", "middle", "posterior", "area")}
    for reference in references:
        if reference.label == vertebra.label:
            continue
        if abs(labels_mod.rank(reference.label) - own_rank) > rules.reference_levels + 0.6:
            continue
        ratio = scale.get(vertebra.level, 1.0) / scale.get(reference.level, 1.0)
        # The relative heights carry the mean wall height over; each height also carries its level's normal shape
        # (a normal L2's walls, Ha/Hp 0.98, share their mean height differently from a normal T12's, 0.92).
        own_shape, reference_shape = normal_ratios(vertebra.level, rules), normal_ratios(reference.level, rules)
        own_wedge, reference_wedge = own_shape["wedge"], reference_shape["wedge"]
        posterior_share = (1.0 + reference_wedge) / (1.0 + own_wedge)
        shape_ratio = {
            "anterior": posterior_share * own_wedge / reference_wedge,
            "middle": own_shape["middle_to_walls"] / reference_shape["middle_to_walls"],
            "posterior": posterior_share,
        }
        for name in ("anterior", "middle", "posterior"):
            estimates[name].append(reference.heights_mm[name] * ratio * shape_ratio[name])
        if reference.midsagittal_area_mm2:
            # The section grows with the height and, between adjacent levels, about as much with the depth.
            estimates["area"].append(reference.midsagittal_area_mm2 * ratio**2)
    if not estimates["posterior"]:
        return None
    return {name: max(values) for name, values in estimates.items() if values}


POSTERIOR_DEFORMITY_NOTE = "the anterior height far above the posterior one is a posterior deformity: Hp is short " \
    "against the neighbours"
"""Said in the grade reason of a vertebra whose shape :func:`implausible_shape` alone would reject, graded because its
posterior height is short against the neighbours (quality control reads it, not to reject the same shape)."""


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
    # A reference's own shape must be normal: no wedge or biconcave reduction of grade 1 size, and no posterior shape
    # of that size beyond the SD criterion (its heights would carry a tall anterior or a short posterior wall over).
    def normal_shape(v: VertebraResult) -> bool:
        reductions = own[v.label]
        posterior_sd = float(np.hypot(rules.normal_wedge_sd, measurement_sd(v)))
        posterior = reductions["posterior"] if reductions["posterior"] / posterior_sd >= rules.sd_criterion else 0.0
        largest = max(reductions["wedge"], reductions["biconcave"], posterior)
        return rules.reduction_scale * largest < rules.grade_thresholds[0]

    references = [v for v in measurable if normal_shape(v)]
    posterior_deformities = set()
    for vertebra in vertebrae:
        if implausible.get(vertebra.label) and _posterior_short(vertebra, references, rules):
            implausible[vertebra.label] = None  # a posterior deformity, graded below
            posterior_deformities.add(vertebra.label)
    for vertebra in vertebrae:
        vertebra.not_assessed_reason = not_assessed_reason(vertebra.level, rules.include_upper_thoracic)
        vertebra.fracture_score = None
        if vertebra.not_assessed_reason:
            _leave_ungraded(vertebra, f"not assessed: {vertebra.not_assessed_reason}")
            continue
        if not (vertebra.complete and vertebra.heights_mm):
            _leave_ungraded(vertebra, f"not graded: {vertebra.incomplete_reason or 'no heights'}")
            continue
        if implausible[vertebra.label]:
            _leave_ungraded(vertebra, f"not graded, review the segmentation: {implausible[vertebra.label]}")
            continue
        shape = own.get(vertebra.label) or own_shape_reductions(vertebra.heights_mm, vertebra.level, rules)
        _grade_one(vertebra, shape, expected_heights(vertebra, references, rules), rules,
                   expected_heights(vertebra, references, replace(rules, reference_levels=1)))
        if vertebra.label in posterior_deformities:
            vertebra.grade_reason += f"; {POSTERIOR_DEFORMITY_NOTE}"


def _posterior_short(vertebra: VertebraResult, references: list[VertebraResult], rules: GradingRules) -> bool:
    """Whether the posterior height is short against the neighbours' predicted posterior height, beyond that ratio's
    normal range, with the middle height not above both walls (McCloskey-Kanis's second criterion, see the module
    docstring): an anterior height far above the posterior one is then a posterior deformity, not a wrong mask."""
    heights = vertebra.heights_mm
    if heights["middle"] > rules.max_middle_to_walls * max(heights["anterior"], heights["posterior"]):
        return False
    adjacent = expected_heights(vertebra, references, replace(rules, reference_levels=1))
    if not adjacent:
        return False
    loss = 1.0 - heights["posterior"] / adjacent["posterior"]
    return loss / float(np.hypot(rules.neighbour_ratio_sd, measurement_sd(vertebra))) >= rules.normal_range_z


def _leave_ungraded(vertebra: VertebraResult, reason: str) -> None:
    """No grade, morphology or height loss for this vertebra; ``reason`` says why."""
    vertebra.genant_grade = None
    vertebra.withheld_for_voxel_size = None
    vertebra.borderline = False
    vertebra.morphology = None
    vertebra.height_loss = None
    vertebra.expected_posterior_mm = None
    vertebra.grade_reason = reason


def _grade_one(
    vertebra: VertebraResult, shape: dict, expected: dict | None, rules: GradingRules, adjacent: dict | None = None
) -> None:
    """Grade one vertebra from its own shape reductions and the heights ``expected`` from normal references within
    ``rules.reference_levels``; ``adjacent``: those expected from the adjacent levels only (McCloskey's predicted
    posterior height, which confirms a posterior deformity)."""
    heights = vertebra.heights_mm
    loss = {name: 0.0 for name in ("anterior", "middle", "posterior")}
    if expected:
        loss = {name: max(0.0, 1.0 - heights[name] / expected[name]) for name in loss}
    # Each height's reduction is the larger of its shape-based and neighbour-based estimates; the SD criterion
    # (McCloskey's second criterion) decides whether it counts.
    # Each candidate: (reduction, the population's SD of its ratio); the mask's own SD adds to it.
    measured_sd = measurement_sd(vertebra)

    def z_score(reduction: float, population_sd: float) -> float:
        return reduction / float(np.hypot(population_sd, measured_sd))

    candidates = {
        "anterior": [(shape["wedge"], rules.normal_wedge_sd), (loss["anterior"], rules.neighbour_ratio_sd)],
        "middle": [(shape["biconcave"], rules.normal_shape_sd), (loss["middle"], rules.neighbour_ratio_sd)],
        "posterior": [(loss["posterior"], rules.neighbour_ratio_sd)],
    }
    # The posterior shape (McCloskey-Kanis's two criteria): it counts only where the posterior height is also short
    # against the neighbours' predicted posterior height, beyond that ratio's normal range. Its size is then the
    # posterior height against the mean of the two expectations, from the vertebra's own anterior wall and from the
    # neighbours (Genant's expected height draws on both), so that neither a tall anterior wall nor a short
    # neighbour alone sets it. The predicted posterior height comes from the adjacent levels (McCloskey): carried over
    # two levels it is too uncertain to confirm a shape that normal lower lumbar vertebrae can have.
    posterior_confirmed = bool(adjacent) and (
        z_score(1.0 - heights["posterior"] / adjacent["posterior"], rules.neighbour_ratio_sd) >= rules.normal_range_z
    )
    posterior_unconfirmed = posterior_both = None
    if posterior_confirmed:
        from_anterior = heights["anterior"] / normal_ratios(vertebra.level, rules)["wedge"]
        posterior_both = max(0.0, 1.0 - heights["posterior"] / (0.5 * (from_anterior + adjacent["posterior"])))
        candidates["posterior"].append((posterior_both, rules.normal_wedge_sd))
    elif z_score(shape["posterior"], rules.normal_wedge_sd) >= rules.sd_criterion:
        posterior_unconfirmed = shape["posterior"]
    score = max(reduction for options in candidates.values() for reduction, _ in options)
    counted = {
        name: max((r for r, sd in options if z_score(r, sd) >= rules.sd_criterion), default=0.0)
        for name, options in candidates.items()
    }
    worst_height, reduction = max(counted.items(), key=lambda item: item[1])
    scaled = rules.reduction_scale * reduction
    grade = grade_from_reduction(scaled, rules)
    # The same reductions against the population's SDs alone: one that would count and be graded there, but not
    # with the mask's own uncertainty, is withheld for the voxel size and reported, not silently called normal.
    withheld = max(
        (r for options in candidates.values() for r, sd in options if r / sd >= rules.sd_criterion and r > reduction),
        default=None,
    )
    if withheld is not None and grade_from_reduction(rules.reduction_scale * withheld, rules) <= grade:
        withheld = None
    vertebra.withheld_for_voxel_size = withheld
    morphology = MORPHOLOGY_OF_HEIGHT[worst_height]
    # All heights lost alike with the shape kept: a crush, whichever height lost a little more.
    shape_kept = max(shape["wedge"], shape["biconcave"]) * rules.reduction_scale < rules.grade_thresholds[0]
    if expected and min(loss.values()) >= 0.8 * reduction and shape_kept:
        morphology = "crush"
    # Borderline (Genant's grade 0.5): not graded a fracture, but a reduction in the band below grade 1 where
    # readers disagree, outside the normal range of its ratio; or one withheld for the voxel size; or a posterior
    # shape that meets only McCloskey-Kanis's first criterion.
    band_floor = rules.grade_thresholds[0] - rules.reader_disagreement_sd
    in_band = [
        (r, f"{name} height")
        for name, options in candidates.items()
        for r, sd in options
        if rules.reduction_scale * r >= band_floor and z_score(r, sd) >= rules.normal_range_z
    ]
    borderline = None
    if grade == 0:
        if in_band:
            largest, name = max(in_band)
            where = (
                f"in the band where readers disagree about grade 1 ({100 * band_floor:.0f}-"
                f"{100 * rules.grade_thresholds[0]:.0f} %)"
                if rules.reduction_scale * largest < rules.grade_thresholds[0]
                else f"within {rules.sd_criterion:g} SD of normal"
            )
            borderline = (
                f"a {100 * rules.reduction_scale * largest:.0f} % reduction ({name}, as graded) lies beyond the "
                f"normal range ({rules.normal_range_z:g} SD) but {where}"
            )
        elif posterior_unconfirmed is not None and rules.reduction_scale * posterior_unconfirmed >= band_floor:
            borderline = "the posterior shape is not confirmed by a short posterior height against the neighbours"
        elif withheld is not None:
            borderline = "the reduction is within the slices' uncertainty"
    vertebra.borderline = borderline is not None
    area_deficit = None
    if expected and expected.get("area") and vertebra.midsagittal_area_mm2:
        area_deficit = max(0.0, 1.0 - vertebra.midsagittal_area_mm2 / expected["area"])
    notes = []
    if grade == 3 and area_deficit is not None and area_deficit < rules.severe_area_deficit:
        grade = 2
        notes.append(
            f"graded 2, not 3: the mid-sagittal area is only {100 * area_deficit:.0f} % below its neighbours' "
            f"(a severe deformity removes at least {100 * rules.severe_area_deficit:.0f} %)"
        )
    vertebra.ratios = {
        "wedge": heights["anterior"] / heights["posterior"],
        "biconcavity": heights["middle"] / heights["posterior"],
        "middle_to_anterior": heights["middle"] / heights["anterior"],
        "middle_to_walls": heights["middle"] / (0.5 * (heights["anterior"] + heights["posterior"])),
        "crush": None if not expected else heights["posterior"] / expected["posterior"],
        "expected_wedge": normal_ratios(vertebra.level, rules)["wedge"],
        "area_deficit": area_deficit,
    }
    vertebra.expected_posterior_mm = None if not expected else expected["posterior"]
    vertebra.expected_heights_mm = None if not expected else {k: v for k, v in expected.items() if k != "area"}
    vertebra.height_loss = scaled
    vertebra.fracture_score = score
    vertebra.genant_grade = grade
    vertebra.morphology = morphology if grade >= 1 else "normal"
    parts = [f"wedge shape {100 * shape['wedge']:.0f} %", f"biconcave shape {100 * shape['biconcave']:.0f} %"]
    if posterior_confirmed and shape["posterior"] > 0:
        parts.append(
            f"posterior shape {100 * shape['posterior']:.0f} %, posterior height against its anterior wall and "
            f"the neighbours {100 * posterior_both:.0f} %"
        )
    if expected:
        parts.append("against neighbours: " + ", ".join(f"{name} {100 * loss[name]:.0f} %" for name in loss))
    else:
        parts.append("no normal neighbour within two levels: height loss not assessable")
    if withheld is not None:
        parts.append(
            f"a {100 * withheld:.0f} % reduction is withheld: with this mask's {vertebra.voxel_extent_mm:.1f} mm "
            f"voxels along the spine it lies within {rules.sd_criterion:g} SD of normal (review it on thinner slices)"
        )
    elif score > reduction and rules.reduction_scale * score >= rules.grade_thresholds[0]:
        parts.append(f"a {100 * score:.0f} % reduction lies within {rules.sd_criterion:g} SD of normal")
    if posterior_unconfirmed is not None:
        wedge_ratio = heights["anterior"] / heights["posterior"]
        normal_wedge = normal_ratios(vertebra.level, rules)["wedge"]
        parts.append(
            f"posterior shape {100 * posterior_unconfirmed:.0f} % (Ha/Hp {wedge_ratio:.2f}, {normal_wedge:.2f} normal) "
            "without the posterior height short against the neighbours: not counted"
        )
    if borderline is not None:
        parts.append(f"{BORDERLINE}: {borderline}")
    vertebra.grade_reason = f"largest reduction {100 * reduction:.0f} % ({worst_height} height); " + "; ".join(
        parts + notes
    )


def summarize(vertebrae: list[VertebraResult]) -> PatientSummary:
    graded = [v for v in vertebrae if v.final_grade is not None]
    fractured = [v.level for v in graded if v.final_grade >= 1]
    l1 = next((v for v in vertebrae if v.level == "L1"), None)
    return PatientSummary(
        fractured_levels=fractured,
        worst_grade=max((v.final_grade for v in graded), default=None),
        # A cut L1's density is not L1's: it never stands in for the screening level.
        l1_trabecular_hu=None if l1 is None or not l1.complete else l1.trabecular_hu,
        graded_levels=[v.level for v in graded],
        incomplete_levels=[v.level for v in vertebrae if not v.complete],
    )


def rules_from_inputs(inputs: dict | None) -> GradingRules:
    """The grading rules a case was measured with, as its ``inputs`` record them (``include_upper_thoracic``), so
    a re-grade after review grades the same levels; a case without the record gets the default rules."""
    if (inputs or {}).get("include_upper_thoracic") is True:
        return replace(DEFAULT_RULES, include_upper_thoracic=True)
    return DEFAULT_RULES


VOXEL_SIZE_WARNING = "height reduction is not called a fracture"
"""The words that mark a case warning of :func:`voxel_size_warnings` (a re-grade replaces those warnings)."""


def voxel_size_warnings(vertebrae: list[VertebraResult]) -> list[str]:
    """One case warning for each graded vertebra whose reduction was withheld for the mask's voxel size."""
    return [
        f"{v.level}: a {100 * v.withheld_for_voxel_size:.0f} % {VOXEL_SIZE_WARNING}: with the mask's "
        f"{v.voxel_extent_mm:.1f} mm voxels along the spine it lies within the normal spread; review it, or measure "
        f"on thinner slices"
        for v in vertebrae
        if v.withheld_for_voxel_size is not None and v.genant_grade is not None
    ]
