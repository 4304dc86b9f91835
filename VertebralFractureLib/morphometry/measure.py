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
3. **Six points.** The body is sampled (trilinear, 0.5 mm across its depth, 0.2 mm along the superior axis) on
   parasagittal planes 1 mm apart across the central 40 % of its width. On each plane the section is cleaned
   (clefts shorter than 2 mm along the superior axis bridged, holes filled, detached pieces dropped). Its walls
   and endplates are fitted lines (a robust Theil-Sen line, then least squares over the samples near it): each
   wall through the first or last inside position over the central half of the section's height, each endplate
   through its surface over the rims 10-30 % and 70-90 % of the depth, clear of the central concavity and of the
   rounded edges. The four **corner points** lie where the endplate lines meet the wall lines, as the six-point
   placement of quantitative morphometry marks them; the two **middle points** lie on the endplates themselves at
   the median height of the central 40-60 % of the depth (a biconcave dip is below any line through the rims).
   Planes much lower than the others at the centre are dropped; each point is the median of its positions over
   the remaining planes, so a loss counts only where it shows on most planes, and a notch or hole on one plane
   does not. The **anterior**, **middle** and **posterior** heights are the distances between their two points
   (in the central plane), so a moved point changes its height exactly. The median section area over the planes
   is the body's mid-sagittal area.
4. **Volume** of the body in ml; **trabecular attenuation**: median HU of the interior region defined in
   :mod:`.screen` (away from the cortex and endplates, the posterior quarter of the depth excluded where the
   basivertebral vein enters).

A body is reported as incomplete (cut by the field of view) and is not graded only where the edge of the image
truly truncates it: a substantial cross-section of the body lies in a boundary plane of the array
(:data:`CUT_SECTION_FRACTION`). A body that merely touches the edge of an array cropped to the labels' bounding box
(its outermost slice holds only the tip of its rounded surface) is measured, and a few stray voxels on the edge
do not make it "cut".

Kept whole: the anatomical frame, body isolation, endplate and wall line fits and the six points are one
computation on one vertebra's crop; the thresholds it names are read together with DOMAIN.md's definitions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from VertebralFractureLib.errors import NoVertebraeError
from VertebralFractureLib.io import Volume, field_of_view, label_boxes
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import grade as grade_mod
from VertebralFractureLib.results import CaseResult, VertebraResult

log = logging.getLogger(__name__)

WALL_FIT_HEIGHT = (0.25, 0.75)
"""Each wall is the line fitted to the body's first (posterior) or last (anterior) inside position over this part of
the section's height, clear of the rounded rims and of the osteophytes that grow at the corners."""
MAX_WALL_OBLIQUITY_DEG = 10.0
"""The walls of a vertebral body meet its endplates nearly square (the body's outline in the sagittal plane is close
to a rectangle or, wedged, a trapezoid with both walls square to the mean endplate direction); a fitted wall leaning
further than this follows an irregular outline (an osteophyte, a bulge or notch of the mask) and is held to it."""
ENDPLATE_FIT_BANDS = ((0.10, 0.30), (0.70, 0.90))
"""Each endplate is the line fitted to its surface over these parts of the depth (fractions from the posterior to
the anterior wall): the rims on either side of the endplate's central concavity, which the line must not follow.
The corner points lie where the endplate lines meet the wall lines: the corners of the body that the six-point
placement of quantitative morphometry marks (Eastell 1991; McCloskey 1993; Genant 1993), and not the rounded edge
of the mask, which falls away within about 5-10 % of the depth of each wall."""
LINE_INLIER_MM = 1.5
"""Samples of an outline farther than this from its robust line are left out of the line's least-squares fit: a
bump or notch of the mask (a voxel or two on a 1 mm mask), not the wall or endplate the line stands for."""
MIDDLE_BAND = (0.40, 0.60)
"""The middle height is the median of the heights over this central part of the depth, on the endplates
themselves: a biconcave dip lies below any line through the rims."""
PLANE_BAND_FRACTION = 0.40
"""Heights are read on parasagittal planes across the central 40 % of the body's width (HealthiVert-GAN's band; a
single mid-sagittal plane falls into any notch or hole of a mask there)."""
PLANE_STEP_MM = 1.0
PLANE_MIN_RELATIVE_HEIGHT = 0.7
"""Planes whose central height is below this fraction of the median plane's are dropped (HealthiVert-GAN drops
columns shorter than 0.7 times the centre's: the plane grazes a rounded edge or a defect of the mask)."""
SAMPLE_STEP_MM = 0.2
"""Step along the superior axis at which each plane samples the mask (trilinear)."""
DEPTH_STEP_MM = 0.5
"""Step across the body's depth on each plane."""
GAP_BRIDGE_MM = 2.0
"""Clefts in a mask shorter than this along the superior axis are bridged (segmentation holes, not anatomy)."""
MIN_SECTION_MM2 = 20.0
"""A plane whose section of the body is smaller than this grazes its edge and is not measured."""
MIN_BODY_VOLUME_ML = 1.0
CANAL_MIN_AREA_MM2 = 20.0
BODY_ONLY_MAX_DEPTH_MM = 60.0
"""A vertebra mask with no canal and at most this antero-posterior extent is taken to be a body only."""
NEIGHBOUR_MAX_DISTANCE_MM = 90.0
CUT_SECTION_FRACTION = field_of_view.CUT_SECTION_FRACTION
CUT_MIN_SECTION_MM2 = field_of_view.CUT_MIN_SECTION_MM2


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
    canal_source: str | None = None  # "mask" or "CT": where the spinal canal behind the body was seen
    frame: Frame | None = None
    _centre_of_body: tuple | None = None  # (the body it belongs to, its centre)

    def body_points(self) -> np.ndarray:
        return self.points[self.body]

    def body_centre(self) -> np.ndarray:
        """Mean of the body's points (RAS), kept until the body changes: the frames, the orientation checks and
        the measurement all start from it."""
        if self._centre_of_body is None or self._centre_of_body[0] is not self.body:
            self._centre_of_body = (self.body, self.body_points().mean(axis=0))
        return self._centre_of_body[1]


