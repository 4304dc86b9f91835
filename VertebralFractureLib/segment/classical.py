"""Weight-free default backend: find, separate and name the vertebral bodies of a CT on the CPU.

No trained weights: the bodies are found from the physics and anatomy of CT alone, in five steps on a working grid
that is axis-aligned in RAS (x right, y anterior, z superior) with isotropic voxels of 1.5 mm or coarser:

1. **Bone** is smoothed HU above a cortical threshold. Each vertebral body's cortical shell (endplates, anterior,
   posterior and lateral walls) encloses its trabecular interior in every **sagittal and coronal** plane, while the
   spinal canal and the discs are open channels in those planes; so filling holes plane by plane fills the bodies,
   osteoporotic ones too, and leaves the canal and the discs empty.
2. **Contrast-filled vessels** (aorta and heart chambers in an arterial-phase chest CT, metal) are brighter than any
   trabecular bone over a thick region; such thick very bright regions are removed.
3. **Posterior elements, ribs and vessels attached by thin bridges** are removed by an axial opening with a disk
   wider than a pedicle or lamina but narrower than a body.
4. **The spine** is located by the spinal canal (dark holes enclosed by bone in axial slices, stacked along z) and
   followed slice by slice as a smooth centre curve through the bodies (lordosis and kyphosis included).
5. **Discs** are the minima of the body cross-section area along that curve; bodies are cut there by planes normal
   to the curve.

Naming uses anatomy in the field of view (see :mod:`.levels`): the sacrum below the lowest mobile vertebra (L5), the
lowest rib-bearing vertebra (T12) and the first rib-bearing vertebra below the neck (T1). Anchors that disagree give
"conflicting", none (or a body spacing that does not fit the levels named) "unconfirmed".

Kept whole: one algorithm whose steps (working grid, bone mask, centre curve, disc planes, body separation,
sacrum) share the working grid and its thresholds; split, each part would need the others' private state.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage, signal

from VertebralFractureLib.errors import NoVertebraeError
from VertebralFractureLib.io import NotCTError, Volume, check_ct_hounsfield, field_of_view
from VertebralFractureLib.segment import ProgressCallback, SegmentationOutput, register_backend
from VertebralFractureLib.segment.levels import SACRUM_WIDTH_MM, LevelNaming, name_levels, rib_sides
from VertebralFractureLib.segment.spine_curve import SpineGeometry, along_curve

log = logging.getLogger(__name__)

# Physical constants of the method (mm and HU); each is a property of CT anatomy, not of one scan.
MIN_WORKING_SPACING_MM = 1.5
"""The working grid is never finer: a 15-30 mm high body is 10-20 voxels high, enough for discs and endplates, and
the CPU time stays a few seconds (finer CTs are resampled, coarser ones kept up to 3 mm)."""
BONE_HU = 120.0
"""Cortical bone and dense trabecular bone lie above; fat, muscle, disc and CSF below (disc about 70-100 HU)."""
VESSEL_HU = 420.0
"""Contrast-filled lumen (arterial phase 250-600 HU) or metal over a thick region; trabecular bone stays below."""
VESSEL_CORE_RADIUS_MM = 4.0
"""A vessel lumen (aorta 20-30 mm, heart chambers) holds a ball of this radius above ``VESSEL_HU``; cortical bone
(1-3 mm thick) never does, so only thick bright regions are taken for vessels."""
OPENING_RADIUS_MM = 6.0
"""Removes pedicles, laminae, processes, ribs (narrower than 12 mm); a body (25-55 mm wide) survives."""
TRACK_RADIUS_MM = 18.0
"""Mean-shift window following the body column slice by slice: about a body's half-width (25-55 mm wide), so it
stays on the body and does not jump to a neighbouring structure."""
CURVE_SMOOTHING_MM = 12.0
"""Gaussian smoothing of the centre curve along z: under half a vertebra's height, so lordosis and kyphosis are
followed but a slice pulled aside by an attached structure is not."""
CORE_RADIUS_MM = 16.0
"""Cross-section area is counted within this distance of the curve (inside every adult body, clear of the arch)."""
BODY_RADIUS_MM = 32.0
"""Body-candidate voxels further than this from the centre curve (in the plane normal to it) are not body: the
largest lumbar body reaches about 30 mm from its centre (55-60 mm wide)."""
MIN_PERIOD_MM = 14.0
"""Smallest body-plus-disc height (upper cervical); two discs are never closer."""
MIN_BODY_ML = 0.8
"""A piece smaller than this is not a body (a C3 body is about 3 ml; a sliver cut by the field of view or an
endplate edge is smaller)."""
DISC_TRIM_MM = 5.0
"""Disc tissue within this distance of a disc plane is trimmed from the bodies..."""
DISC_TRIM_HU = 125.0
"""...where it is darker than this (disc 70-110 HU; the endplate beside it is brighter)."""
DISC_GAP_MM = 1.6
"""Every disc plane leaves at least this gap on both sides: neighbouring bodies never touch (discs are 4-14 mm)."""
BODY_SURFACE_SIGMA_VOX = 1.0
"""Smoothing (voxels) of a body's surface before it is thresholded back: a one-voxel notch in a wall would move a
measured corner by a voxel's height."""
END_CAP_MAX_CM2 = 25.0
"""A hole in the first or last axial plane larger than this is not a body's cross-section (lumbar bodies are
12-20 cm2): it is the pelvis or the thorax."""
END_CAP_MIN_HU = 0.0
"""A body's cross-section holds marrow and trabecular bone (above 0 HU even when osteoporotic); the canal's fat and
CSF and the lungs are darker on average."""
END_CAP_CLOSING_MM = 5.0
"""Gaps in a cut body's cortex up to this size (basivertebral foramen, partial volume) are bridged to close its
cross-section in the end planes."""
DISC_FLANK_MM = 6.0
"""An endplate lies within this distance above and below a disc's centre (discs are 4-14 mm high)."""
DISC_FLANK_PLANE_MM = (3.0, 4.5, 6.0, 7.5)
"""Endplates or trabecular bone lie this far above and below a disc's mid-plane (thin thoracic to lumbar discs)."""
DISC_MAX_HU = 180.0
"""A dip in the core profile brighter than this is trabecular bone, not a disc (disc 70-110 HU plus partial volume of
the endplates)."""
ENDPLATE_CONTRAST_HU = 60.0
"""Endplates on both sides of a disc are at least this much brighter than the disc in the core profile (cortical
plates against 70-110 HU disc tissue)."""
ENDPLATE_PROMINENCE_HU = 25.0
"""An endplate peak stands out from the profile around it by at least this much (smaller wiggles are noise and
trabecular texture)."""
ENDPLATE_MIN_HU = 150.0
"""An endplate peak is at least this bright (cortical bone blurred over the 8 mm core disk)."""
DISC_PAIR_MAX_MM = 17.0
"""Endplate, disc, endplate span at most this (thickest thin-disc pair: two 2 mm plates and a 12 mm disc), shorter
than a body between its two endplates."""
BLOCK_CONTRAST_HU = 60.0
"""A thin disc with its two endplates, blurred together, is this much brighter than the interiors of the bodies
beside it (two cortical plates against cancellous bone)."""
BLOCK_MAX_MM = 10.0
"""Endplate, thin disc, endplate: at most this high at half contrast (a body's interior is 15-30 mm high)."""
THIN_DISC_TRIM_MM = 2.5
"""Half a thin thoracic disc plus partial volume: dark voxels this near a block disc's plane are disc."""
BLOCK_SNAP_MM = 3.5
"""Under half a thin disc's height plus an endplate: a disc position this close to a block lies in that block (a
single endplate beside a thick lumbar disc lies farther from the disc's centre)."""
DISC_TISSUE_MAX_HU = 110.0
"""Disc tissue (70-110 HU) is never brighter: a position darker than this is taken for a disc, not a body."""
INTERIOR_MAX_DIP_HU = 20.0
"""Trabecular bone varies by less than this over a disc's height; a disc is darker than the bone beside it."""
GAP_FACTOR = 1.6
"""A segment longer than this many times its neighbours' median holds a missed disc (vertebral height changes by
under 15 % from one level to the next)."""
DISC_SEARCH_MM = 3.0
"""A disc plane is searched this far along the curve around its detected position (about half a thin disc plus
the profile's smoothing)."""
DISC_TILTS_DEG = (0.0,)
"""Disc planes stay normal to the smoothed centre curve: a free tilt follows the endplates' concavity and
moves a posterior corner by a voxel, which the height measurement feels (tested: +-10 and +-20 degrees).
"""
MIN_END_PIECE_MM = 4.0
"""A disc this close to an end of the spine in view would leave a piece too thin to be a body: not cut there."""
AREA_END_MARGIN_MM = 12.0
"""Body-area minima this close to the ends of the spine in view are not trusted as discs: the field of view cuts the
body there (about half a body's height)."""
STAR_MAX_RADIUS_MM = 35.0
"""Rays from a body's centre look for its cortex this far out (the widest lumbar body's half-width plus margin)."""
STAR_MIN_GAIN = 0.05
"""A section is completed from its cortex only when that adds more than this share of its area: smaller additions
would be pedicle bases."""
HOLE_BONE_HU = 70.0
"""An axial hole in the bone brighter than this on average is trabecular bone; the canal (CSF 0-30 HU) is darker."""
MIDLINE_SIGMA_MM = 35.0
"""Width of the left-right prior around the body's midline where the spine is looked for (the spine lies within a
few cm of it even in scoliosis; kidneys, femurs and the iliac wings lie further out)."""



