"""Naming vertebral levels from anatomy in view, and renumbering when the user fixes the count.

Anchors the classical backend looks for (cranial to caudal order of the separated bodies is known):

- **Sacrum**: the column below the lowest disc widens into the sacral alae (much wider than any lumbar body); the
  lowest mobile vertebra above it is L5.
- **Last rib** (T12): the lowest rib-bearing vertebra with a rib-free vertebra below it.
- **Neck** (T1): the first rib-bearing vertebra below rib-free cervical vertebrae (counted from the neck when it is
  in view).

A rib is bone that starts behind and beside a vertebral body (its head and neck, at the costovertebral and
costotransverse joints), stays thin (a bar about 1 cm across) and runs far out laterally; see :func:`rib_sides`.

Status of the level names (:attr:`LevelNaming.status`, carried to ``SegmentationOutput.levels_status``):

- ``"confirmed"``: at least one anchor, every anchor in view gives the same count, and the spacing of the bodies fits
  the expected height of each named level (:func:`spacing_notes`).
- ``"conflicting"``: two anchors give different counts (a transitional vertebra, a missed disc, a false rib); the
  evidence says which anchors and what each gives. Never used as if confirmed.
- ``"unconfirmed"``: no anchor in view, or the spacing or height of the bodies is implausible for the levels they
  are named (an over-split body or a missed disc shifts every name counted across it).

The user can fix the count with :func:`renumber_lowest_complete` or :func:`renumber_at_point` (status "anchored").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.segment.spine_curve import along_curve

SACRUM_WIDTH_MM = 70.0
"""Sacral alae (with the ilium when the joint is bridged) span more; a lumbar body is 40-60 mm wide."""
RIB_MEDIAL_MM = (22.0, 42.0)
"""Lateral distance from the body centre of a rib's medial end (head, neck and tubercle)."""
RIB_LATERAL_MM = 65.0
"""A rib reaches further out than any lumbar transverse process."""
RIB_MAX_ML = 80.0
"""A rib (or two joined by partial volume) within the search window; the ilium is far larger."""
RIB_MAX_ML_PER_MM = 0.3
"""A rib is a thin bar (about 1 cm2 in cross-section: Gray's Anatomy, 42nd ed., ch. 53): within the window it holds
about 0.05-0.15 ml of bone per mm it runs out laterally, two ribs joined by partial volume under 0.3. An enhancing
kidney, contrast in the bowel, the aorta or the heart hold ml per mm: not ribs, whatever their reach."""
RIB_NECK_MAX_ANTERIOR_MM = 5.0
"""The head and neck of a rib lie behind the body's centre (costal facets at the pedicle roots, the neck running
back to the transverse process): no part of a rib within ``RIB_MEDIAL_MM[1]`` of the body centre lies further
forward than this. The aorta, azygos vein, crura and kidneys lie beside or in front of the body."""
RIB_WINDOW_BELOW_MM = 80.0
"""Ribs descend as they run out (the lower ribs by 5-8 cm at their lateral reach): a vertebra's ribs are followed
this far below its lowest voxel."""
RIB_WINDOW_ABOVE_MM = 10.0
"""A rib head lies at the level of its vertebra's upper endplate and the disc above (costal demifacets)."""
T1_MIN_RIB_FREE_ABOVE = 2
"""T1 is only named from the neck when at least this many rib-free (cervical) vertebrae lie above the first
rib-bearing one and the next vertebra bears ribs too: at the top of a short thoracolumbar crop a single missed rib
must not name a vertebra T1."""