@dataclass
class _FieldOfView:
    """Where the labels (and the CT on their grid) hold data: see :mod:`..io.field_of_view`."""

    boxes: list
    padding: float | None
    ct_array: np.ndarray | None
    cut_labels: dict
    label_boxes: list

    def voxel_extent_mm(self, direction: np.ndarray) -> float:
        """The labels' voxel size along a direction: that of the coarsest grid they were drawn on (a mask moved
        onto a finer CT grid keeps its own resolution)."""
        return max(float(np.sum(np.abs(np.asarray(box["ijk_to_ras"])[:3, :3].T @ direction)))
                   for box in self.label_boxes)

    @classmethod
    def of(cls, labels: Volume, ct: Volume | None) -> _FieldOfView:
        found = list(field_of_view.boxes(labels))
        padding = None
        if ct is not None:
            # The CT shares the labels' grid; the grids it was resampled from are fields of view as well.
            found += [box for box in ct.meta.get(field_of_view.FIELDS_OF_VIEW_KEY, []) if box not in found]
            padding = field_of_view.padding_value(ct.array)
        cut = {int(label): reason for label, reason in labels.meta.get(field_of_view.CUT_LABELS_KEY, {}).items()}
        return cls(boxes=found, padding=padding, ct_array=None if ct is None else ct.array, cut_labels=cut,
                   label_boxes=field_of_view.boxes(labels))


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


def measure_case(
    labels: Volume,
    ct: Volume | None = None,
    inputs: dict | None = None,
    progress=None,
    rules: grade_mod.GradingRules | None = None,
    boxes: list | None = None,
) -> CaseResult:
    """Measure and grade every vertebra of a VerSe-id label volume (CT, when given, on the same grid). ``rules``:
    the grading rules; by default those the ``inputs`` record asks for (``include_upper_thoracic``), so that every
    front end and every re-measure grades the same levels. ``boxes``: the labels' bounding boxes when known (see
    :func:`measure_vertebrae`)."""
    from VertebralFractureLib.morphometry import qc

    orientation: list[str] = []
    doubts: list[str] = []
    vertebrae = measure_vertebrae(labels, ct, progress, notes=orientation, boxes=boxes, doubts=doubts)
    grade_mod.grade_vertebrae(vertebrae, rules or grade_mod.rules_from_inputs(inputs))
    summary = grade_mod.summarize(vertebrae)
    case = CaseResult(vertebrae=vertebrae, patient=summary, inputs=dict(inputs or {}),
                      front_back_doubt=doubts[0] if doubts else None)
    # The one quality gate every front end passes: no grade leaves without a plausible segmentation behind it.
    report = qc.apply_quality_gate(case)
    case.warnings.extend(orientation)
    case.warnings.extend(grade_mod.voxel_size_warnings(vertebrae))
    for vertebra in vertebrae:
        if not vertebra.complete:
            case.warnings.append(f"{vertebra.level} not graded: {vertebra.incomplete_reason}")
        elif vertebra.genant_grade is None and report.status == qc.PASSED:
            reason = vertebra.not_assessed_reason
            if reason and not reason.startswith(qc.VERTEBRA_REASON_PREFIX):
                continue  # a level outside the grading's scope: no warning
            case.warnings.append(f"{vertebra.level} {reason or vertebra.grade_reason}")
    return case


def measure_vertebrae(labels: Volume, ct: Volume | None = None, progress=None,
                      notes: list[str] | None = None, boxes: list | None = None,
                      doubts: list[str] | None = None) -> list[VertebraResult]:
    """Measure every vertebra (not the sacrum or coccyx) of a VerSe-id label volume; results cranial to caudal.
    ``notes`` receives what a reader must know about the frame (front and back from the anatomy against the
    header); ``doubts`` why front and back could not be established (see :func:`_orient_from_anatomy`).
    ``boxes``: :func:`..io.label_boxes` of ``labels.array`` when the reader found them already."""
    if ct is not None and not ct.same_grid(labels):
        raise ValueError("the CT and the label map must share one grid (resample the label map first)")
    report = progress or (lambda fraction, message: None)
    array = labels.array
    objects = boxes if boxes is not None else label_boxes(array if array.min(initial=0) >= 0
                                                          else np.clip(array, 0, None))
    present = [
        label
        for label in range(1, len(objects) + 1)
        if objects[label - 1] is not None and labels_mod.is_vertebra(label)
    ]
    if not present:
        raise NoVertebraeError(f"{labels.path or 'label map'}: no vertebra labels")
    present = labels_mod.neighbours_in_order(present)
    threads = measuring_threads()
    work = dict(zip(present, _each(lambda label: _load_vertebra(labels, label, objects[label - 1]), present,
                                   threads)))
    view = _FieldOfView.of(labels, ct)

    # Pass 1: frames from the full-vertebra centroids, front and back from the anatomy, then the bodies.
    _assign_superior_axes(work, lambda v: v.centroid)
    mask_votes = _header_votes([v for v in work.values() if _measured_level(v.label)], labels)
    if mask_votes and sum(mask_votes.values()) * 2 < len(mask_votes):
        for vertebra in work.values():
            vertebra.frame = Frame(superior=vertebra.frame.superior, anterior=-vertebra.frame.anterior)
    measured = [v for v in work.values() if _measured_level(v.label)]
    for index, vertebra in enumerate(_each(lambda v: _isolate_body(v, labels) or v, measured, threads)):
        report(0.1 + 0.4 * (index + 1) / len(work), f"isolating the body of {labels_mod.level_name(vertebra.label)}")
    found, doubt = _orient_from_anatomy([v for v in work.values() if v.body is not None], labels, ct, mask_votes)
    if notes is not None:
        notes.extend(found)
    if doubts is not None and doubt:
        doubts.append(doubt)
    # Pass 2: the curve through the body centroids gives the final cranio-caudal axes.
    _assign_superior_axes(work, lambda v: v.centroid if v.body is None else v.body_centre())
    def measured_or_listed(vertebra: _Vertebra) -> VertebraResult:
        if not _measured_level(vertebra.label):
            return _listed_only(labels, vertebra.label, objects[vertebra.label - 1])
        return _measure(vertebra, labels, ct, view)

    results = []
    for index, result in enumerate(_each(measured_or_listed, list(work.values()), threads)):
        report(0.5 + 0.45 * (index + 1) / len(work), f"measuring {result.level}")
        results.append(result)
    for label in (labels_mod.SACRUM, labels_mod.COCCYX):
        if label < len(objects) + 1 and objects[label - 1] is not None:
            results.append(_listed_only(labels, label, objects[label - 1]))
    return results