FIELD_OF_VIEW_BLUR_VOXELS = 2
"""Working-grid voxels this close to the edge of the CT's field of view mix the CT with the padding beyond (trilinear
resampling, then the smoothing of the bone mask): a body ending there may stop short of the edge, so the edge is
taken this much nearer for the cut test."""


FULLY_INSIDE = 0.999
"""A working voxel is inside the field of view when its trilinear weights fall on the CT's data alone (up to
rounding)."""


def working_grid(ct: Volume, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resample the CT onto an RAS-aligned isotropic grid (trilinear); returns (array [x, y, z], ijk_to_ras, the
    voxels inside the CT's field of view or None when all are). Outside the field of view (the corners of the box
    around an oblique CT, the CT's own constant padding) the array holds air: those voxels are marked, so that a
    body cut there is cut, never a body ending in air."""
    low, high = ct.bounds_ras()
    shape = tuple(int(math.floor((high[a] - low[a]) / spacing_mm + 1e-3)) + 1 for a in range(3))
    grid = np.eye(4)
    grid[:3, :3] = np.diag([spacing_mm] * 3)
    grid[:3, 3] = low
    padding = field_of_view.padding_value(ct.array)
    if ct.same_grid(Volume(np.empty(shape, dtype=np.uint8), grid)):
        work = ct.array.astype(np.float32, copy=False)
        if padding is None:
            return work, grid, None
        inside = ~field_of_view.padding_mask(ct.array, padding)
        return _extend_beyond(work, inside), grid, inside
    # The field of view on the working grid: a volume of ones (zeros on the padding) resampled like the CT.
    known = np.ones(ct.shape, dtype=np.float32)
    if padding is not None:
        known[field_of_view.padding_mask(ct.array, padding)] = 0.0
    # Only voxels interpolated from data alone are inside: one that mixes in the padding is partly air.
    inside = _resample_linear(ct.with_array(known), grid, shape, outside=0.0) >= FULLY_INSIDE
    work = _resample_linear(ct, grid, shape)
    if inside.all():
        return work, grid, None
    return _extend_beyond(work, inside), grid, inside


def _extend_beyond(work: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Each voxel outside the field of view takes the value of the nearest voxel inside: a body cut by the edge
    continues beyond it as it is at the edge, never closed by air into a false endplate or wall (the bodies are
    cut back to the field of view afterwards)."""
    nearest = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
    return work[tuple(nearest)]


def cut_by_field_of_view(label_work: np.ndarray, inside: np.ndarray | None, spacing_mm: float) -> dict[int, str]:
    """{label: reason} of the bodies on the working grid that the CT's field of view cuts (see
    :func:`..io.field_of_view.section_against`; the edge taken :data:`FIELD_OF_VIEW_BLUR_VOXELS` nearer)."""
    if inside is None:
        return {}
    outside = ndimage.binary_dilation(~inside, iterations=FIELD_OF_VIEW_BLUR_VOXELS)
    cut = {}
    objects = ndimage.find_objects(label_work)
    for label, box in enumerate(objects, start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, b.start - 3), min(n, b.stop + 3)) for b, n in zip(box, label_work.shape))
        found = field_of_view.section_against(outside[grown], label_work[grown] == label, np.full(3, spacing_mm))
        if found:
            cut[label] = f"cut by the edge of the CT's field of view ({found}, lies at the edge)"
    return cut


def _resample_linear(ct: Volume, grid: np.ndarray, shape: tuple[int, int, int], outside: float = -1024.0) -> np.ndarray:
    """Trilinear resampling of the CT onto ``grid`` (ijk -> RAS) with SimpleITK (multi-threaded), ``outside``
    (air) beyond its field of view."""
    import SimpleITK as sitk

    from VertebralFractureLib.io import LPS_TO_RAS

    image = sitk.GetImageFromArray(np.ascontiguousarray(ct.array.transpose(2, 1, 0), dtype=np.float32))
    ijk_to_lps = LPS_TO_RAS @ ct.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    grid_lps = LPS_TO_RAS @ grid
    grid_spacing = np.linalg.norm(grid_lps[:3, :3], axis=0)
    reference = sitk.Image([int(n) for n in shape], sitk.sitkFloat32)
    reference.SetSpacing([float(v) for v in grid_spacing])
    reference.SetDirection([float(v) for v in (grid_lps[:3, :3] / grid_spacing).ravel()])
    reference.SetOrigin([float(v) for v in grid_lps[:3, 3]])
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(outside), sitk.sitkFloat32)
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))


def _matrix_argument(matrix: np.ndarray) -> np.ndarray:
    """The 3x3 part, or its diagonal when the grids are axis-aligned (scipy's much faster zoom-and-shift path)."""
    linear = matrix[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-9):
        return np.diag(linear).copy()
    return linear


def _disk(radius_vox: float) -> np.ndarray:
    n = max(1, int(math.floor(radius_vox + 1e-6)))
    y, x = np.mgrid[-n : n + 1, -n : n + 1]
    return (x * x + y * y) <= radius_vox * radius_vox + 1e-6


