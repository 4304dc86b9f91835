"""Vertebral body morphometry: anatomical frame, six points, heights, volume, trabecular attenuation.

For every vertebra of a VerSe-id label map:

1. **Frame.** The cranio-caudal (superior) axis follows the spine's curve: the chord between the centroids of the
   neighbouring vertebrae above and below (one neighbour at the ends of the column; the vertebra's flattest principal
   axis when it stands alone). The antero-posterior axis points from the spinal canal to the vertebral body when the
   mask has posterior elements, else along the patient's anterior direction of the image, made orthogonal. Scanner
   axes play no part beyond that sign, so tilted, rotated or oblique acquisitions give the same frame.
2. **Body.** When the mask includes posterior elements, the body is the part anterior to the spinal canal: the canal
   is the hole in the vertebra's footprint projected along the superior axis; its anterior edge is the body's
   posterior wall. Masks of bodies only are used as they are.
3. **Six points.** In the mid-sagittal plane (through the body's median right-left position) the body's anterior
   and posterior margins are found on the mask. Lines parallel to the superior axis cross the body every 2.5 % of its
   depth; along each, the mask is sampled with trilinear interpolation every 0.2 mm and the endplates are the 0.5
   crossings (lines 1.5 mm to either side are averaged in). The **posterior** height is the tallest line 10–25 % of
   the depth in front of the posterior margin, the **anterior** height the tallest line 10–25 % behind the anterior
   margin (inside the rounded rim and osteophytes a mask's edge includes, where the cortex of the wall stands), the
   **middle** height the lowest line in the central 35–65 % (the deepest point of the endplates, where a biconcave
   fracture shows). Heights are the distances between the superior and inferior points, so a moved point changes its
   height exactly.
4. **Volume** of the body in ml; **trabecular attenuation**: median HU of the interior region defined in
   :mod:`.screen` (away from the cortex and endplates, the posterior quarter of the depth excluded where the
   basivertebral vein enters).

A body touching the edge of the image is reported as incomplete (cut by the field of view) and is not graded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import grade as grade_mod
from . import labels as labels_mod
from .errors import NoVertebraeError
from .io import Volume
from .results import CaseResult, VertebraResult

log = logging.getLogger(__name__)

LINE_FRACTIONS = np.round(np.arange(0.10, 0.9001, 0.025), 4)
"""Measurement lines across the body's depth, as fractions from the posterior (0) to the anterior (1) margin."""
HEIGHT_BANDS = (
    ("anterior", (0.75, 0.90), max),
    ("middle", (0.35, 0.65), min),
    ("posterior", (0.10, 0.25), max),
)
"""Where each height is taken: the wall heights are the tallest line in the band beside the wall (clear of the
rounded rim), the middle height the lowest line in the central band (the deepest point of the endplates)."""
SAMPLE_STEP_MM = 0.2
SIDE_LINE_OFFSETS_MM = (-1.5, 0.0, 1.5)
"""Lateral offsets of the lines averaged into each measurement line (smooths a mask's voxel staircase)."""
GAP_BRIDGE_MM = 2.0
"""Holes in a mask shorter than this along a line are bridged (segmentation holes, not anatomy)."""
MIN_BODY_VOLUME_ML = 1.0
CANAL_MIN_AREA_MM2 = 20.0
BODY_ONLY_MAX_DEPTH_MM = 60.0
"""A vertebra mask with no canal and at most this antero-posterior extent is taken to be a body only."""
NEIGHBOUR_MAX_DISTANCE_MM = 90.0


