"""Where a volume's voxels hold data: the fields of view of the grids its data came from (world in RAS mm).

A volume resampled from another grid holds voxels that lie outside the field of view it came from: a label map
moved onto its CT's grid by nearest neighbour is 0 there, a CT that a tool resampled onto a finer or rotated grid
holds the tool's constant padding there. Those voxels are not background ("no vertebra", "air"): a vertebral body
that reaches them is cut by the field of view, and its cut face is not an endplate or a wall.

Each resampling step records the box it read from in ``Volume.meta[FIELDS_OF_VIEW_KEY]`` (a list of
``{"ijk_to_ras", "shape"}``); every volume's own array is a field of view too. A CT's constant padding is found from
its values (:func:`padding_value`), since a file does not say that it was resampled.
"""

from __future__ import annotations

import numpy as np

FIELDS_OF_VIEW_KEY = "fields_of_view"
CUT_LABELS_KEY = "cut_by_field_of_view"
"""``Volume.meta`` entry of a label map that a segmentation found cut by a field of view on a grid of its own (its
working grid): {VerSe id: reason}."""

CUT_SECTION_FRACTION = 0.3
"""A body is cut by a field of view when its section in the slab along a boundary (one voxel thick) is at least this
fraction of its largest section parallel to that boundary. A plane through a body holds a section close to its
largest (0.84-1.0 on VerSe masks truncated through a body); the outermost slice of a whole body, as in a mask
cropped to its bounding box, only the tip of its rounded endplate or wall (at most 0.06 on the cropped VerSe'19
masks 007 and 008)."""
CUT_MIN_SECTION_MM2 = 20.0
"""Sections on the boundary smaller than this (a few stray voxels) never make a body "cut"."""
PADDING_FACE_FRACTION = 0.5
"""A value held exactly by at least this share of the voxels of one face of a CT array is a resampler's or a
scanner's padding (outside the reconstruction circle, beyond the original grid): real air, fat or tissue is noisy
(a few HU of quantum noise), so no one value covers even a tenth of a face."""
PADDING_MAX_HU = -1000.0
"""Padding is air or below (-1024, -2048, -3024): a constant at tissue values is left alone."""


def box_of(volume) -> dict:
    """The field of view of a volume's own array."""
    return {"ijk_to_ras": np.asarray(volume.ijk_to_ras, dtype=float).tolist(), "shape": [int(n) for n in volume.shape]}


def boxes(volume) -> list[dict]:
    """Every field of view the volume's data came from: its own array first, then the grids it was resampled
    from."""
    return [box_of(volume), *volume.meta.get(FIELDS_OF_VIEW_KEY, [])]


def carried_boxes(source) -> list[dict]:
    """The fields of view a volume resampled from ``source`` carries: ``source``'s own and those it carried."""
    return [box_of(source), *source.meta.get(FIELDS_OF_VIEW_KEY, [])]


def face_distances(box: dict, points_ras: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each of the six faces of a box: (distance in mm of every point inside the box from that face, the face's
    unit normal in RAS pointing into the box). A box's faces lie half a voxel beyond its outer voxel centres."""
    matrix = np.asarray(box["ijk_to_ras"], dtype=float)
    shape = np.asarray(box["shape"], dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    index = (points_ras - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T
    faces = []
    for axis in range(3):
        normal = matrix[:3, axis] / spacing[axis]
        faces.append(((index[:, axis] + 0.5) * spacing[axis], normal))
        faces.append(((shape[axis] - 0.5 - index[:, axis]) * spacing[axis], -normal))
    return faces


def boundary_section(distance_mm: np.ndarray, thickness_mm: float, voxel_mm3: float) -> str | None:
    """How a body's voxels at ``distance_mm`` from a field-of-view boundary show a cut: its section in the slab
    nearest the boundary (``thickness_mm``: one voxel along the boundary's normal) against its largest section in
    the slabs beyond, or None when it is whole (see :data:`CUT_SECTION_FRACTION`, :data:`CUT_MIN_SECTION_MM2`)."""
    inside = distance_mm[distance_mm >= -0.5 * thickness_mm]
    if inside.size == 0 or inside.min() >= thickness_mm:
        return None
    sections = np.bincount(np.clip(np.floor(inside / thickness_mm), 0, None).astype(np.int64))
    largest = sections.max(initial=0)
    section = sections[0]
    area_mm2 = section * voxel_mm3 / thickness_mm
    if section and section >= CUT_SECTION_FRACTION * largest and area_mm2 >= CUT_MIN_SECTION_MM2:
        return f"{area_mm2:.0f} mm2 of the body, {100 * section / largest:.0f} % of its largest section"
    return None


def section_against(outside: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> str | None:
    """:func:`boundary_section` of a body (bool array) against a region with no data (``outside``, same grid):
    slabs one voxel thick by distance from that region's surface (half a voxel nearer than its voxel centres)."""
    if not outside.any() or not (_grown(outside) & body).any():
        return None
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    distance = ndimage.distance_transform_edt(~outside, sampling=spacing)[body & ~outside] - 0.5 * float(spacing.min())
    return boundary_section(distance, float(spacing.max()), float(np.prod(spacing)))


def _grown(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask)


def padding_value(array: np.ndarray) -> float | None:
    """The constant a CT array holds where it has no data (see :data:`PADDING_FACE_FRACTION`), or None."""
    best = None
    for axis in range(3):
        for side in (0, -1):
            face = np.take(array, side, axis=axis).ravel()
            values, counts = np.unique(face, return_counts=True)
            top = int(np.argmax(counts))
            if counts[top] >= PADDING_FACE_FRACTION * face.size and float(values[top]) <= PADDING_MAX_HU:
                best = float(values[top]) if best is None else min(best, float(values[top]))
    return best


def padding_mask(array: np.ndarray, value: float | None) -> np.ndarray:
    """Voxels holding the padding value (all False when there is none)."""
    if value is None:
        return np.zeros(array.shape, dtype=bool)
    return array == np.asarray(value, dtype=array.dtype)


__all__ = [
    "CUT_LABELS_KEY",
    "CUT_MIN_SECTION_MM2",
    "CUT_SECTION_FRACTION",
    "boundary_section",
    "section_against",
    "FIELDS_OF_VIEW_KEY",
    "PADDING_FACE_FRACTION",
    "PADDING_MAX_HU",
    "box_of",
    "boxes",
    "carried_boxes",
    "face_distances",
    "padding_mask",
    "padding_value",
]