def _planar_structure(axis: int) -> np.ndarray:
    """3x3x3 structure connecting voxels only within planes normal to ``axis`` (4-connectivity in the plane)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    plane = ndimage.generate_binary_structure(2, 1)
    index = [slice(None)] * 3
    index[axis] = 1
    structure[tuple(index)] = plane
    return structure


def _fill_planes(mask: np.ndarray, axis: int, end_caps: np.ndarray | None = None) -> np.ndarray:
    """Fill holes in every 2-D plane normal to ``axis`` in one pass (padding keeps the end planes fillable).

    ``end_caps`` (x, y, 2): what closes the volume below its first and above its last axial plane, so that a body
    cut by the field of view is filled as if its missing endplate were there.
    """
    pad = [(0, 0)] * 3
    pad[axis] = (1, 1)
    padded = np.pad(mask, pad)
    if end_caps is not None and axis != 2:
        padded = np.concatenate([np.pad(end_caps[:, :, :1], pad), padded, np.pad(end_caps[:, :, 1:], pad)], axis=2)
    filled = ndimage.binary_fill_holes(padded, structure=_planar_structure(axis))
    if end_caps is not None and axis != 2:
        filled = filled[:, :, 1:-1]
    index = [slice(None)] * 3
    index[axis] = slice(1, -1)
    return filled[tuple(index)]


def _planar_holes(mask: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Holes of ``mask`` in planes normal to ``axis``, labelled per plane."""
    holes = _fill_planes(mask, axis) & ~mask
    return ndimage.label(holes, structure=_planar_structure(axis))


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    coords = np.nonzero(mask.any(axis=2).any(axis=1))[0], np.nonzero(mask.any(axis=2).any(axis=0))[0], \
        np.nonzero(mask.any(axis=0).any(axis=0))[0]
    return tuple(slice(max(0, int(c.min()) - margin), min(n, int(c.max()) + margin + 1))
                 for c, n in zip(coords, mask.shape))


class BodyFinder:
    """The image-analysis steps on the working grid (kept apart from naming so tests can reach each step)."""

    def __init__(self, work: np.ndarray, spacing_mm: float):
        self.work = work
        self.s = spacing_mm
        self.smooth = ndimage.gaussian_filter(work, sigma=max(0.5, 0.75 / spacing_mm))
        self.bone = self.smooth > BONE_HU

    def vessels(self) -> np.ndarray:
        """Thick regions brighter than trabecular bone: contrast-filled lumen, metal."""
        bright = self.smooth > VESSEL_HU
        if not bright.any():
            return bright
        core = ndimage.binary_erosion(bright, structure=_ball(VESSEL_CORE_RADIUS_MM / self.s))
        if not core.any():
            return core
        # Grow back to the whole bright region around each core, plus a voxel for the partial-volume rim.
        grown = ndimage.binary_propagation(core, mask=bright)
        return ndimage.binary_dilation(grown, iterations=1)

    def body_candidates(self) -> np.ndarray:
        bone = self.bone & ~self.vessels()
        # Seal one-voxel gaps of the thin cortex within axial planes only: never across a disc.
        bone = ndimage.binary_closing(bone, structure=np.ones((3, 3, 1), dtype=bool)) | bone
        caps = self._end_caps(bone)
        filled = _fill_planes(bone, 0, caps) | _fill_planes(bone, 1, caps)
        # Where thin endplates leave a body open in the sagittal and coronal planes (coarse slices), its axial hole
        # is filled too, but only if it holds trabecular bone: the spinal canal (CSF, fat) stays empty.
        holes, count = _planar_holes(filled, 2)
        if count:
            mean_hu = np.asarray(ndimage.mean(self.smooth, holes, index=np.arange(1, count + 1)))
            bright = np.concatenate([[False], mean_hu > HOLE_BONE_HU])
            # A body open to the canal through the basivertebral foramen shares one hole with it: there the
            # trabecular voxels are taken one by one.
            filled |= bright[holes] | ((holes > 0) & (self.smooth > HOLE_BONE_HU))
        disk = _disk(OPENING_RADIUS_MM / self.s)[:, :, None]
        self.body_candidates_cache = ndimage.binary_opening(filled, structure=disk)
        return self.body_candidates_cache

    def _end_caps(self, bone: np.ndarray) -> np.ndarray:
        """Body cross-sections in the first and last axial planes: holes of the cortex there that are body-sized
        and hold tissue denser than the canal's CSF and fat."""
        caps = np.zeros(bone.shape[:2] + (2,), dtype=bool)
        for n, k in enumerate((0, bone.shape[2] - 1)):
            # The cortex of a cut body is seldom closed in one plane: gaps up to a few millimetres are bridged.
            plane = ndimage.binary_closing(bone[:, :, k], structure=_disk(END_CAP_CLOSING_MM / self.s),
                                           border_value=0) | bone[:, :, k]
            holes, count = ndimage.label(ndimage.binary_fill_holes(plane) & ~plane)
            if count == 0:
                continue
            area_cm2 = np.bincount(holes.ravel(), minlength=count + 1) * self.s**2 / 100.0
            mean_hu = np.concatenate([[0.0], np.asarray(ndimage.mean(self.smooth[:, :, k], holes,
                                                                     np.arange(1, count + 1)))])
            keep = (area_cm2 <= END_CAP_MAX_CM2) & (mean_hu > END_CAP_MIN_HU)
            keep[0] = False
            caps[:, :, n] = keep[holes] | (plane & ~bone[:, :, k])
        return caps

    def canal_score(self) -> np.ndarray:
        """(x, y) map: how many axial slices hold a dark hole enclosed by bone (spinal canal) around that column."""
        holes, count = _planar_holes(self.bone, 2)
        if count == 0:
            return np.zeros(self.bone.shape[:2])
        sizes = np.bincount(holes.ravel(), minlength=count + 1)
        mean_hu = np.concatenate([[np.inf], np.asarray(ndimage.mean(self.smooth, holes, np.arange(1, count + 1)))])
        max_area = 12.0 * 100 / self.s**2  # 12 cm2: canal-sized, not the lungs or the pelvic ring
        min_area = max(2.0, 0.6 * 100 / self.s**2)
        keep = (sizes >= min_area) & (sizes <= max_area) & (mean_hu < HOLE_BONE_HU)
        keep[0] = False
        size = max(3, int(round(12.0 / self.s)) | 1)
        self.canal = keep[holes]
        near = ndimage.maximum_filter(self.canal, size=(size, size, 1))
        return near.sum(axis=2).astype(float)


def midline_prior(finder: BodyFinder) -> np.ndarray:
    """Weight per x column: the spine lies near the body's left-right midline (paired bones, pelvis, femurs, kidneys
    lie well off it). The midline is the x centroid of the tissue (HU > -300); in a crop it is near the crop's centre,
    which is where the crop was centred."""
    tissue_per_x = (finder.smooth > -300).sum(axis=(1, 2)).astype(float)
    xs = np.arange(finder.smooth.shape[0], dtype=float)
    if tissue_per_x.sum() == 0:
        return np.ones_like(xs)
    midline = float((xs * tissue_per_x).sum() / tissue_per_x.sum())
    sigma = MIDLINE_SIGMA_MM / finder.s
    return np.exp(-0.5 * ((xs - midline) / sigma) ** 2)