SEGMENT_PERIOD_MM = {
    "C": 18.0,
    "T_upper": 21.0,
    "T_middle": 24.0,
    "T_lower": 28.0,
    "L": 36.0,
}
"""Expected centre-to-centre distance of consecutive vertebral bodies (body height plus one disc) per region, mm.
Body heights from Panjabi et al., Spine 1991;16:861-869 (cervical, about 14 mm), Spine 1991;16:888-901 (thoracic:
about 16 mm at T1 rising to 23 mm at T12), Spine 1992;17:299-306 (lumbar, 26-28 mm); disc heights from Gilad and
Nissan, Spine 1986;11:154-157 (cervical 4-6 mm, thoracic 3-6 mm rising caudally, lumbar 8-12 mm)."""
SPACING_RATIO_RANGE = (0.65, 1.5)
"""A measured spacing outside this fraction of the expected one is not a normal adult variant (individual heights
vary by about +-15 %, a grade 3 fracture of one body by up to -40 % of its half of the spacing): below, one body was
split in two (half the expected spacing); above, a disc was missed (twice the expected spacing)."""
BODY_HEIGHT_MM = {
    "C": 14.0,
    "T_upper": 17.0,
    "T_middle": 19.0,
    "T_lower": 22.0,
    "L": 27.0,
}
"""Expected vertebral body height per region, mm (same sources as ``SEGMENT_PERIOD_MM``: Panjabi 1991, 1992)."""
BODY_HEIGHT_RATIO_RANGE = (0.6, 1.35)
"""A body's measured height (5th to 95th percentile of its extent along the centre curve, within
``BODY_CORE_RADIUS_MM`` of it) outside this fraction of its level's expected height is not one whole body: below, a
piece of a body (a false disc, or a grade 3 crush, which quality control must see anyway); above, two bodies joined
across a missed disc, or a body with part of its neighbour. Normal variation is about +-15 %; the percentile extent
of a whole body is a few mm under its true height on a 1.5-3 mm grid."""
BODY_CORE_RADIUS_MM = 16.0
"""Within this distance of the centre curve a section is inside every adult body, clear of the arch and ribs."""
SPACING_END_MARGIN_MM = 6.0
"""A body within this distance of either end of the spine in view may be cut by the field of view: its centre is
not where the whole body's would be, so its spacing is not judged."""


def _region(label: int) -> str:
    if label <= 7:
        return "C"
    if label <= 11:
        return "T_upper"
    if label <= 15:
        return "T_middle"
    if label <= 19:
        return "T_lower"
    return "L"


def expected_period_mm(label: int) -> float:
    """Expected spacing (mm) between the centre of vertebra ``label`` (VerSe id) and the next one down."""
    return SEGMENT_PERIOD_MM[_region(label)]


def expected_body_height_mm(label: int) -> float:
    """Expected height (mm) of the body of vertebra ``label`` (VerSe id)."""
    return BODY_HEIGHT_MM[_region(label)]


def body_heights_mm(masks: list[np.ndarray], geometry, spacing_mm: float) -> np.ndarray:
    """Each body's height along the spine's centre curve: 5th to 95th percentile of the position along the curve of
    its voxels within ``BODY_CORE_RADIUS_MM`` of the curve (mm; 0 when none lie that close)."""

    heights = []
    for mask in masks:
        voxels = np.argwhere(mask)
        inside = (voxels[:, 2] >= geometry.z_indices[0]) & (voxels[:, 2] <= geometry.z_indices[-1])
        u, radial = along_curve(geometry, voxels[inside], spacing_mm)
        u = u[radial <= BODY_CORE_RADIUS_MM]
        heights.append(float(np.percentile(u, 95) - np.percentile(u, 5)) if u.size else 0.0)
    return np.asarray(heights)


def height_notes(labels: list[int], heights_mm: np.ndarray, at_end: np.ndarray) -> dict[int, list[str]]:
    """Bodies (VerSe ids) whose height does not fit the level they are named: id -> notes. Bodies possibly cut by the
    field of view are not judged."""
    notes: dict[int, list[str]] = {}
    for label, height, cut in zip(labels, heights_mm, at_end):
        if not label or cut:
            continue
        expected = expected_body_height_mm(label)
        ratio = height / expected
        if ratio < BODY_HEIGHT_RATIO_RANGE[0]:
            why = "part of a body (split by a false disc) or a severe crush"
        elif ratio > BODY_HEIGHT_RATIO_RANGE[1]:
            why = "taller than one body: two bodies joined across a missed disc, or part of a neighbour"
        else:
            continue
        notes.setdefault(label, []).append(f"{_safe_name(label)} body {height:.0f} mm along the spine, expected about "
                                           f"{expected:.0f} mm: {why}")
    return notes


