"""Fractures of known size made on real anatomy: a normal vertebra of a real VerSe mask (radiologists' grade 0) is
compressed along its own superior axis by a known amount (wedge, biconcave, crush, posterior at 15, 22, 30 and
45 %), and the measured reduction and the grade are checked.

The compression resamples the vertebra's mask with a scale along the superior axis that depends on the position
across the depth (wedge: 1 at the posterior corners falling linearly to 1 - r at the anterior corners; posterior,
its mirror: 1 at the anterior corners falling to 1 - r at the posterior ones, Genant's crush type with the posterior
height reduced; biconcave: 1 - r over the middle of the depth, tapering to 1 before the walls' bands; crush: 1 - r
everywhere),
centred between the endplates, so the imposed reduction of the ratio the grade depends on is r.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from VertebralFractureLib import io
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import grade, measure

TOLERANCE = 0.03
"""Measured reduction within 3 percentage points of the imposed one."""
WEDGE_OVERHANG = 0.2
"""How far (fraction of the depth) the wedge's linear scale goes on behind the posterior and in front of the anterior
corner; beyond, it is constant, so the posterior elements keep their shape."""
SOURCE = ("verse19/sub-verse010_seg-vert_msk.nii.gz", "L3", ("L2", "L3", "L4"))


def _crop(volume: io.Volume, labels: tuple[int, ...], margin: int = 4) -> io.Volume:
    inside = np.argwhere(np.isin(volume.array, labels))
    region = tuple(
        slice(max(0, low - margin), min(n, high + margin + 1))
        for low, high, n in zip(inside.min(axis=0), inside.max(axis=0), volume.shape)
    )
    cropped = volume.with_array(np.ascontiguousarray(np.where(np.isin(volume.array[region], labels),
                                                              volume.array[region], 0)))
    cropped.ijk_to_ras = volume.ijk_to_ras.copy()
    cropped.ijk_to_ras[:3, 3] = volume.ijk_to_world(np.array([s.start for s in region], dtype=float))[0]
    return cropped


@pytest.fixture(scope="module")
def anatomy(shared_file):
    path, level, levels = SOURCE
    volume = io.read_label_map(shared_file(path)).volume
    ids = tuple(labels_mod.label_from_level(name) for name in levels)
    cropped = _crop(volume, ids)
    baseline = measure.measure_case(cropped)
    vertebra = baseline.vertebra(level)
    assert vertebra.genant_grade == 0, vertebra.grade_reason
    return cropped, baseline, labels_mod.label_from_level(level)


def _compress(volume: io.Volume, vertebra, label: int, kind: str, reduction: float) -> io.Volume:
    """The label map with one vertebra compressed along its superior axis (see the module docstring)."""
    superior = np.array(vertebra.axes_ras["superior"])
    anterior = np.array(vertebra.axes_ras["anterior"])
    points = {name: np.array(value) for name, value in vertebra.points_ras.items()}
    y_of = {name: float(points[f"superior_{name}"] @ anterior) for name in ("anterior", "middle", "posterior")}
    z_centre = 0.5 * float((points["superior_middle"] + points["inferior_middle"]) @ superior)
    depth = vertebra.depth_mm

    # Compression only shrinks the vertebra: its own bounding box holds the result.
    inside = np.argwhere(volume.array == label)
    region = tuple(slice(low, high + 1) for low, high in zip(inside.min(axis=0), inside.max(axis=0)))
    shape = tuple(s.stop - s.start for s in region)
    ijk = np.indices(shape, dtype=float).reshape(3, -1).T + np.array([s.start for s in region])
    world = volume.ijk_to_world(ijk)
    y, z = world @ anterior, world @ superior
    if kind in ("wedge", "posterior"):
        # Linear beyond the corners of the central plane too (to WEDGE_OVERHANG): the walls of the other measured
        # planes lie a few per cent of the depth in front of or behind them, and their corners must see the same
        # linear wedge.
        t = np.clip((y - y_of["posterior"]) / (y_of["anterior"] - y_of["posterior"]), -WEDGE_OVERHANG,
                    1.0 + WEDGE_OVERHANG)
        scale = 1.0 - reduction * (t if kind == "wedge" else 1.0 - t)
    elif kind == "biconcave":
        off_centre = np.abs(y - y_of["middle"]) / depth
        scale = 1.0 - reduction * np.clip((0.27 - off_centre) / 0.12, 0.0, 1.0)
    else:
        scale = np.full_like(y, 1.0 - reduction)
    source_world = world + np.outer((z_centre + (z - z_centre) / scale) - z, superior)
    source_ijk = volume.world_to_ijk(source_world)
    mask = (volume.array == label).astype(np.float32)
    compressed = ndimage.map_coordinates(mask, source_ijk.T, order=1, mode="constant").reshape(shape) >= 0.5
    array = np.where(volume.array == label, 0, volume.array)
    array[region][compressed & (array[region] == 0)] = label
    return volume.with_array(array.astype(volume.array.dtype))


def _allowed_grades(reduction: float, rules=grade.DEFAULT_RULES) -> set[int]:
    """The Genant band of the imposed reduction; the adjacent band too within the tolerance of a band's edge."""
    return {
        grade.grade_from_reduction(rules.reduction_scale * (reduction + d), rules) for d in (-TOLERANCE, 0, TOLERANCE)
    }


RATIO = {
    "wedge": lambda h: h["anterior"] / h["posterior"],
    "biconcave": lambda h: h["middle"] / h["posterior"],
    "crush": lambda h: h["posterior"],
    "posterior": lambda h: h["posterior"],
}
MORPHOLOGY = {"wedge": "wedge", "biconcave": "biconcave", "crush": "crush", "posterior": "crush"}
"""Genant's morphology name of each compression: a reduced posterior height is a crush."""


@pytest.mark.parametrize("reduction", [0.15, 0.22, 0.30, 0.45])
@pytest.mark.parametrize("kind", ["wedge", "biconcave", "crush", "posterior"])
def test_known_compression_of_a_real_vertebra(anatomy, kind, reduction):
    volume, baseline, label = anatomy
    before = baseline.vertebra(label)
    case = measure.measure_case(_compress(volume, before, label, kind, reduction))
    after = case.vertebra(label)
    measured = 1.0 - RATIO[kind](after.heights_mm) / RATIO[kind](before.heights_mm)
    assert measured == pytest.approx(reduction, abs=TOLERANCE), (kind, reduction, before.heights_mm, after.heights_mm)
    assert after.genant_grade in _allowed_grades(reduction), after.grade_reason
    if after.genant_grade >= 1:
        assert after.morphology == MORPHOLOGY[kind], after.grade_reason
    assert after.fracture_score >= before.fracture_score
    for level in ("L2", "L4"):
        assert case.vertebra(level).genant_grade == 0
