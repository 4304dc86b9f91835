"""The CT's HU scale checked against the body's own tissues: air outside the body and adipose tissue inside it fix
the line from stored values to Hounsfield units, muscle checks it (internal, phantomless calibration; references and
sources in :class:`~.rules.TissueReferences`).

A CT whose scale is off by a factor or an offset (a wrong rescale slope or intercept, a conversion that lost them)
gives a wrong density and so a wrong referral. Every step here is equivariant to a linear change of the values: the
body is found with Otsu's threshold, the tissues as histogram peaks in units derived from the image itself, so the
same CT scaled or shifted yields the same tissues, scaled or shifted alike, and the same calibrated density.

Outcomes (:attr:`HuCalibration.status`):

- ``consistent``: air reads -1000 HU (within a tolerance) and fat and muscle are where they belong: the CT's HU are
  used as they are.
- ``corrected``: air is off: air and fat fix the scale, HU are corrected, and the correction and its uncertainty
  (from the spread of patients' fat) are stated.
- ``refused``: the tissues cannot be found, do not agree with each other, or (no air in view) do not read as fat and
  muscle: no density is stated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import Volume
from VertebralFractureLib.screening.rules import TissueReferences

CONSISTENT = "consistent"
CORRECTED = "corrected"
REFUSED = "refused"

# Histogram of the tissues inside the body, in "image units" (about 1 HU on a correct scale): bin width and the
# smoothing that keeps one peak per tissue (CT noise is 10-20 HU).
_BIN_UNITS = 2.0
_SMOOTH_UNITS = 6.0
# Where to look for each peak, in image units above air (air + 1000 is water): fat between -300 and -40 HU, muscle and
# soft tissue between -40 and +150 HU on a correct scale. Wide: the windows only separate the two peaks.
_FAT_WINDOW = (700.0, 960.0)
_MUSCLE_WINDOW = (960.0, 1150.0)
# A peak stands for a tissue only where the histogram dips between fat and muscle to this fraction of the lower peak.
_VALLEY_FRACTION = 0.95
# A body that fills more than this fraction of the field of view's in-plane border is cut by it (a crop): what lies
# outside it there may be lung or bowel gas, not the air around the patient.
_CUT_BODY_BORDER_FRACTION = 0.5
# Padding outside the reconstruction circle: the array's minimum, held by at least this fraction of the voxels and
# separated from every other value by a gap of this fraction of the value range (air clipped at -1024 has no gap).
_PADDING_MIN_FRACTION = 0.01
_PADDING_GAP_FRACTION = 0.05


@dataclass
class HuCalibration:
    """How the CT's stored values relate to HU: ``stored = slope * HU + intercept`` as air and fat put it (applied
    only when ``corrected``)."""

    status: str
    note: str
    slope: float = 1.0
    intercept_hu: float = 0.0
    air_hu: float | None = None  # as stored in the CT
    fat_hu: float | None = None
    muscle_hu: float | None = None
    references: TissueReferences = field(default_factory=TissueReferences)

    @property
    def density_usable(self) -> bool:
        return self.status in (CONSISTENT, CORRECTED)

    def to_hu(self, stored: float | np.ndarray):
        """Stored values -> HU on the corrected scale (unchanged unless ``corrected``)."""
        if self.status != CORRECTED:
            return stored
        return (stored - self.intercept_hu) / self.slope

    def uncertainty_hu(self, hu: float) -> float:
        """1 SD of a calibrated value from the spread of the references (air, fat) it rests on."""
        return _line_uncertainty(hu, self.references)

    def to_dict(self) -> dict:
        def rounded(value, digits=1):
            return None if value is None else round(float(value), digits)

        return {
            "status": self.status,
            "note": self.note,
            "slope": round(float(self.slope), 4),
            "intercept_hu": rounded(self.intercept_hu),
            "stored_air_hu": rounded(self.air_hu),
            "stored_fat_hu": rounded(self.fat_hu),
            "stored_muscle_hu": rounded(self.muscle_hu),
            "uncertainty_at_judged_hu": rounded(self.uncertainty_hu(self.references.judged_at_hu)),
            "references": dataclasses.asdict(self.references),
        }


def _line_uncertainty(hu: float, references: TissueReferences) -> float:
    """SD of HU read off the air-fat line at ``hu``: the fat reference's spread scaled by the lever arm from air, and
    the air reference's by its complement (linear error propagation)."""
    lever = (hu - references.air_hu) / (references.fat_hu - references.air_hu)
    return math.hypot(lever * references.fat_sd_hu, (1.0 - lever) * references.air_sd_hu)


