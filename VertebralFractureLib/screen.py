"""Opportunistic osteoporosis screening: trabecular bone density, contrast phase, referral recommendation.

Input: the VerSe-id label volume, the CT on the same grid (Hounsfield units) and the :class:`CaseResult` that
``measure.measure_case`` produced (heights, grades). :func:`screen_case` measures trabecular attenuation in an
interior region of each vertebral body, picks the screening level (L1, else T12 or L2), assesses contrast
enhancement, categorises bone density and writes a patient-level recommendation whose every statement names
the measurements behind it. It fills ``trabecular_hu`` / ``trabecular_hu_iqr`` / ``trabecular_voxels`` of the
vertebrae and ``patient.l1_trabecular_hu`` in the case and returns a :class:`ScreeningResult`.

All thresholds and rules live in three dataclasses (:class:`DensityThresholds`, :class:`RoiSettings`,
:class:`RecommendationRules`); ``docs/screening.md`` gives their sources. World coordinates are RAS mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from . import labels as labels_mod
from .io import Volume
from .results import CaseResult, PatientSummary, VertebraResult

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
class RoiSettings:
    """Interior trabecular region of a vertebral body.

    The body mask is eroded by ``erosion_mm`` below its surface (Euclidean distance transform with the true voxel
    spacing), which keeps the region away from the cortex (0.5-1 mm thick) and its partial-volume blur and from both
    endplates; the posterior ``posterior_exclusion`` fraction of the
    remaining depth is dropped, where the basivertebral vein enters the body through the posterior wall.
    """

    erosion_mm: float = 2.5
    posterior_exclusion: float = 0.25
    min_roi_ml: float = 0.5
    opening_fraction: float = 0.5  # body isolation: opening radius as a fraction of the deepest interior point
    max_opening_mm: float = 8.0
    min_hu: float = -200.0  # voxels below are air/fat artefacts, not trabecular bone
    max_hu: float = 1200.0  # voxels above are cortical bone, sclerosis or metal


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


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
class TrabecularMeasurement(NamedTuple):
    """One vertebra's trabecular density as :func:`measure_density` found it, kept with what it was measured on
    (the CT's voxel array, the ROI settings, the crop of the full grid and the region inside it) so a later step on
    the same CT reuses it instead of measuring again."""

    ct_array: np.ndarray
    settings: RoiSettings
    density: DensityMeasurement
    crop: tuple
    region: np.ndarray


@dataclass
class DensityMeasurement:
    level: str
    label: int
    median_hu: float | None = None
    iqr_hu: float | None = None
    p25_hu: float | None = None
    p75_hu: float | None = None
    mean_hu: float | None = None
    sd_hu: float | None = None
    voxels: int = 0
    volume_ml: float = 0.0
    erosion_mm: float = 0.0
    posterior_exclusion: float = 0.0
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.median_hu is not None


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


@dataclass
class Recommendation:
    action: str
    statement: str
    reasons: list[str]
    confidence: str
    confidence_reasons: list[str]


@dataclass
class ScreeningResult:
    level: str | None
    level_reason: str
    measured_hu: float | None
    corrected_hu: float | None
    category: str | None
    pickhardt: str | None
    contrast: ContrastAssessment
    kvp: float | None
    densities: dict[str, DensityMeasurement]
    recommendation: Recommendation
    caveats: list[str]
    thresholds: DensityThresholds
    roi: RoiSettings
    rules: RecommendationRules
    incomplete_levels: list[str] = field(default_factory=list)
    # The measured trabecular regions (VerSe id per voxel, on the CT grid) for display; not serialised.
    roi_volume: Volume | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        def rounded(value, digits=1):
            return None if value is None else round(float(value), digits)

        densities = {}
        for level, d in self.densities.items():
            entry = dataclasses.asdict(d)
            for key in ("median_hu", "iqr_hu", "p25_hu", "p75_hu", "mean_hu", "sd_hu", "volume_ml"):
                entry[key] = rounded(entry[key], 2)
            densities[level] = entry
        contrast = dataclasses.asdict(self.contrast)
        contrast["aorta_hu"] = rounded(contrast["aorta_hu"])
        if contrast["aorta_center_ras"]:
            contrast["aorta_center_ras"] = [round(float(v), 1) for v in contrast["aorta_center_ras"]]
        return {
            "level": self.level,
            "level_reason": self.level_reason,
            "measured_hu": rounded(self.measured_hu),
            "corrected_hu": rounded(self.corrected_hu),
            "category": self.category,
            "pickhardt": self.pickhardt,
            "contrast": contrast,
            "kvp": self.kvp,
            "densities": densities,
            "recommendation": dataclasses.asdict(self.recommendation),
            "caveats": list(self.caveats),
            "incomplete_levels": list(self.incomplete_levels),
            "thresholds": dataclasses.asdict(self.thresholds),
            "roi": dataclasses.asdict(self.roi),
            "rules": {**dataclasses.asdict(self.rules), "screening_levels": list(self.rules.screening_levels)},
        }


# --------------------------------------------------------------------------------------------------------------
# Trabecular region
# --------------------------------------------------------------------------------------------------------------
def _bounding_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    coords = np.argwhere(mask)
    low = np.maximum(coords.min(axis=0) - margin, 0)
    high = np.minimum(coords.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def anterior_axis(vertebra: VertebraResult | None, spine_axis_ras: np.ndarray | None = None) -> np.ndarray:
    """Unit anterior direction (RAS) of a vertebral body: the measured frame if the case has one, else the patient's
    anterior (+A) made perpendicular to the local spine axis."""
    axes = (vertebra.axes_ras or {}) if vertebra is not None else {}
    for key in ("anterior", "ap", "anteroposterior"):
        if axes.get(key) is not None:
            return _unit(axes[key])
    anterior = np.array([0.0, 1.0, 0.0])
    if spine_axis_ras is not None and np.linalg.norm(spine_axis_ras) > 0:
        axis = _unit(spine_axis_ras)
        anterior = anterior - np.dot(anterior, axis) * axis
    return _unit(anterior)


def trabecular_roi(body_mask: np.ndarray, volume: Volume, anterior_ras: np.ndarray,
                   settings: RoiSettings, erosion_mm: float | None = None) -> np.ndarray:
    """Boolean mask (same shape as ``body_mask``) of the interior trabecular region.

    1. Euclidean distance to the outside of the mask in mm (``distance_transform_edt`` with the voxel spacing):
       voxels at least ``erosion_mm`` deep are away from the cortex and both endplates.
    2. Where the mask holds the whole vertebra, the posterior elements are thinner than the body: a morphological
       opening (ball of ``opening_fraction`` times the body's inscribed radius, via two distance transforms) removes
       them; the connected part holding the deepest voxel is the body.
    3. The posterior ``posterior_exclusion`` fraction of that part's antero-posterior depth is dropped
       (basivertebral vein).
    """
    erosion = settings.erosion_mm if erosion_mm is None else erosion_mm
    roi = np.zeros(body_mask.shape, dtype=bool)
    if not body_mask.any():
        return roi
    box = _bounding_box(body_mask, margin=2)
    local = body_mask[box]
    # The distance is computed in index space scaled by the spacing; direction cosines are orthonormal, so this is
    # the true distance in mm even on oblique grids. The EDT measures to the nearest outside voxel *centre*; the
    # mask's surface lies half a voxel nearer, so half the smallest spacing is taken off to get depth below it.
    half_voxel = 0.5 * float(volume.spacing.min())
    depth = ndimage.distance_transform_edt(local, sampling=volume.spacing) - half_voxel
    if settings.opening_fraction > 0:
        # Opening with a ball of a radius a fraction of the body's inscribed radius: pedicles, laminae and
        # processes are thinner than the body and vanish, the body keeps its shape. Body-only masks barely change.
        radius = float(np.clip(settings.opening_fraction * depth.max(), 3.0, settings.max_opening_mm))
        core = depth >= radius
        if core.any():
            components, count = ndimage.label(core)
            if count > 1:
                deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
                core = components == components[deepest]
            reach = ndimage.distance_transform_edt(~core, sampling=volume.spacing)
            # Depth stays measured from the mask's own surface (the real cortex); the opening only cuts away what
            # is not body, so body-only masks keep their full interior.
            depth = np.where(reach <= radius + half_voxel, depth, -1.0)
    interior = depth >= erosion
    if not interior.any():
        return roi
    components, count = ndimage.label(interior)
    if count > 1:
        deepest = np.unravel_index(int(np.argmax(np.where(interior, depth, 0))), depth.shape)
        interior = components == components[deepest]
    if settings.posterior_exclusion > 0:
        offset = np.array([s.start for s in box], dtype=float)
        ijk = np.argwhere(interior) + offset
        along = (volume.ijk_to_world(ijk) @ anterior_ras)
        low, high = float(along.min()), float(along.max())
        keep = along >= low + settings.posterior_exclusion * (high - low)
        coordinates = np.argwhere(interior)[~keep]
        interior[tuple(coordinates.T)] = False
    roi[box] = interior
    return roi


def measure_density(ct: Volume, body_mask: np.ndarray, anterior_ras: np.ndarray, settings: RoiSettings,
                    level: str, label: int) -> tuple[DensityMeasurement, np.ndarray]:
    """Median, IQR, mean and SD of HU in the trabecular region of one body; a smaller erosion is tried once when
    the body is too small for the default (thin thoracic bodies, coarse voxels), and the note says so."""
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    note = ""
    erosion = settings.erosion_mm
    roi = trabecular_roi(body_mask, ct, anterior_ras, settings, erosion)
    if roi.sum() * voxel_ml < settings.min_roi_ml:
        erosion = settings.erosion_mm / 2.0
        roi = trabecular_roi(body_mask, ct, anterior_ras, settings, erosion)
        note = f"body too small for a {settings.erosion_mm:g} mm margin; {erosion:g} mm used"
    values = ct.array[roi]
    values = values[(values >= settings.min_hu) & (values <= settings.max_hu)]
    result = DensityMeasurement(level=level, label=label, erosion_mm=erosion,
                                posterior_exclusion=settings.posterior_exclusion, note=note)
    if values.size * voxel_ml < settings.min_roi_ml:
        result.voxels = int(values.size)
        result.note = (note + "; " if note else "") + \
            f"trabecular region too small ({values.size * voxel_ml:.2f} ml < {settings.min_roi_ml:g} ml)"
        return result, roi
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    result.median_hu, result.p25_hu, result.p75_hu = float(median), float(p25), float(p75)
    result.iqr_hu = float(p75 - p25)
    result.mean_hu, result.sd_hu = float(values.mean()), float(values.std())
    result.voxels = int(values.size)
    result.volume_ml = float(values.size * voxel_ml)
    return result, roi


# --------------------------------------------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------------------------------------------
def _spine_axis_at(case: CaseResult, label: int) -> np.ndarray | None:
    centroids = [(labels_mod.rank(v.label), np.asarray(v.centroid_ras, dtype=float))
                 for v in case.vertebrae if v.centroid_ras is not None]
    centroids.sort(key=lambda item: item[0])
    if len(centroids) < 2:
        return None
    points = np.array([c for _, c in centroids])
    ranks = np.array([r for r, _ in centroids])
    index = int(np.argmin(np.abs(ranks - labels_mod.rank(label))))
    a, b = max(index - 1, 0), min(index + 1, len(points) - 1)
    return _unit(points[a] - points[b])  # cranial minus caudal: points superiorly


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


# --------------------------------------------------------------------------------------------------------------
# Case without morphometry (labels only) and level choice
# --------------------------------------------------------------------------------------------------------------
def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def _crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """A view of the volume inside an index box, with the voxel-to-world matrix moved to the box's corner."""
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = volume.ijk_to_world(np.array([[b.start for b in box]], dtype=float))[0]
    return Volume(array=volume.array[box], ijk_to_ras=matrix, path=volume.path, meta=volume.meta)


def case_from_labels(labels: Volume, inputs: dict | None = None) -> CaseResult:
    """A :class:`CaseResult` holding only level, completeness and centroid per vertebra (no heights, no grades),
    for screening when morphometry is not run. A vertebra touching the volume's border is incomplete (cut)."""
    vertebrae = []
    for label in labels_mod.neighbours_in_order(int(v) for v in np.unique(labels.array) if v != 0):
        if not labels_mod.is_vertebra(label):
            continue
        mask = labels.array == label
        cut = touches_border(mask)
        centroid = labels.ijk_to_world(np.argwhere(mask).mean(axis=0))[0]
        vertebrae.append(VertebraResult(
            label=label, level=labels_mod.level_name(label), complete=not cut,
            incomplete_reason="cut by the field of view" if cut else None, centroid_ras=centroid.tolist(),
            body_voxels=int(mask.sum()), body_volume_ml=float(mask.sum() * np.prod(labels.spacing) / 1000.0)))
    patient = PatientSummary(incomplete_levels=[v.level for v in vertebrae if not v.complete])
    return CaseResult(vertebrae=vertebrae, patient=patient, inputs=dict(inputs or {}),
                      warnings=["morphometry not run: heights and grades unavailable"])


def _quality_of(case: CaseResult, vertebra: VertebraResult):
    report = getattr(case, "quality", None)
    return None if report is None else report.vertebra(vertebra.label)


def _usability(case: CaseResult, vertebra: VertebraResult | None, density: DensityMeasurement | None) -> str | None:
    """None if the level can be the screening level, else why not."""
    if vertebra is None:
        return "not in the label map"
    if not vertebra.complete:
        return f"incomplete ({vertebra.incomplete_reason or 'cut'})"
    quality = _quality_of(case, vertebra)
    if quality is not None and quality.problems:
        return "failed quality control (" + "; ".join(quality.problems) + ")"
    grade = vertebra.final_grade
    if grade is not None and grade >= 1:
        return f"fractured (Genant grade {grade})"
    if density is None or not density.usable:
        return "no trabecular measurement" + (f" ({density.note})" if density is not None and density.note else "")
    return None


def choose_level(case: CaseResult, densities: dict[str, DensityMeasurement],
                 rules: RecommendationRules) -> tuple[str | None, str]:
    """First usable level of ``rules.screening_levels``; the reason names what ruled out the earlier ones."""
    excluded = []
    for level in rules.screening_levels:
        vertebra = next((v for v in case.vertebrae if v.level == level), None)
        why_not = _usability(case, vertebra, densities.get(level))
        if why_not is None:
            if not excluded:
                if level == "L1":
                    return level, "L1: default screening level (Pickhardt 2013 thresholds are for L1)"
                return level, f"{level}: first of the configured screening levels ({', '.join(rules.screening_levels)})"
            return level, f"{level} used because " + "; ".join(excluded)
        excluded.append(f"{level} {why_not}")
    return None, "no screening level usable: " + "; ".join(excluded)


# --------------------------------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------------------------------
def _fracture_phrase(vertebra: VertebraResult) -> str:
    grade = vertebra.final_grade
    morphology = vertebra.final_morphology
    kind = f" {morphology}" if morphology and morphology != "normal" else ""
    return f"{GRADE_NAMES.get(grade, '?').capitalize()} (grade {grade}){kind} fracture of {vertebra.level}"


def _fracture_evidence(vertebra: VertebraResult) -> str:
    parts = [f"{vertebra.level}: Genant grade {vertebra.final_grade}"]
    if vertebra.final_morphology:
        parts[0] += f" {vertebra.final_morphology}"
    if vertebra.grade_override is not None:
        parts.append("grade set by reviewer")
    if vertebra.height_loss is not None:
        parts.append(f"height loss {100 * vertebra.height_loss:.0f} %")
    if vertebra.heights_mm:
        h = vertebra.heights_mm
        parts.append(f"Ha {h.get('anterior', float('nan')):.1f} / Hm {h.get('middle', float('nan')):.1f} / "
                     f"Hp {h.get('posterior', float('nan')):.1f} mm")
    if vertebra.grade_reason:
        parts.append(vertebra.grade_reason)
    return ", ".join(parts)


def recommend(case: CaseResult, level: str | None, level_reason: str, measured_hu: float | None,
              corrected_hu: float | None, density: DensityMeasurement | None, contrast: ContrastAssessment | None,
              kvp: float | None, ct_given: bool, thresholds: DensityThresholds,
              rules: RecommendationRules) -> Recommendation:
    reasons: list[str] = []
    confidence_reasons: list[str] = []
    penalty = 0.0
    actions = ["none"]
    phrases = []

    quality = getattr(case, "quality", None)
    withheld = quality is not None and quality.findings_withheld
    graded = [v for v in case.vertebrae if v.final_grade is not None]
    not_assessed = [v for v in case.vertebrae if v.complete and v.final_grade is None and v.not_assessed_reason]
    if not_assessed and not withheld:
        penalty += 1
        confidence_reasons.append("not assessed: " + "; ".join(f"{v.level} ({v.not_assessed_reason})"
                                                               for v in not_assessed))
    fractured = sorted((v for v in graded if v.final_grade >= 1),
                       key=lambda v: (-v.final_grade, labels_mod.rank(v.label)))
    for vertebra in fractured:
        reasons.append(_fracture_evidence(vertebra))
    if fractured:
        worst = fractured[0]
        phrase = _fracture_phrase(worst)
        others = [v.level for v in fractured[1:]]
        if others:
            phrase += f" (also {', '.join(others)})"
        phrases.append(phrase)
        if worst.final_grade >= rules.refer_fracture_grade:
            actions.append("refer")
            reasons.append(f"a grade >= {rules.refer_fracture_grade} vertebral fracture indicates osteoporosis "
                           "whatever the bone density")
        elif worst.final_grade >= rules.dxa_fracture_grade:
            actions.append("dxa")
    elif withheld:
        why = "segmentation failed quality control" if quality.status == "failed" else quality.status
        phrases.append(f"Fractures not assessed ({why})")
        penalty += 2
        confidence_reasons.append(quality.headline)
        reasons.extend(f"quality control: {item}" for item in quality.failed_checks)
    elif graded:
        phrases.append(f"No vertebral fracture ({', '.join(v.level for v in graded)} graded)")
        reasons.append(f"Genant grade 0 at {', '.join(v.level for v in graded)}")
    else:
        phrases.append("Fracture grading not available")
        penalty += 2
        present = [v for v in case.vertebrae if labels_mod.is_vertebra(v.label)]
        why = ("every vertebra present is cut by the field of view" if present and not any(v.complete for v in present)
               else "morphometry not run")
        confidence_reasons.append(f"no vertebra graded ({why})")

    if corrected_hu is not None and level is not None:
        category = thresholds.category(corrected_hu)
        hu_text = f"{level} {measured_hu:.0f} HU"
        if contrast is not None and contrast.offset_hu:
            hu_text += f" ({corrected_hu:.0f} HU after -{contrast.offset_hu:g} HU {contrast.phase} contrast correction)"
        if category == "osteoporosis":
            text = "osteoporosis likely"
        elif corrected_hu <= thresholds.specific_hu:
            text = (f"osteoporosis likely (<= {thresholds.specific_hu:g} HU specific cut-off; "
                    f"heuristic band: osteopenia)")
        elif category == "osteopenia":
            text = "low bone density (osteopenia range)"
        elif corrected_hu <= thresholds.sensitive_hu:
            text = f"bone density normal range (<= {thresholds.sensitive_hu:g} HU: osteoporosis not excluded)"
        else:
            text = "bone density normal; osteoporosis unlikely"
        phrases.append(f"{hu_text}: {text}")
        reasons.append(
            f"{level} trabecular median {measured_hu:.0f} HU (IQR {density.iqr_hu:.0f} HU, {density.voxels} voxels, "
            f"{density.volume_ml:.1f} ml); {'corrected ' if corrected_hu != measured_hu else ''}{corrected_hu:.0f} HU "
            f"is in the {category} band (< {thresholds.osteoporosis_below_hu:g} / "
            f"{thresholds.osteoporosis_below_hu:g}-{thresholds.normal_from_hu:g} / "
            f">= {thresholds.normal_from_hu:g} HU) "
            f"and {thresholds.pickhardt_statement(corrected_hu)}")
        if category == "osteoporosis" or corrected_hu <= thresholds.specific_hu:
            actions.append("refer")
        elif category == "osteopenia":
            actions.append("consider")
        if level != "L1":
            penalty += 1
            confidence_reasons.append(level_reason)
        if density.iqr_hu is not None and density.iqr_hu > 100:
            penalty += 1
            confidence_reasons.append(f"{level} trabecular HU spread is wide (IQR {density.iqr_hu:.0f} HU)")
    elif not ct_given:
        phrases.append("bone density not measured (no CT)")
        penalty += 3
        confidence_reasons.append("no CT given: bone density not measured")
    else:
        phrases.append("bone density not measured")
        penalty += 3
        confidence_reasons.append(level_reason)

    if contrast is not None and ct_given:
        if contrast.status == "contrast":
            reasons.append(f"contrast: {contrast.note}")
            if not contrast.certain:
                penalty += 1
                confidence_reasons.append(f"contrast phase uncertain ({contrast.note})")
        elif contrast.status == "uncertain":
            penalty += 2
            confidence_reasons.append(f"contrast uncertain ({contrast.note}); no correction applied")
        elif not contrast.certain:
            penalty += 1
            confidence_reasons.append(f"contrast state not confirmed ({contrast.note})")
    if ct_given:
        if kvp is None:
            penalty += 0.5
            confidence_reasons.append("tube voltage (kVp) unknown; thresholds assume 120 kVp")
        elif abs(kvp - thresholds.reference_kvp) > 1:
            penalty += 1
            confidence_reasons.append(f"{kvp:g} kVp scan; thresholds assume {thresholds.reference_kvp:g} kVp "
                                      "(HU differ by up to ~23 % between 80 and 120 kVp)")
    cut = [v.level for v in case.vertebrae if not v.complete]
    if cut:
        penalty += 1
        confidence_reasons.append(f"incomplete vertebrae (cut by the field of view): {', '.join(cut)}")

    # A measured vertebra below the osteoporosis band is never "no action", whichever level it is and however it
    # was measured (not a screening level, cut by the field of view, failed quality control): the wording says so.
    offset = contrast.offset_hu if contrast is not None else 0.0
    def failed_qc(vertebra):
        entry = None if quality is None else quality.vertebra(vertebra.label)
        return entry is not None and bool(entry.problems)

    # The most trustworthy low value is named: whole bodies before cut ones, plausible segmentations first.
    low = sorted((((not v.complete, failed_qc(v), v.trabecular_hu - offset), v) for v in case.vertebrae
                  if v.trabecular_hu is not None and v.level != level
                  and v.trabecular_hu - offset < thresholds.osteoporosis_below_hu), key=lambda item: item[0])
    if low and max(actions, key=ACTION_ORDER.get) in ("none", "consider"):
        (_, _, value), vertebra = low[0]
        notes = ["not the screening level"]
        if not vertebra.complete:
            notes.append("cut by the field of view")
        if failed_qc(vertebra):
            notes.append("its segmentation failed quality control")
        phrases.append(f"{vertebra.level} {value:.0f} HU ({', '.join(notes)}) is below "
                       f"{thresholds.osteoporosis_below_hu:g} HU: bone density may be low")
        reasons.append(f"{vertebra.level} trabecular median {value:.0f} HU < {thresholds.osteoporosis_below_hu:g} HU "
                       f"(osteoporosis band); {', '.join(notes)}")
        actions.append("dxa")
    action = max(actions, key=ACTION_ORDER.get)
    if action == "none" and not graded and corrected_hu is None:
        # Neither a grade nor a density: "no action" would read as a normal result.
        action = "indeterminate"
    action_text = {"refer": rules.refer_text, "dxa": rules.dxa_text, "consider": rules.consider_text,
                   "none": rules.none_text, "indeterminate": rules.indeterminate_text}[action]
    statement = "; ".join(phrases) + f" — {action_text}"
    # Weights: 2-3 for a missing measurement, 1 for a substitution or uncertainty, 0.5 for a minor unknown.
    confidence = "high" if penalty < 1 else "moderate" if penalty < 3 else "low"
    if not confidence_reasons:
        confidence_reasons.append("complete data: screening level measured, grading available, contrast state known")
    return Recommendation(action=action, statement=statement, reasons=reasons, confidence=confidence,
                          confidence_reasons=confidence_reasons)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def screen_case(labels: Volume, ct: Volume | None, case: CaseResult | None = None,
                thresholds: DensityThresholds | None = None, roi: RoiSettings | None = None,
                rules: RecommendationRules | None = None, dicom: dict | None = None,
                levels: list[int] | None = None) -> ScreeningResult:
    """Screen one case. ``labels`` holds VerSe ids on the CT's grid; ``case`` defaults to :func:`case_from_labels`.

    Fills the vertebrae's ``trabecular_*`` fields and ``case.patient.l1_trabecular_hu``. ``dicom`` defaults to
    ``ct.meta["dicom"]`` (the header summary :func:`io.read_ct` keeps for DICOM input).
    """
    thresholds = thresholds or DensityThresholds()
    roi = roi or RoiSettings()
    rules = rules or RecommendationRules()
    case = case if case is not None else case_from_labels(labels)
    if ct is not None and not labels.same_grid(ct):
        raise ValueError("the label volume must be on the CT's grid (use io.read_label_map(..., reference=ct))")
    if dicom is None and ct is not None:
        dicom = ct.meta.get("dicom")
    kvp = (dicom or {}).get("kvp")
    densities: dict[str, DensityMeasurement] = {}
    caveats: list[str] = []
    contrast = None
    roi_array = None
    if ct is not None:
        # Bounding boxes of all labels in one pass; each vertebra is then handled inside its own box.
        boxes = ndimage.find_objects(labels.array.astype(np.int32, copy=False))
        for vertebra in case.vertebrae:
            if levels is not None and vertebra.label not in levels:
                continue
            if vertebra.label > len(boxes) or boxes[vertebra.label - 1] is None:
                continue
            measured = getattr(vertebra, "_trabecular", None)
            if measured is not None and measured.ct_array is ct.array and measured.settings == roi:
                # Measured with the body by measure.measure_case on this very CT: the same region, not again.
                density, box, region = measured.density, measured.crop, measured.region
            else:
                box = tuple(slice(max(b.start - 2, 0), min(b.stop + 2, n))
                            for b, n in zip(boxes[vertebra.label - 1], labels.shape))
                mask = labels.array[box] == vertebra.label
                axis = _spine_axis_at(case, vertebra.label)
                density, region = measure_density(_crop(ct, box), mask, anterior_axis(vertebra, axis), roi,
                                                  vertebra.level, vertebra.label)
            if roi_array is None:
                roi_array = np.zeros(labels.shape, dtype=np.int16)
            roi_array[box][region] = vertebra.label
            densities[vertebra.level] = density
            vertebra.trabecular_hu = density.median_hu
            vertebra.trabecular_hu_iqr = density.iqr_hu
            vertebra.trabecular_voxels = density.voxels
        # Search the aorta beside the thoracolumbar junction (where the screening levels are), or beside whatever
        # vertebrae the image holds.
        everything = labels.array > 0
        junction = np.isin(labels.array, [v.label for v in case.vertebrae if v.level in ("T11", "T12", "L1", "L2")])
        contrast = assess_contrast(ct, junction if junction.any() else everything, thresholds, dicom,
                                   bone_mask=everything)
    level, level_reason = choose_level(case, densities, rules)
    measured = corrected = None
    category = pickhardt = None
    density = densities.get(level) if level else None
    if density is not None:
        measured = density.median_hu
        corrected = measured - (contrast.offset_hu if contrast is not None else 0.0)
        category = thresholds.category(corrected)
        pickhardt = thresholds.pickhardt_statement(corrected)
    l1 = densities.get("L1")
    l1_vertebra = next((v for v in case.vertebrae if v.level == "L1"), None)
    # A cut L1's density is not L1's (its region may hold a sliver of bone): it never stands in for L1.
    case.patient.l1_trabecular_hu = (l1.median_hu if l1 is not None and l1_vertebra is not None
                                     and l1_vertebra.complete else None)

    if ct is None:
        caveats.append("No CT given: bone density was not measured; the recommendation rests on fracture grades only.")
    else:
        if level is not None and level != "L1":
            caveats.append(f"Screening level {level} instead of L1: {level_reason}. Thresholds were derived at L1.")
        if level is None:
            caveats.append(level_reason)
        if contrast is not None and contrast.status == "contrast":
            caveats.append(f"Contrast-enhanced CT ({contrast.phase}): contrast raises trabecular HU; "
                           f"{contrast.offset_hu:g} HU subtracted before applying thresholds ({contrast.note}).")
        elif contrast is not None and contrast.status == "uncertain":
            caveats.append(f"Contrast state uncertain ({contrast.note}); values may be overestimated.")
        if kvp is None:
            caveats.append("Tube voltage (kVp) unknown; thresholds were derived at 120 kVp.")
        elif abs(kvp - thresholds.reference_kvp) > 1:
            caveats.append(f"Scan at {kvp:g} kVp; thresholds were derived at {thresholds.reference_kvp:g} kVp.")
    cut = [v.level for v in case.vertebrae if not v.complete]
    if cut:
        caveats.append(f"Vertebrae cut by the field of view (not graded / not measured): {', '.join(cut)}.")
    quality = getattr(case, "quality", None)
    if quality is not None and quality.findings_withheld:
        caveats.insert(0, quality.headline + ".")
        if level is not None:
            caveats.append(f"The density level is named {level} by a segmentation whose level names are "
                           f"{'unconfirmed' if quality.status != 'failed' else 'not trusted'}: it may be another "
                           "vertebra.")
    caveats.append("Opportunistic CT screening does not replace DXA; thresholds are population cut-offs.")
    recommendation = recommend(case, level, level_reason, measured, corrected, density, contrast, kvp,
                               ct is not None, thresholds, rules)
    return ScreeningResult(level=level, level_reason=level_reason, measured_hu=measured, corrected_hu=corrected,
                           category=category, pickhardt=pickhardt,
                           contrast=contrast or ContrastAssessment(status="not assessed", phase="unknown",
                                                                   note="no CT"),
                           kvp=kvp, densities=densities, recommendation=recommendation, caveats=caveats,
                           thresholds=thresholds, roi=roi, rules=rules, incomplete_levels=cut,
                           roi_volume=None if roi_array is None else labels.with_array(roi_array))