MAX_MEASURING_THREADS = 4
"""Vertebrae are measured on at most this many threads at once (each vertebra is independent once the frames are
set; the array work in NumPy and SciPy's ndimage runs outside the interpreter lock)."""


def measuring_threads() -> int:
    """Threads one measurement uses: ``OMP_NUM_THREADS`` where set (Dask workers get 1: their cases already run in
    parallel), else the cores this process may use, at most :data:`MAX_MEASURING_THREADS`."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return min(int(given), MAX_MEASURING_THREADS)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_MEASURING_THREADS))


def _each(function, items: list, threads: int):
    """``function`` of every item, in the items' order, on up to ``threads`` threads (here, one after another)."""
    if threads <= 1 or len(items) <= 1:
        return map(function, items)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="measure") as pool:
        return list(pool.map(function, items))


def _measured_level(label: int) -> bool:
    """Thoracic and lumbar vertebrae are measured (T1-T3 serve as references); the cervical spine is only listed."""
    return labels_mod.rank(label) >= labels_mod.rank(labels_mod.label_from_level("T1"))


def _listed_only(labels: Volume, label: int, bounding: tuple[slice, ...]) -> VertebraResult:
    """A level outside the grading's scope (cervical spine, sacrum, coccyx): listed with its position and volume."""
    voxels = np.argwhere(labels.array[bounding] == label) + np.array([s.start for s in bounding])
    voxel_ml = float(abs(np.linalg.det(labels.ijk_to_ras[:3, :3]))) / 1000.0
    level = labels_mod.level_name(label)
    return VertebraResult(
        label=label,
        level=level,
        centroid_ras=labels.ijk_to_world(voxels.mean(axis=0).astype(float))[0].tolist(),
        body_volume_ml=len(voxels) * voxel_ml,
        not_assessed_reason=grade_mod.not_assessed_reason(level),
    )


