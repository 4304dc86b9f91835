"""The one rule for fixing the level count, shared by ``analyze --anchor``, ``--anchor-point`` and the Slicer
module's relabel.

When the user says "the vertebra now named OLD is NEW", every vertebra moves by the same number of levels on a
typical spine (C1-C7, T1-T12, L1-L5): the names' spacing is kept, so a gap in the segmentation (a level missing,
e.g. T12, L1, L3 with no L2) stays a gap. Example: T12, L1, L3 and "L3 is really L4" give T12 → L1, L1 → L2,
L3 → L4. Transitional ids (T13, L6) move onto the typical sequence; the vertebra the user named gets exactly the
name given (also T13 or L6).
"""

from __future__ import annotations

from VertebralFractureLib.io import labels as labels_mod


def renumbering(present: list[int], old_label: int, new_label: int) -> dict[int, int]:
    """Old -> new VerSe id of every mobile vertebra in ``present`` when ``old_label`` is really ``new_label``.

    Raises ValueError when a vertebra would leave the mobile spine (onto the sacrum or past C1) or two would get the
    same name.
    """
    old_label, new_label = int(old_label), int(new_label)
    if not labels_mod.is_vertebra(new_label):
        raise ValueError(f"{labels_mod.level_name(new_label)} is not a mobile vertebra (C1-L5)")
    vertebrae = [int(label) for label in present if labels_mod.is_vertebra(int(label))]
    if old_label not in vertebrae:
        raise ValueError(f"there is no {labels_mod.level_name(old_label)} to renumber")
    steps = _typical_index(new_label) - _typical_index(old_label)
    mapping = {}
    for label in vertebrae:
        try:
            new = new_label if label == old_label else labels_mod.shift_level(label, steps)
        except ValueError:
            raise ValueError(f"with {labels_mod.level_name(old_label)} as {labels_mod.level_name(new_label)}, "
                             f"{labels_mod.level_name(label)} would fall outside the spine") from None
        if not labels_mod.is_vertebra(new):
            raise ValueError(f"with {labels_mod.level_name(old_label)} as {labels_mod.level_name(new_label)}, "
                             f"{labels_mod.level_name(label)} would become the {labels_mod.level_name(new)}, which "
                             "is not a mobile vertebra; choose a higher level")
        mapping[label] = new
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("renumbering would give two vertebrae the same level")
    return mapping


def _typical_index(label: int) -> int:
    """Position on the typical sequence C1..L5, sacrum, coccyx (T13 takes L1's place, L6 L5's)."""
    return (list(range(1, 25)) + [labels_mod.SACRUM, labels_mod.COCCYX]).index(labels_mod.shift_level(label, 0))


def level_choices() -> list[str]:
    """Names a reviewer may give a vertebra (C1 ... L5 with the transitional T13 and L6), cranial to caudal."""
    return [labels_mod.level_name(label) for label in sorted(
        (v for v in range(1, 29) if labels_mod.is_vertebra(v)), key=labels_mod.rank)]
