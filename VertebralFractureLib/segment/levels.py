"""Naming vertebral levels from anatomy in view, and renumbering when the user fixes the count.

Anchors the classical backend looks for (cranial to caudal order of the separated bodies is known):

- **Sacrum**: the column below the lowest disc widens into the sacral alae (much wider than any lumbar body); the
  lowest mobile vertebra above it is L5.
- **Ribs**: bone that starts beside a thoracic body (posterolateral, where the costovertebral and costotransverse
  joints are) and runs far out laterally. The lowest rib-bearing vertebra with a rib-free vertebra below it is T12;
  the highest, with two rib-free vertebrae above it, is T1.

With one anchor, or two that agree, the levels are "confirmed". Two that disagree (a transitional vertebra, a
missed disc) or none (a short crop) give "unconfirmed", with the reason in the evidence. The user can fix the
count with :func:`renumber_lowest_complete` or :func:`renumber_at_point` (status "anchored").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import labels as labels_mod

SACRUM_WIDTH_MM = 70.0
"""Sacral alae (with the ilium when the joint is bridged) span more; a lumbar body is 40-60 mm wide."""
RIB_MEDIAL_MM = (22.0, 42.0)
"""Lateral distance from the body centre of a rib's medial end (head, neck and tubercle)."""
RIB_LATERAL_MM = 65.0
"""A rib reaches further out than any lumbar transverse process."""
RIB_MAX_ML = 80.0
"""A rib (or two joined by partial volume) within the search window; the ilium is far larger."""


@dataclass
class LevelNaming:
    masks: list[np.ndarray]
    labels: list[int]
    status: str
    evidence: list[str] = field(default_factory=list)
    rib_bearing: list[bool] = field(default_factory=list)
    sacrum_found: bool = False


def _z_range(mask: np.ndarray) -> tuple[int, int]:
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(zs.min()), int(zs.max())


def rib_sides(mask: np.ndarray, bone: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, z_first: int,
              spacing_mm: float) -> list[str]:
    """Sides ("left", "right") on which a rib articulates with this vertebra."""
    z0, z1 = _z_range(mask)
    window_low = max(0, z0 - int(round(50.0 / spacing_mm)))
    window_high = min(bone.shape[2], z1 + 1 + int(round(10.0 / spacing_mm)))
    sub = bone[:, :, window_low:window_high]
    nx, ny, nz = sub.shape
    ks = np.arange(window_low, window_high)
    index = np.clip(ks - z_first, 0, len(centre_x) - 1)
    xs = np.arange(nx, dtype=float)[:, None, None]
    ys = np.arange(ny, dtype=float)[None, :, None]
    dx = (xs - centre_x[index][None, None, :]) * spacing_mm
    dy = (ys - centre_y[index][None, None, :]) * spacing_mm
    lateral = np.abs(dx)
    outside = sub & (lateral >= RIB_MEDIAL_MM[0])
    labelled, count = ndimage.label(outside, structure=np.ones((3, 3, 3)))
    if count == 0:
        return []
    voxel_ml = spacing_mm**3 / 1000.0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1) * voxel_ml
    reach = ndimage.maximum(np.broadcast_to(lateral, sub.shape), labelled, index=np.arange(1, count + 1))
    reach = np.concatenate([[0.0], np.asarray(reach, dtype=float)])
    in_slab = np.zeros(sub.shape, dtype=bool)
    in_slab[:, :, z0 - window_low : z1 - window_low + 1] = True
    medial = (outside & in_slab & (lateral <= RIB_MEDIAL_MM[1]) & (dy <= 5.0) & (dy >= -45.0))
    # A rib articulates with this vertebra when its most medial part (head and neck) lies within this vertebra's
    # height; the rib of the vertebra above descends past this one further out.
    lateral_full = np.broadcast_to(lateral, sub.shape)
    min_lateral = np.concatenate([[np.inf], np.asarray(ndimage.minimum(lateral_full, labelled,
                                                                       np.arange(1, count + 1)), dtype=float)])
    near_end = lateral_full <= min_lateral[labelled] + 4.0
    zs = np.broadcast_to(np.arange(nz)[None, None, :], sub.shape)
    medial_z = np.concatenate([[np.nan], np.asarray(ndimage.mean(zs, labelled * near_end,
                                                                 np.arange(1, count + 1)), dtype=float)])
    slab_low, slab_high = z0 - window_low, z1 - window_low
    sides = []
    for side, sign in (("right", 1.0), ("left", -1.0)):
        candidates = np.unique(labelled[medial & (np.sign(dx) == sign)])
        candidates = candidates[candidates != 0]
        if any(reach[c] >= RIB_LATERAL_MM and sizes[c] <= RIB_MAX_ML and min_lateral[c] <= RIB_MEDIAL_MM[1]
               and slab_low - 1 <= medial_z[c] <= slab_high + 1 for c in candidates):
            sides.append(side)
    return sides