def _load_vertebra(labels: Volume, label: int, bounding: tuple[slice, ...]) -> _Vertebra:
    shape = labels.shape
    crop = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, n)) for s, n in zip(bounding, shape))
    # C order in memory, the order of the points: finding them, and every scatter onto the crop and gather back
    # (the body, its largest part, its planes), walk the mask in its own memory order (NIfTI arrays are in F order).
    mask = np.ascontiguousarray(labels.array[crop] == label)
    ijk = np.argwhere(mask).astype(float) + np.array([s.start for s in crop], dtype=float)
    points = labels.ijk_to_world(ijk)
    return _Vertebra(
        label=label, crop=crop, mask=mask, points=points, centroid=points.mean(axis=0)
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
    """Find the spinal canal and keep the part of the vertebra anterior to it (twice: the canal refines the frame).
    The frame's anterior has been set from the anatomy before (see :func:`_header_votes`)."""
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
            vertebra.canal_source = None
            return
        canal_x, canal_y, canal_front, _ = canal
        body = np.einsum("ij,j->i", vertebra.points - vertebra.centroid, frame.anterior) > canal_front
        vertebra.body = _largest_component(vertebra, body)
        vertebra.canal_centre = frame.world(np.array([canal_x, canal_y, 0.0]), vertebra.centroid)[0]
        vertebra.canal_source = "mask"
        body_centre = vertebra.body_centre()
        vertebra.frame = Frame(
            superior=frame.superior, anterior=_orthogonal(body_centre - vertebra.canal_centre, frame.superior)
        )


BODY_SIDE_VOLUME_RATIO = 1.5
"""The vertebral body holds more of a vertebra's volume than the posterior elements behind the canal: 1.6-7.9 times
as much on the VerSe, TotalSegmentator and HealthiVert masks of T6-L5 (1.0-1.2 at T1-T5, where the long spinous and
transverse processes weigh as much). A side this much heavier is the front; a vertebra below it does not vote."""


def _header_votes(vertebrae: list[_Vertebra], labels: Volume) -> dict[int, bool]:
    """{label: True when the header's anterior is the patient's front} for the vertebrae whose mask shows the
    spinal canal with a clearly heavier side (the body, see :data:`BODY_SIDE_VOLUME_RATIO`)."""
    votes = {}
    for vertebra in vertebrae:
        local = vertebra.frame.local(vertebra.points, vertebra.centroid)
        canal = _find_canal(_sample(local)[:, :2], _footprint_resolution(labels, vertebra.frame.superior),
                            either_side=True)
        if canal is None:
            continue
        front = int((local[:, 1] > canal[2]).sum())
        back = int((local[:, 1] < canal[3]).sum())
        if front >= BODY_SIDE_VOLUME_RATIO * back:
            votes[vertebra.label] = True
        elif back >= BODY_SIDE_VOLUME_RATIO * front:
            votes[vertebra.label] = False
    return votes


CT_CANAL_BONE_HU = 200.0
"""Bone of the posterior elements around the spinal canal: cortical and dense trabecular bone lie above, the canal
(CSF 0-30 HU, epidural fat), discs and muscle below."""
CT_CANAL_REACH_MM = 45.0
"""The spinal canal's centre lies 20-35 mm behind the centre of a vertebral body (body depth 25-35 mm, canal depth
15-20 mm); the posterior elements are looked for within this distance of the body's centre."""


def _canal_from_ct(vertebra: _Vertebra, labels: Volume, ct: Volume) -> np.ndarray | None:
    """The spinal canal behind a body given without its posterior elements, seen in the CT: the hole enclosed by
    the body and the bone of the arch (above :data:`CT_CANAL_BONE_HU`) in the footprint over the body's height.
    Returns its centre (RAS) or None."""
    frame = vertebra.frame
    body_points = vertebra.body_points()
    centre = vertebra.body_centre()
    heights = frame.local(_sample(body_points), centre)[:, 2]
    reach = CT_CANAL_REACH_MM + 5.0
    corners = np.array([[x, y, z] for x in (-reach, reach) for y in (-reach, reach)
                        for z in (heights.min(), heights.max())])
    ijk = ct.world_to_ijk(frame.world(corners, centre))
    low = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(ct.shape))
    if np.any(high <= low):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    bone = np.argwhere(ct.array[box] > CT_CANAL_BONE_HU) + low
    local = frame.local(ct.ijk_to_world(bone), centre) if len(bone) else np.empty((0, 3))
    keep = ((local[:, 2] >= heights.min()) & (local[:, 2] <= heights.max())
            & (np.hypot(local[:, 0], local[:, 1]) <= reach))
    footprint = np.concatenate([frame.local(_sample(body_points), centre)[:, :2], local[keep, :2]])
    resolution = max(1.0, float(ct.spacing[:2].max()))
    canal = _find_canal(footprint, resolution, either_side=True, reach_mm=CT_CANAL_REACH_MM)
    if canal is None:
        return None
    return frame.world(np.array([canal[0], canal[1], 0.0]), centre)[0]


HEADER_ANTERIOR_RAS = np.array([0.0, 1.0, 0.0])
CANAL_MIN_OFFSET_MM = 8.0
"""A canal found in the CT whose centre lies nearer than this to the body's centre is not behind the body (the
canal's centre lies 20-35 mm behind it)."""


def _orient_from_anatomy(vertebrae: list[_Vertebra], labels: Volume, ct: Volume | None,
                         mask_votes: dict[int, bool]) -> tuple[list[str], str | None]:
    """Front and back of every vertebra from the anatomy, checked against the image header; returns the warnings
    and, when two anatomical signs disagree, why front and back are in doubt (None otherwise).

    The body lies in front of the spinal canal and the posterior elements: seen in the mask when it holds them
    (``mask_votes``, see :func:`_header_votes`), else in the CT (the canal behind a body of a bodies-only mask). The
    vertebrae where it was seen vote; their majority sets front and back for all. Where it finds the header's
    anterior pointing to the patient's back, the frames are turned and the reader is told; Ha and Hp are never
    swapped silently. With neither (a bodies-only mask without its CT) the header's front is used, unchecked.

    A canal seen in the CT in front of a bodies-only mask has two explanations: a header that mirrors the patient,
    or a mask that does not sit on the bodies (moved backwards onto the arches, where the bone in front encloses
    the canal). The lumbar curve tells them apart where it is seen (:data:`LORDOSIS_MIN_MM`): a mirrored header
    turns it too, a displaced mask does not. When it contradicts the canal, front and back are not established:
    the header's are kept and the doubt is returned, and quality control withholds every grade."""
    votes = dict(mask_votes)
    header_right = not votes or sum(votes.values()) * 2 >= len(votes)
    source = "in the mask"
    if ct is not None:
        for vertebra in vertebrae:
            if vertebra.label in votes or vertebra.canal_centre is not None:
                continue
            canal = _canal_from_ct(vertebra, labels, ct)
            body_centre = vertebra.body_centre()
            if canal is None or np.linalg.norm(body_centre - canal) < CANAL_MIN_OFFSET_MM:
                continue
            vertebra.canal_centre, vertebra.canal_source = canal, "CT"
            anterior = _orthogonal(body_centre - canal, vertebra.frame.superior)
            votes[vertebra.label] = float(np.dot(anterior, HEADER_ANTERIOR_RAS)) >= 0.0
            vertebra.frame = Frame(superior=vertebra.frame.superior, anterior=anterior)
        if not mask_votes and votes:
            source = "in the CT"
            header_right = sum(votes.values()) * 2 >= len(votes)
    doubt = None
    if source == "in the CT" and not header_right:
        lordosis = _lordosis_mm(vertebrae)
        if lordosis is not None and lordosis >= LORDOSIS_MIN_MM:
            doubt = (f"not established: in {len(votes) - sum(votes.values())} of {len(votes)} vertebrae the spinal "
                     f"canal seen in the CT lies on the side the image header calls anterior, but the lumbar spine "
                     f"bends {lordosis:.0f} mm towards that side, as a lordosis bends forward: the bodies-only mask "
                     "may not sit on the vertebral bodies (moved backwards), or the header is mirrored; check the "
                     "mask against the CT")
            header_right = True
            for vertebra in vertebrae:
                if vertebra.canal_source == "CT":  # the canal seen is not trusted: no line is drawn to it
                    vertebra.canal_centre, vertebra.canal_source = None, None
    if not votes:
        lordosis = _lordosis_mm(vertebrae)
        if lordosis is None or abs(lordosis) < LORDOSIS_MIN_MM:
            return [], None
        votes = {0: lordosis > 0}
        header_right = lordosis > 0
    for vertebra in vertebrae:
        if (float(np.dot(vertebra.frame.anterior, HEADER_ANTERIOR_RAS)) >= 0.0) != header_right:
            vertebra.frame = Frame(superior=vertebra.frame.superior, anterior=-vertebra.frame.anterior)
    notes = []
    agree = sum(votes.values())
    if doubt is not None:
        return [], doubt
    if not header_right:
        if 0 in votes:
            seen = ("the lumbar spine bends towards the side the image header calls posterior (a lordosis bends "
                    "forward; the bodies-only mask shows no spinal canal)")
        else:
            seen = (f"in {len(votes) - agree} of {len(votes)} vertebrae the spinal canal ({source}) lies on the side "
                    "the image header calls anterior")
        notes.append(f"front and back taken from the anatomy: {seen}, so the header's anterior is the patient's back "
                     "(a mirrored or LPS/RAS-confused orientation); check the file's orientation")
    dissent = [labels_mod.level_name(label) for label, vote in votes.items() if vote != header_right and label]
    if dissent:
        notes.append(f"front and back of {', '.join(dissent)} taken from the other vertebrae: the spinal canal was "
                     "not found on the same side")
    return notes, None


