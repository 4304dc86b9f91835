"""Synthetic spine phantoms with known truth, for tests and benchmarks.

A straight column of vertebrae is built in an anatomical frame (x right, y anterior, z superior, mm), tilted in
the world by ``tilt_deg`` and sampled on a voxel grid whose own axes may be oblique (``grid_rotation_deg``) and
anisotropic (``spacing``). Each vertebral body is an elliptic cylinder; deformities change its endplates:

* ``wedge``: the height falls linearly from ``H`` at the posterior wall to ``(1 - r) * H`` at the anterior wall;
* ``biconcave``: both endplates dip towards the centre; the middle height is ``(1 - r) * H``, the walls keep ``H``;
* ``crush``: the whole body is ``(1 - r) * H`` high.

Normal heights follow the grading module's relative normal heights, so the neighbours' expected heights are exact.
The truth heights are computed analytically at the measurement's own definition (see measure.py): on each plane the
wall heights are read at the corners where the endplate lines (fitted over measure.ENDPLATE_FIT_BANDS) meet the
walls, the middle height is the median over measure.MIDDLE_BAND; the points are medians over the planes.
With posterior elements the label holds a pedicle ring around a canal and a spinous process.

CT values: air -1000 HU outside an elliptic body outline, soft tissue 40, fat -100 lateral to the spine, discs 90,
trabecular bone 180 (or ``trabecular_hu``), cortical shell (1.5 mm) 700, posterior elements 500,
Gaussian noise ``noise_hu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from VertebralFractureLib.io import Volume
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import grade, measure
from VertebralFractureLib.morphometry.grade import RELATIVE_NORMAL_HEIGHT
from VertebralFractureLib.morphometry.measure import ENDPLATE_FIT_BANDS, MIDDLE_BAND, PLANE_BAND_FRACTION, PLANE_STEP_MM

BODY_WIDTH_MM = 44.0
BODY_DEPTH_MM = 34.0
DISC_MM = 9.0
L2_HEIGHT_MM = 28.0
CORTEX_MM = 1.5
BICONCAVE_RADIUS = 0.42  # fraction of the half-depth: the dip spares the endplate lines' rims (30 % from a wall)


@dataclass
class PhantomTruth:
    heights_mm: dict[str, dict[str, float]] = field(default_factory=dict)
    grades: dict[str, int] = field(default_factory=dict)
    morphology: dict[str, str] = field(default_factory=dict)
    trabecular_hu: float = 180.0
    superior_axis_ras: np.ndarray | None = None


def _grade_of(reduction: float) -> int:
    return sum(reduction >= t for t in (0.20, 0.25, 0.40))


def _height_profile(kind: str, reduction: float, height: float, s: np.ndarray, x: np.ndarray, level: str) -> tuple:
    """(top, bottom) z of the endplates at depth fraction s (0 posterior .. 1 anterior) and lateral x (mm).

    A normal body has its level's normal wedge (grade.NORMAL_SHAPE: Ha/Hp, the height linear from wall to wall) and
    ``height`` at mid-depth; a deformity changes it from there."""
    wedge = grade.normal_ratios(level)["wedge"]
    posterior = 2.0 * height / (1.0 + wedge)
    s = np.clip(s, 0.0, 1.0)
    if kind == "wedge":
        wedge *= 1.0 - reduction
    h = posterior * (1.0 + (wedge - 1.0) * s)
    if kind == "crush":
        h = h * (1.0 - reduction)
    top, bottom = h / 2.0, -h / 2.0
    if kind == "biconcave":
        rho = np.sqrt(((s - 0.5) * 2.0) ** 2 + (x / (BODY_WIDTH_MM / 2.0)) ** 2)
        # Flat-bottomed dip: the centre (where the middle height is measured) sinks by the full reduction.
        dip = np.clip(1.6 * (1.0 - (rho / BICONCAVE_RADIUS) ** 2), 0.0, 1.0) * reduction * height / 2.0
        top, bottom = top - dip, bottom + dip
    return top, bottom


PARAVERTEBRAL_FAT_FROM_MM = 32.0


def make_spine(
    levels=("T12", "L1", "L2", "L3", "L4"),
    deformities: dict | None = None,
    spacing=(1.0, 1.0, 1.0),
    tilt_deg=(0.0, 0.0, 0.0),
    grid_rotation_deg=(0.0, 0.0, 0.0),
    posterior_elements: bool = True,
    noise_hu: float = 20.0,
    trabecular_hu: float = 180.0,
    seed: int = 0,
    margin_mm: float = 10.0,
):
    """Returns (ct Volume, label Volume with VerSe ids, PhantomTruth)."""
    deformities = deformities or {}
    rng = np.random.default_rng(seed)
    anatomy = Rotation.from_euler("xyz", tilt_deg, degrees=True).as_matrix()
    grid_direction = Rotation.from_euler("xyz", grid_rotation_deg, degrees=True).as_matrix()
    heights = {level: L2_HEIGHT_MM * RELATIVE_NORMAL_HEIGHT[level] / RELATIVE_NORMAL_HEIGHT["L2"] for level in levels}
    # Centres along z, cranial first.
    centres, z = {}, 0.0
    for level in levels:
        centres[level] = z
        z -= heights[level] + DISC_MM
    z_top = heights[levels[0]] / 2 + DISC_MM
    z_bottom = centres[levels[-1]] - heights[levels[-1]] / 2 - DISC_MM
    # Anatomical bounding box (local), then the world box after the tilt, then the grid.
    y_low = -BODY_DEPTH_MM / 2 - (66.0 if posterior_elements else 5.0)
    local_corners = np.array(
        [[x, y, zz] for x in (-30, 30) for y in (y_low, BODY_DEPTH_MM / 2 + 8) for zz in (z_bottom, z_top)]
    )
    world_corners = local_corners @ anatomy.T
    low, high = world_corners.min(axis=0) - margin_mm, world_corners.max(axis=0) + margin_mm
    spacing = np.asarray(spacing, dtype=float)
    # Grid covering the world box in the grid's own (possibly oblique) axes.
    box = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    in_grid = box @ grid_direction
    g_low, g_high = in_grid.min(axis=0), in_grid.max(axis=0)
    shape = np.ceil((g_high - g_low) / spacing).astype(int) + 1
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = grid_direction @ np.diag(spacing)
    ijk_to_ras[:3, 3] = grid_direction @ g_low
    coarse_axis = int(np.argmax(spacing))
    subsamples = int(np.ceil(spacing[coarse_axis] / spacing.min()))
    # Labels are rasterised by majority of volume along the coarsest axis (as a segmentation of thick slices is);
    # the CT is sampled at the voxel centres.
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    votes = {}
    for offset in offsets:
        shift = np.zeros(3)
        shift[coarse_axis] = offset
        sample, _ = _classify(
            shape,
            ijk_to_ras,
            shift,
            anatomy,
            levels,
            centres,
            heights,
            deformities,
            posterior_elements,
            want_ct=False,
            trabecular_hu=trabecular_hu,
            z_span=(z_bottom, z_top),
        )
        for value in np.unique(sample):
            votes.setdefault(int(value), np.zeros(shape, dtype=np.uint8))
            votes[int(value)] += sample == value
    values = sorted(votes)
    stacked = np.stack([votes[v] for v in values])
    labels = np.asarray(values, dtype=np.int16)[np.argmax(stacked, axis=0)]
    del stacked, votes
    _, ct = _classify(
        shape,
        ijk_to_ras,
        np.zeros(3),
        anatomy,
        levels,
        centres,
        heights,
        deformities,
        posterior_elements,
        want_ct=True,
        trabecular_hu=trabecular_hu,
        z_span=(z_bottom, z_top),
    )

    truth = PhantomTruth(trabecular_hu=trabecular_hu, superior_axis_ras=anatomy @ np.array([0.0, 0.0, 1.0]))
    # Truth at the measurement's definition: parasagittal planes across the central band of the body's width, each
    # with its own walls (the ellipse is shallower off the midline), medians of the six points over the planes.
    count = int(PLANE_BAND_FRACTION * BODY_WIDTH_MM / 2 / PLANE_STEP_MM)
    plane_x = PLANE_STEP_MM * np.arange(-count, count + 1)
    shallower = np.sqrt(1.0 - (plane_x / (BODY_WIDTH_MM / 2)) ** 2)
    fractions = np.linspace(0.0, 1.0, 401)
    (posterior_low, posterior_high), (anterior_low, anterior_high) = ENDPLATE_FIT_BANDS
    posterior_rim = (fractions >= posterior_low) & (fractions <= posterior_high)
    rim = posterior_rim | ((fractions >= anterior_low) & (fractions <= anterior_high))
    middle = (fractions >= MIDDLE_BAND[0]) & (fractions <= MIDDLE_BAND[1])
    for level in levels:
        kind, reduction = deformities.get(level, ("normal", 0.0))
        height = heights[level]
        corners = {"anterior": ([], []), "posterior": ([], []), "middle": ([], [])}
        for x, depth_scale in zip(plane_x, shallower):
            s = 0.5 + (fractions - 0.5) * depth_scale
            top, bottom = _height_profile(kind, reduction, height, s, np.full_like(s, x), level)
            for surface, column in ((top, 0), (bottom, 1)):
                intercept, slope = measure._robust_line(fractions[rim], surface[rim], group=posterior_rim[rim])
                corners["posterior"][column].append(intercept)
                corners["anterior"][column].append(intercept + slope)
            heights_in_band = (top - bottom)[middle]
            chosen = np.flatnonzero(middle)[np.argsort(heights_in_band)[len(heights_in_band) // 2]]
            corners["middle"][0].append(top[chosen])
            corners["middle"][1].append(bottom[chosen])
        truth.heights_mm[level] = {
            name: float(np.median(tops) - np.median(bottoms)) for name, (tops, bottoms) in corners.items()
        }
        truth.grades[level] = _grade_of(reduction)
        truth.morphology[level] = kind if truth.grades[level] >= 1 else "normal"
    if noise_hu:
        ct += rng.normal(0.0, noise_hu, size=ct.shape).astype(np.float32)
    ct_volume = Volume(array=ct, ijk_to_ras=ijk_to_ras, path="phantom_ct")
    label_volume = Volume(array=labels, ijk_to_ras=ijk_to_ras.copy(), path="phantom_labels")
    return ct_volume, label_volume, truth


def _classify(
    shape,
    ijk_to_ras,
    shift,
    anatomy,
    levels,
    centres,
    heights,
    deformities,
    posterior_elements,
    want_ct,
    trabecular_hu,
    z_span,
):
    """Label (and optionally CT) of every voxel sampled at index + shift."""
    ii, jj, kk = np.meshgrid(
        *[np.arange(n, dtype=np.float32) + np.float32(d) for n, d in zip(shape, shift)], indexing="ij"
    )
    world = np.stack([ii, jj, kk], axis=-1) @ ijk_to_ras[:3, :3].T.astype(np.float32) + ijk_to_ras[:3, 3]
    del ii, jj, kk
    local = world @ anatomy.astype(np.float32)  # rows: p @ R == R^T p
    del world
    x, y, zz = local[..., 0], local[..., 1], local[..., 2]
    labels = np.zeros(shape, dtype=np.int16)
    ct = None
    a, b = BODY_WIDTH_MM / 2, BODY_DEPTH_MM / 2
    in_ellipse = (x / a) ** 2 + (y / b) ** 2 <= 1.0
    s = np.clip((y + b) / (2 * b), 0.0, 1.0)  # 0 at the posterior margin, 1 anterior
    if want_ct:
        ct = np.full(shape, -1000.0, dtype=np.float32)
        # Soft tissue (40 HU) with fat (-100 HU) lateral to the spine, beyond the transverse processes' reach and in
        # every field of view the phantom gets: the body's own references for the HU scale.
        ct[(x / 150.0) ** 2 + ((y + 20.0) / 120.0) ** 2 <= 1.0] = 40.0
        ct[((x / 150.0) ** 2 + ((y + 20.0) / 120.0) ** 2 <= 1.0) & (np.abs(x) >= PARAVERTEBRAL_FAT_FROM_MM)] = -100.0
        ct[in_ellipse & (zz < z_span[1]) & (zz > z_span[0])] = 90.0  # discs fill the column between bodies
        radial = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    for level in levels:
        label = labels_mod.label_from_level(level)
        kind, reduction = deformities.get(level, ("normal", 0.0))
        height = heights[level]
        dz = zz - centres[level]
        near = np.abs(dz) <= height / 2 + 2.0
        top, bottom = _height_profile(kind, reduction, height, s, x, level)
        body = near & in_ellipse & (dz <= top) & (dz >= bottom)
        labels[body] = label
        if want_ct:
            shell = body & ((radial >= 1.0 - CORTEX_MM / b) | (top - dz <= CORTEX_MM) | (dz - bottom <= CORTEX_MM))
            ct[body] = trabecular_hu
            ct[shell] = 700.0
        if posterior_elements:
            # Pedicles lateral to the canal, lamina and spinous process behind it; the canal's front is the body.
            canal_y = -b - 9.0
            ring = np.hypot(x, y - canal_y)
            arch = (ring >= 8.0) & (ring <= 14.0) & (y < -b - 0.5) & (np.abs(dz) <= 0.3 * height)
            pedicles = (
                (np.abs(x) >= 8.0)
                & (np.abs(x) <= 14.0)
                & (y < -b + 3.0)
                & (y >= canal_y)
                & (np.abs(dz) <= 0.3 * height)
            )
            spinous = (np.abs(x) <= 3.0) & (y < canal_y - 12.0) & (y > canal_y - 45.0) & (np.abs(dz) <= 8.0)
            posterior = (arch | pedicles | spinous) & (labels == 0)
            labels[posterior] = label
            if want_ct:
                ct[posterior] = 500.0
    return labels, ct