@dataclass
class LevelNaming:
    masks: list[np.ndarray]
    labels: list[int]
    status: str
    evidence: list[str] = field(default_factory=list)
    rib_bearing: list[bool] = field(default_factory=list)
    sacrum_found: bool = False
    anchors: dict[str, str] = field(default_factory=dict)
    """Anchor name ("sacrum", "last rib", "neck") -> the level it gives the most cranial vertebra."""
    body_warnings: dict[int, list[str]] = field(default_factory=dict)
    """VerSe id -> notes on that body's segmentation (implausible spacing or height: over-split or a missed disc)."""


def _z_range(mask: np.ndarray) -> tuple[int, int]:
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(zs.min()), int(zs.max())


def rib_sides(mask: np.ndarray, bone: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, z_first: int,
              spacing_mm: float) -> list[str]:
    """Sides ("left", "right") on which a rib articulates with this vertebra.

    A rib: a piece of bone beside the body (at least ``RIB_MEDIAL_MM[0]`` from its centre) whose most medial part
    (head and neck) lies within this vertebra's height, behind the body's centre, within ``RIB_MEDIAL_MM[1]`` of it;
    that reaches out at least ``RIB_LATERAL_MM``; and that stays thin (``RIB_MAX_ML_PER_MM``) and small
    (``RIB_MAX_ML``). Contrast-filled vessels, enhancing kidneys and bowel fail the thinness or the position test.
    """
    z0, z1 = _z_range(mask)
    window_low = max(0, z0 - int(round(RIB_WINDOW_BELOW_MM / spacing_mm)))
    window_high = min(bone.shape[2], z1 + 1 + int(round(RIB_WINDOW_ABOVE_MM / spacing_mm)))
    sub = bone[:, :, window_low:window_high]
    nx, ny, nz = sub.shape
    ks = np.arange(window_low, window_high)
    index = np.clip(ks - z_first, 0, len(centre_x) - 1)
    xs = np.arange(nx, dtype=float)[:, None, None]
    ys = np.arange(ny, dtype=float)[None, :, None]
    dx = np.broadcast_to((xs - centre_x[index][None, None, :]) * spacing_mm, sub.shape)
    dy = np.broadcast_to((ys - centre_y[index][None, None, :]) * spacing_mm, sub.shape)
    lateral = np.abs(dx)
    outside = sub & (lateral >= RIB_MEDIAL_MM[0])
    labelled, count = ndimage.label(outside, structure=np.ones((3, 3, 3)))
    if count == 0:
        return []
    indices = np.arange(1, count + 1)
    voxel_ml = spacing_mm**3 / 1000.0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1) * voxel_ml
    reach = np.concatenate([[0.0], np.asarray(ndimage.maximum(lateral, labelled, indices), dtype=float)])
    min_lateral = np.concatenate([[np.inf], np.asarray(ndimage.minimum(lateral, labelled, indices), dtype=float)])
    # How far forward the component's medial part (within RIB_MEDIAL_MM[1] of the body centre) reaches.
    medial_part = np.where(lateral <= RIB_MEDIAL_MM[1], labelled, 0)
    forward = np.concatenate([[np.inf], np.asarray(ndimage.maximum(dy, medial_part, indices), dtype=float)])
    forward = np.nan_to_num(forward, nan=-np.inf)
    in_slab = np.zeros(sub.shape, dtype=bool)
    in_slab[:, :, z0 - window_low : z1 - window_low + 1] = True
    medial = (outside & in_slab & (lateral <= RIB_MEDIAL_MM[1]) & (dy <= RIB_NECK_MAX_ANTERIOR_MM) & (dy >= -45.0))
    # A rib articulates with this vertebra when its most medial part (head and neck) lies within this vertebra's
    # height; the rib of the vertebra above descends past this one further out.
    near_end = lateral <= min_lateral[labelled] + 4.0
    zs = np.broadcast_to(np.arange(nz)[None, None, :], sub.shape)
    medial_z = np.concatenate([[np.nan], np.asarray(ndimage.mean(zs, labelled * near_end, indices), dtype=float)])
    slab_low, slab_high = z0 - window_low, z1 - window_low
    run_out = np.maximum(reach - min_lateral, spacing_mm)
    sides = []
    for side, sign in (("right", 1.0), ("left", -1.0)):
        candidates = np.unique(labelled[medial & (np.sign(dx) == sign)])
        candidates = candidates[candidates != 0]
        if any(reach[c] >= RIB_LATERAL_MM and sizes[c] <= RIB_MAX_ML and min_lateral[c] <= RIB_MEDIAL_MM[1]
               and sizes[c] / run_out[c] <= RIB_MAX_ML_PER_MM and forward[c] <= RIB_NECK_MAX_ANTERIOR_MM
               and slab_low - 1 <= medial_z[c] <= slab_high + 1 for c in candidates):
            sides.append(side)
    return sides