LORDOSIS_MIN_MM = 4.0
"""The lumbar spine curves forward (lordosis): the centres of the middle lumbar bodies lie 10-20 mm in front of the
line through L1 and L5 in adults standing or lying. A bodies-only mask without its CT shows no canal; its front is
checked against this curve when the bend is at least this large in either direction."""
LORDOSIS_MIN_BODIES = 4


def _lordosis_mm(vertebrae: list[_Vertebra]) -> float | None:
    """How far (mm, along the header's anterior) the middle lumbar bodies' centres lie in front of the line through
    the first and last lumbar bodies; None with fewer than :data:`LORDOSIS_MIN_BODIES` lumbar bodies."""
    lumbar = [v for v in vertebrae if labels_mod.level_name(v.label).startswith("L")]
    if len(lumbar) < LORDOSIS_MIN_BODIES:
        return None
    lumbar.sort(key=lambda v: labels_mod.rank(v.label))
    centres = np.array([v.body_centre() for v in lumbar])
    chord = _unit(centres[-1] - centres[0])
    offsets = centres[1:-1] - centres[0]
    offsets = offsets - np.outer(offsets @ chord, chord)
    return float(np.mean(offsets @ _orthogonal(HEADER_ANTERIOR_RAS, chord)))


def _rasterise(xy: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    low = xy.min(axis=0) - 2 * resolution
    index = np.floor((xy - low) / resolution).astype(int)
    image = np.zeros(index.max(axis=0) + 3, dtype=bool)
    image.ravel()[index[:, 0] * image.shape[1] + index[:, 1]] = True  # one flat index: faster than two
    return image, low


def _find_canal(xy: np.ndarray, resolution: float, either_side: bool = False,
                reach_mm: float | None = None) -> tuple[float, float, float, float] | None:
    """(x, y of the canal centre, y of its anterior and of its posterior edge) in local mm, or None when the footprint
    has no canal. The canal is the largest hole near the midline behind the centre (``either_side``: on either side,
    to decide which side is the front); ``reach_mm``: its centre lies within this distance of the footprint's
    origin."""
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
        if reach_mm is not None and np.hypot(*centre) > reach_mm:
            continue
        if centre[1] > 0 and not either_side:
            continue
        # The canal lies on the midline behind the body: prefer large holes near x = 0.
        score = area / (1.0 + abs(centre[0]) / 5.0)
        if best is None or score > best[0]:
            column = pixels[np.abs((pixels[:, 0] + 0.5) * resolution + low[0] - centre[0]) <= max(resolution, 2.0)]
            front = (column[:, 1].max() + 1.0) * resolution + low[1]
            back = column[:, 1].min() * resolution + low[1]
            best = (score, float(centre[0]), float(centre[1]), float(front), float(back))
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
    # The points are the mask's voxels in C order, the order boolean indexing visits them: no index arrays needed.
    grid = np.zeros(vertebra.mask.shape, dtype=bool)
    grid[vertebra.mask] = keep
    # Labelled on the box of the kept voxels only (the body: about half the vertebra's crop); the components and
    # their order (the first voxel of each in C order) are those of the whole crop.
    box = labels_mod.occupied_box(grid)
    if box is None:
        return keep
    components, count = ndimage.label(grid[box])
    if count <= 1:
        return keep
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    grid[box] = components == int(np.argmax(sizes))
    return grid[vertebra.mask]


def _measure(vertebra: _Vertebra, labels: Volume, ct: Volume | None, view: _FieldOfView) -> VertebraResult:
    level = labels_mod.level_name(vertebra.label)
    frame = vertebra.frame
    body_points = vertebra.body_points()
    voxel_ml = float(abs(np.linalg.det(labels.ijk_to_ras[:3, :3]))) / 1000.0
    body_volume = float(vertebra.body.sum()) * voxel_ml
    origin = vertebra.body_centre()
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
        voxel_extent_mm=view.voxel_extent_mm(frame.superior),
    )
    truncation = _truncation(vertebra, labels, view, body_points)
    if truncation:
        result.complete = False
        result.incomplete_reason = f"cut by the edge of the image ({truncation})"
    elif body_volume < MIN_BODY_VOLUME_ML:
        result.complete = False
        result.incomplete_reason = f"body of {body_volume:.2f} ml is too small to be a whole vertebral body"
    if ct is not None:
        _trabecular(result, vertebra, labels, ct, frame, origin)
    if not result.complete:
        return result

    profile = _plane_profiles(vertebra, labels, frame, origin, body_points)
    if profile is None:
        result.complete = False
        result.incomplete_reason = "no body found on the central sagittal planes"
        return result
    result.points_ras, result.heights_mm = _six_points(profile, frame, origin)
    result.depth_mm = profile.depth
    result.midsagittal_area_mm2 = profile.area_mm2
    return result