@dataclass
class Frame:
    """Anatomical frame of one vertebra; unit vectors in RAS."""

    superior: np.ndarray
    anterior: np.ndarray

    @property
    def right(self) -> np.ndarray:
        return np.cross(self.anterior, self.superior)

    def local(self, points_ras: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """RAS points -> (x right, y anterior, z superior) mm relative to origin."""
        basis = np.stack([self.right, self.anterior, self.superior])
        # einsum: several times faster than matmul for N x 3 by 3 x 3 products.
        return np.einsum("ij,kj->ik", points_ras - origin, basis)

    def world(self, local: np.ndarray, origin: np.ndarray) -> np.ndarray:
        basis = np.stack([self.right, self.anterior, self.superior])
        return np.atleast_2d(local) @ basis + origin


@dataclass
class _Vertebra:
    """Working state of one vertebra while the case is measured."""

    label: int
    crop: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, crop grid
    points: np.ndarray  # RAS of mask voxels
    centroid: np.ndarray
    body: np.ndarray | None = None  # bool over `points`
    canal_centre: np.ndarray | None = None  # RAS
    frame: Frame | None = None
    touches_edge: bool = False


STATISTICS_SAMPLE = 250_000
"""Shape statistics (footprints, percentiles) use at most this many voxels of a vertebra; every voxel still
counts for the body's extent, volume and density."""


def _sample(points: np.ndarray) -> np.ndarray:
    """A regular subset of at most STATISTICS_SAMPLE points (all of them for ordinary masks)."""
    step = max(1, len(points) // STATISTICS_SAMPLE)
    return points[::step]


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _orthogonal(vector: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _unit(vector - np.dot(vector, axis) * axis)


def _voxel_half_extent(volume: Volume, direction: np.ndarray) -> float:
    """Half the extent of one voxel box along a world direction."""
    return 0.5 * float(np.sum(np.abs(volume.ijk_to_ras[:3, :3].T @ direction)))


def measure_case(labels: Volume, ct: Volume | None = None, inputs: dict | None = None, progress=None) -> CaseResult:
    """Measure and grade every vertebra of a VerSe-id label volume (CT, when given, on the same grid)."""
    vertebrae = measure_vertebrae(labels, ct, progress)
    grade_mod.grade_vertebrae(vertebrae)
    summary = grade_mod.summarize(vertebrae)
    case = CaseResult(vertebrae=vertebrae, patient=summary, inputs=dict(inputs or {}))
    for vertebra in vertebrae:
        if not vertebra.complete:
            case.warnings.append(f"{vertebra.level} not graded: {vertebra.incomplete_reason}")
        elif vertebra.genant_grade is None:
            case.warnings.append(f"{vertebra.level} {vertebra.grade_reason}")
    return case


def measure_vertebrae(labels: Volume, ct: Volume | None = None, progress=None) -> list[VertebraResult]:
    """Measure every vertebra (not the sacrum or coccyx) of a VerSe-id label volume; results cranial to caudal."""
    if ct is not None and not ct.same_grid(labels):
        raise ValueError("the CT and the label map must share one grid (resample the label map first)")
    report = progress or (lambda fraction, message: None)
    array = labels.array
    objects = ndimage.find_objects(array if array.min(initial=0) >= 0 else np.clip(array, 0, None))
    present = [
        label
        for label in range(1, len(objects) + 1)
        if objects[label - 1] is not None and labels_mod.is_vertebra(label)
    ]
    if not present:
        raise NoVertebraeError(f"{labels.path or 'label map'}: no vertebra labels")
    present = labels_mod.neighbours_in_order(present)
    work = {label: _load_vertebra(labels, label, objects[label - 1]) for label in present}

    # Pass 1: frames from the full-vertebra centroids, then the bodies.
    _assign_superior_axes(work, lambda v: v.centroid)
    for index, vertebra in enumerate(work.values()):
        report(0.1 + 0.4 * index / len(work), f"isolating the body of {labels_mod.level_name(vertebra.label)}")
        _isolate_body(vertebra, labels)
    # Pass 2: the curve through the body centroids gives the final cranio-caudal axes.
    _assign_superior_axes(work, lambda v: v.points[v.body].mean(axis=0))
    results = []
    for index, vertebra in enumerate(work.values()):
        report(0.5 + 0.45 * index / len(work), f"measuring {labels_mod.level_name(vertebra.label)}")
        results.append(_measure(vertebra, labels, ct))
    return results


def _load_vertebra(labels: Volume, label: int, bounding: tuple[slice, ...]) -> _Vertebra:
    shape = labels.shape
    crop = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, n)) for s, n in zip(bounding, shape))
    mask = labels.array[crop] == label
    ijk = np.argwhere(mask).astype(float) + np.array([s.start for s in crop], dtype=float)
    points = labels.ijk_to_world(ijk)
    touches = any(s.start == 0 or s.stop == n for s, n in zip(bounding, shape))
    return _Vertebra(
        label=label, crop=crop, mask=mask, points=points, centroid=points.mean(axis=0), touches_edge=touches
    )


