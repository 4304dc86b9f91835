"""Contrast enhancement: the aorta or a blood pool beside the spine, its attenuation, the phase it implies and the
correction of trabecular HU for it (thresholds in :mod:`.rules`). World coordinates are RAS mm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import Volume
from VertebralFractureLib.screening.rules import DensityThresholds


@dataclass
class ContrastAssessment:
    """Contrast state: ``status`` "non-contrast" | "contrast" | "uncertain"; ``phase`` as in the offsets table."""

    status: str = "uncertain"
    phase: str = "unknown"
    aorta_hu: float | None = None
    aorta_center_ras: list[float] | None = None
    aorta_slices: int = 0
    dicom_agent: str | None = None
    source: str = ""
    offset_hu: float = 0.0
    certain: bool = False
    note: str = ""


# --------------------------------------------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------------------------------------------
def find_aorta(ct: Volume, body_mask: np.ndarray, settings: DensityThresholds,
               search_anterior_mm: float = 60.0, search_left_mm: float = 50.0,
               search_right_mm: float = 15.0, bone_mask: np.ndarray | None = None) -> dict | None:
    """Look for the contrast-filled aorta: a bright (> ``aorta_uncertain_hu``) round region anterior-left of the
    vertebral body, present on most axial slices through the body with a stable centre.

    Works slice by slice along the array axis closest to superior-inferior. Returns median HU, centre (RAS) and
    the number of slices it was found on, or None (no enhanced aorta: non-contrast, or out of the field of view).
    ``bone_mask`` (default ``body_mask``): all labelled vertebrae, kept out of the search (a neighbouring body
    cut obliquely by the slice would otherwise merge with the lumen).
    """
    bone_mask = body_mask if bone_mask is None else bone_mask
    direction = ct.direction_ras
    slice_axis = int(np.argmax(np.abs(direction[2, :])))
    coords = np.argwhere(body_mask)
    if coords.size == 0:
        return None
    body_world = ct.ijk_to_world(coords)
    # Per-slice centre and anterior edge of the bodies in one pass (grouping by slice index, not a scan per slice).
    slices, group = np.unique(coords[:, slice_axis], return_inverse=True)
    counts = np.bincount(group)
    centres = np.stack([np.bincount(group, weights=body_world[:, d]) / counts for d in range(3)], axis=1)
    fronts = np.full(len(slices), -np.inf)
    np.maximum.at(fronts, group, body_world[:, 1])
    in_plane = [a for a in range(3) if a != slice_axis]
    spacing = ct.spacing
    pixel_area = float(spacing[in_plane[0]] * spacing[in_plane[1]])
    found = []
    for slice_number, index in enumerate(slices):
        selector = [slice(None)] * 3
        selector[slice_axis] = int(index)
        # The search box follows the spine slice by slice (scoliosis, lordosis).
        body_center = centres[slice_number]
        body_front = float(fronts[slice_number])
        # Crop the plane to the search box (plus a margin for smoothing) before any filtering: speed on 512^2.
        corners = np.array([[body_center[0] + dx, y_, body_center[2]]
                            for dx in (search_right_mm + 10, -search_left_mm - 10)
                            for y_ in (body_center[1] - 20.0, body_front + search_anterior_mm + 10)])
        corner_ijk = ct.world_to_ijk(corners)
        bounds = []
        for axis in in_plane:
            low = int(np.clip(np.floor(corner_ijk[:, axis].min()), 0, ct.shape[axis] - 1))
            high = int(np.clip(np.ceil(corner_ijk[:, axis].max()) + 1, low + 1, ct.shape[axis]))
            bounds.append((low, high))
        selector[in_plane[0]] = slice(*bounds[0])
        selector[in_plane[1]] = slice(*bounds[1])
        plane = ct.array[tuple(selector)]
        grid = np.stack(np.meshgrid(np.arange(*bounds[0]), np.arange(*bounds[1]), indexing="ij"), -1)
        ijk = np.zeros(grid.shape[:2] + (3,))
        ijk[..., in_plane[0]] = grid[..., 0]
        ijk[..., in_plane[1]] = grid[..., 1]
        ijk[..., slice_axis] = index
        world = ijk @ ct.ijk_to_ras[:3, :3].T + ct.ijk_to_ras[:3, 3]
        x, y = world[..., 0], world[..., 1]
        # RAS: left is -x, anterior is +y. The aorta lies left-anterior or left-lateral of the body.
        region = ((x <= body_center[0] + search_right_mm) & (x >= body_center[0] - search_left_mm)
                  & (y >= body_center[1] - 10.0) & (y <= body_front + search_anterior_mm))
        # Noise (low-dose, thin slices) breaks a plain threshold into ragged pieces: smooth first (sigma ~1.5 mm).
        smooth = ndimage.gaussian_filter(plane, sigma=1.5 / np.array([spacing[a] for a in in_plane]))
        # Bone (the labelled vertebrae, grown by ~3 mm) and calcified plaque must not join the lumen's blob.
        bone = ndimage.binary_dilation(smooth > 700.0, iterations=1)
        bone |= ndimage.distance_transform_edt(~bone_mask[tuple(selector)],
                                               sampling=[spacing[a] for a in in_plane]) <= 3.0
        best = None
        # Enhanced liver, kidney or bowel wall can touch the aorta at a low threshold; higher ones separate it.
        for threshold in (settings.aorta_uncertain_hu, settings.aorta_contrast_hu, 250.0, 350.0):
            bright = region & (smooth > threshold) & (smooth < 700.0) & ~bone
            bright = ndimage.binary_opening(bright, iterations=1)
            components, count = ndimage.label(bright)
            for component in range(1, count + 1):
                blob = components == component
                area = blob.sum() * pixel_area
                diameter = 2.0 * np.sqrt(area / np.pi)
                if not 10.0 <= diameter <= 40.0:
                    continue
                # Roundness: area against the circle through the blob's farthest pixel from its centre.
                blob_world = world[blob]
                center = blob_world.mean(axis=0)
                radius = np.max(np.linalg.norm(blob_world[:, :2] - center[:2], axis=1)) + 0.5 * np.sqrt(pixel_area)
                roundness = area / (np.pi * radius**2)
                if roundness < 0.5:
                    continue
                distance = np.linalg.norm(center[:2] - body_center[:2])
                score = roundness - distance / 200.0
                if best is None or score > best[0]:
                    # Attenuation of the lumen: the blob's core (>= 2 mm inside), without calcified plaque.
                    core = ndimage.distance_transform_edt(blob, sampling=[spacing[a] for a in in_plane]) >= 2.0
                    core = (core if core.any() else blob) & (plane < 600.0)
                    if core.any():
                        best = (score, float(np.median(plane[core])), center)
        if best is not None:
            found.append(best)
    if not found or len(found) < max(2, 0.5 * len(slices)):
        return None
    centers = np.array([c for _, _, c in found])
    median_center = np.median(centers, axis=0)
    stable = [f for f in found if np.linalg.norm(f[2][:2] - median_center[:2]) <= 15.0]
    if len(stable) < max(2, 0.5 * len(slices)):
        return None
    return {"hu": float(np.median([f[1] for f in stable])), "center_ras": median_center.tolist(),
            "slices": len(stable)}


def find_blood_pool(ct: Volume, spine_mask: np.ndarray, settings: DensityThresholds,
                    anterior_mm: float = 90.0, lateral_mm: float = 60.0) -> dict | None:
    """A large pool of contrast-enhanced blood (aorta, heart, great vessels) in front of the labelled spine.

    Voxels of ``settings.blood_pool_hu`` .. 600 HU (after smoothing with sigma 1.5 mm) that are neither bone
    (> 700 HU, grown by 2 mm) nor within 5 mm of the labelled vertebrae, inside a box from 10 mm behind to
    ``anterior_mm`` in front of the spine and ``lateral_mm`` to either side (the index box around that world box),
    over the slices the spine spans. The
    pool's core (voxels at least ``blood_pool_core_mm`` inside it, which thin bone such as ribs and the sternum's
    cortex-bounded marrow never reaches) must hold ``blood_pool_min_ml``. Unenhanced blood is 30-60 HU, far below.
    Returns the core's median HU and centre (RAS), or None.
    """
    coords = np.argwhere(spine_mask)
    if coords.size == 0:
        return None
    world = ct.ijk_to_world(coords)
    low = world.min(axis=0) - [lateral_mm, 10.0, 0.0]
    high = world.max(axis=0) + [lateral_mm, anterior_mm, 0.0]
    low[1] = np.median(world[:, 1]) - 10.0
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    ijk = ct.world_to_ijk(corners)
    box = tuple(slice(int(np.clip(np.floor(ijk[:, a].min()), 0, ct.shape[a] - 1)),
                      int(np.clip(np.ceil(ijk[:, a].max()) + 1, 1, ct.shape[a]))) for a in range(3))
    # Voxels of about 1.5 mm are fine enough for a pool whose core is 4 mm deep (and keep 512^2 scans fast).
    step = np.maximum(1, np.round(1.5 / ct.spacing)).astype(int)
    box = tuple(slice(b.start, b.stop, int(k)) for b, k in zip(box, step))
    values = ct.array[box].astype(np.float32)
    spacing = ct.spacing * step
    smooth = ndimage.gaussian_filter(values, sigma=1.5 / spacing)
    bone = ndimage.distance_transform_edt(~(smooth > 700.0), sampling=spacing) <= 2.0
    near_spine = ndimage.distance_transform_edt(~spine_mask[box], sampling=spacing) <= 5.0
    offset = np.array([b.start for b in box], dtype=float)
    pool = (smooth >= settings.blood_pool_hu) & (smooth < 600.0) & ~bone & ~near_spine
    core = ndimage.distance_transform_edt(pool, sampling=spacing) >= settings.blood_pool_core_mm
    components, count = ndimage.label(core)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    volume_ml = float(largest.sum() * np.prod(spacing) / 1000.0)
    if volume_ml < settings.blood_pool_min_ml:
        return None
    centre = ct.ijk_to_world(np.argwhere(largest).mean(axis=0) * step + offset)[0]
    return {"hu": float(np.median(values[largest])), "center_ras": centre.tolist(), "slices": 0,
            "source": f"enhanced blood pool of {volume_ml:.0f} ml in front of the spine"}


def assess_contrast(ct: Volume, body_mask: np.ndarray | None, thresholds: DensityThresholds,
                    dicom: dict | None = None, bone_mask: np.ndarray | None = None) -> ContrastAssessment:
    """Combine the DICOM header (ContrastBolusAgent) with the aortic attenuation measured on the images."""
    dicom = dicom or {}
    agent = dicom.get("contrast_bolus_agent")
    agent_given = bool(agent) and agent.strip().upper() not in ("NONE", "NO", "0", "")
    aorta = (find_aorta(ct, body_mask, thresholds, bone_mask=bone_mask)
             if body_mask is not None and body_mask.any() else None)
    if aorta is None and bone_mask is not None and bone_mask.any():
        # The round-aorta search fails where an automatic segmentation swallowed the aorta into a vertebra (the
        # chest crop's T8-T12): look for any large pool of enhanced blood in front of the spine instead.
        aorta = find_blood_pool(ct, bone_mask, thresholds)
    result = ContrastAssessment(dicom_agent=agent)
    if aorta is not None:
        result.aorta_hu, result.aorta_center_ras = aorta["hu"], aorta["center_ras"]
        result.aorta_slices = aorta["slices"]
    aorta_hu = result.aorta_hu
    declared = dicom.get("contrast_phase")
    if declared:
        # The user (or the study's protocol) states the phase: it wins; the aorta is still reported beside it.
        if declared not in thresholds.contrast_offset_hu:
            raise ValueError(f"unknown contrast phase {declared!r}; one of {', '.join(thresholds.contrast_offset_hu)}")
        result.status = "non-contrast" if declared == "non-contrast" else "contrast"
        result.phase = declared
        result.source = "stated by the user"
        result.certain = True
        seen = f"aorta {aorta_hu:.0f} HU" if aorta_hu is not None else "no enhanced aorta found"
        result.note = f"phase '{declared}' stated by the user ({seen})"
    elif aorta_hu is not None and aorta_hu >= thresholds.aorta_contrast_hu:
        result.status = "contrast"
        result.phase = "arterial" if aorta_hu >= thresholds.aorta_arterial_hu else "portal venous"
        blood = (aorta or {}).get("source", "aorta")
        result.source = ("aorta" if blood == "aorta" else "blood pool") + \
            (" + DICOM ContrastBolusAgent" if agent_given else "")
        result.certain = True
        result.note = (f"{blood} {aorta_hu:.0f} HU (>= {thresholds.aorta_contrast_hu:g} HU): contrast enhanced, "
                       f"{result.phase} phase estimated from the blood's attenuation "
                       f"({'>=' if result.phase == 'arterial' else '<'} {thresholds.aorta_arterial_hu:g} HU)")
    elif agent_given:
        result.status = "contrast"
        result.phase = "unknown"
        result.source = "DICOM ContrastBolusAgent"
        result.certain = False
        seen = f"aorta {aorta_hu:.0f} HU" if aorta_hu is not None else "no enhanced aorta found"
        result.note = f"DICOM ContrastBolusAgent '{agent}' but {seen}: phase unknown"
    elif aorta_hu is not None:
        result.status = "uncertain"
        result.phase = "unknown"
        result.source = "aorta"
        result.note = (f"aorta {aorta_hu:.0f} HU lies between {thresholds.aorta_uncertain_hu:g} and "
                       f"{thresholds.aorta_contrast_hu:g} HU: possible late-phase contrast")
    else:
        result.status = "non-contrast"
        result.phase = "non-contrast"
        # Only a real DICOM header (it names the modality) confirms the absence of a contrast agent.
        has_header = bool(dicom.get("modality"))
        result.source = "no enhanced aorta" + (" (DICOM header has no contrast agent)" if has_header else "")
        # Without a DICOM header saying so, a missed aorta (out of view, unusual anatomy) cannot be ruled out.
        result.certain = has_header
        result.note = "no bright round aorta next to the vertebral bodies" + \
            ("" if has_header else "; no DICOM header to confirm")
    if result.status == "contrast":
        result.offset_hu = thresholds.contrast_offset_hu.get(result.phase, thresholds.contrast_offset_hu["unknown"])
    elif result.status == "uncertain":
        result.offset_hu = 0.0
    return result