@dataclass
class _PlaneShape:
    """Six points of the body's outline on one parasagittal plane (local mm: y anterior, z superior)."""

    corners: dict  # (posterior|anterior, superior|inferior) -> (y, z): endplate line meets wall line
    middle: tuple  # (y, superior z, inferior z) at the middle height's line
    depth: float
    area_mm2: float


@dataclass
class _Profile:
    """The six points, medians over the kept central planes (local mm: x right, y anterior, z superior)."""

    x_mid: float
    points: dict  # name (superior_anterior, ...) -> (y, z)
    depth: float
    area_mm2: float  # median area of the body's section on the kept planes
    planes: int


def _plane_profiles(vertebra: _Vertebra, labels: Volume, frame: Frame, origin: np.ndarray,
                    body_points: np.ndarray) -> _Profile | None:
    """Sample the body on parasagittal planes across its central width; six points per plane, then medians.
    ``body_points``: the points of the body (RAS)."""
    local = frame.local(body_points, origin)
    x_mid = float(np.median(local[:, 0]))
    width = float(np.ptp(local[:, 0]))
    count = int(PLANE_BAND_FRACTION * width / 2 / PLANE_STEP_MM)
    plane_x = x_mid + PLANE_STEP_MM * np.arange(-count, count + 1)
    margin = 3.0
    ys = np.arange(local[:, 1].min() - margin, local[:, 1].max() + margin, DEPTH_STEP_MM)
    zs = np.arange(local[:, 2].min() - margin, local[:, 2].max() + margin, SAMPLE_STEP_MM)
    body_grid = np.zeros(vertebra.mask.shape, dtype=np.float32)
    body_grid[vertebra.mask] = vertebra.body  # the points are the mask's voxels in C order
    offset = np.array([s.start for s in vertebra.crop], dtype=float)
    # Local (x, y, z) -> crop voxel index is affine; the grid is separable, so each index is a sum of three axes.
    to_index = labels.ras_to_ijk[:3, :3] @ np.stack([frame.right, frame.anterior, frame.superior], axis=1)
    start = labels.ras_to_ijk[:3, :3] @ origin + labels.ras_to_ijk[:3, 3] - offset
    shape = (len(plane_x), len(ys), len(zs))
    ijk = np.empty((3,) + shape, dtype=np.float32)
    for row in range(3):
        ijk[row] = (
            to_index[row, 0] * plane_x[:, None, None]
            + to_index[row, 1] * ys[None, :, None]
            + to_index[row, 2] * zs[None, None, :]
            + start[row]
        )
    values = ndimage.map_coordinates(body_grid, ijk.reshape(3, -1), order=1, mode="constant", cval=0.0)
    values = values.reshape(shape)
    inside = values >= 0.5
    # Short clefts along the superior axis are bridged on every plane at once.
    inside |= _closed_along_last_axis(inside, max(1, int(round(GAP_BRIDGE_MM / SAMPLE_STEP_MM))))
    planes = []
    for plane, section in zip(values, _clean_sections(inside)):
        if section is None:
            continue
        measured = _plane_shape(section, plane, ys, zs)
        if measured is not None:
            planes.append(measured)
    if not planes:
        return None
    central_heights = np.array([p.middle[1] - p.middle[2] for p in planes])
    kept = [p for p, h in zip(planes, central_heights) if h >= PLANE_MIN_RELATIVE_HEIGHT * np.median(central_heights)]
    points = {}
    for wall in ("posterior", "anterior"):
        for endplate in ("superior", "inferior"):
            corners = np.array([p.corners[wall, endplate] for p in kept])
            points[f"{endplate}_{wall}"] = tuple(np.median(corners, axis=0))
    middle = np.median(np.array([p.middle for p in kept]), axis=0)
    points["superior_middle"] = (middle[0], middle[1])
    points["inferior_middle"] = (middle[0], middle[2])
    return _Profile(
        x_mid=x_mid,
        points=points,
        depth=float(np.median([p.depth for p in kept])),
        area_mm2=float(np.median([p.area_mm2 for p in kept])),
        planes=len(kept),
    )


def _closed_along_last_axis(inside: np.ndarray, gap: int) -> np.ndarray:
    """Binary closing of ``inside`` by a line of 2 ``gap`` + 1 samples along its last axis, nothing beyond its ends
    (the closing of the array padded by ``gap`` on both ends, cut back): the running maximum then minimum of one
    axis, the same voxels as ``ndimage.binary_closing`` with that line, several times faster."""
    size = 2 * gap + 1
    padded = np.pad(inside.view(np.uint8), ((0, 0), (0, 0), (gap, gap)))
    dilated = ndimage.maximum_filter1d(padded, size, axis=-1, mode="constant", cval=0)
    return ndimage.minimum_filter1d(dilated, size, axis=-1, mode="constant", cval=0)[:, :, gap:-gap].astype(bool)


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
"""Connectivity within each plane of a stack (first axis) and none across: ``ndimage.label`` labels every plane
at once as it would label each alone."""