def name_levels(masks: list[np.ndarray], finder, geometry, spacing_mm: float) -> LevelNaming:
    """Give VerSe ids to bodies ordered cranial to caudal, from the anchors in view."""
    evidence: list[str] = []
    # The sacrum: drop sacral segments at the caudal end (they are not mobile vertebrae).
    # The sacrum was found (and cut off) while separating the bodies.
    sacrum_found = bool(getattr(geometry, "sacrum_found", False))
    if not masks:
        return LevelNaming(masks=[], labels=[], status="unconfirmed", evidence=["only the sacrum in view"])
    centre_x = geometry.centre_xy[:, 0]
    centre_y = geometry.centre_xy[:, 1]
    ribs = [bool(rib_sides(m, finder.bone, centre_x, centre_y, int(geometry.z_indices[0]), spacing_mm))
            for m in masks]
    count = len(masks)
    offsets = {}  # index of the anchor vertebra -> its VerSe id
    if sacrum_found:
        offsets["sacrum"] = (count - 1, 24)
        evidence.append("sacrum below the lowest mobile vertebra: named L5")
    transitions_low = [i for i in range(count - 1) if ribs[i] and not any(ribs[i + 1 :])]
    if transitions_low:
        i = transitions_low[0]
        offsets["ribs_low"] = (i, 19)
        evidence.append(f"lowest rib-bearing vertebra (ribs on vertebra {i + 1} of {count} from the top, none below): "
                        "named T12")
    # T1 only where two rib-free vertebrae (C6, C7) lie above and the next one down bears ribs too: in a short
    # field of view a missed rib must not name a thoracolumbar vertebra T1.
    transitions_high = [i for i in range(2, count - 1) if ribs[i] and ribs[i + 1] and not any(ribs[:i])]
    if transitions_high and "ribs_low" not in offsets:
        i = transitions_high[0]
        offsets["ribs_high"] = (i, 8)
        evidence.append("highest rib-bearing vertebra with a rib-free vertebra above: named T1")
    status = "confirmed"
    if not offsets:
        status = "unconfirmed"
        if ribs[-1]:
            offsets["assumed"] = (count - 1, 19)
            evidence.append("ribs on every vertebra down to the lowest in view, no rib-free vertebra below: the "
                            "lowest is assumed to be T12 (unconfirmed; fix with --anchor)")
        else:
            offsets["assumed"] = (count - 1, 24)
            evidence.append("no sacrum, no ribs and no C2 in view: nothing anchors the count; the lowest vertebra "
                            "is assumed to be L5 (unconfirmed; fix with --anchor)")
    # Each anchor gives the id of the first (most cranial) vertebra; they must agree.
    starts = {key: value - index for key, (index, value) in offsets.items()}
    chosen_key = "sacrum" if "sacrum" in starts else next(iter(starts))
    start = starts[chosen_key]
    if len(set(starts.values())) > 1:
        status = "unconfirmed"
        evidence.append("anchors disagree (" + ", ".join(f"{k} gives the top vertebra "
                                                         f"{_safe_name(v)}" for k, v in starts.items())
                        + f"): a transitional vertebra or a missed disc; named from the {chosen_key}")
    elif len(starts) > 1:
        evidence.append("anchors agree")
    labels = []
    for index in range(count):
        label = start + index
        labels.append(label if 1 <= label <= 24 else 0)
    dropped = [i for i, label in enumerate(labels) if label == 0]
    if dropped:
        evidence.append(f"{len(dropped)} segment(s) fall outside C1-L5 with this count and are left unlabelled")
    return LevelNaming(masks=masks, labels=labels, status=status, evidence=evidence, rib_bearing=ribs,
                       sacrum_found=sacrum_found)


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
    from ..renumber import renumbering

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
