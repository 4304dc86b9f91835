"""Vertebra names and label conventions.

Internally every label map uses **VerSe ids** (Löffler 2020, Sekuboyina 2021):
1–7 C1–C7, 8–19 T1–T12, 20–24 L1–L5, 25 L6 (transitional), 26 sacrum, 27 coccyx, 28 T13 (transitional).
Other conventions are converted to VerSe ids when a label map is read.
"""

from __future__ import annotations

import re

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

_SEGMENT_NAME = re.compile(r"(?:^|[^A-Za-z])([CTL])[ _-]?(\d{1,2})(?![0-9])", re.IGNORECASE)


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


def label_from_segment_name(name: str) -> int | None:
    """VerSe id from a segment name such as "L1", "vertebrae_L1", "Vertebra T12"; None if it names no vertebra."""
    text = name.strip()
    if re.search(r"sacrum|(^|[^A-Za-z])S1($|[^0-9])", text, re.IGNORECASE):
        return SACRUM
    if re.search(r"coccyx", text, re.IGNORECASE):
        return COCCYX
    match = _SEGMENT_NAME.search(text)
    if not match:
        return None
    region, number = match.group(1).upper(), int(match.group(2))
    candidate = f"{region}{number}"
    return _IDS.get(candidate)


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


def detect_convention(present_labels) -> str:
    """Guess the convention of a label map from the label values present.

    VerSe ids stop at 28, so a map with no value above 28 is read as VerSe. Anything above is read as
    TotalSegmentator v2 (the current release); v1 maps share the range and must be named explicitly.
    """
    values = [int(v) for v in present_labels if int(v) != 0]
    if not values:
        return VERSE
    if max(values) <= max(_NAMES):
        return VERSE
    return TOTALSEG_V2


def to_verse(array: np.ndarray, convention: str) -> np.ndarray:
    """Convert a label array of the given convention to VerSe ids; labels that are not vertebrae become 0."""
    if convention not in CONVENTION_TO_VERSE:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    mapping = CONVENTION_TO_VERSE[convention]
    lookup_size = int(max(int(array.max(initial=0)), max(mapping))) + 1  # callers pass non-negative labels
    lookup = np.zeros(lookup_size, dtype=np.int16)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[array]