def body_positions_mm(masks: list[np.ndarray], geometry) -> tuple[np.ndarray, np.ndarray]:
    """Position along the spine's centre curve (mm from its caudal end) of each body's centre, and whether the body
    reaches within ``SPACING_END_MARGIN_MM`` of an end of the curve (possibly cut by the field of view)."""
    z_first = int(geometry.z_indices[0])
    arclength = np.asarray(geometry.arclength_mm, dtype=float)
    positions, at_end = [], []
    step = float(arclength[-1]) / max(1, len(arclength) - 1)
    margin = int(round(SPACING_END_MARGIN_MM / max(step, 1e-6)))
    for mask in masks:
        zs = np.nonzero(mask.any(axis=(0, 1)))[0]
        weights = mask.sum(axis=(0, 1))[zs].astype(float)
        centre = float((zs * weights).sum() / weights.sum()) - z_first
        positions.append(float(np.interp(centre, np.arange(len(arclength)), arclength)))
        at_end.append(bool(zs.min() - z_first <= margin or zs.max() - z_first >= len(arclength) - 1 - margin))
    return np.asarray(positions), np.asarray(at_end)


def spacing_notes(labels: list[int], positions_mm: np.ndarray, at_end: np.ndarray) -> dict[int, list[str]]:
    """Bodies (cranial first, VerSe ids) whose spacing to the next body down does not fit the levels they are named:
    id -> notes. Pairs that involve a body possibly cut by the field of view are not judged."""
    notes: dict[int, list[str]] = {}
    for n in range(len(labels) - 1):
        upper, lower = labels[n], labels[n + 1]
        if not upper or not lower or at_end[n] or at_end[n + 1]:
            continue
        measured = abs(float(positions_mm[n] - positions_mm[n + 1]))
        expected = 0.5 * (expected_period_mm(upper) + expected_period_mm(lower))
        ratio = measured / expected
        if ratio < SPACING_RATIO_RANGE[0]:
            why = "closer than a body's height: one body split in two, or a false disc"
        elif ratio > SPACING_RATIO_RANGE[1]:
            why = "further apart than one body and disc: a missed disc (two bodies joined)"
        else:
            continue
        text = (f"{_safe_name(upper)}-{_safe_name(lower)} centres {measured:.0f} mm apart, expected about "
                f"{expected:.0f} mm: {why}")
        for label in (upper, lower):
            notes.setdefault(label, []).append(text)
    return notes


