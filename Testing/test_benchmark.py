"""The benchmark against radiologists' Genant grades: metrics on hand-computed cases, the command on the five shared
graded VerSe'19 subjects, both VerSe folder layouts, split scans, and the consented download of the public sample."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import math
import threading

import nibabel as nib
import numpy as np
import pytest

from VertebralFractureLib import benchmark, cli
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io.download import DownloadError, fetch_file, sha256_file
from VertebralFractureLib.outputs import publish

SUBJECTS = ("sub-verse004", "sub-verse005", "sub-verse007", "sub-verse008", "sub-verse010")
GRADES = "verse19/genant_grades.csv"


def mask_path(shared_file, subject):
    return shared_file(f"verse19/{subject}_seg-vert_msk.nii.gz")


def radiologists(shared_file) -> list[dict]:
    with open(shared_file(GRADES), newline="") as handle:
        return list(csv.DictReader(handle))


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------- metrics


def test_wilson_interval_matches_published_values():
    # 8/10 and 0/10: 0.490-0.943 and 0-0.278 (Newcombe, Stat Med 1998, Wilson score method).
    low, high = benchmark.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = benchmark.wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert benchmark.wilson_interval(0, 0) is None


def test_linear_weighted_kappa_by_hand():
    # Observed weighted agreement (11 + 4 * 0.5) / 15 = 13/15; all margins 5, so expected (5/3)(3 + 4 * 0.5) / 15
    # = 5/9; kappa = (13/15 - 5/9) / (1 - 5/9) = 0.7.
    matrix = np.array([[4, 1, 0], [1, 3, 1], [0, 1, 4]])
    assert benchmark.weighted_kappa(matrix) == pytest.approx(0.7)
    # Two classes: linear weights give Cohen's plain kappa, (0.7 - 0.5) / (1 - 0.5) = 0.4.
    assert benchmark.weighted_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert benchmark.weighted_kappa(np.diag([3, 2, 4, 1])) == pytest.approx(1.0)
    assert benchmark.weighted_kappa(np.array([[5, 0], [0, 0]])) is None  # one class only: undefined


def test_auc_by_hand_and_against_the_curve():
    # Of the 4 positive-negative pairs, 3 are ordered right: AUC 0.75.
    assert benchmark.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert benchmark.roc_auc([1.0, 1.0], [True, False]) == pytest.approx(0.5)  # a tie counts half
    assert benchmark.roc_auc([-math.inf, 0.5, 0.2], [True, False, False]) == 0.0  # not measured ranks lowest
    assert benchmark.roc_auc([0.3, 0.2], [True, True]) is None
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=60), 1)  # rounded: many ties
    positive = rng.random(60) < 0.4
    fpr, tpr, thresholds = benchmark.roc_curve(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and np.all(np.diff(thresholds) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(benchmark.roc_auc(scores, positive))


def test_binary_figures_and_confusion_matrix():
    figures = benchmark.binary_figures([True, True, True, False, False], [True, False, True, False, True])
    assert (figures["tp"], figures["fn"], figures["tn"], figures["fp"]) == (2, 1, 1, 1)
    assert figures["sensitivity"] == pytest.approx(2 / 3) and figures["specificity"] == pytest.approx(0.5)
    assert figures["sensitivity_ci95"] == pytest.approx(benchmark.wilson_interval(2, 3))
    matrix = benchmark.confusion_matrix([0, 0, 1, 3, 3], [0, 1, 1, 2, 3])
    assert matrix.sum() == 5 and matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[3, 2] == 1 and matrix[3, 3] == 1


def test_youden_threshold_and_leave_one_subject_out():
    assert benchmark.youden_threshold([0.1, 0.2, 0.3, 0.4], [False, False, True, True]) == pytest.approx(0.25)
    assert benchmark.youden_threshold([0.1, 0.2], [False, False]) is None
    groups = {
        "a": ([0.10, 0.30], [False, True]),
        "b": ([0.12, 0.28], [False, True]),
        "c": ([0.26, 0.11], [False, True]),  # the one subject whose fracture scores low
    }
    loso = benchmark.leave_one_subject_out(groups)
    # Without c the classes separate between 0.12 and 0.28 (threshold 0.20): c's two calls are both wrong.
    assert loso["fitted"]["c"] == pytest.approx(0.20)
    assert loso["calls"]["c"] == [True, False]
    assert (loso["tp"], loso["fn"], loso["tn"], loso["fp"]) == (2, 1, 2, 1)
    # Any fit callback: a fixed rule fits nothing and is applied as is.
    fixed = benchmark.leave_one_subject_out(groups, fit=lambda scores, truth: 0.27)
    assert set(fixed["fitted"].values()) == {0.27} and (fixed["tp"], fixed["fp"]) == (2, 0)


# ----------------------------------------------------------------------------------------------- tables and names


def test_grade_tables_csv_json_and_errors(tmp_path):
    by_level = tmp_path / "grades.csv"
    by_level.write_text("subject,level,genant_grade\nsub-verse004,T9,2\nsub-verse004,L1,3\nsub-verse005,L5,\n")
    assert benchmark.read_grade_table(by_level) == {"sub-verse004": {16: 2, 20: 3}}
    nested = tmp_path / "vertebra_data.json"
    nested.write_text(json.dumps({"train": {"sub-verse004_16": 2}, "test": {"sub-verse414_series1_14": 1}}))
    assert benchmark.read_grade_table(nested) == {"sub-verse004": {16: 2}, "sub-verse414_series1": {14: 1}}
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,grade\nx,1\n")
    with pytest.raises(InputError, match="needs columns scan"):
        benchmark.read_grade_table(bad)
    bad.write_text("scan,label,genant_grade\nsub-verse004,16,5\n")
    with pytest.raises(InputError, match="line 2"):
        benchmark.read_grade_table(bad)
    with pytest.raises(InputError, match="not found"):
        benchmark.read_grade_table(tmp_path / "missing.csv")


def test_scan_names_subjects_and_split_series():
    assert benchmark.scan_name("derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz") == "sub-verse004"
    assert benchmark.scan_name("sub-gl003_dir-ax_ct.nii.gz") == "sub-gl003_dir-ax"
    assert benchmark.subject_of("sub-verse414_split-verse273") == "sub-verse414"
    assert benchmark.subject_of("sub-verse414_series1") == "sub-verse414"
    assert benchmark.subject_of("sub-gl003_dir-ax") == "sub-gl003"
    table = {"sub-verse417_series0": {label: 0 for label in range(8, 21)},
             "sub-verse417_series1": {label: 0 for label in range(18, 25)}}
    scans = {"sub-verse417_split-verse241": set(range(19, 25)), "sub-verse417_split-verse240": set(range(8, 20))}
    assert benchmark.match_series(scans, table) == {"sub-verse417_split-verse240": "sub-verse417_series0",
                                                    "sub-verse417_split-verse241": "sub-verse417_series1"}


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def five_subjects(tmp_path_factory, request):
    """The benchmark command (cross-validated) on the five shared subjects, with a table that also holds a scan
    and a label that are not in the masks."""
    shared_file = request.getfixturevalue("shared_file")
    masks = mask_path(shared_file, "sub-verse004").parent
    folder = tmp_path_factory.mktemp("five")
    table = folder / "grades.csv"
    table.write_text(shared_file(GRADES).read_text() + "sub-verse999,20,L1,2\nsub-verse010,19,T12,1\n")
    out = folder / "out"
    code = cli.main(["benchmark", "--masks", str(masks), "--grades", str(table), "--out", str(out),
                     "--cross-validate", "--quiet"])
    assert code == 0
    return out


def test_benchmark_covers_every_graded_vertebra(five_subjects, shared_file, capsys):
    summary = json.loads((five_subjects / "summary.json").read_text())
    expected = radiologists(shared_file)
    counts = np.array(summary["confusion_matrix"]["counts"])
    assert counts.shape == (4, 4) and counts.sum() == len(expected) == summary["vertebrae_evaluated"]
    for grade in range(4):
        assert counts[grade].sum() == sum(int(row["genant_grade"]) == grade for row in expected)
    assert summary["scans"] == summary["subjects"] == len(SUBJECTS)
    for name in benchmark.OUTPUT_FILES:
        assert (five_subjects / name).stat().st_size > 0
    hidden = [p.name for p in five_subjects.iterdir() if p.name.startswith(".")]
    assert hidden == [publish.MANIFEST_NAME]  # no staging left behind; the set's list of its own files
    assert (five_subjects / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_figures_agree_with_its_csv(five_subjects):
    summary = json.loads((five_subjects / "summary.json").read_text())
    rows = [r for r in read_rows(five_subjects / "vertebrae.csv") if r["grade_counted"] != ""]
    truth = [int(r["true_grade"]) for r in rows]
    predicted = [int(r["grade_counted"]) for r in rows]
    assert benchmark.confusion_matrix(truth, predicted).tolist() == summary["confusion_matrix"]["counts"]
    for cutoff in (1, 2):
        key = f"grade>={cutoff}"
        figures = summary["predicted_grade"][key]
        tp = sum(t >= cutoff and p >= cutoff for t, p in zip(truth, predicted))
        fn = sum(t >= cutoff and p < cutoff for t, p in zip(truth, predicted))
        tn = sum(t < cutoff and p < cutoff for t, p in zip(truth, predicted))
        assert (figures["tp"], figures["fn"], figures["tn"]) == (tp, fn, tn)
        assert figures["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-3)
        scores = [-math.inf if r["fracture_score"] == "" else float(r["fracture_score"]) for r in rows]
        assert summary["auc"][key] == pytest.approx(benchmark.roc_auc(scores, [t >= cutoff for t in truth]),
                                                    abs=1e-3)
        loso = summary["cross_validated"][key]
        calls = [r[f"loso_fracture_grade>={cutoff}"] == "1" for r in rows]
        assert loso["tp"] == sum(c and t >= cutoff for c, t in zip(calls, truth))
        assert loso["fp"] == sum(c and t < cutoff for c, t in zip(calls, truth))
        assert loso["folds"] == len(SUBJECTS)
    exact = sum(t == p for t, p in zip(truth, predicted))
    assert summary["exact_grade_agreements"] == exact
    assert summary["linear_weighted_kappa"] == pytest.approx(
        benchmark.weighted_kappa(benchmark.confusion_matrix(truth, predicted)), abs=1e-3)
    text = (five_subjects / "summary.txt").read_text()
    assert "LOSO threshold" in text and "predicted grade" in text
    # The borderline band: counted apart, negative in the predicted grade, positive in the second grade >= 1 line.
    borderline = [r["borderline"] == "True" for r in rows]
    assert not any(b and p >= 1 for b, p in zip(borderline, predicted))
    assert summary["borderline"]["count"] == sum(borderline)
    assert summary["borderline"]["by_true_grade"] == {
        str(g): sum(b and t == g for b, t in zip(borderline, truth)) for g in range(4)}
    positive = summary["borderline"]["grade>=1 borderline as positive"]
    assert positive["tp"] == sum(t >= 1 and (p >= 1 or b) for t, p, b in zip(truth, predicted, borderline))
    assert positive["fp"] == sum(t == 0 and (p >= 1 or b) for t, p, b in zip(truth, predicted, borderline))
    assert positive["tp"] >= summary["predicted_grade"]["grade>=1"]["tp"]
    assert "borderline positive" in text


def test_benchmark_lists_unknown_scan_and_label(five_subjects):
    summary = json.loads((five_subjects / "summary.json").read_text())
    assert summary["unknown_scans"] == ["sub-verse999"]
    assert summary["unknown_labels"] == [{"scan": "sub-verse010", "label": 19, "level": "T12", "true_grade": 1}]
    unknown = [r for r in read_rows(five_subjects / "vertebrae.csv") if r["status"] == "unknown label"]
    assert [(r["scan"], r["level"], r["grade_counted"]) for r in unknown] == [("sub-verse010", "T12", "")]


def test_vertebra_cut_by_the_field_of_view_counts_as_missed(shared_file, tmp_path):
    """sub-verse010 with the image cut through the middle of L1 (radiologists: grade 3): L1 cannot be measured and
    is a missed fracture, with the reason listed."""
    image = nib.load(mask_path(shared_file, "sub-verse010"))
    array = np.asarray(image.dataobj).astype(np.int16)
    inferior_axis = int(np.argmax(np.abs(image.affine[2, :3])))
    extent = np.flatnonzero(np.any(np.moveaxis(array == 20, inferior_axis, 0), axis=(1, 2)))
    cut = (extent[0] + extent[-1]) // 2
    index = [slice(None)] * 3
    index[inferior_axis] = slice(cut, None) if image.affine[2, inferior_axis] < 0 else slice(None, cut + 1)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array([s.start or 0 for s in index]) + image.affine[:3, 3]
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(array[tuple(index)], affine), masks / "sub-verse010_seg-vert_msk.nii.gz")
    result = benchmark.run_benchmark(masks, shared_file(GRADES))
    l1 = next(r for r in result.rows if r.level == "L1")
    assert (l1.status, l1.true_grade, l1.grade_for_figures, l1.fracture_score) == ("not measured", 3, 0, None)
    assert l1.reason
    assert result.summary["predicted_grade"]["grade>=2"]["fn"] == 1
    assert result.summary["predicted_grade"]["grade>=2"]["tp"] == 0
    assert result.summary["not_measured"][0]["level"] == "L1"
    expected = [r for r in radiologists(shared_file) if r["subject"] == "sub-verse010"]
    assert result.summary["vertebrae_evaluated"] == len(expected)
    assert sorted(result.summary["unknown_scans"]) == sorted(set(SUBJECTS) - {"sub-verse010"})


def test_release_layout_and_split_scans(shared_file, tmp_path):
    """rawdata/ + derivatives/ (built from symlinks) gives the same rows as the flat folder; a split scan
    (``_split-verseNNN``) is matched to its ``_seriesK`` grades by its levels."""
    release = tmp_path / "dataset-verse19training"
    for subject in ("sub-verse008", "sub-verse010"):
        (release / "derivatives" / subject).mkdir(parents=True)
        (release / "derivatives" / subject / f"{subject}_seg-vert_msk.nii.gz").symlink_to(
            mask_path(shared_file, subject))
        (release / "rawdata" / subject).mkdir(parents=True)
        (release / "rawdata" / subject / f"{subject}_ct.nii.gz").write_bytes(b"")
    found = benchmark.find_masks(release)
    assert [benchmark.scan_name(p) for p in found] == ["sub-verse008", "sub-verse010"]
    assert sorted(benchmark.find_cts(release)) == ["sub-verse008", "sub-verse010"]
    nested = benchmark.run_benchmark(release, shared_file(GRADES), jobs=2)  # in two processes
    flat = benchmark.run_benchmark(mask_path(shared_file, "sub-verse008").parent, shared_file(GRADES),
                                   subjects=["sub-verse008", "sub-verse010"])
    assert [(r.scan, r.level, r.predicted_grade, r.true_grade) for r in nested.rows] == [
        (r.scan, r.level, r.predicted_grade, r.true_grade) for r in flat.rows]

    split = tmp_path / "split"
    split.mkdir()
    (split / "sub-verse008_split-verse900_seg-vert_msk.nii.gz").symlink_to(mask_path(shared_file, "sub-verse008"))
    table = {"sub-verse008_series0": {8: 0, 9: 0}, "sub-verse008_series1": {19: 0, 20: 0, 21: 2, 22: 0, 23: 0, 24: 0}}
    result = benchmark.run_benchmark(split, table)
    assert result.scans[0]["table_key"] == "sub-verse008_series1"
    assert result.summary["vertebrae_evaluated"] == 6 and result.summary["unknown_scans"] == ["sub-verse008_series0"]


UPPER_THORACIC_SCANS = ("sub-gl003_dir-ax", "sub-sample001")  # C1-T5 (axial) and T1-L5 (sagittal slab)


def test_upper_thoracic_levels_graded_on_request(shared_file, tmp_path):
    """Two real masks holding T1-T3, graded 0 at T1-T5 by a small table, benchmarked in two worker processes:
    with --include-upper-thoracic T1-T3 are evaluated and counted, without it they are not assessed and left out;
    the summary says which levels were graded either way. Only graded vs not assessed is checked, not the grades."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for scan in UPPER_THORACIC_SCANS:
        name = f"{scan}_seg-vert_msk.nii.gz"
        (masks / name).symlink_to(shared_file(f"ungraded-masks/{name}"))
    table = tmp_path / "grades.csv"
    table.write_text("scan,label,genant_grade\n" + "".join(
        f"{benchmark.subject_of(scan)},{label},0\n" for scan in UPPER_THORACIC_SCANS for label in range(8, 13)))
    upper = {"T1", "T2", "T3"}

    def run(*options):
        out = tmp_path / ("with" if options else "without")
        code = cli.main(["benchmark", "--masks", str(masks), "--grades", str(table), "--out", str(out),
                         "--jobs", "2", "--quiet", *options])
        assert code == 0
        rows = [r for r in read_rows(out / "vertebrae.csv") if r["level"] in upper | {"T4", "T5"}]
        assert len(rows) == 5 * len(UPPER_THORACIC_SCANS)
        return rows, json.loads((out / "summary.json").read_text()), (out / "summary.txt").read_text()

    rows, summary, text = run()
    assert summary["grading"]["include_upper_thoracic"] is False
    assert not upper & set(summary["grading"]["graded_levels"]) and "T4" in summary["grading"]["graded_levels"]
    for row in rows:
        if row["level"] in upper:
            assert (row["status"], row["predicted_grade"], row["grade_counted"]) == ("not assessed", "", "")
        else:
            assert row["status"] in benchmark.EVALUATED_STATUSES and row["grade_counted"] != ""
    assert summary["vertebrae_evaluated"] == 2 * len(UPPER_THORACIC_SCANS)
    assert sorted((i["scan"], i["level"]) for i in summary["not_assessed"]) == sorted(
        (scan, level) for scan in UPPER_THORACIC_SCANS for level in upper)
    assert "T1-T3 not assessed" in text

    rows, summary, text = run("--include-upper-thoracic")
    assert summary["grading"]["include_upper_thoracic"] is True
    assert upper <= set(summary["grading"]["graded_levels"])
    assert all(r["status"] in benchmark.EVALUATED_STATUSES and r["grade_counted"] != "" for r in rows)
    assert any(r["status"] == "graded" and r["predicted_grade"] != "" for r in rows if r["level"] in upper)
    assert summary["vertebrae_evaluated"] == 5 * len(UPPER_THORACIC_SCANS)
    assert np.array(summary["confusion_matrix"]["counts"]).sum() == 5 * len(UPPER_THORACIC_SCANS)
    assert summary["not_assessed"] == [] and "T1-T3 included" in text


