"""Clinical report: straightened sagittal reformat geometry, self-contained HTML, valid PDF."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from screen_phantoms import spine_phantom

from VertebralFractureLib import io
from VertebralFractureLib.io import Volume
from VertebralFractureLib.outputs import clinical as report_clinical
from VertebralFractureLib.outputs import publish
from VertebralFractureLib.screening import recommend as screen

BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"


def _arc_centroids(count=5, radius=150.0, step_deg=10.0):
    """Centroids on a sagittal circle (kyphotic curve) in RAS: y = anterior, z = superior."""
    angles = np.deg2rad(np.arange(count) * step_deg)
    return np.stack([np.zeros(count), radius * (1 - np.cos(angles)), -radius * np.sin(angles)], axis=1)


def test_straightened_view_follows_the_curve():
    centroids = _arc_centroids()
    view = report_clinical.StraightenedView(centroids, step_mm=0.5, extend_mm=10.0)
    # The centre line passes through every centroid: each projects to offset 0.
    arc = 150.0 * np.deg2rad(10.0)
    s_values = []
    for centroid in centroids:
        u, s = view.project(centroid)
        assert abs(u) < 0.6
        s_values.append(s)
    # Distances along the straightened spine are arc lengths (true lengths along the curve).
    assert np.allclose(np.diff(s_values), arc, atol=0.8)
    # A point 10 mm in front of the third centroid, perpendicular to the curve, lies at u = +10 mm.
    tangent = centroids[3] - centroids[1]
    tangent /= np.linalg.norm(tangent)
    anterior = np.array([0.0, 1.0, 0.0]) - tangent[1] * tangent
    anterior /= np.linalg.norm(anterior)
    u, s = view.project(centroids[2] + 10.0 * anterior)
    assert u == pytest.approx(10.0, abs=0.5) and s == pytest.approx(s_values[2], abs=0.6)


def test_straightened_image_shows_structures_where_projected():
    centroids = _arc_centroids()
    shape = (60, 120, 120)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-30.0, -20.0, -100.0]
    array = np.zeros(shape, dtype=np.float32)
    volume = Volume(array=array, ijk_to_ras=affine)
    # A bright 4 mm cube 12 mm anterior of the middle centroid.
    target = centroids[2] + np.array([0.0, 12.0, 0.0])
    ijk = np.round(volume.world_to_ijk(target)[0]).astype(int)
    array[ijk[0] - 2:ijk[0] + 2, ijk[1] - 2:ijk[1] + 2, ijk[2] - 2:ijk[2] + 2] = 1000.0
    view = report_clinical.StraightenedView(centroids, step_mm=0.5, extend_mm=10.0)
    image = view.sample(volume, slab_mm=0.0, cval=0.0)
    row, column = np.unravel_index(int(np.argmax(image)), image.shape)
    u, s = view.project(target)
    assert abs(view.u[column] - u) <= 2.5 and abs(view.s[row] - s) <= 2.5


@pytest.fixture(scope="module")
def example_report(shared_file, tmp_path_factory):
    from VertebralFractureLib.morphometry import measure

    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    bodies = io.read_label_map(shared_file(BODIES), "verse", reference=ct)
    case = measure.measure_case(bodies.volume, ct)
    # A reviewer grades L2 as a moderate wedge fracture: the report must show it in colour and in words.
    case.vertebra("L2").grade_override = 2
    case.vertebra("L2").morphology_override = "wedge"
    result = screen.screen_case(bodies.volume, ct, case)
    out = tmp_path_factory.mktemp("report")
    written = report_clinical.write_clinical_report(case, result, out, bodies.volume, ct)
    return case, result, written


def test_html_is_self_contained_and_complete(example_report):
    case, result, written = example_report
    text = open(written["report_html"], encoding="utf-8").read()
    # No external reference of any kind: every image is inline, no links, scripts or style sheets fetched.
    assert not re.search(r"https?://|<link\b|<script\b|@import|url\(", text, re.IGNORECASE)
    sources = re.findall(r'<img[^>]*src="([^"]+)"', text)
    assert len(sources) == 2
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # The recommendation, its confidence and reasons, every level and the caveats are in it.
    assert result.recommendation.statement.replace("<", "&lt;").replace(">", "&gt;") in text
    assert "Moderate (grade 2) wedge fracture of L2" in text
    for vertebra in case.vertebrae:
        assert f"<td>{vertebra.level}</td>" in text
    assert f'background:{report_clinical.GRADE_COLORS[2]}">2 moderate' in text
    assert f"{result.measured_hu:.0f} HU" in text
    assert "Caveats" in text and "does not replace DXA" in text


def test_pdf_is_valid(example_report):
    _, _, written = example_report
    data = open(written["report_pdf"], "rb").read()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages >= 3  # summary (as many pages as its measured content needs), spine, caveats
    # The cross-reference table points at real objects (a truncated or corrupt file fails this).
    offset = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    assert data[offset:offset + 4] == b"xref"


def test_report_without_ct_or_morphometry(tmp_path):
    """Labels only: no density, no grades; the report still renders and says what is missing."""
    _, labels, _ = spine_phantom({"T12": 150.0, "L1": 80.0, "L2": 120.0})
    case = screen.case_from_labels(labels)
    result = screen.screen_case(labels, None, case)
    written = report_clinical.write_clinical_report(case, result, tmp_path, labels, None)
    text = open(written["report_html"], encoding="utf-8").read()
    assert "bone density not assessed (no CT)" in text and "not graded" in text
    # The spine view is drawn from the labels; no empty density scale.
    assert len(re.findall(r"<img ", text)) == 1 and "Straightened sagittal view" in text
    assert open(written["report_pdf"], "rb").read().startswith(b"%PDF-")


def test_report_command_writes_every_output(shared_file, tmp_path, capsys):
    import json

    from VertebralFractureLib.cli.entry import main

    out = tmp_path / "out"
    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")),
                 "--ct", str(shared_file("totalsegmentator-example/example_ct.nii.gz")), "--out", str(out),
                 "--kvp", "120", "-q"])
    assert code == 0
    published = sorted(p.name for p in out.iterdir() if p.name != publish.MANIFEST_NAME)
    assert sorted(publish.read_manifest(out)) == published == [
        "overview.png", "report.html", "report.pdf", "results.json", "screening.json", "segmentation.nii.gz",
        "vertebrae.csv"]
    data = json.loads((out / "screening.json").read_text())
    assert data["screening"]["level"] == "L1" and data["screening"]["kvp"] == 120.0
    assert data["case"]["patient"]["l1_trabecular_hu"] == data["screening"]["measured_hu"]
    printed = capsys.readouterr().out
    assert data["screening"]["recommendation"]["statement"] in printed and "confidence:" in printed


def test_report_command_leaves_nothing_on_failure(shared_file, tmp_path, monkeypatch):
    from VertebralFractureLib.cli.entry import main

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_clinical, "write_pdf", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")),
              "--ct", str(shared_file("totalsegmentator-example/example_ct.nii.gz")), "--out", str(out), "-q"])
    assert not out.exists() or not any(out.iterdir())


def test_report_command_rejects_unknown_levels(shared_file, tmp_path, capsys):
    from VertebralFractureLib.cli.entry import main

    code = main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg.nii.gz")),
                 "--out", str(tmp_path / "out"), "--levels", "L1,X9", "-q"])
    error = capsys.readouterr().err
    assert code == 2 and "--levels" in error and "Traceback" not in error


@pytest.mark.parametrize("phase", ["non-contrast", "arterial", "portal-venous", "unknown"])
def test_report_command_accepts_every_stated_contrast_phase(phase, tmp_path, shared_file):
    from VertebralFractureLib import cli

    out = tmp_path / phase
    code = cli.main(["report", "--seg", str(shared_file("totalsegmentator-example/spine_report/"
                                                        "totalseg_vertebrae_pp_refined.nii.gz")),
                     "--ct", str(shared_file("totalsegmentator-example/example_ct.nii.gz")), "--out", str(out),
                     "--contrast-phase", phase, "-q"])
    assert code == 0
    screening = json.loads((out / "screening.json").read_text())
    assert {"portal-venous": "portal venous"}.get(phase, phase) in json.dumps(screening)