def _assign_superior_axes(work: dict[int, _Vertebra], centre_of) -> None:
    """Superior axis of each vertebra from the chord through its neighbours' centres (the spine's curve)."""
    ordered = list(work.values())
    centres = [centre_of(v) for v in ordered]
    for index, vertebra in enumerate(ordered):
        cranial = caudal = None
        if index > 0 and _adjacent(ordered[index - 1], vertebra, centres[index - 1], centres[index]):
            cranial = centres[index - 1]
        if index + 1 < len(ordered) and _adjacent(vertebra, ordered[index + 1], centres[index], centres[index + 1]):
            caudal = centres[index + 1]
        if cranial is not None and caudal is not None:
            superior = _unit(cranial - caudal)
        elif cranial is not None:
            superior = _unit(cranial - centres[index])
        elif caudal is not None:
            superior = _unit(centres[index] - caudal)
        else:
            superior = _flattest_axis(vertebra.points[vertebra.body] if vertebra.body is not None else vertebra.points)
        anterior_hint = vertebra.frame.anterior if vertebra.frame is not None else np.array([0.0, 1.0, 0.0])
        if abs(np.dot(anterior_hint, superior)) > 0.95:
            anterior_hint = np.array([0.0, 0.0, 1.0]) if abs(superior[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        vertebra.frame = Frame(superior=superior, anterior=_orthogonal(anterior_hint, superior))


def _adjacent(upper: _Vertebra, lower: _Vertebra, upper_centre, lower_centre) -> bool:
    close_in_rank = labels_mod.rank(lower.label) - labels_mod.rank(upper.label) <= 1.5
    return close_in_rank and np.linalg.norm(upper_centre - lower_centre) < NEIGHBOUR_MAX_DISTANCE_MM


def _flattest_axis(points: np.ndarray) -> np.ndarray:
    """Smallest principal axis (a vertebral body is lower than it is wide or deep), pointing superior."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axis = vectors[:, 0]
    return axis if axis[2] >= 0 else -axis


def _footprint_resolution(labels: Volume, superior: np.ndarray) -> float:
    """Pixel size of the footprint image: no finer than the voxels seen across the superior axis."""
    in_plane = [
        s * np.sqrt(max(0.0, 1 - np.dot(d, superior) ** 2)) for s, d in zip(labels.spacing, labels.direction_ras.T)
    ]
    return float(max(1.0, max(in_plane)))


def _isolate_body(vertebra: _Vertebra, labels: Volume) -> None:
    """Find the spinal canal and keep the part of the vertebra anterior to it (twice: the canal refines the frame)."""
    for _ in range(2):
        frame = vertebra.frame
        local = frame.local(_sample(vertebra.points), vertebra.centroid)
        resolution = _footprint_resolution(labels, frame.superior)
        canal = _find_canal(local[:, :2], resolution)
        if canal is None:
            depth = np.ptp(local[:, 1])
            if depth <= BODY_ONLY_MAX_DEPTH_MM:
                vertebra.body = np.ones(len(vertebra.points), dtype=bool)
            else:
                vertebra.body = _thickest_part(frame.local(vertebra.points, vertebra.centroid)[:, :2], resolution)
            vertebra.canal_centre = None
            return
        canal_x, canal_y, canal_front = canal
        body = np.einsum("ij,j->i", vertebra.points - vertebra.centroid, frame.anterior) > canal_front
        vertebra.body = _largest_component(vertebra, body)
        vertebra.canal_centre = frame.world(np.array([canal_x, canal_y, 0.0]), vertebra.centroid)[0]
        body_centre = vertebra.points[vertebra.body].mean(axis=0)
        vertebra.frame = Frame(
            superior=frame.superior, anterior=_orthogonal(body_centre - vertebra.canal_centre, frame.superior)
        )


def _rasterise(xy: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    low = xy.min(axis=0) - 2 * resolution
    index = np.floor((xy - low) / resolution).astype(int)
    image = np.zeros(index.max(axis=0) + 3, dtype=bool)
    image[index[:, 0], index[:, 1]] = True
    return image, low


def _find_canal(xy: np.ndarray, resolution: float) -> tuple[float, float, float] | None:
    """(x, y of the canal centre, y of its anterior edge) in local mm, or None when the footprint has no canal."""
    image, low = _rasterise(xy, resolution)
    image = ndimage.binary_closing(image, iterations=1) | image
    holes = ndimage.binary_fill_holes(image) & ~image
    components, count = ndimage.label(holes)
    if count == 0:
        return None
    best = None
    for component in range(1, count + 1):
        pixels = np.argwhere(components == component)
        area = len(pixels) * resolution**2
        if area < CANAL_MIN_AREA_MM2:
            continue
        centre = (pixels.mean(axis=0) + 0.5) * resolution + low
        # The canal lies on the midline behind the body: prefer large holes near x = 0, behind the centroid.
        if centre[1] > 0:
            continue
        score = area / (1.0 + abs(centre[0]) / 5.0)
        if best is None or score > best[0]:
            column = pixels[np.abs((pixels[:, 0] + 0.5) * resolution + low[0] - centre[0]) <= max(resolution, 2.0)]
            front = (column[:, 1].max() + 1.0) * resolution + low[1]
            best = (score, float(centre[0]), float(centre[1]), float(front))
    return None if best is None else best[1:]


def _thickest_part(xy: np.ndarray, resolution: float) -> np.ndarray:
    """Fallback without a canal: the footprint's thickest region (opened by a disc), which is the body."""
    image, low = _rasterise(xy, resolution)
    image = ndimage.binary_fill_holes(ndimage.binary_closing(image, iterations=1) | image)
    distance = ndimage.distance_transform_edt(image)
    radius = max(1, int(0.6 * distance.max()))
    disc = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    opened = ndimage.binary_opening(image, structure=disc)
    components, _ = ndimage.label(opened)
    core = components == components[np.unravel_index(np.argmax(distance), distance.shape)]
    core = ndimage.binary_dilation(core, iterations=1) & image
    index = np.floor((xy - low) / resolution).astype(int)
    return core[index[:, 0], index[:, 1]]


def _largest_component(vertebra: _Vertebra, keep: np.ndarray) -> np.ndarray:
    grid = np.zeros(vertebra.mask.shape, dtype=bool)
    voxels = np.argwhere(vertebra.mask)
    grid[tuple(voxels[keep].T)] = True
    components, count = ndimage.label(grid)
    if count <= 1:
        return keep
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components[tuple(voxels.T)] == int(np.argmax(sizes))


class _MaskSampler:
    """Trilinear sampling of one vertebra's binary mask at RAS points."""

    def __init__(self, vertebra: _Vertebra, labels: Volume):
        self.values = vertebra.mask.astype(np.float32)
        self.offset = np.array([s.start for s in vertebra.crop], dtype=float)
        self.ras_to_ijk = labels.ras_to_ijk

    def __call__(self, points_ras: np.ndarray) -> np.ndarray:
        ijk = points_ras @ self.ras_to_ijk[:3, :3].T + self.ras_to_ijk[:3, 3] - self.offset
        return ndimage.map_coordinates(self.values, ijk.T, order=1, mode="constant", cval=0.0)


def _run_bounds(profile: np.ndarray, positions: np.ndarray, centre: float) -> tuple[float, float] | None:
    """Sub-sample bounds of the inside-run (profile >= 0.5) nearest to ``centre``, bridging short gaps."""
    inside = profile >= 0.5
    if not inside.any():
        return None
    step = positions[1] - positions[0]
    gap = int(round(GAP_BRIDGE_MM / step))
    if gap > 0:
        inside = ndimage.binary_closing(np.pad(inside, gap), structure=np.ones(2 * gap + 1))[gap:-gap] | inside
    runs, count = ndimage.label(inside)
    centre_index = int(np.clip(np.searchsorted(positions, centre), 0, len(positions) - 1))
    run_ids = np.arange(1, count + 1)
    distances = [
        0 if runs[centre_index] == r else np.min(np.abs(np.flatnonzero(runs == r) - centre_index)) for r in run_ids
    ]
    chosen = np.flatnonzero(runs == run_ids[int(np.argmin(distances))])
    first, last = chosen[0], chosen[-1]

    def crossing(outside_index, inside_index):
        if outside_index < 0 or outside_index >= len(profile):
            return positions[inside_index]
        a, b = profile[outside_index], profile[inside_index]
        t = (0.5 - a) / (b - a) if b != a else 0.5
        return positions[outside_index] + t * (positions[inside_index] - positions[outside_index])

    return crossing(first - 1, first), crossing(last + 1, last)


def _measure(vertebra: _Vertebra, labels: Volume, ct: Volume | None) -> VertebraResult:
    level = labels_mod.level_name(vertebra.label)
    frame = vertebra.frame
    body_points = vertebra.points[vertebra.body]
    voxel_ml = float(abs(np.linalg.det(labels.ijk_to_ras[:3, :3]))) / 1000.0
    body_volume = float(vertebra.body.sum()) * voxel_ml
    origin = body_points.mean(axis=0)
    result = VertebraResult(
        label=vertebra.label,
        level=level,
        centroid_ras=origin.tolist(),
        axes_ras={
            "superior": frame.superior.tolist(),
            "anterior": frame.anterior.tolist(),
            "right": frame.right.tolist(),
        },
        body_volume_ml=body_volume,
        body_voxels=int(vertebra.body.sum()),
    )
    body_voxels = np.argwhere(vertebra.mask)[vertebra.body] + np.array([s.start for s in vertebra.crop])
    cut = np.any(body_voxels == 0, axis=1) | np.any(body_voxels == np.array(labels.shape) - 1, axis=1)
    if vertebra.touches_edge and cut.any():
        result.complete = False
        result.incomplete_reason = "cut by the edge of the image"
    elif body_volume < MIN_BODY_VOLUME_ML:
        result.complete = False
        result.incomplete_reason = f"body of {body_volume:.2f} ml is too small to be a whole vertebral body"
    if ct is not None:
        _trabecular(result, vertebra, labels, ct, frame, origin)
    if not result.complete:
        return result

    sampler = _MaskSampler(vertebra, labels)
    local = frame.local(_sample(body_points), origin)
    x_mid = float(np.median(local[:, 0]))
    reach = float(np.ptp(local, axis=0).max()) + 10.0
    positions = np.arange(-reach, reach + SAMPLE_STEP_MM, SAMPLE_STEP_MM)
    z_centre = float(np.median(local[:, 2]))

    # Anterior and posterior margins on the mid-sagittal line, over the central part of the body's height.
    z_low, z_high = np.percentile(local[:, 2], [20, 80])
    anterior_edges, posterior_edges = [], []
    for z in np.linspace(z_low, z_high, 5):
        line = np.column_stack([np.full_like(positions, x_mid), positions, np.full_like(positions, z)])
        bounds = _run_bounds(sampler(frame.world(line, origin)), positions, float(np.median(local[:, 1])))
        if bounds:
            posterior_edges.append(bounds[0])
            anterior_edges.append(bounds[1])
    if not anterior_edges:
        result.complete = False
        result.incomplete_reason = "no body found on the mid-sagittal plane"
        return result
    y_anterior, y_posterior = max(anterior_edges), min(posterior_edges)
    depth = y_anterior - y_posterior
    lines = []  # (fraction of depth from the posterior margin, superior point, inferior point, height)
    for fraction in LINE_FRACTIONS:
        y = y_posterior + fraction * depth
        superior_z, inferior_z = [], []
        for dx in SIDE_LINE_OFFSETS_MM:
            line = np.column_stack([np.full_like(positions, x_mid + dx), np.full_like(positions, y), positions])
            bounds = _run_bounds(sampler(frame.world(line, origin)), positions, z_centre)
            if bounds:
                inferior_z.append(bounds[0])
                superior_z.append(bounds[1])
        if superior_z:
            top = frame.world(np.array([x_mid, y, float(np.mean(superior_z))]), origin)[0]
            bottom = frame.world(np.array([x_mid, y, float(np.mean(inferior_z))]), origin)[0]
            lines.append((fraction, top, bottom, float(np.linalg.norm(top - bottom))))
    points, heights = {}, {}
    for name, (low, high), pick in HEIGHT_BANDS:
        candidates = [line for line in lines if low - 1e-9 <= line[0] <= high + 1e-9]
        if not candidates:
            result.complete = False
            result.incomplete_reason = f"no endplates found for the {name} height"
            return result
        _, top, bottom, height = pick(candidates, key=lambda line: line[3])
        points[f"superior_{name}"] = top.tolist()
        points[f"inferior_{name}"] = bottom.tolist()
        heights[name] = height
    result.points_ras = points
    result.heights_mm = heights
    result.depth_mm = depth
    return result


def _trabecular(
    result: VertebraResult, vertebra: _Vertebra, labels: Volume, ct: Volume, frame: Frame, origin: np.ndarray
) -> None:
    """Median HU of the body's interior: the trabecular region of :mod:`.screen` (one definition for both)."""
    from .screen import RoiSettings, TrabecularMeasurement, measure_density

    grid = np.zeros(vertebra.mask.shape, dtype=bool)
    voxels = np.argwhere(vertebra.mask)[vertebra.body]
    grid[tuple(voxels.T)] = True
    offset = np.array([s.start for s in vertebra.crop], dtype=float)
    cropped = ct.with_array(ct.array[vertebra.crop])
    cropped.ijk_to_ras = ct.ijk_to_ras.copy()
    cropped.ijk_to_ras[:3, 3] = ct.ijk_to_world(offset)[0]
    settings = RoiSettings()
    density, region = measure_density(cropped, grid, frame.anterior, settings, result.level, result.label)
    # Screening of the same CT reuses it (not a dataclass field: never serialised): trabecular HU is measured once.
    result._trabecular = TrabecularMeasurement(ct.array, settings, density, vertebra.crop, region)
    result.trabecular_hu = density.median_hu
    result.trabecular_hu_iqr = density.iqr_hu
    result.trabecular_voxels = density.voxels