def _ball(radius_vox: float) -> np.ndarray:
    n = max(1, int(math.floor(radius_vox + 1e-6)))
    z, y, x = np.mgrid[-n : n + 1, -n : n + 1, -n : n + 1]
    return (x * x + y * y + z * z) <= radius_vox * radius_vox + 1e-6


def track_spine(bodies: np.ndarray, seed_xy: tuple[float, float], spacing_mm: float) -> np.ndarray:
    """Follow the body column through the axial slices from a seed column; returns (nz, 2) x, y (nan: no body).

    Mean shift of the body-candidate voxels within a radius of the previous slice's centre, in both directions from
    the slice nearest the seed that holds a body; slices without body voxels near the curve (discs) stay nan.
    """
    nx, ny, nz = bodies.shape
    radius = TRACK_RADIUS_MM / spacing_mm
    xs, ys = np.mgrid[0:nx, 0:ny]
    centres = np.full((nz, 2), np.nan)
    mass = np.array([bodies[:, :, k].sum() for k in range(nz)])

    def shift(k, start):
        point = np.array(start, dtype=float)
        plane = bodies[:, :, k]
        for _ in range(6):
            window = plane & (((xs - point[0]) ** 2 + (ys - point[1]) ** 2) <= radius * radius)
            count = window.sum()
            if count < 3:
                return None, 0
            new = np.array([xs[window].mean(), ys[window].mean()])
            if np.hypot(*(new - point)) < 0.25:
                point = new
                break
            point = new
        return point, count

    # Start at the slice where the seed column holds the most body voxels.
    best_k, best_count, best_point = None, 0, None
    for k in np.nonzero(mass)[0]:
        point, count = shift(k, seed_xy)
        if point is not None and count > best_count:
            best_k, best_count, best_point = k, count, point
    if best_k is None:
        return centres
    centres[best_k] = best_point
    min_count = max(3, int(0.15 * best_count))
    for direction in (1, -1):
        previous = best_point
        k = best_k + direction
        while 0 <= k < nz:
            point, count = shift(k, previous)
            if point is not None and count >= min_count and np.hypot(*(point - previous)) < radius:
                # The column bends slowly: per 3 mm of height at most 1.5 mm sideways (scoliosis) and 3 mm forward
                # or back (lordosis at L5/S1 reaches 45 degrees); a structure beside a body cannot pull it away.
                limit = np.array([0.5, 1.0]) * max(1.0, 3.0 / spacing_mm)
                point = previous + np.clip(point - previous, -limit, limit)
                centres[k] = point
                previous = point
            k += direction
    return centres