def name_levels(masks: list[np.ndarray], finder, geometry, spacing_mm: float) -> LevelNaming:
    """Give VerSe ids to bodies ordered cranial to caudal, from the anchors in view (see the module docstring)."""
    evidence: list[str] = []
    # The sacrum was found (and cut off) while separating the bodies.
    sacrum_found = bool(getattr(geometry, "sacrum_found", False))
    if not masks:
        return LevelNaming(masks=[], labels=[], status="unconfirmed", evidence=["only the sacrum in view"])
    centre_x = geometry.centre_xy[:, 0]
    centre_y = geometry.centre_xy[:, 1]
    ribs = [bool(rib_sides(m, finder.bone, centre_x, centre_y, int(geometry.z_indices[0]), spacing_mm))
            for m in masks]
    count = len(masks)
    offsets = {}  # anchor -> (index of the anchor vertebra, its VerSe id)
    if sacrum_found:
        offsets["sacrum"] = (count - 1, 24)
        evidence.append("sacrum below the lowest mobile vertebra: named L5")
    transitions_low = [i for i in range(count - 1) if ribs[i] and not any(ribs[i + 1 :])]
    if transitions_low:
        i = transitions_low[0]
        offsets["last rib"] = (i, 19)
        evidence.append(f"lowest rib-bearing vertebra (ribs on vertebra {i + 1} of {count} from the top, none below): "
                        "named T12")
    transitions_high = [i for i in range(T1_MIN_RIB_FREE_ABOVE, count - 1)
                        if ribs[i] and ribs[i + 1] and not any(ribs[:i])]
    if transitions_high:
        i = transitions_high[0]
        offsets["neck"] = (i, 8)
        evidence.append(f"first rib-bearing vertebra below {i} rib-free cervical vertebrae (vertebra {i + 1} of "
                        f"{count} from the top): named T1")
    status = "confirmed"
    if not offsets:
        status = "unconfirmed"
        if ribs[-1]:
            offsets["assumed"] = (count - 1, 19)
            evidence.append("ribs on every vertebra down to the lowest in view, no rib-free vertebra below: the "
                            "lowest is assumed to be T12 (unconfirmed; fix with --anchor)")
        else:
            offsets["assumed"] = (count - 1, 24)
            evidence.append("no sacrum, no ribs and no neck in view: nothing anchors the count; the lowest vertebra "
                            "is assumed to be L5 (unconfirmed; fix with --anchor)")
    # Each anchor gives the id of the first (most cranial) vertebra; they must agree.
    starts = {key: value - index for key, (index, value) in offsets.items()}
    chosen_key = next(key for key in ("sacrum", "last rib", "neck", "assumed") if key in starts)
    start = starts[chosen_key]
    if len(set(starts.values())) > 1:
        status = "conflicting"
        evidence.append("anchors disagree (" + ", ".join(f"the {k} gives the top vertebra "
                                                         f"{_safe_name(v)}" for k, v in starts.items())
                        + f"): a transitional vertebra, a missed or false disc, or a false rib; provisionally named "
                          f"from the {chosen_key}, not confirmed")
    elif len(starts) > 1:
        evidence.append("anchors agree (" + ", ".join(starts) + ")")
    labels = []
    for index in range(count):
        label = start + index
        labels.append(label if 1 <= label <= 24 else 0)
    dropped = [i for i, label in enumerate(labels) if label == 0]
    if dropped:
        evidence.append(f"{len(dropped)} segment(s) fall outside C1-L5 with this count and are left unlabelled")
    positions, at_end = body_positions_mm(masks, geometry)
    body_warnings = spacing_notes(labels, positions, at_end)
    for label, notes in height_notes(labels, body_heights_mm(masks, geometry, spacing_mm), at_end).items():
        body_warnings.setdefault(label, []).extend(notes)
    if body_warnings:
        pairs = sorted({text for notes in body_warnings.values() for text in notes})
        evidence.append("body spacing or height implausible for the levels named (" + "; ".join(pairs) + ")")
        if status == "confirmed":
            status = "unconfirmed"
            evidence.append("the count across an implausible spacing cannot be trusted: levels not confirmed")
    anchors = {key: _safe_name(value) for key, value in starts.items() if key != "assumed"}
    return LevelNaming(masks=masks, labels=labels, status=status, evidence=evidence, rib_bearing=ribs,
                       sacrum_found=sacrum_found, anchors=anchors, body_warnings=body_warnings)


def _safe_name(label: int) -> str:
    return labels_mod.level_name(label) if 1 <= label <= 24 else f"id {label}"


# --- renumbering -----------------------------------------------------------------------------------------------

def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def _mobile_in_order(array: np.ndarray) -> list[int]:
    present = [int(v) for v in np.unique(array) if v and labels_mod.is_vertebra(int(v))]
    return labels_mod.neighbours_in_order(present)