def test_benchmark_command_bad_inputs(tmp_path, capsys, shared_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    code = cli.main(["benchmark", "--masks", str(empty), "--grades", str(shared_file(GRADES)), "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("error: ") and "no VerSe mask" in error[-1] and not out.exists()
    bad_table = tmp_path / "grades.csv"
    bad_table.write_text("nothing useful\n")
    masks = mask_path(shared_file, "sub-verse005").parent
    code = cli.main(["benchmark", "--masks", str(masks), "--grades", str(bad_table), "--out", str(out), "-q"])
    assert code == 2 and "is not a grade table" in capsys.readouterr().err and not out.exists()
    other = tmp_path / "other.csv"
    other.write_text("scan,label,genant_grade\nsub-verse999,20,1\n")
    code = cli.main(["benchmark", "--masks", str(masks), "--grades", str(other), "--out", str(out), "-q"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no mask matches a scan of the grade table" in error[-1] and not out.exists()


# ----------------------------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_file_checks_the_pinned_hash_and_writes_atomically(local_server, tmp_path):
    served, url, requests = local_server
    payload = np.random.default_rng(0).bytes(300_000)
    (served / "file.bin").write_bytes(payload)
    good = sha256_file(served / "file.bin")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="does not match the pinned"):
        fetch_file(f"{url}/file.bin", "0" * 64, cache / "file.bin")
    assert list(cache.iterdir()) == []  # nothing half-written or unverified is kept
    path = fetch_file(f"{url}/file.bin", good, cache / "file.bin")
    assert path.read_bytes() == payload and list(cache.iterdir()) == [path]
    fetch_file(f"{url}/file.bin", good.upper(), cache / "file.bin")
    assert requests == ["/file.bin", "/file.bin"]  # a verified file in the cache is not fetched again
    with pytest.raises(DownloadError, match="download failed"):
        fetch_file(f"{url}/missing.bin", good, cache / "missing.bin")


def test_sample_download_needs_consent_then_runs_the_benchmark(local_server, tmp_path, shared_file):
    """The public-sample path end to end, served from 127.0.0.1: refused without consent, fetched and checked with
    it, then benchmarked from the cache (the served mask is the real sub-verse007 mask)."""
    served, url, _ = local_server
    (served / "sub-verse007_seg-vert_msk.nii.gz").write_bytes(mask_path(shared_file, "sub-verse007").read_bytes())
    grades = {f"{r['subject']}_{r['label']}": int(r["genant_grade"]) for r in radiologists(shared_file)}
    (served / "vertebra_data.json").write_text(json.dumps({"train": grades}))
    sample = benchmark.PublicSample(
        subject="sub-verse007", shared_mask="verse19/sub-verse007_seg-vert_msk.nii.gz",
        shared_grades="verse19/genant_grades.csv",
        mask_url=f"{url}/sub-verse007_seg-vert_msk.nii.gz", mask_sha256=benchmark.VERSE_SAMPLE.mask_sha256,
        grades_url=f"{url}/vertebra_data.json", grades_sha256=sha256_file(served / "vertebra_data.json"),
        licence="test")
    no_data, cache = tmp_path / "no-data", tmp_path / "cache"
    with pytest.raises(benchmark.SampleUnavailable, match="VERTEBRAL_FRACTURE_DOWNLOAD=1"):
        benchmark.locate_sample(sample, data_root=no_data, allow_download=False, cache_dir=cache)
    skipped = benchmark.self_test(tmp_path / "self-test", sample, data_root=no_data, allow_download=False,
                                  cache_dir=cache)
    assert skipped.startswith("VerSe benchmark skipped") and not cache.exists()
    masks, table = benchmark.locate_sample(sample, data_root=no_data, allow_download=True, cache_dir=cache)
    assert (masks, table.name) == (cache, "vertebra_data.json")
    result = benchmark.run_sample_benchmark(tmp_path / "out", sample, data_root=no_data, allow_download=False,
                                            cache_dir=cache)
    expected = [r for r in radiologists(shared_file) if r["subject"] == "sub-verse007"]
    assert result.summary["vertebrae_evaluated"] == len(expected)
    assert result.summary["unknown_scans"] == []


@pytest.mark.verse
def test_public_verse_sample(tmp_path):
    """The benchmark on one real public VerSe subject: from the shared data, else downloaded (pinned URL and
    SHA-256) with VERTEBRAL_FRACTURE_DOWNLOAD=1, else skipped with the reason."""
    try:
        masks, grades = benchmark.locate_sample()
    except benchmark.SampleUnavailable as reason:
        pytest.skip(str(reason))
    result = benchmark.run_sample_benchmark(tmp_path)
    subject = benchmark.VERSE_SAMPLE.subject
    graded = benchmark.read_grade_table(grades)[subject]
    assert result.summary["vertebrae_evaluated"] == len(graded)
    assert np.array(result.summary["confusion_matrix"]["counts"]).sum() == len(graded)
    rows = read_rows(tmp_path / "vertebrae.csv")
    assert {int(r["label"]) for r in rows if r["true_grade"] != ""} == set(graded)
    assert {r["scan"] for r in rows} == {subject}
    assert f"{len(graded)} graded vertebrae" in benchmark.self_test(tmp_path / "slicer-self-test")