def smooth_curve(centres: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Fill gaps (discs) by interpolation and smooth; returns (z indices, xy) over the tracked z range."""
    valid = np.nonzero(np.isfinite(centres[:, 0]))[0]
    if valid.size < 2:
        return None
    z = np.arange(valid[0], valid[-1] + 1)
    xy = np.stack([np.interp(z, valid, centres[valid, a]) for a in range(2)], axis=1)
    # A median first: a slice pulled toward an attached structure must not bend the curve.
    window = max(3, int(round(9.0 / spacing_mm)) | 1)
    xy = ndimage.median_filter(xy, size=(window, 1), mode="nearest")
    xy = ndimage.gaussian_filter1d(xy, sigma=CURVE_SMOOTHING_MM / spacing_mm, axis=0, mode="nearest")
    return z, xy


def curve_geometry(z: np.ndarray, xy: np.ndarray, spacing_mm: float) -> SpineGeometry:
    points = np.column_stack([xy, z]).astype(float) * spacing_mm
    step = np.gradient(points, axis=0)
    tangent = step / np.linalg.norm(step, axis=1, keepdims=True)
    segment = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arclength = np.concatenate([[0.0], np.cumsum(segment)])
    return SpineGeometry(z_indices=z, centre_xy=xy, arclength_mm=arclength, tangent=tangent)



def find_discs(u: np.ndarray, radial: np.ndarray, length_mm: float,
               spacing_mm: float) -> tuple[list[float], np.ndarray]:
    """Disc positions (mm along the curve): minima of the body cross-section area near the centre line."""
    step = spacing_mm
    bins = np.arange(0.0, length_mm + step, step)
    core = radial <= CORE_RADIUS_MM
    profile, _ = np.histogram(u[core], bins=bins)
    profile = ndimage.gaussian_filter1d(profile.astype(float), sigma=max(0.6, 1.5 / spacing_mm), mode="nearest")
    if profile.max() <= 0:
        return [], profile
    reference = float(np.percentile(profile[profile > 0], 90))
    peaks, _ = signal.find_peaks(-profile, distance=max(1, int(MIN_PERIOD_MM / step)),
                                 prominence=0.15 * reference)
    # A minimum is a disc only where the area falls well below the bodies beside it.
    discs = [float((p + 0.5) * step) for p in peaks if profile[p] < 0.75 * reference]
    return discs, profile


def _disk_offsets(radius_mm: float, step_mm: float = 2.0) -> np.ndarray:
    return np.array([(r * np.cos(t), r * np.sin(t)) for r in np.arange(0.0, radius_mm + 0.1, step_mm)
                     for t in np.linspace(0, 2 * np.pi, max(1, int(2 * np.pi * r / step_mm)), endpoint=False)])


def _plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.cross(normal, [0.0, 1.0, 0.0])
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.cross(normal, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def _disk_mean(smooth: np.ndarray, centre_mm: np.ndarray, normal: np.ndarray, offsets: np.ndarray,
               spacing_mm: float) -> float:
    e1, e2 = _plane_basis(normal)
    samples = centre_mm + offsets[:, :1] * e1 + offsets[:, 1:] * e2
    return float(ndimage.map_coordinates(smooth, (samples / spacing_mm).T, order=1, cval=-1000.0).mean())


def _curve_point(geometry: SpineGeometry, u: float, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    points_mm = np.column_stack([geometry.centre_xy, geometry.z_indices]).astype(float) * spacing_mm
    arclength = geometry.arclength_mm
    centre = np.array([np.interp(u, arclength, points_mm[:, a]) for a in range(3)])
    index = int(np.clip(np.searchsorted(arclength, u), 0, len(arclength) - 1))
    return centre, geometry.tangent[index]


def core_hu_profile(smooth: np.ndarray, geometry: SpineGeometry, spacing_mm: float, step_mm: float,
                    radius_mm: float = 8.0) -> np.ndarray:
    """Mean HU over a disk of the nucleus' size normal to the curve, at each step along it."""
    offsets = _disk_offsets(radius_mm)
    positions = np.arange(0.0, geometry.arclength_mm[-1] + step_mm, step_mm) + 0.5 * step_mm
    values = []
    for u in positions:
        centre, tangent = _curve_point(geometry, min(u, geometry.arclength_mm[-1]), spacing_mm)
        values.append(_disk_mean(smooth, centre, tangent, offsets, spacing_mm))
    return np.asarray(values)


def endplate_bounded_minima(hu: np.ndarray, step_mm: float) -> list[float]:
    """Discs seen as darker tissue between two bright endplates close on both sides (osteoporotic spines, where the
    trabecular interior is as dark as the disc and the body-area profile misses it)."""
    reach = max(1, int(round(DISC_FLANK_MM / step_mm)))
    found = []
    for index in signal.argrelmin(hu, order=1)[0]:
        value = hu[index]
        below = hu[max(0, index - reach) : index]
        above = hu[index + 1 : index + 1 + reach]
        if below.size == 0 or above.size == 0 or value > DISC_MAX_HU:
            continue
        if below.max() >= value + ENDPLATE_CONTRAST_HU and above.max() >= value + ENDPLATE_CONTRAST_HU:
            found.append(float((index + 0.5) * step_mm))
    return found


def endplate_pair_discs(hu: np.ndarray, step_mm: float) -> list[float]:
    """Discs seen as a dip between two endplate peaks that lie closer together than the peaks of the bodies beside
    them (endplate, disc, endplate is shorter than endplate, body, endplate). Thin thoracic discs between bright
    endplates, where neither the area nor the disc's own darkness stands out."""
    peaks, _ = signal.find_peaks(hu, prominence=ENDPLATE_PROMINENCE_HU, height=ENDPLATE_MIN_HU)
    if peaks.size < 2:
        return []
    gaps = np.diff(peaks).astype(float)
    found = []
    for n, gap in enumerate(gaps):
        neighbours = [gaps[m] for m in (n - 1, n + 1) if 0 <= m < len(gaps)]
        if gap * step_mm > DISC_PAIR_MAX_MM or not all(gap < 0.8 * other for other in neighbours):
            continue
        left, right = peaks[n], peaks[n + 1]
        dip = left + int(np.argmin(hu[left : right + 1]))
        if min(hu[left], hu[right]) - hu[dip] >= ENDPLATE_PROMINENCE_HU:
            found.append(float((dip + 0.5) * step_mm))
    return found


def endplate_blocks(hu: np.ndarray, step_mm: float) -> list[tuple[float, float]]:
    """Thin thoracic discs blurred into their two endplates: one short bright block in the core profile, well above
    the trabecular interiors of the bodies on both sides. Returns (position mm, block HU) per block."""
    profile = ndimage.gaussian_filter1d(hu, sigma=max(0.5, 1.5 / step_mm), mode="nearest")
    peaks, _ = signal.find_peaks(profile, prominence=BLOCK_CONTRAST_HU, width=(None, BLOCK_MAX_MM / step_mm),
                                 rel_height=0.5)
    return [(float((p + 0.5) * step_mm), float(profile[p])) for p in peaks]


def _in_body_interior(hu: np.ndarray, u_mm: float, step_mm: float, block_hu: float) -> bool:
    """True when the profile at ``u_mm`` is as dark as a body's interior next to an endplate block, brighter than
    disc tissue, and no dip below its near surroundings (a disc is darker than the bone a few millimetres above and
    below it). A thick flat disc can show no dip at 3-4.5 mm: its own darkness tells it apart."""
    index = int(np.clip(u_mm / step_mm, 0, len(hu) - 1))
    low = max(0, index - 1)
    index = low + int(np.argmin(hu[low : index + 2]))
    if hu[index] > block_hu - BLOCK_CONTRAST_HU or hu[index] <= DISC_TISSUE_MAX_HU:
        return False
    # Only the near sides: 6 mm and more away lie the endplate blocks that bound a thoracic body's interior.
    return _disc_contrast(hu, index, step_mm, distances_mm=(3.0, 4.5)) < INTERIOR_MAX_DIP_HU


def _disc_contrast(hu: np.ndarray, index: int, step_mm: float, distances_mm=(3.0, 4.5, 6.0, 7.5)) -> float:
    """How much darker the profile is at ``index`` than the darker of its two sides, a disc's height away."""
    best = -np.inf
    for distance_mm in distances_mm:
        d = max(1, int(round(distance_mm / step_mm)))
        if index - d < 0 or index + d >= len(hu):
            continue
        best = max(best, min(hu[index - d], hu[index + d]) - hu[index])
    return float(best)


def fill_missed_discs(discs: list[float], hu: np.ndarray, step_mm: float, length_mm: float,
                      blocks: list[float] | None = None) -> list[float]:
    """Vertebral height changes slowly along the spine: a segment much longer than its neighbours holds a disc
    that no detector saw (a thin disc fused to its endplates by partial volume). Such a segment is split at the
    most disc-like positions near its even subdivisions: an endplate block there (``blocks``, mm) if there is one,
    else the position most darker than its sides."""
    if len(discs) < 3:
        return discs
    discs = list(discs)
    for _ in range(8):
        bounds = [0.0] + discs + [length_mm]
        lengths = np.diff(bounds)
        inner = lengths[1:-1]  # segments bounded by discs on both sides: whole vertebrae
        changed = False
        for n in range(len(lengths)):
            others = [inner[m - 1] for m in range(max(1, n - 2), min(len(lengths) - 1, n + 3)) if m != n]
            if len(others) < 2:
                continue
            period = float(np.median(others))
            if lengths[n] <= GAP_FACTOR * period:
                continue
            parts = int(round(lengths[n] / period))
            if parts < 2:
                continue
            added = []
            for j in range(1, parts):
                centre = bounds[n] + j * lengths[n] / parts
                low = int(max(0, (centre - 0.3 * period) / step_mm))
                high = int(min(len(hu) - 1, (centre + 0.3 * period) / step_mm))
                if high <= low:
                    continue
                # A thin disc blurred into its endplates is brighter, not darker, than the bodies beside it.
                inside = [b for b in blocks or [] if low * step_mm <= b <= (high + 1) * step_mm]
                if inside:
                    added.append(min(inside, key=lambda b: abs(b - centre)))
                    continue
                scores = [_disc_contrast(hu, i, step_mm) for i in range(low, high + 1)]
                best = int(np.argmax(scores))
                if scores[best] > 0:
                    added.append(float((low + best + 0.5) * step_mm))
            if added:
                discs = sorted(discs + added)
                changed = True
                break
        if not changed:
            break
    return discs


def separate_close_discs(discs: list[float], hu: np.ndarray, step_mm: float,
                         blocks: list[float] | None = None) -> list[float]:
    """Two discs closer than ``MIN_PERIOD_MM`` (the smallest body-plus-disc height of the spine) cannot both be
    discs: the piece between them would be a body split in two. Of each such pair the less disc-like one is dropped:
    an endplate block (a thin disc seen between its endplates) is kept over a position found otherwise, else the
    position darker than its sides by more (:func:`_disc_contrast`)."""
    blocks = blocks or []
    discs = sorted(discs)

    def strength(u_mm: float) -> tuple[int, float]:
        index = int(np.clip(u_mm / step_mm, 0, len(hu) - 1))
        return (int(any(abs(u_mm - b) < 1e-6 for b in blocks)), _disc_contrast(hu, index, step_mm))

    while len(discs) > 1:
        gaps = np.diff(discs)
        n = int(np.argmin(gaps))
        if gaps[n] >= MIN_PERIOD_MM:
            break
        weaker = n if strength(discs[n]) < strength(discs[n + 1]) else n + 1
        discs.pop(weaker)
    return discs


def refine_disc_plane(smooth: np.ndarray, geometry: SpineGeometry, u_mm: float, spacing_mm: float,
                      search_mm: float = 6.0, tilts_deg=(0.0,)) -> tuple:
    """The plane of the disc near ``u_mm`` along the curve: (point mm, unit normal toward cranial, u).

    The disc (70-100 HU) is darker than the bone a few millimetres above and below it: dense trabecular bone, or
    the endplates of osteoporotic bodies whose interior is as dark as the disc. The plane chosen maximizes the
    contrast between the disc's own section and the darker of two parallel sections 3-7.5 mm above and below; it
    may tilt in the sagittal plane (about the left-right axis) relative to the curve's normal: wedge-shaped discs.
    """
    arclength = geometry.arclength_mm
    offsets = _disk_offsets(12.0)
    best = None
    for u in np.arange(u_mm - search_mm, u_mm + search_mm + 0.01, max(1.0, spacing_mm / 2)):
        if not arclength[0] <= u <= arclength[-1]:
            continue
        centre, tangent = _curve_point(geometry, u, spacing_mm)
        for tilt in np.radians(tilts_deg):
            # Rotate the tangent about the x axis (sagittal tilt).
            c, s_ = np.cos(tilt), np.sin(tilt)
            normal = np.array([tangent[0], c * tangent[1] + s_ * tangent[2], -s_ * tangent[1] + c * tangent[2]])
            normal /= np.linalg.norm(normal)
            middle = _disk_mean(smooth, centre, normal, offsets, spacing_mm)
            score = -np.inf
            for distance in DISC_FLANK_PLANE_MM:
                upper = _disk_mean(smooth, centre + distance * normal, normal, offsets, spacing_mm)
                lower = _disk_mean(smooth, centre - distance * normal, normal, offsets, spacing_mm)
                score = max(score, min(upper, lower) - middle)
            if best is None or score > best[0]:
                best = (score, centre, normal, float(u))
    if best is None:
        centre, tangent = _curve_point(geometry, float(np.clip(u_mm, arclength[0], arclength[-1])), spacing_mm)
        return centre, tangent, float(u_mm)
    return best[1], best[2], best[3]


def star_fill(mask: np.ndarray, bone: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Add the part of the body inside its cortex that the plane fills missed, slice by slice.

    Rays from the body's centre in each axial slice run to the outer edge of the first bone they meet (the
    cortex of an osteoporotic body whose dark interior opens into the canal through the basivertebral foramen, or
    the surface of a dense body). Rays that find no cortex, or leave through a gap into a pedicle or the canal, are
    held to the body's typical radius in that slice.
    """
    angles = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    step = 0.5  # voxels
    radii = np.arange(1.0, STAR_MAX_RADIUS_MM / spacing_mm, step)
    out = mask.copy()
    box = _crop_box(mask, margin=int(round(STAR_MAX_RADIUS_MM / spacing_mm)))
    xs, ys = np.mgrid[box[0], box[1]]
    areas = mask.sum(axis=(0, 1))
    slices = np.nonzero(areas)[0]
    # Only sections inside the body's height: the end sections hold endplate edges and disc, where a ray would
    # run out into the disc and lengthen the body.
    for k in slices[2:-2]:
        plane = mask[:, :, k]
        if areas[k] * spacing_mm**2 < 200.0:  # 2 cm2: an endplate's edge, not a section through the body
            continue
        centre = np.array(ndimage.center_of_mass(plane))
        px = centre[0] + np.outer(np.cos(angles), radii)
        py = centre[1] + np.outer(np.sin(angles), radii)
        samples = ndimage.map_coordinates(bone[:, :, k].astype(np.float32), [px, py], order=0, cval=0.0) > 0.5
        stops = np.full(len(angles), np.nan)
        for a in range(len(angles)):
            bright = np.nonzero(samples[a])[0]
            if bright.size == 0:
                continue
            after = samples[a, bright[0]:]
            dark = np.nonzero(~after)[0]
            if dark.size:
                stops[a] = radii[bright[0] + dark[0] - 1]
        found = np.isfinite(stops)
        if found.mean() < 0.6:
            continue
        typical = float(np.median(stops[found]))
        stops = np.where(found, np.minimum(stops, 1.25 * typical), typical)
        dx, dy = xs - centre[0], ys - centre[1]
        angle = np.mod(np.arctan2(dy, dx), 2.0 * np.pi)
        reach = np.interp(angle, np.append(angles, 2.0 * np.pi), np.append(stops, stops[0]))
        inside = np.hypot(dx, dy) <= reach
        current = plane[box[0], box[1]]
        # Only a section that misses a large part of its body is completed; small additions to a whole section
        # would be pedicle bases.
        if np.count_nonzero(inside & ~current) > STAR_MIN_GAIN * np.count_nonzero(current):
            out[box[0], box[1], k] |= inside
    return out


def solid_body(mask: np.ndarray) -> np.ndarray:
    """A vertebral body is solid: fill the holes left where a dark (osteoporotic) interior was not filled, in every
    plane orientation and in 3-D, inside the body's own box."""
    box = _crop_box(mask, margin=1)
    part = mask[box]
    solid = part | _fill_planes(part, 0) | _fill_planes(part, 1) | _fill_planes(part, 2)
    solid = ndimage.binary_fill_holes(solid)
    # A smooth surface: the height measurement samples the walls along lines, and a one-voxel notch in a wall
    # moves a measured corner by a voxel's height.
    solid = ndimage.gaussian_filter(solid.astype(np.float32), BODY_SURFACE_SIGMA_VOX) > 0.5
    out = mask.copy()
    out[box] = solid
    return out


def assign_to_planes(voxels: np.ndarray, planes: list[tuple], spacing_mm: float) -> np.ndarray:
    """Interval index per voxel: how many disc planes (ordered caudal to cranial) it lies above."""
    if not planes:
        return np.zeros(len(voxels), dtype=np.int64)
    points = np.array([p[0] for p in planes])
    normals = np.array([p[1] for p in planes])
    world = voxels.astype(float) * spacing_mm
    signed = world @ normals.T - (points * normals).sum(axis=1)[None, :]
    return (signed > 0).sum(axis=1)


def sacrum_component(bodies: np.ndarray, geometry: SpineGeometry, spacing_mm: float) -> np.ndarray | None:
    """The sacrum as its own piece of the body-candidate mask: the connected piece at the caudal end of the curve
    that is as wide as the alae and holds only a short stretch of the centre line (not L5 bridged to it)."""
    labelled, count = ndimage.label(bodies)
    if count == 0:
        return None
    radius = int(round(10.0 / spacing_mm))
    votes = []
    bottom = int(round(15.0 / spacing_mm))
    for n in range(min(bottom, len(geometry.z_indices))):
        x, y = (int(round(v)) for v in geometry.centre_xy[n])
        patch = labelled[max(0, x - radius) : x + radius + 1, max(0, y - radius) : y + radius + 1,
                         geometry.z_indices[n]]
        votes.extend(patch[patch > 0].tolist())
    if not votes:
        return None
    label = int(np.bincount(votes).argmax())
    box = ndimage.find_objects((labelled == label).astype(np.uint8))[0]
    if (box[0].stop - box[0].start) * spacing_mm <= SACRUM_WIDTH_MM:
        return None
    piece = labelled == label
    z0, z1 = int(geometry.z_indices[0]), int(geometry.z_indices[-1])
    clipped = np.zeros_like(piece)
    clipped[:, :, z0 : z1 + 1] = piece[:, :, z0 : z1 + 1]
    u, radial = along_curve(geometry, np.argwhere(clipped), spacing_mm)
    u = u[radial <= 20.0]
    if u.size == 0 or np.percentile(u, 98) - u.min() > 40.0:
        return None
    return piece


def _ribs_above(finder: BodyFinder, geometry: SpineGeometry, z_index: float, spacing_mm: float) -> bool:
    """True when ribs articulate with the spine within 45 mm above ``z_index``: what looks like the sacrum there is
    not (L4 and L5 never bear ribs); wide bone at the caudal end of a chest CT is rib heads or the diaphragm's
    neighbours, not sacral alae."""

    slab = np.zeros(finder.bone.shape, dtype=bool)
    z0 = int(max(0, z_index))
    z1 = int(min(finder.bone.shape[2] - 1, z_index + 45.0 / spacing_mm))
    slab[:, :, z0 : z1 + 1] = True
    return bool(rib_sides(slab, finder.bone, geometry.centre_xy[:, 0], geometry.centre_xy[:, 1],
                          int(geometry.z_indices[0]), spacing_mm))


def sacrum_top(bodies: np.ndarray, geometry: SpineGeometry, spacing_mm: float) -> float | None:
    """Position along the curve (mm) of the top of the sacral alae: from the caudal end of the curve upward, the
    axial section of the body-candidate region around the centre line stays wider than a lumbar body."""
    labelled, _ = ndimage.label(bodies, structure=_planar_structure(2))
    objects = ndimage.find_objects(labelled)
    wide = []
    radius = int(round(10.0 / spacing_mm))
    for n, k in enumerate(geometry.z_indices):
        x, y = (int(round(v)) for v in geometry.centre_xy[n])
        patch = labelled[max(0, x - radius) : x + radius + 1, max(0, y - radius) : y + radius + 1, k]
        values = patch[patch > 0]
        if values.size == 0:
            wide.append(False)
            continue
        label = int(np.bincount(values).argmax())
        box = objects[label - 1]
        wide.append((box[0].stop - box[0].start) * spacing_mm > SACRUM_WIDTH_MM)
    wide = np.asarray(wide)
    if wide.size == 0 or not wide[: max(1, int(round(6.0 / spacing_mm)))].any():
        return None
    # Highest slice of the run of wide sections that starts at the caudal end (short gaps allowed).
    gap = int(round(9.0 / spacing_mm))
    top = None
    misses = 0
    for n in range(len(wide)):
        if wide[n]:
            top, misses = n, 0
        else:
            misses += 1
            if misses > gap:
                break
    if top is None or top * spacing_mm < 10.0:
        return None
    return float(geometry.arclength_mm[top])


@register_backend("classical")
class ClassicalBackend:
    """Default backend: no weights, CPU only; vertebral bodies (not posterior elements) with VerSe ids."""

    name = "classical"

    def __init__(self, spacing_mm: float | None = None, **_ignored):
        self.spacing_mm = spacing_mm

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        progress = progress or (lambda fraction, message: None)
        check_ct_hounsfield(ct)
        spacing = self.spacing_mm or max(MIN_WORKING_SPACING_MM, float(min(3.0, ct.spacing.max())))
        progress(0.05, "resampling to the working grid")
        work, grid, inside = working_grid(ct, spacing)
        result = segment_working(work, spacing, progress, inside)
        if result is None:
            raise NoVertebraeError(f"{ct.path or 'CT'}: no vertebrae found (no bone column with a spinal canal "
                                   "in the field of view)")
        label_work, naming, geometry = result
        progress(0.85, "mapping labels onto the CT grid")
        if inside is not None:
            label_work = np.where(inside, label_work, 0).astype(label_work.dtype)
        labels = labels_to_ct_grid(label_work, grid, ct)
        present = [int(v) for v in np.unique(labels) if v]
        if not present:
            raise NoVertebraeError(f"{ct.path or 'CT'}: no vertebrae found")
        cut = {label: reason for label, reason in cut_by_field_of_view(label_work, inside, spacing).items()
               if label in present}
        # The labels were drawn on the working grid: its voxels are their resolution (a field of view that holds
        # the CT's whole box); bodies it found cut stay cut on the CT's grid.
        meta = {field_of_view.FIELDS_OF_VIEW_KEY: [*ct.meta.get(field_of_view.FIELDS_OF_VIEW_KEY, []),
                                                   {"ijk_to_ras": grid.tolist(), "shape": list(label_work.shape)}],
                field_of_view.CUT_LABELS_KEY: cut}
        warnings = []
        if device not in ("auto", "cpu"):
            warnings.append(f"the classical backend runs on the CPU (device {device!r} ignored)")
        progress(1.0, "segmentation done")
        return SegmentationOutput(labels=ct.with_array(labels, **meta), backend=self.name, full_vertebrae=False,
                                  levels_status=naming.status, level_evidence=naming.evidence, warnings=warnings,
                                  vertebra_warnings={label: list(notes) for label, notes in naming.body_warnings.items()
                                                     if label in present})


def _curve_in_view(geometry: SpineGeometry, inside: np.ndarray | None) -> tuple[float, float]:
    """Arc length (mm) of the first and last points of the centre curve inside the field of view."""
    arclength = geometry.arclength_mm
    if inside is None:
        return 0.0, float(arclength[-1])
    xy = np.round(geometry.centre_xy).astype(int)
    xy[:, 0] = np.clip(xy[:, 0], 0, inside.shape[0] - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, inside.shape[1] - 1)
    seen = np.flatnonzero(inside[xy[:, 0], xy[:, 1], np.asarray(geometry.z_indices, dtype=int)])
    if seen.size == 0:
        return 0.0, float(arclength[-1])
    return float(arclength[seen[0]]), float(arclength[seen[-1]])


def segment_working(work: np.ndarray, spacing: float, progress: ProgressCallback | None = None,
                    inside: np.ndarray | None = None):
    """Bodies labelled with VerSe ids on the working grid, the naming, and the spine geometry; None if no spine.
    ``inside``: the working voxels inside the CT's field of view (None: all)."""
    progress = progress or (lambda fraction, message: None)
    finder = BodyFinder(work, spacing)
    progress(0.15, "finding bone and vertebral bodies")
    bodies = finder.body_candidates()
    if not bodies.any():
        return None
    progress(0.35, "locating the spinal canal")
    score = finder.canal_score()
    body_column = ndimage.uniform_filter(bodies.sum(axis=2).astype(float), size=max(3, int(20 / spacing) | 1))
    combined = ndimage.uniform_filter(score, size=3) * (body_column > 0) * midline_prior(finder)[:, None]
    if combined.max() <= 0:
        return None
    seed = np.unravel_index(int(np.argmax(combined)), combined.shape)
    progress(0.45, "following the spine")
    centres = track_spine(bodies, seed, spacing)
    curve = smooth_curve(centres, spacing)
    if curve is None:
        return None
    geometry = curve_geometry(*curve, spacing)
    z0, z1 = int(geometry.z_indices[0]), int(geometry.z_indices[-1])
    in_range = np.zeros_like(bodies)
    in_range[:, :, z0 : z1 + 1] = bodies[:, :, z0 : z1 + 1]
    sacrum = sacrum_component(bodies, geometry, spacing)
    if sacrum is not None and _ribs_above(finder, geometry, float(np.nonzero(sacrum.any(axis=(0, 1)))[0].max()),
                                          spacing):
        sacrum = None
    if sacrum is not None:
        in_range &= ~sacrum
    voxels = np.argwhere(in_range)
    u, radial = along_curve(geometry, voxels, spacing)
    near = radial <= BODY_RADIUS_MM
    voxels, u, radial = voxels[near], u[near], radial[near]
    progress(0.55, "separating the bodies at the discs")
    length = float(geometry.arclength_mm[-1])
    discs, profile = find_discs(u, radial, length, spacing)
    # Near the ends of the spine in view the body area falls because the field of view cuts the body, not because
    # of a disc: area minima there are not trusted; discs seen between endplates are.
    # The ends of the spine in view: where the centre curve leaves the CT's field of view (beyond, the working grid
    # holds the edge's values carried outwards, in which no disc is real).
    first, last = _curve_in_view(geometry, inside)
    discs = [d for d in discs if first + AREA_END_MARGIN_MM <= d <= last - AREA_END_MARGIN_MM]
    hu_profile = core_hu_profile(finder.smooth, geometry, spacing, spacing)
    for extra in endplate_bounded_minima(hu_profile, spacing) + endplate_pair_discs(hu_profile, spacing):
        if all(abs(extra - d) >= MIN_PERIOD_MM for d in discs):
            discs.append(extra)
    # Where the thin thoracic discs blur into their endplates the body area (taken around a curve that runs along
    # the back of the kyphotic bodies) can dip in mid-body: an area minimum that lies in a body's interior (as
    # bright as bone, no dip), with an endplate block beside it, is moved to the block.
    blocks = endplate_blocks(hu_profile, spacing)
    for block, block_hu in blocks:
        near = [d for d in discs if abs(block - d) < MIN_PERIOD_MM]
        if near and all(_in_body_interior(hu_profile, d, spacing, block_hu) for d in near):
            discs = [d for d in discs if d not in near] + [block]
    # A disc found by area or darkness close to an endplate block is that block's disc: the block is its centre.
    discs = [next((b for b, _ in blocks if abs(b - d) <= BLOCK_SNAP_MM), d) for d in discs]
    discs = fill_missed_discs(sorted(set(discs)), hu_profile, spacing, length, [b for b, _ in blocks])
    discs = separate_close_discs(discs, hu_profile, spacing, [b for b, _ in blocks])
    discs = [d for d in discs if first + MIN_END_PIECE_MM <= d <= last - MIN_END_PIECE_MM]
    sacral_u = None
    if sacrum is None:
        sacral_u = sacrum_top(bodies, geometry, spacing)
        if sacral_u is not None:
            index = int(np.clip(np.searchsorted(geometry.arclength_mm, sacral_u), 0, len(geometry.z_indices) - 1))
            if _ribs_above(finder, geometry, float(geometry.z_indices[index]), spacing):
                sacral_u = None
    # A block's position is its disc's centre already; the darkest-plane search would walk off it into the darker
    # body beside it.
    block_positions = {b for b, _ in blocks}
    planes = [refine_disc_plane(finder.smooth, geometry, d, spacing,
                                search_mm=0.0 if d in block_positions else DISC_SEARCH_MM,
                                tilts_deg=DISC_TILTS_DEG) for d in discs]
    sacral_plane = None
    if sacral_u is not None:
        # The sacrum is joined to L5 in the mask: the L5/S1 disc is steep and often shallow in the area profile,
        # so it is searched as the darkest plane tilted forward just above the top of the alae.
        sacral_plane = refine_disc_plane(finder.smooth, geometry, sacral_u, spacing, search_mm=12.0,
                                         tilts_deg=np.arange(-10.0, 61.0, 5.0))
        planes = [sacral_plane] + [plane for plane, d in zip(planes, discs) if d > sacral_plane[2] + MIN_PERIOD_MM]
    geometry.sacrum_found = sacrum is not None or sacral_u is not None
    geometry.disc_u_mm = [plane[2] for plane in planes]
    geometry.profile = profile
    geometry.sacral_u_mm = sacral_u
    interval = assign_to_planes(voxels, planes, spacing)
    if sacral_plane is not None:
        # Below the lumbosacral plane lies S1: not a mobile vertebra.
        keep = interval > 0
        voxels, interval = voxels[keep], interval[keep]
    if planes:
        # Disc tissue filled into the body mask next to a disc plane is not body: it would lengthen the heights.
        # A thin disc blurred into its endplates (an endplate block) holds no disc tissue beyond its endplates:
        # there the dark voxels near the plane are the trabecular interior of a low-density body, kept.
        per_plane = np.abs(voxels.astype(float) * spacing @ np.array([p[1] for p in planes]).T
                           - np.array([np.dot(p[0], p[1]) for p in planes])[None, :])
        trim = np.array([THIN_DISC_TRIM_MM if any(abs(p[2] - b) < 0.01 for b in block_positions) else DISC_TRIM_MM
                         for p in planes])
        hu = finder.smooth[tuple(voxels.T)]
        keep = ~((per_plane <= trim[None, :]).any(axis=1) & (hu < DISC_TRIM_HU)) & (per_plane.min(axis=1) > DISC_GAP_MM)
        voxels, interval = voxels[keep], interval[keep]
    provisional = np.zeros(work.shape, dtype=np.int16)
    provisional[tuple(voxels.T)] = interval + 1
    edges = range(len(planes) + 2)
    # Each body: the largest connected piece of its interval joined to the centre line.
    voxel_ml = spacing**3 / 1000.0
    kept = []
    for index in edges:
        mask = provisional == index + 1
        if not mask.any():
            continue
        labelled, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            mask = labelled == int(np.argmax(sizes))
        if mask.sum() * voxel_ml < MIN_BODY_ML:
            continue
        kept.append(solid_body(star_fill(mask, finder.smooth > BONE_HU, spacing)))
    if not kept:
        return None
    # Cranial to caudal order: the working grid's z axis points superior.
    kept.sort(key=lambda m: -np.nonzero(m.any(axis=(0, 1)))[0].mean())
    progress(0.7, "naming the levels")
    naming: LevelNaming = name_levels(kept, finder, geometry, spacing)
    label_work = np.zeros(work.shape, dtype=np.int16)
    for mask, label in zip(naming.masks, naming.labels):
        if label:
            label_work[mask] = label
    return label_work, naming, geometry


def labels_to_ct_grid(label_work: np.ndarray, grid: np.ndarray, ct: Volume) -> np.ndarray:
    """Nearest-neighbour transfer of working-grid labels onto the CT grid (only the spine's box is computed)."""
    out = np.zeros(ct.shape, dtype=np.int16)
    if not label_work.any():
        return out
    box = _crop_box(label_work != 0, margin=1)
    corners = np.array([[b.start if c == 0 else b.stop - 1 for b, c in zip(box, bits)]
                        for bits in np.ndindex(2, 2, 2)], dtype=float)
    world = corners @ grid[:3, :3].T + grid[:3, 3]
    ct_ijk = ct.world_to_ijk(world)
    low = np.maximum(np.floor(ct_ijk.min(axis=0)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(ct_ijk.max(axis=0)).astype(int) + 2, np.array(ct.shape))
    if np.any(high <= low):
        return out
    shift = np.eye(4)
    shift[:3, 3] = low
    ct_to_work = np.linalg.inv(grid) @ ct.ijk_to_ras @ shift
    sub = ndimage.affine_transform(label_work, _matrix_argument(ct_to_work), offset=ct_to_work[:3, 3],
                                   output_shape=tuple(int(v) for v in high - low), order=0,
                                   mode="grid-constant", cval=0)
    out[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = sub
    return out


__all__ = ["ClassicalBackend", "check_ct_hounsfield", "NotCTError", "segment_working", "labels_to_ct_grid"]