def _clean_sections(inside: np.ndarray) -> list[np.ndarray | None]:
    """The body's section on each plane of ``inside`` (planes along the first axis): holes filled, pieces detached
    from the largest one dropped; None where the plane holds no section of :data:`MIN_SECTION_MM2`.

    The planes are labelled in one call (one call per plane costs more than the labelling); labels are numbered in
    raster order, so within a plane in the order a label of that plane alone gives them, and the largest piece of
    a plane is the same (the first of equal ones)."""
    # Holes: background pieces that do not reach the border of their plane (faster than iterative hole filling).
    background, _ = ndimage.label(~inside, structure=_IN_PLANE)
    border = np.unique(np.concatenate([background[:, 0].ravel(), background[:, -1].ravel(),
                                       background[:, :, 0].ravel(), background[:, :, -1].ravel()]))
    filled = inside | ~np.isin(background, border)
    pieces, _ = ndimage.label(filled, structure=_IN_PLANE)
    sizes = np.bincount(pieces.ravel())
    # Numbered in raster order, a plane's pieces are the labels after those of the planes before it.
    last_label = np.maximum.accumulate(pieces.reshape(len(pieces), -1).max(axis=1))
    first_label = np.concatenate([[1], last_label[:-1] + 1])
    sections = []
    for plane_inside, plane_filled, plane_pieces, first, last in zip(inside, filled, pieces, first_label,
                                                                     last_label):
        if not plane_inside.any():
            sections.append(None)
            continue
        if last > first:
            plane_filled = plane_pieces == int(first + np.argmax(sizes[first:last + 1]))
        sections.append(plane_filled if plane_filled.sum() * DEPTH_STEP_MM * SAMPLE_STEP_MM >= MIN_SECTION_MM2
                        else None)
    return sections


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array without NaN, the same value (the middle one, or the mean of the middle two):
    taken four times per fitted line, thousands of times per case, where np.median's general checks cost more than
    the partition."""
    middle = len(values) // 2
    if len(values) % 2:
        return float(np.partition(values, middle)[middle])
    lower, upper = np.partition(values, (middle - 1, middle))[middle - 1:middle + 1]
    return float((lower + upper) / 2)


def _robust_line(x: np.ndarray, y: np.ndarray, group: np.ndarray | None = None) -> tuple[float, float] | None:
    """(intercept, slope) of the Theil-Sen line y = a + b x (Sen 1968): the median of the pairwise slopes, unmoved by
    a bump or notch of the outline holding fewer than about 29 % of the samples. With ``group`` (bool), only pairs
    with one sample in each group count: samples of a mask's outline are quantized to its voxels, and the many
    pairs inside one group of a staircase edge have slope 0, which would pull the median towards a level line. The
    intercept is taken as scipy.stats.theilslopes takes it, median(y) - b median(x); written out because importing
    scipy.stats would add half a second to every ``measure`` run."""
    if len(x) < 3 or np.ptp(x) <= 0:
        return None
    if group is None:
        first, second = np.triu_indices(len(x), k=1)
    else:
        first, second = (index.ravel() for index in np.meshgrid(np.flatnonzero(group), np.flatnonzero(~group)))
    dx = x[second] - x[first]
    valid = dx != 0
    if not valid.any():
        return None
    slope = _median((y[second] - y[first])[valid] / dx[valid])
    intercept = float(_median(y) - slope * _median(x))
    # Least squares over the samples near that line: a median locks onto the steps of a staircase edge, a mean
    # over many steps does not, and the samples left out (a bump, a notch) are those a median ignores too.
    near = np.abs(y - intercept - slope * x) <= LINE_INLIER_MM
    if near.sum() >= 3 and np.ptp(x[near]) > 0 and (group is None or (group[near].any() and (~group[near]).any())):
        slope, intercept = np.polyfit(x[near], y[near], 1)
    return float(intercept), float(slope)


def _plane_shape(section: np.ndarray, values: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> _PlaneShape | None:
    """The six points on one plane: walls and endplates as fitted lines, the corners where they meet (see
    :data:`WALL_FIT_HEIGHT`, :data:`ENDPLATE_FIT_BANDS`), the middle points on the endplates themselves."""
    columns = np.flatnonzero(section.any(axis=1))
    rows = np.flatnonzero(section.any(axis=0))
    if len(columns) < 3 or len(rows) < 3:
        return None
    # Walls: the first and last inside position of each row over the central part of the section's height.
    low_row, high_row = (rows[0] + f * (rows[-1] - rows[0]) for f in WALL_FIT_HEIGHT)
    central_rows = rows[(rows >= low_row) & (rows <= high_row)]
    first = np.argmax(section[:, central_rows], axis=0)
    last = section.shape[0] - 1 - np.argmax(section[::-1, central_rows], axis=0)
    posterior_wall = _robust_line(zs[central_rows], ys[first] - 0.5 * DEPTH_STEP_MM)
    anterior_wall = _robust_line(zs[central_rows], ys[last] + 0.5 * DEPTH_STEP_MM)
    if posterior_wall is None or anterior_wall is None:
        return None
    z_centre = _median(zs[central_rows])
    posterior = posterior_wall[0] + posterior_wall[1] * z_centre
    anterior = anterior_wall[0] + anterior_wall[1] * z_centre
    depth = anterior - posterior
    if depth < 5.0:
        return None
    inside = section[columns]
    low = np.argmax(inside, axis=1)
    high = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    tops = zs[high] + _crossing(values[columns], high, +1)
    bottoms = zs[low] - _crossing(values[columns], low, -1)
    fraction = (ys[columns] - posterior) / depth
    (posterior_low, posterior_high), (anterior_low, anterior_high) = ENDPLATE_FIT_BANDS
    posterior_rim = (fraction >= posterior_low) & (fraction <= posterior_high)
    rim = posterior_rim | ((fraction >= anterior_low) & (fraction <= anterior_high))
    endplates = {}
    for endplate, surface in (("superior", tops), ("inferior", bottoms)):
        endplates[endplate] = _robust_line(ys[columns][rim], surface[rim], group=posterior_rim[rim])
        if endplates[endplate] is None:
            return None
    # A wall leaning further than MAX_WALL_OBLIQUITY_DEG from square to the endplates follows a bulge of the mask:
    # it is turned back to that limit about its point at mid-height.
    square = np.arctan(-0.5 * (endplates["superior"][1] + endplates["inferior"][1]))
    limit = np.deg2rad(MAX_WALL_OBLIQUITY_DEG)
    walls = {}
    for wall, fitted, centre_y in (("posterior", posterior_wall, posterior), ("anterior", anterior_wall, anterior)):
        b = float(np.tan(np.clip(np.arctan(fitted[1]), square - limit, square + limit)))
        walls[wall] = (centre_y - b * z_centre, b)
    corners = {}
    for endplate, (c, d) in endplates.items():
        for wall, (a, b) in walls.items():
            # Endplate z = c + d y meets wall y = a + b z.
            z = (c + d * a) / (1.0 - d * b)
            corners[wall, endplate] = (a + b * z, z)
    middle_band = (fraction >= MIDDLE_BAND[0]) & (fraction <= MIDDLE_BAND[1])
    if middle_band.sum() < 1:
        return None
    # The middle height: the median line of the central band, on the endplates themselves (a biconcave dip is
    # below any line through the rims).
    heights = (tops - bottoms)[middle_band]
    chosen = np.flatnonzero(middle_band)[np.argsort(heights)[len(heights) // 2]]
    return _PlaneShape(
        corners=corners,
        middle=(float(ys[columns][chosen]), float(tops[chosen]), float(bottoms[chosen])),
        depth=float(depth),
        area_mm2=float(section.sum() * DEPTH_STEP_MM * SAMPLE_STEP_MM),
    )


def _crossing(values: np.ndarray, index: np.ndarray, direction: int) -> np.ndarray:
    """Distance beyond the last inside sample to the 0.5 crossing of the trilinear profile (sub-sample edge)."""
    rows = np.arange(len(index))
    outside = np.clip(index + direction, 0, values.shape[1] - 1)
    a, b = values[rows, index], values[rows, outside]
    t = np.where(a > b, (a - 0.5) / np.maximum(a - b, 1e-6), 0.5)
    return SAMPLE_STEP_MM * np.clip(t, 0.0, 1.0)


def _six_points(profile: _Profile, frame: Frame, origin: np.ndarray) -> tuple[dict, dict]:
    """Superior and inferior points of the three heights (RAS) and the heights (the distances between them)."""
    points = {
        name: frame.world(np.array([profile.x_mid, y, z]), origin)[0].tolist()
        for name, (y, z) in profile.points.items()
    }
    heights = {
        name: float(np.linalg.norm(np.subtract(points[f"superior_{name}"], points[f"inferior_{name}"])))
        for name in ("anterior", "middle", "posterior")
    }
    return points, heights


def _truncation(vertebra: _Vertebra, labels: Volume, view: _FieldOfView, body_points: np.ndarray) -> str | None:
    """How a field of view truncates the body (see :data:`CUT_SECTION_FRACTION`), or None when it is whole.

    Every field of view counts: the label array's own, the grids the labels or the CT were resampled from (a mask
    stored on a cropped grid, a CT a tool resampled onto a finer one) and the CT's constant padding. Sections are
    taken in slabs one label voxel thick parallel to each face (to the padding's surface), so on the label array's
    own faces a slab is one plane of voxels. ``body_points``: the points of the body (RAS)."""
    if vertebra.label in view.cut_labels:
        return view.cut_labels[vertebra.label]
    voxel_mm3 = float(abs(np.linalg.det(labels.ijk_to_ras[:3, :3])))
    for number, box in enumerate(view.boxes):
        for distance, normal in field_of_view.face_distances(box, body_points):
            thickness = 2.0 * _voxel_half_extent(labels, normal)
            found = field_of_view.boundary_section(distance, thickness, voxel_mm3)
            if found:
                where = "the boundary plane" if number == 0 else "the edge of the field of view it was resampled from"
                return f"{found}, lies in {where}"
    if view.padding is not None:
        found = _padding_section(vertebra, labels, view)
        if found:
            return f"{found}, lies against the CT's padding (no data beyond)"
    return None


def _padding_section(vertebra: _Vertebra, labels: Volume, view: _FieldOfView) -> str | None:
    """The body's section next to the CT's padding (see :func:`..io.field_of_view.section_against`)."""
    padding = field_of_view.padding_mask(view.ct_array[vertebra.crop], view.padding)
    body = np.zeros(vertebra.mask.shape, dtype=bool)
    body[vertebra.mask] = vertebra.body  # the points are the mask's voxels in C order
    return field_of_view.section_against(padding, body, labels.spacing)


def _trabecular(
    result: VertebraResult, vertebra: _Vertebra, labels: Volume, ct: Volume, frame: Frame, origin: np.ndarray
) -> None:
    """Median HU of the body's interior: the trabecular region of :mod:`.screen` (one definition for both)."""
    from VertebralFractureLib.morphometry.density import RoiSettings, TrabecularMeasurement, measure_density

    grid = np.zeros(vertebra.mask.shape, dtype=bool)
    grid[vertebra.mask] = vertebra.body  # the points are the mask's voxels in C order
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