def anchor_mapping(order: list[int], anchor_label: int, anchor_level: int) -> dict[int, int]:
    """Old -> new ids when the vertebra now labelled ``anchor_label`` is ``anchor_level``: the shared rule of
    :func:`..renumber.renumbering` (every vertebra moves by the same number of levels)."""
    from VertebralFractureLib.segment.renumber import renumbering

    return renumbering(order, anchor_label, anchor_level)


def apply_mapping(array: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    lookup = np.arange(max(int(array.max(initial=0)), max(mapping, default=0)) + 1, dtype=np.int16)
    for old, new in mapping.items():
        lookup[old] = new
    return lookup[array.astype(np.int64)]


def _anchor_target_and_order(array, level: str, option: str) -> tuple[int, list[int]]:
    """VerSe id the user named and the mobile vertebrae present, cranial to caudal; raises on a bad anchor."""
    target = labels_mod.label_from_level(level)
    if not labels_mod.is_vertebra(target):
        raise ValueError(f"{option} must name a mobile vertebra (C1-L5), not {level!r}")
    order = _mobile_in_order(array)
    if not order:
        raise ValueError("no vertebra to renumber")
    return target, order


def renumber_lowest_complete(labels_volume, level: str):
    """``--anchor L3``: the lowest vertebra not cut by the field of view is ``level``; returns (volume, evidence)."""
    array = labels_volume.array
    target, order = _anchor_target_and_order(array, level, "--anchor")
    complete = [label for label in order if not touches_border(array == label)]
    if not complete:
        raise ValueError("every vertebra is cut by the field of view; use --anchor-point to say which is which")
    anchor_label = complete[-1]
    mapping = anchor_mapping(order, anchor_label, target)
    evidence = (f"user anchor: the lowest complete vertebra (provisionally {labels_mod.level_name(anchor_label)}) "
                f"is {labels_mod.level_name(target)}")
    return labels_volume.with_array(apply_mapping(array, mapping)), evidence


def renumber_at_point(labels_volume, level: str, point_ras) -> tuple:
    """``--anchor-point L1:x,y,z``: the vertebra containing the RAS point (else the one whose centroid is nearest)
    is ``level``; returns (volume, evidence)."""
    array = labels_volume.array
    target, order = _anchor_target_and_order(array, level, "--anchor-point")
    ijk = np.round(labels_volume.world_to_ijk(np.asarray(point_ras, dtype=float))[0]).astype(int)
    anchor_label = None
    how = "contains"
    if np.all(ijk >= 0) and np.all(ijk < np.array(array.shape)):
        value = int(array[tuple(ijk)])
        if value in order:
            anchor_label = value
    if anchor_label is None:
        how = "is nearest to"
        centroids = ndimage.center_of_mass(np.ones_like(array, dtype=np.uint8), array, order)
        world = labels_volume.ijk_to_world(np.asarray(centroids, dtype=float))
        distances = np.linalg.norm(world - np.asarray(point_ras, dtype=float), axis=1)
        anchor_label = order[int(np.argmin(distances))]
    mapping = anchor_mapping(order, anchor_label, target)
    point_text = ", ".join(f"{v:.1f}" for v in point_ras)
    evidence = (f"user anchor: the vertebra that {how} RAS ({point_text}) mm (provisionally "
                f"{labels_mod.level_name(anchor_label)}) is {labels_mod.level_name(target)}")
    return labels_volume.with_array(apply_mapping(array, mapping)), evidence


def parse_anchor_point(text: str) -> tuple[str, list[float]]:
    """"L1:12.5,-30,88" -> ("L1", [12.5, -30.0, 88.0]) (RAS mm)."""
    level, sep, coordinates = text.partition(":")
    values = coordinates.replace(";", ",").split(",")
    if not sep or len(values) != 3:
        raise ValueError(f"--anchor-point {text!r}: expected LEVEL:x,y,z in RAS mm, e.g. L1:0,-20,95")
    try:
        point = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--anchor-point {text!r}: coordinates must be numbers (RAS mm)") from None
    labels_mod.label_from_level(level)
    return level.strip(), point
