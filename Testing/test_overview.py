"""overview.png, drawn with Pillow: ``measure`` never imports matplotlib, level labels that would overlap are moved
apart and kept inside the image, the banner says whether findings are withheld."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from phantoms import make_spine

from VertebralFractureLib.morphometry import measure
from VertebralFractureLib.outputs import overview
from VertebralFractureLib.results import CaseResult

REPOSITORY = Path(__file__).resolve().parents[1]


def _loaded_after(commands: list[list[str]], tmp_path: Path) -> list[dict]:
    """Run ``commands`` one after another in one fresh interpreter; per command its exit code and the matplotlib
    and Pillow modules loaded by then."""
    script = (
        "import json, sys\n"
        "from VertebralFractureLib import cli\n"
        f"for words in {commands!r}:\n"
        "    code = cli.main(words)\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL'))\n"
        "    print(json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                             os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=environment, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_measure_and_analyze_without_report_never_import_matplotlib(shared_file, tmp_path):
    """matplotlib's import was the largest single cost of a ``measure`` run; the overview is drawn with Pillow.
    The clinical report (report.pdf) still needs matplotlib, so ``analyze --no-report`` is the case to check."""
    mask = shared_file("verse19/sub-verse004_seg-vert_msk.nii.gz")
    ct = shared_file("totalsegmentator-example/example_ct.nii.gz")
    runs = _loaded_after([["measure", "--seg", str(mask), "-o", str(tmp_path / "measure"), "-q"],
                          ["analyze", "-i", str(ct), "-o", str(tmp_path / "analyze"), "--backend", "classical",
                           "--no-report", "-q"]], tmp_path)
    assert len(runs) == 2
    for run, folder in zip(runs, ("measure", "analyze")):
        assert run["code"] == 0
        assert not [name for name in run["loaded"] if name.startswith("matplotlib")], run["loaded"]
        assert "PIL.ImageDraw" in run["loaded"]  # the overview was drawn, with Pillow
        assert (tmp_path / folder / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stacked_labels_keep_their_order_and_stay_between_top_and_bottom():
    # Three 10-pixel boxes that all want the same place: stacked below the first, in the order given.
    assert overview.stack_centres([10.0, 12.0, 14.0], [10.0] * 3, 0.0, 100.0) == [10.0, 20.0, 30.0]
    # Near the bottom: pushed up so the last ends at the bottom.
    assert overview.stack_centres([90.0, 96.0], [10.0, 10.0], 0.0, 100.0) == [85.0, 95.0]
    # Near the top: pushed down so the first starts at the top.
    assert overview.stack_centres([0.0, 1.0], [10.0, 20.0], 0.0, 100.0) == [5.0, 20.0]
    # Apart already: left where they are.
    assert overview.stack_centres([20.0, 60.0], [10.0, 10.0], 0.0, 100.0) == [20.0, 60.0]


def _assert_apart_and_inside(boxes, image_box, picture_width):
    by_top = sorted(boxes, key=lambda box: box[1])
    for upper, lower in zip(by_top, by_top[1:]):
        assert upper[3] <= lower[1] + 1e-6, (upper, lower)
    margin = overview.px(overview.LABEL_MARGIN_PT)
    for box in boxes:
        assert image_box[1] - 1e-6 <= box[1] and box[3] <= image_box[3] + 1e-6
        assert margin - 1e-6 <= box[0] and box[2] <= picture_width - margin + 1e-6


def test_crowded_labels_shrink_their_font_until_they_fit_the_image():
    labels = [overview.LevelLabel(f"L{i}  G0\nHa 25.0 Hm 24.0 Hp 26.0", "#2e7d32", 494.0, 200.0) for i in range(20)]
    image_box = (0, 100, 495, 600)
    size_pt, boxes = overview.place_labels(labels, image_box, 495)
    assert overview.SMALLEST_LABEL_FONT_PT <= size_pt < overview.LABEL_FONT_PT
    _assert_apart_and_inside(boxes, image_box, 495)
    # Each label keeps its place in the order: equal wanted heights keep the order given.
    assert [box[1] for box in boxes] == sorted(box[1] for box in boxes)
    # The right edge beyond the picture is pulled back inside it.
    assert max(box[2] for box in boxes) == pytest.approx(495 - overview.px(overview.LABEL_MARGIN_PT))


@pytest.fixture(scope="module")
def phantom_case():
    """A synthetic spine (CT and labels) measured, every vertebra turned into one whose label holds a long reason
    (seven lines: taller than a vertebra and its disc are high in the picture)."""
    ct, labels, _ = make_spine(("T12", "L1", "L2", "L3", "L4"), spacing=(1.0, 1.0, 1.0), posterior_elements=False)
    case = measure.measure_case(labels, ct)
    for vertebra in case.vertebrae:
        vertebra.points_ras = None
        vertebra.incomplete_reason = ("the body is cut by the edge of the image along most of its height, so "
                                      "neither its endplates nor its walls can be found, and no height, ratio or "
                                      "grade can be measured")
    return case, labels, ct


def test_labels_that_would_overlap_are_moved_apart_inside_the_image(phantom_case, tmp_path, monkeypatch):
    case, labels, ct = phantom_case
    placed = []
    place_labels = overview.place_labels

    def place_and_record(level_labels, image_box, picture_width):
        result = place_labels(level_labels, image_box, picture_width)
        placed.append((level_labels, image_box, picture_width, result))
        return result

    monkeypatch.setattr(overview, "place_labels", place_and_record)
    title = overview.render_overview(CaseResult.from_dict(case.to_dict()), labels, ct, tmp_path / "overview.png")
    assert title[-1].endswith("review the images.")
    (level_labels, image_box, picture_width, (size_pt, boxes)), = placed
    assert len(boxes) == len(case.vertebrae) == 5
    wanted = sorted(label.wanted_y for label in level_labels)
    heights = sorted(box[3] - box[1] for box in boxes)
    assert min(np.diff(wanted)) < heights[0], "the labels where their vertebrae are would overlap"
    _assert_apart_and_inside(boxes, image_box, picture_width)
    # Top to bottom in the order of the vertebrae (cranial first).
    assert [box[1] for box in boxes] == sorted(box[1] for box in boxes)
    from PIL import Image

    with Image.open(tmp_path / "overview.png") as picture:
        assert picture.width == picture_width and picture.height > image_box[3]


def test_banner_colour_says_whether_findings_are_withheld(phantom_case, tmp_path):
    from PIL import Image, ImageColor

    from VertebralFractureLib.results import QualityReport

    case, labels, ct = phantom_case
    passed = CaseResult.from_dict(case.to_dict())
    withheld = CaseResult.from_dict(case.to_dict())
    withheld.quality = QualityReport(status="failed", headline="Segmentation failed quality control: not assessed")
    assert withheld.quality.findings_withheld and not (passed.quality and passed.quality.findings_withheld)
    for current, colour in ((passed, overview.BANNER_COLOUR), (withheld, overview.BANNER_WITHHELD_COLOUR)):
        title = overview.render_overview(current, labels, ct, tmp_path / "overview.png")
        with Image.open(tmp_path / "overview.png") as picture:
            corner = picture.convert("RGB").getpixel((1, 1))
        assert corner == tuple(round(0.9 * channel) for channel in ImageColor.getrgb(colour))
        assert (title[0].startswith("Segmentation failed")) == (current is withheld)


def test_statement_is_drawn_with_pillows_font_when_matplotlibs_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(overview, "_matplotlib_fonts_folder", lambda: None)
    overview.font.cache_clear()
    try:
        case = CaseResult.from_dict({"vertebrae": []})
        title = overview.render_overview(case, None, None, tmp_path / "overview.png")
    finally:
        overview.font.cache_clear()
    assert title and (tmp_path / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