def _sampled(ct: Volume, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The CT on a strided grid of about ``spacing_mm`` (tissues are large; full resolution adds nothing)."""
    steps = [max(1, int(round(spacing_mm / s))) for s in ct.spacing]
    array = np.asarray(ct.array[::steps[0], ::steps[1], ::steps[2]], dtype=np.float32)
    return array, ct.spacing * np.array(steps)


def _inside_scan(array: np.ndarray, superior_axis: int) -> np.ndarray:
    """Voxels inside the reconstructed field of view (padding outside the scan circle excluded)."""
    lowest = float(array.min())
    at_lowest = array == lowest
    moved = np.moveaxis(at_lowest, superior_axis, 0)
    # Padding fills the corners of every axial plane, outside the scan circle; tissue that happens to be the
    # lowest value (a phantom's fat, air clipped at -1024) does not.
    corners = moved[:, [0, 0, -1, -1], [0, -1, 0, -1]].all(axis=1).mean()
    if at_lowest.mean() < _PADDING_MIN_FRACTION or corners < 0.9:
        return np.ones(array.shape, dtype=bool)
    rest = array[~at_lowest]
    if rest.size == 0:
        return ~at_lowest
    span = float(array.max()) - lowest
    gap = float(rest.min()) - lowest
    return ~at_lowest if span > 0 and gap >= _PADDING_GAP_FRACTION * span else np.ones(array.shape, dtype=bool)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values[:: max(1, values.size // 2_000_000)]))


def _body(array: np.ndarray, inside: np.ndarray, threshold: float, superior_axis: int) -> np.ndarray:
    """The largest object above the air/body threshold, holes filled slice by slice (lungs, bowel gas)."""
    labels, count = ndimage.label((array > threshold) & inside)
    if count == 0:
        return np.zeros(array.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    moved = np.moveaxis(body, superior_axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, superior_axis)


def _in_plane_border(inside: np.ndarray, superior_axis: int) -> np.ndarray:
    """The border of the field of view in each axial plane (the scan circle, or the array's sides)."""
    moved = np.moveaxis(inside, superior_axis, 0)
    structure = np.zeros((1, 3, 3), dtype=bool)
    structure[0] = ndimage.generate_binary_structure(2, 1)
    interior = ndimage.binary_erosion(moved, structure=structure, border_value=0)
    return np.moveaxis(moved & ~interior, 0, superior_axis)


def _peak(centres: np.ndarray, counts: np.ndarray, window: tuple[float, float]) -> float | None:
    """Centre of the highest bin in ``window`` unless it lies on the window's edge (then no peak is inside)."""
    inside = np.flatnonzero((centres >= window[0]) & (centres < window[1]))
    if inside.size < 3 or counts[inside].max() <= 0:
        return None
    best = inside[int(np.argmax(counts[inside]))]
    if best in (inside[0], inside[-1]):
        return None
    return float(centres[best])


def _fat_and_muscle(values: np.ndarray, air: float, unit: float) -> tuple[float | None, float | None]:
    """Fat and muscle peaks of the tissue values (stored units), searched in image units above ``air``."""
    scaled = (values - air) / unit
    edges = np.arange(_FAT_WINDOW[0] - 50, _MUSCLE_WINDOW[1] + 50, _BIN_UNITS)
    counts, _ = np.histogram(scaled, bins=edges)
    counts = ndimage.gaussian_filter1d(counts.astype(float), _SMOOTH_UNITS / _BIN_UNITS)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fat = _peak(centres, counts, _FAT_WINDOW)
    muscle = _peak(centres, counts, _MUSCLE_WINDOW)
    if fat is None or muscle is None:
        return None, None
    between = counts[(centres > fat) & (centres < muscle)]
    lower_peak = min(counts[centres == fat][0], counts[centres == muscle][0])
    if between.size == 0 or between.min() > _VALLEY_FRACTION * lower_peak:
        return None, None
    return air + fat * unit, air + muscle * unit


def calibrate_hu(ct: Volume, references: TissueReferences | None = None) -> HuCalibration:
    """Check the CT's HU scale against air outside the body and fat and muscle inside it."""
    references = references or TissueReferences()
    array, spacing = _sampled(ct, references.sampling_mm)
    superior_axis = int(np.argmax(np.abs(ct.direction_ras[2])))
    inside = _inside_scan(array, superior_axis)
    if inside.sum() < 1000:
        return HuCalibration(REFUSED, "HU scale not checked: too few voxels in the field of view",
                             references=references)
    threshold = _otsu(array[inside])
    body = _body(array, inside, threshold, superior_axis)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    border = _in_plane_border(inside, superior_axis)
    body_is_cut = body[border].mean() > _CUT_BODY_BORDER_FRACTION if border.any() else True
    outside = ndimage.distance_transform_edt(~body, sampling=spacing) > references.air_margin_mm
    air_values = np.empty(0) if body_is_cut else array[outside & inside & (array < threshold)]
    depth = ndimage.distance_transform_edt(body, sampling=spacing)
    tissue = array[(depth > references.skin_margin_mm) & (array > threshold)]
    if tissue.size >= 1000 and air_values.size * voxel_ml >= references.min_air_ml:
        calibration = _with_air(float(np.median(air_values)), tissue, references)
        if calibration is not None:
            return calibration
    # No air around a body in view (a crop, or what lay below the threshold was not air): every voxel in view.
    return _without_air(array[inside], references)


def _with_air(air: float, tissue: np.ndarray, references: TissueReferences) -> HuCalibration | None:
    """The scale from air and fat, checked by muscle; None when no fat and muscle lie where air would put them."""
    span = float(np.median(tissue)) - air
    if span <= 0:
        return None
    # First pass in units from the body's median (about 1 HU on a correct scale), then in units from air to fat.
    fat, muscle = _fat_and_muscle(tissue, air, span / 1000.0)
    if fat is not None:
        fat, muscle = _fat_and_muscle(tissue, air, (fat - air) / (references.fat_hu - references.air_hu))
    if fat is None:
        return None
    slope = (fat - air) / (references.fat_hu - references.air_hu)
    intercept = air - slope * references.air_hu
    muscle_hu = (muscle - intercept) / slope
    stored = {"air_hu": air, "fat_hu": fat, "muscle_hu": muscle}
    if not references.muscle_min_hu <= muscle_hu <= references.muscle_max_hu:
        return HuCalibration(REFUSED, f"HU scale doubtful: with air and fat as references muscle would read "
                                      f"{muscle_hu:.0f} HU (expected {references.muscle_min_hu:g} to "
                                      f"{references.muscle_max_hu:g}); density not assessed",
                             slope=slope, intercept_hu=intercept, references=references, **stored)
    sd = _line_uncertainty(references.judged_at_hu, references)
    tissues = f"air {air:.0f}, fat {fat:.0f}, muscle {muscle:.0f} as stored"
    if abs(air - references.air_hu) <= references.air_tolerance_hu:
        return HuCalibration(CONSISTENT, f"HU scale checked against the body's own tissues ({tissues})",
                             slope=slope, intercept_hu=intercept, references=references, **stored)
    if sd > references.max_correction_sd_hu:
        return HuCalibration(REFUSED, f"HU scale off ({tissues}) and the correction too uncertain "
                                      f"(±{sd:.0f} HU); density not assessed",
                             slope=slope, intercept_hu=intercept, references=references, **stored)
    return HuCalibration(CORRECTED, f"HU scale corrected by internal calibration ({tissues}: stored = {slope:.3f} × HU "
                                    f"{intercept:+.0f}); densities ±{sd:.0f} HU (1 SD) from the references' spread",
                         slope=slope, intercept_hu=intercept, references=references, **stored)


def _without_air(tissue: np.ndarray, references: TissueReferences) -> HuCalibration:
    """No air in view (a crop): the scale cannot be fitted, only checked against fat's and muscle's usual values."""
    fat, muscle = _fat_and_muscle(tissue, references.air_hu, 1.0)
    if fat is None:
        return HuCalibration(REFUSED, "HU scale not verified: neither air nor distinct fat and muscle in view; "
                                      "density not assessed", references=references)
    low, high = references.fat_range_hu
    stored = {"fat_hu": fat, "muscle_hu": muscle}
    if low <= fat <= high and references.muscle_min_hu <= muscle <= references.muscle_max_hu:
        return HuCalibration(CONSISTENT, f"HU scale checked against fat ({fat:.0f}) and muscle ({muscle:.0f}); no air "
                                         "in view", references=references, **stored)
    return HuCalibration(REFUSED, f"HU scale doubtful: fat reads {fat:.0f} HU and muscle {muscle:.0f} HU (expected "
                                  f"{low:g} to {high:g} and {references.muscle_min_hu:g} to "
                                  f"{references.muscle_max_hu:g}) and no air is in view to correct it; density not "
                                  "assessed", references=references, **stored)


def on_checked_scale(ct: Volume) -> Volume:
    """The CT on the HU scale its own tissues confirm: corrected where air and fat put it off (a new array), as it
    is otherwise. The calibration travels in ``meta["hu_calibration"]``; a CT that already carries one is returned
    unchanged, so the check runs once however many steps ask for it."""
    if ct.meta.get("hu_calibration") is not None:
        return ct
    calibration = calibrate_hu(ct)
    if calibration.status == CORRECTED:
        ct = ct.with_array(np.asarray(calibration.to_hu(ct.array), dtype=np.float32))
    ct.meta["hu_calibration"] = calibration
    return ct
