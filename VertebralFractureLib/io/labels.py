"""Vertebra names and label conventions, and where each label of a map lies (boxes, counts, centroids).

Internally every label map uses **VerSe ids** (Löffler 2020, Sekuboyina 2021):
1–7 C1–C7, 8–19 T1–T12, 20–24 L1–L5, 25 L6 (transitional), 26 sacrum, 27 coccyx, 28 T13 (transitional).
Other conventions are converted to VerSe ids when a label map is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

VERSE = "verse"
TOTALSEG_V2 = "totalseg_v2"
TOTALSEG_V1 = "totalseg_v1"
CONVENTIONS = (VERSE, TOTALSEG_V2, TOTALSEG_V1)

SACRUM = 26
COCCYX = 27
L6 = 25
T13 = 28

_NAMES = {**{i: f"C{i}" for i in range(1, 8)}, **{i + 7: f"T{i}" for i in range(1, 13)}}
_NAMES.update({i + 19: f"L{i}" for i in range(1, 6)})
_NAMES.update({L6: "L6", SACRUM: "S", COCCYX: "Co", T13: "T13"})
_IDS = {name: label for label, name in _NAMES.items()}

# Cranio-caudal rank: transitional T13 sits between T12 and L1, L6 between L5 and the sacrum.
_RANK = {label: float(label) for label in range(1, 25)}
_RANK.update({T13: 19.5, L6: 24.5, SACRUM: 25.0, COCCYX: 26.0})

# TotalSegmentator v2 `total` task: 25 sacrum, 26 S1, 27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1.
_TOTALSEG_V2_TO_VERSE = {25: SACRUM, 26: SACRUM}
_TOTALSEG_V2_TO_VERSE.update({27 + i: 24 - i for i in range(5)})  # L5..L1
_TOTALSEG_V2_TO_VERSE.update({32 + i: 19 - i for i in range(12)})  # T12..T1
_TOTALSEG_V2_TO_VERSE.update({44 + i: 7 - i for i in range(7)})  # C7..C1
# TotalSegmentator v1: 18 L5 ... 22 L1, 23 T12 ... 34 T1, 35 C7 ... 41 C1 (no sacrum class among the vertebrae).
_TOTALSEG_V1_TO_VERSE = {18 + i: 24 - i for i in range(5)}
_TOTALSEG_V1_TO_VERSE.update({23 + i: 19 - i for i in range(12)})
_TOTALSEG_V1_TO_VERSE.update({35 + i: 7 - i for i in range(7)})

CONVENTION_TO_VERSE = {
    VERSE: {label: label for label in _NAMES},
    TOTALSEG_V2: _TOTALSEG_V2_TO_VERSE,
    TOTALSEG_V1: _TOTALSEG_V1_TO_VERSE,
}



# DICOM PS3.16 CID 7603 "Vertebra": SNOMED CT codes of the individual vertebrae (DICOM SEG segments and SR finding
# sites, and the terminology of the vertebra segments in Slicer).
VERTEBRA_SCT = {
    "C1": ("14806007", "C1 vertebra"), "C2": ("39976000", "C2 vertebra"), "C3": ("113205007", "C3 vertebra"),
    "C4": ("5329002", "C4 vertebra"), "C5": ("36978003", "C5 vertebra"), "C6": ("36054005", "C6 vertebra"),
    "C7": ("87391001", "C7 vertebra"), "T1": ("64864005", "T1 vertebra"), "T2": ("53733008", "T2 vertebra"),
    "T3": ("1626008", "T3 vertebra"), "T4": ("73071006", "T4 vertebra"), "T5": ("56401006", "T5 vertebra"),
    "T6": ("45296009", "T6 vertebra"), "T7": ("62487009", "T7 vertebra"), "T8": ("11068009", "T8 vertebra"),
    "T9": ("82687006", "T9 vertebra"), "T10": ("7610001", "T10 vertebra"), "T11": ("12989004", "T11 vertebra"),
    "T12": ("23215003", "T12 vertebra"), "L1": ("66794005", "L1 vertebra"), "L2": ("14293000", "L2 vertebra"),
    "L3": ("36470004", "L3 vertebra"), "L4": ("11994002", "L4 vertebra"), "L5": ("49668003", "L5 vertebra"),
}
# DICOM CID 7150 segmentation property category of every vertebra segment (highdicom's codes.SCT.AnatomicalStructure).
ANATOMICAL_STRUCTURE_SCT = ("91723000", "Anatomical Structure")


def level_name(label: int) -> str:
    """VerSe id -> level name ("T9", "L1", "S" for the sacrum)."""
    try:
        return _NAMES[int(label)]
    except KeyError:
        raise ValueError(f"{label} is not a VerSe vertebra id (1-28)") from None


def label_from_level(name: str) -> int:
    """Level name ("L1", "t12", "vertebrae_L1", "sacrum") -> VerSe id."""
    label = label_from_segment_name(name)
    if label is None:
        raise ValueError(f"{name!r} is not a vertebra level such as 'T12' or 'L1'")
    return label


_VERTEBRA_WORDS = {"vertebra", "vertebrae", "vertebral", "body", "bone", "level"}
"""Words a vertebra segment's name may hold beside its level ("vertebrae_L1", "L5 vertebra", "T12 vertebral body");
any other word ("disc L1-L2", "T12 rib", "L1 canal") means the segment is something else."""
_LEVEL_TOKEN = re.compile(r"^([ctl])(\d{1,2})$|^(s1|sacrum|coccyx)$")


def label_from_segment_name(name: str) -> int | None:
    """VerSe id from a segment name such as "L1", "vertebrae_L1", "Vertebra T12"; None if it names no vertebra.

    The name must hold exactly one level and otherwise only words of :data:`_VERTEBRA_WORDS`: "disc L1-L2" (two
    levels and "disc") or "T12 rib" name no vertebra.
    """
    words = [word for word in re.split(r"[^a-z0-9]+", name.strip().lower()) if word]
    joined = []
    for word in words:  # "L 1" -> "l1"
        if joined and joined[-1] in ("c", "t", "l") and word.isdigit():
            joined[-1] += word
        else:
            joined.append(word)
    levels = [word for word in joined if _LEVEL_TOKEN.match(word)]
    others = [word for word in joined if not _LEVEL_TOKEN.match(word) and word not in _VERTEBRA_WORDS]
    if len(levels) != 1 or others:
        return None
    level = levels[0]
    if level in ("s1", "sacrum"):
        return SACRUM
    if level == "coccyx":
        return COCCYX
    return _IDS.get(level.upper())


OTHER_STRUCTURE_WORDS = {"disc", "discs", "intervertebral", "ivd", "rib", "ribs", "canal", "cord", "spinal",
                         "foramen", "process", "processes", "pedicle", "lamina", "endplate", "facet", "ligament",
                         "nerve", "root", "muscle", "artery", "vein", "dura", "sac"}
"""Words that make a segment name another structure beside a level ("disc L1-L2", "T12 rib", "L1 canal"): such
segments are left out with a warning. A level with any other word ("L1 fractured", "L1?") is not understood and
is refused unless the user says which level it is (``--segment-level``)."""


def names_other_structure(name: str) -> bool:
    """True when a segment name is not a vertebra but says what else it is: no level in it at all ("liver",
    "aorta"), or a level with a word of :data:`OTHER_STRUCTURE_WORDS`."""
    if re.fullmatch(r"segment[ _-]?\d*", name.strip().lower()):
        return False  # Slicer's default name of a new segment: unnamed, not another structure
    words = set(re.split(r"[^a-z0-9]+", name.strip().lower())) - {""}
    mentions_level = any(_LEVEL_TOKEN.match(word) for word in words) or re.search(r"(^|[^a-z])[ctl] ?\d", name.lower())
    return not mentions_level or bool(words & OTHER_STRUCTURE_WORDS)


def parse_segment_levels(items) -> dict[str, int | None]:
    """``--segment-level NAME=LEVEL`` values -> {segment name or id (lower case): VerSe id, or None for "none"}."""
    mapping: dict[str, int | None] = {}
    for item in items or ():
        name, separator, level = str(item).rpartition("=")
        if not separator or not name.strip() or not level.strip():
            raise ValueError(f"--segment-level {item!r}: give SEGMENT=LEVEL, e.g. 'L1 fractured=L1' or "
                             "'Segment_3=none'")
        if level.strip().lower() in ("none", "ignore"):
            mapping[name.strip().lower()] = None
            continue
        label = label_from_segment_name(level)
        if label is None:
            raise ValueError(f"--segment-level {item!r}: {level.strip()!r} is not a vertebra level such as 'L1' "
                             "(or 'none' to leave the segment out)")
        mapping[name.strip().lower()] = label
    return mapping


def rank(label: int) -> float:
    """Position along the spine, cranial (small) to caudal (large); transitional levels fall between."""
    return _RANK[int(label)]


def is_vertebra(label: int) -> bool:
    """True for the mobile vertebrae that are measured (not the sacrum or coccyx)."""
    return int(label) in _NAMES and int(label) not in (SACRUM, COCCYX)


def neighbours_in_order(labels) -> list[int]:
    """Labels sorted cranial to caudal."""
    return sorted((int(label) for label in labels), key=rank)


def shift_level(label: int, steps: int) -> int:
    """The VerSe id `steps` levels caudal (positive) or cranial (negative) of `label` on a typical spine.

    Used when a user fixes the level count; transitional ids are renumbered onto the typical sequence.
    """
    order = list(range(1, 25)) + [SACRUM, COCCYX]
    typical = {T13: 20, L6: 24}.get(int(label), int(label))
    index = order.index(typical) + steps
    if not 0 <= index < len(order):
        raise ValueError(f"shifting {level_name(label)} by {steps} levels leaves the spine")
    return order[index]


TOTALSEG_V1_MAX_ID = 104
"""TotalSegmentator v1 has 104 classes (Wasserthal 2023, v1 class map): a map holding a larger id is not v1."""
SUBREGION_IDS = tuple(range(41, 51))
"""Vertebra sub-region masks (VerSe / TPTBox ``seg-subreg``): 41 arch, 42 spinous process, 43/44 costal processes,
45/46 superior and 47/48 inferior articular processes, 49 body cortex, 50 body interior. As TotalSegmentator v2
ids they would be T3..C1, but the parts of one vertebra do not run head to foot like ten levels do."""
MIN_LEVEL_SEPARATION_MM = 8.0
"""Adjacent levels' centroids lie at least this far apart along superior, unless one is cut by the image edge.
The smallest adult level pitch (body plus disc) is about 15-17 mm in the cervical spine (Busscher 2010, Eur Spine
J 19:1104); half of it leaves room for a spine tilted up to 60 degrees from the scanner axis."""
LEVEL_PITCH_MM = {**{1: 15.0}, **{label: 17.0 for label in range(2, 7)}, 7: 19.0,
                  **{label: 21.0 for label in range(8, 12)}, **{label: 24.0 for label in range(12, 16)},
                  **{label: 28.0 for label in range(16, 19)}, 19: 32.0, T13: 32.0,
                  **{label: 37.0 for label in range(20, 24)}, 24: 38.0, L6: 38.0}
"""Typical adult distance (mm) from a level's centroid to the next caudal one: vertebral body height plus disc
height (Busscher 2010; Zhou 2000, Eur Spine J 9:242). Used only to tell TotalSegmentator v1 from v2 when both
name the values present in head-to-foot order: the two readings are nine levels apart, so the expected pitches
differ by a factor of 1.4 to 1.8."""
PITCH_FIT_MAX_RATIO = 1.35
"""A reading fits the observed pitch when the median observed/expected ratio is within this factor of 1."""
PITCH_DECISION_MARGIN_RATIO = 1.15
"""... and the other readings fit worse by at least this factor (about twice the 7-8 % spread of adult vertebral
heights, Busscher 2010); otherwise the map is ambiguous."""


MAX_VERTEBRA_SPAN_MM = 120.0
"""No one vertebra spans more than this head to foot. The tallest levels of the shared masks (VerSe'19/'20,
TotalSegmentator, TPTBox; posterior elements included) span 27-63 mm, and a spine tilted 60 degrees from the
scanner axis turns the 90-100 mm depth of a lumbar vertebra (body to spinous process tip) into at most about 90 mm.
A label spanning more is several levels under one value: a mask of all bodies, or of bodies and discs
(TotalSegmentator's ``vertebrae_body``: 1 bodies, 2 discs, read as VerSe C1 and C2)."""


class ConventionError(ValueError):
    """The label convention of a map cannot be decided, or the declared one does not fit its anatomy."""


@dataclass
class LabelExtent:
    """Where one stored label lies: voxel count, centroid (RAS mm), cut by the image edge."""

    count: int
    centroid_ras: tuple[float, float, float]
    touches_edge: bool
    span_superior_mm: float | None = None
    """Head-to-foot extent (mm) along the image axis nearest to head-foot; None where not measured."""

    @property
    def superior_mm(self) -> float:
        return float(self.centroid_ras[2])


def _vertebra_readings(convention: str, extents: dict[int, LabelExtent]) -> dict[int, int]:
    mapping = CONVENTION_TO_VERSE[convention]
    return {raw: mapping[raw] for raw in extents if raw in mapping and is_vertebra(mapping[raw])}


def _spine_readings(convention: str, extents: dict[int, LabelExtent]) -> dict[int, int]:
    """Stored ids naming any part of the spine under ``convention`` (vertebrae, sacrum, coccyx) -> VerSe ids."""
    mapping = CONVENTION_TO_VERSE[convention]
    return {raw: mapping[raw] for raw in extents if raw in mapping and mapping[raw] != 0}


def _name(convention: str, raw: int) -> str:
    """Level name and stored id, e.g. "L5 (id 27)"."""
    return f"{level_name(CONVENTION_TO_VERSE[convention][raw])} (id {raw})"


def order_problem(convention: str, extents: dict[int, LabelExtent]) -> str | None:
    """Why the levels named under ``convention`` do not run head to foot (None when they do).

    Levels are taken in cranio-caudal order of their names; each must lie above the next one present, by at least
    :data:`MIN_LEVEL_SEPARATION_MM` times the number of levels between them unless either is cut by the edge.
    """
    readings = _spine_readings(convention, extents)
    ordered = sorted(readings, key=lambda raw: rank(readings[raw]))
    for upper, lower in zip(ordered, ordered[1:]):
        steps = rank(readings[lower]) - rank(readings[upper])
        if steps <= 0:
            continue
        drop = extents[upper].superior_mm - extents[lower].superior_mm
        cut = extents[upper].touches_edge or extents[lower].touches_edge
        needed = 0.0 if cut else MIN_LEVEL_SEPARATION_MM * min(steps, 1.0)
        if drop <= needed:
            where = f"{-drop:.0f} mm below" if drop < 0 else f"only {drop:.0f} mm above"
            return f"{_name(convention, upper)} lies {where} {_name(convention, lower)}"
    return None


def _pitch_misfit(convention: str, extents: dict[int, LabelExtent]) -> float | None:
    """|log(observed / expected)| of the median level pitch (3-D distance between the centroids of adjacent
    vertebrae, so a tilted segment counts in full) under ``convention``; None without two whole adjacent levels."""
    readings = _vertebra_readings(convention, extents)
    whole = sorted((raw for raw in readings if not extents[raw].touches_edge), key=lambda raw: rank(readings[raw]))
    ratios = []
    for upper, lower in zip(whole, whole[1:]):
        if shift_level(readings[upper], 1) != readings[lower] or readings[upper] not in LEVEL_PITCH_MM:
            continue
        distance = math.dist(extents[upper].centroid_ras, extents[lower].centroid_ras)
        ratios.append(distance / LEVEL_PITCH_MM[readings[upper]])
    if not ratios:
        return None
    return abs(math.log(float(np.median(ratios))))


def _exclusion(convention: str, extents: dict[int, LabelExtent]) -> str | None:
    """Why the label values cannot be a map of ``convention`` (None when they can)."""
    values = sorted(extents)
    if not _vertebra_readings(convention, extents):
        return "no vertebra id"
    if convention == VERSE and values[-1] > max(_NAMES):
        return f"value {values[-1]} is above {max(_NAMES)}, the largest VerSe id"
    if convention == TOTALSEG_V1 and values[-1] > TOTALSEG_V1_MAX_ID:
        return f"value {values[-1]} is above {TOTALSEG_V1_MAX_ID}, the largest v1 id"
    return order_problem(convention, extents)


def _looks_like_subregions(extents: dict[int, LabelExtent]) -> bool:
    present = [raw for raw in extents if raw in SUBREGION_IDS]
    return len(present) >= 3 and order_problem(TOTALSEG_V2, {raw: extents[raw] for raw in present}) is not None


def decide_convention(extents: dict[int, LabelExtent], declared: str = "auto") -> str:
    """The label convention of a map (see :func:`_decide`), refused when a value it reads as one vertebra spans
    several levels (:func:`several_levels_under_one_value`)."""
    chosen = _decide(extents, declared)
    merged = several_levels_under_one_value(extents, chosen)
    if merged:
        raise ConventionError(merged)
    return chosen


def _decide(extents: dict[int, LabelExtent], declared: str = "auto") -> str:
    """The label convention of a map, from its values and the head-to-foot order of their centroids.

    ``declared`` ("auto" or a convention) is checked against the anatomy: the levels it names must run head to
    foot. With "auto", every convention whose ids name vertebrae in head-to-foot order is a candidate; when
    TotalSegmentator v1 and v2 both fit, the distance between adjacent levels (nine levels apart in the two
    readings) decides, else the map is refused as ambiguous. Raises :class:`ConventionError` with a one-line
    reason.
    """
    if declared != "auto" and declared not in CONVENTIONS:
        raise ConventionError(f"unknown label convention {declared!r}; choose one of {', '.join(CONVENTIONS)}")
    if _looks_like_subregions(extents):
        raise ConventionError(
            "looks like a vertebra sub-region mask (ids 41-50: arch, processes, body cortex and interior of one "
            "vertebra, not levels running head to foot), not a vertebra label map"
        )
    if declared != "auto":
        problem = _exclusion(declared, extents)
        if problem == "no vertebra id":
            raise ConventionError(f"label map has no vertebra labels in the {declared} convention "
                                  "(choose another with --labels)")
        if problem is not None:
            raise ConventionError(f"does not fit --labels {declared}: {problem}; the named levels must run head to "
                                  "foot (check the convention)")
        return declared
    reasons = {convention: _exclusion(convention, extents) for convention in CONVENTIONS}
    candidates = [convention for convention, reason in reasons.items() if reason is None]
    if not candidates:
        detail = "; ".join(f"{c}: {r}" for c, r in reasons.items())
        if not any(order_problem(c, extents) for c in CONVENTIONS if _vertebra_readings(c, extents)):
            raise ConventionError(f"label map has no vertebra labels in any convention ({detail})")
        raise ConventionError(f"no label convention names its values as vertebrae running head to foot ({detail})")
    if len(candidates) == 1:
        return _checked_against_verse(candidates[0], extents, reasons)
    misfits = {convention: _pitch_misfit(convention, extents) for convention in candidates}
    known = sorted((misfit, convention) for convention, misfit in misfits.items() if misfit is not None)
    if len(known) == len(candidates):
        (best, chosen), (runner_up, _) = known[0], known[1]
        if best <= math.log(PITCH_FIT_MAX_RATIO) and runner_up - best >= math.log(PITCH_DECISION_MARGIN_RATIO):
            return _checked_against_verse(chosen, extents, reasons)
    values = sorted(set().union(*(_vertebra_readings(c, extents) for c in candidates)))
    readings = "; ".join(
        f"{c}: {', '.join(level_name(CONVENTION_TO_VERSE[c][v]) for v in sorted(_vertebra_readings(c, extents)))}"
        for c in candidates
    )
    raise ConventionError(
        f"label values {', '.join(str(v) for v in values)} fit several conventions in head-to-foot order "
        f"({readings}); choose one with --labels {'|'.join(candidates)}"
    )


def several_levels_under_one_value(extents: dict[int, LabelExtent], convention: str) -> str | None:
    """Why the map holds several levels under one value (None when it does not): a value ``convention`` reads as a
    vertebra spans more than :data:`MAX_VERTEBRA_SPAN_MM` head to foot."""
    for raw, verse in sorted(_vertebra_readings(convention, extents).items()):
        span = extents[raw].span_superior_mm
        if span is not None and span > MAX_VERTEBRA_SPAN_MM:
            return (f"label {raw} (read as {level_name(verse)} in the {convention} convention) spans {span:.0f} mm "
                    f"head to foot, more than any one vertebra ({MAX_VERTEBRA_SPAN_MM:.0f} mm): several levels share "
                    "one value (a mask of all vertebral bodies, or of bodies and discs?); give a label map with one "
                    "value per vertebra")
    return None


def _checked_against_verse(chosen: str, extents: dict[int, LabelExtent], reasons: dict[str, str | None]) -> str:
    """A TotalSegmentator reading of a map whose values are all VerSe ids may not drop any of them as organs: that
    is a VerSe map whose levels are out of order (e.g. numbered upside down) as much as a TotalSegmentator map."""
    if chosen == VERSE or max(extents) > max(_NAMES):
        return chosen
    if reasons[VERSE] == "no vertebra id" and _spine_readings(VERSE, extents):
        # Only a sacrum or coccyx in VerSe ids, vertebrae in another reading: nothing tells which it is.
        verse_parts = ", ".join(f"{level_name(verse_id)} (id {raw})" for raw, verse_id
                                in sorted(_spine_readings(VERSE, extents).items()))
        other = ", ".join(_name(chosen, raw) for raw in sorted(_spine_readings(chosen, extents)))
        raise ConventionError(
            f"is ambiguous: as VerSe ids it holds only {verse_parts} (no vertebra to measure), as {chosen} ids "
            f"{other}; if it is a {chosen} map, say so with --labels {chosen}"
        )
    dropped = sorted(set(extents) - set(_spine_readings(chosen, extents)))
    if not dropped:
        return chosen
    raise ConventionError(
        f"label values {', '.join(str(v) for v in sorted(extents))} are all VerSe ids but as VerSe {reasons[VERSE]}, "
        f"and as {chosen} ids {', '.join(str(v) for v in dropped)} would not be vertebrae; choose one with "
        f"--labels verse|{chosen}"
    )


def detect_convention(present_labels) -> str:
    """The convention from label values alone, where they leave no choice: values above 28 are not VerSe.

    Only a first guess: :func:`decide_convention` decides from the values and the anatomy.
    """
    values = [int(v) for v in present_labels if int(v) != 0]
    if not values:
        return VERSE
    if max(values) <= max(_NAMES):
        return VERSE
    return TOTALSEG_V2


def verse_ids(values, convention: str) -> list[int]:
    """The sorted non-zero VerSe ids that the ``values`` of a label map of ``convention`` become (see
    :func:`to_verse`)."""
    mapping = CONVENTION_TO_VERSE[convention]
    return sorted({mapping.get(int(value), 0) for value in values} - {0})


def to_verse(array: np.ndarray, convention: str, present=None) -> np.ndarray:
    """Convert a label array of the given convention to VerSe ids; labels that are not vertebrae become 0.

    ``present``: the non-zero values the array holds, when known; if each is its own VerSe id already, the array is
    returned as it is (no pass over the voxels)."""
    if convention not in CONVENTION_TO_VERSE:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    mapping = CONVENTION_TO_VERSE[convention]
    if present is not None and all(mapping.get(int(value)) == int(value) for value in present):
        return array
    lookup_size = int(max(int(array.max(initial=0)), max(mapping))) + 1  # callers pass non-negative labels
    lookup = np.zeros(lookup_size, dtype=np.int16)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[array]


def occupied_box(array: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every non-zero voxel of a 3-D array, widened by ``margin`` voxels within the array;
    None when every voxel is zero. Two passes over the array (the projection onto the first two axes serves both)."""
    plane = array.max(axis=2)
    box = []
    for axis, occupied in enumerate((plane.max(axis=1), plane.max(axis=0), array.max(axis=(0, 1)))):
        where = np.flatnonzero(occupied)
        if where.size == 0:
            return None
        box.append(slice(max(int(where[0]) - margin, 0), min(int(where[-1]) + 1 + margin, array.shape[axis])))
    return tuple(box)


def label_boxes(array: np.ndarray) -> list[tuple[slice, slice, slice] | None]:
    """The bounding box of every label of a non-negative integer array, as ``scipy.ndimage.find_objects`` gives
    them (entry ``value - 1``; None for a value the array does not hold).

    ``find_objects`` visits every voxel; a label map is mostly background, so it runs on the box of the labelled
    voxels only (from projections: about 40 % of the array for the spine of a VerSe mask), in the order the voxels
    lie in memory (NIfTI arrays are in F order; walked in C order they take twice as long).
    """
    from scipy import ndimage

    region = occupied_box(array)
    if region is None:
        return []
    axes = sorted(range(3), key=lambda axis: -array.strides[axis])  # the axis that varies slowest in memory first
    boxes = []
    for found in ndimage.find_objects(array[tuple(region)].transpose(axes)):
        box = None
        if found is not None:
            box = [None] * 3
            for inner, axis in zip(found, axes):
                box[axis] = slice(inner.start + region[axis].start, inner.stop + region[axis].start)
            box = tuple(box)
        boxes.append(box)
    return boxes


def label_extents(volume, boxes: list[tuple[slice, ...] | None] | None = None) -> dict[int, LabelExtent]:
    """Voxel count, centroid (RAS mm), edge contact and head-to-foot span of every non-zero label of a label
    :class:`~.volumes.Volume`.

    Each label is counted inside its own bounding box (``boxes`` from :func:`label_boxes`, found here when not
    given): its voxels per plane along each axis give the centroid's voxel coordinates; the box says whether the
    label reaches the first or last plane of an axis and how many planes it spans along the image axis nearest to
    head-foot.
    """
    array = volume.array
    boxes = label_boxes(array) if boxes is None else boxes
    size = len(boxes) + 1
    index_sums = np.zeros((3, size), dtype=np.int64)
    counts = np.zeros(size, dtype=np.int64)
    touches = np.zeros(size, dtype=bool)
    span_mm = np.zeros(size)
    superior_axis = int(np.argmax(np.abs(volume.direction_ras[2, :])))
    along = abs(float(volume.direction_ras[2, superior_axis]))
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        inside = array[box] == label
        for axis, planes in enumerate(box):
            per_plane = inside.sum(axis=tuple(other for other in range(3) if other != axis))
            index_sums[axis, label] = np.arange(planes.start, planes.stop) @ per_plane
            counts[label] = per_plane.sum()
            touches[label] |= planes.start == 0 or planes.stop == array.shape[axis]
        planes = box[superior_axis]
        span_mm[label] = (planes.stop - planes.start) * float(volume.spacing[superior_axis]) * along
    centroids = volume.ijk_to_world((index_sums / np.maximum(counts, 1)).T)
    return {
        int(label): LabelExtent(int(counts[label]), tuple(float(v) for v in centroids[label]),
                                           bool(touches[label]), float(span_mm[label]))
        for label in np.flatnonzero(counts) if label != 0
    }


def present_labels(array: np.ndarray, boxes: list[tuple[slice, ...] | None] | None = None) -> list[int]:
    """Sorted non-zero labels of a non-negative integer array (from its :func:`label_boxes`, found when not given)."""
    return [value for value, box in enumerate(label_boxes(array) if boxes is None else boxes, 1) if box is not None]
