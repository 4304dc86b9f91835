"""Trabecular bone attenuation of a vertebral body: an interior region away from the cortex, the endplates and the
basivertebral vein, and its HU statistics. Measured with the heights (``measure``); judged by ``screening``. World
coordinates are RAS mm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import Volume
from VertebralFractureLib.io.labels import occupied_box
from VertebralFractureLib.results import VertebraResult


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


# --------------------------------------------------------------------------------------------------------------
# Trabecular region
# --------------------------------------------------------------------------------------------------------------
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
    box = occupied_box(body_mask, margin=2)
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
