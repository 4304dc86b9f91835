"""Benchmark of the fracture grading against radiologists' Genant grades on a VerSe-layout folder.

For every VerSe mask (``*_seg-vert_msk.nii.gz``) in a folder, either the official release layout
(``rawdata/sub-X/sub-X_ct.nii.gz``, ``derivatives/sub-X/sub-X_seg-vert_msk.nii.gz``) or a flat folder, the case is
measured and graded exactly as the ``measure`` command does, the radiologists' grade of each vertebra is looked up
in a grade table (by scan and VerSe label), and agreement is reported:

* the confusion matrix (radiologists' grade 0-3 x predicted grade 0-3);
* sensitivity and specificity at grade >= 1 and grade >= 2, each with a 95 % Wilson score interval
  (Wilson 1927; recommended over the Wald interval for small samples: Brown, Cai & DasGupta, Stat Sci 2001);
* exact-grade accuracy and Cohen's kappa with linear weights (Cohen 1968);
* the **borderline** vertebrae (graded 0, a reduction in the band where normal shapes and mild fractures overlap;
  see :mod:`.morphometry.grade`), counted apart by the radiologists' grade, and the grade >= 1 figures twice: with
  them counted as negative (the predicted grade) and as positive;
* the ROC curve of the continuous fracture score, with the area under it (Mann-Whitney U / (n_pos n_neg),
  Hanley & McNeil 1982).

A vertebra the radiologists graded but the method could not measure counts as **missed** (predicted grade 0) and
is listed with the reason. A vertebra outside the levels the method grades (``not_assessed_reason``: cervical,
sacrum, and T1-T3 unless ``include_upper_thoracic``) is left out of the figures and listed; the summary names the
levels graded. Scans of the table without a mask, and labels of the table that are not in their mask, are listed,
never an error.

Leave-one-subject-out cross-validation (:func:`leave_one_subject_out`) evaluates any rule with fitted parameters:
each subject's vertebrae are predicted by a rule fitted on the other subjects only, and the held-out predictions
of all subjects are pooled. ``--cross-validate`` fits the score threshold for grade >= 1 and for grade >= 2 that
way (Youden's J) and reports those figures beside the figures of the predicted grade (the grading's own rules).

Kept whole: one evaluation, from reading the VerSe folder and its grade table to the confusion matrix, the
confidence intervals, kappa, ROC and the leave-one-subject-out folds; its parts share the per-vertebra records and
are read together when a figure is checked.
"""

from __future__ import annotations

import csv
import io as stdio
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.io import labels as labels_mod

if TYPE_CHECKING:
    from VertebralFractureLib.morphometry.grade import GradingRules

log = logging.getLogger(__name__)

MASK_SUFFIXES = ("_seg-vert_msk.nii.gz", "_seg-vert_msk.nii")
CT_SUFFIXES = ("_ct.nii.gz", "_ct.nii")
GRADES = (0, 1, 2, 3)
FRACTURE_CUTOFFS = (1, 2)
"""Grade >= 1 (any fracture) and grade >= 2 (moderate or severe, the clinically decisive one)."""
WILSON_Z = 1.959963984540054
"""Standard normal quantile of a two-sided 95 % interval."""

STATUS_GRADED = "graded"
STATUS_NOT_MEASURED = "not measured"
STATUS_NOT_ASSESSED = "not assessed"
STATUS_NO_REFERENCE = "no reference grade"
STATUS_UNKNOWN_LABEL = "unknown label"
EVALUATED_STATUSES = (STATUS_GRADED, STATUS_NOT_MEASURED)

_SCAN_COLUMNS = ("scan", "subject", "scan_id", "id")
_GRADE_COLUMNS = ("genant_grade", "grade", "genant")
_SERIES = re.compile(r"^(?P<subject>.+)_series(?P<index>\d+)$")
_ENTITY = re.compile(r"_(?P<key>[a-zA-Z]+)-(?P<value>[^_]+)")


# ----------------------------------------------------------------------------------------------- grade tables


def read_grade_table(path: str | Path) -> dict[str, dict[int, int]]:
    """{scan: {VerSe label: Genant grade}} from a CSV or a JSON grade table.

    CSV: one row per vertebra with a scan column (``scan`` or ``subject``), ``label`` (VerSe id) or ``level``
    ("T12") and ``genant_grade`` (or ``grade``), 0-3; rows with an empty grade are skipped. JSON: the VerSe'19
    table of the HealthiVert-GAN repository, ``{"SCAN_LABEL": grade}`` optionally nested one level (by split).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "grade table not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot be read as text ({error})") from None
    if path.suffix.lower() == ".json":
        return _grades_from_json(path, text)
    return _grades_from_csv(path, text)


def _grades_from_csv(path: Path, text: str) -> dict[str, dict[int, int]]:
    reader = csv.DictReader(stdio.StringIO(text))
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    scan_column = next((columns[c] for c in _SCAN_COLUMNS if c in columns), None)
    grade_column = next((columns[c] for c in _GRADE_COLUMNS if c in columns), None)
    label_column, level_column = columns.get("label"), columns.get("level")
    if scan_column is None or grade_column is None or (label_column is None and level_column is None):
        raise InputError(path, "is not a grade table: it needs columns scan (or subject), label (or level) and "
                               f"genant_grade; found {', '.join(reader.fieldnames or []) or 'none'}")
    table: dict[str, dict[int, int]] = {}
    for line, row in enumerate(reader, start=2):
        grade_text = (row.get(grade_column) or "").strip()
        if not grade_text:
            continue
        scan = (row.get(scan_column) or "").strip()
        try:
            grade = int(float(grade_text))
            if label_column is not None and (row.get(label_column) or "").strip():
                label = int(float(row[label_column]))
                labels_mod.level_name(label)
            else:
                label = labels_mod.label_from_level(row[level_column])
        except (TypeError, ValueError) as error:
            raise InputError(path, f"line {line}: {error}") from None
        if grade not in GRADES or not scan:
            raise InputError(path, f"line {line}: needs a scan and a Genant grade 0-3 (got {scan!r}, {grade_text!r})")
        table.setdefault(scan, {})[label] = grade
    if not table:
        raise InputError(path, "holds no graded vertebra")
    return table


def _grades_from_json(path: Path, text: str) -> dict[str, dict[int, int]]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InputError(path, f"is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise InputError(path, 'is not a grade table: expected {"SCAN_LABEL": grade, ...}')
    items = []
    for key, value in data.items():
        items.extend(value.items() if isinstance(value, dict) else [(key, value)])
    table: dict[str, dict[int, int]] = {}
    for key, grade in items:
        scan, _, label_text = str(key).rpartition("_")
        try:
            label, grade = int(label_text), int(grade)
            labels_mod.level_name(label)
        except (TypeError, ValueError):
            raise InputError(path, f"entry {key!r}: expected SCAN_LABEL with a VerSe label and a grade") from None
        if grade not in GRADES or not scan:
            raise InputError(path, f"entry {key!r}: Genant grade must be 0-3, got {grade}")
        table.setdefault(scan, {})[label] = grade
    if not table:
        raise InputError(path, "holds no graded vertebra")
    return table


# ----------------------------------------------------------------------------------------------- scans on disk


def scan_name(path: str | Path) -> str:
    """The scan id a mask or CT file name carries: ``sub-verse004_seg-vert_msk.nii.gz`` -> ``sub-verse004``."""
    name = Path(path).name
    for suffix in MASK_SUFFIXES + CT_SUFFIXES + (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def subject_of(scan: str) -> str:
    """The subject a scan belongs to: BIDS entities (``_split-``, ``_dir-``) and ``_seriesK`` removed."""
    match = _SERIES.match(scan)
    if match:
        scan = match["subject"]
    return _ENTITY.sub("", scan)


def find_masks(folder: str | Path) -> list[Path]:
    """Every VerSe mask under ``folder`` (flat, or the release's ``derivatives/sub-X/``), hidden folders skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "masks folder not found")
    found = []
    for root, directories, files in os.walk(folder, followlinks=True):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        found.extend(Path(root) / name for name in files if name.endswith(MASK_SUFFIXES))
    if not found:
        raise InputError(folder, "holds no VerSe mask (*_seg-vert_msk.nii.gz), neither in the folder itself nor "
                                 "under derivatives/")
    return sorted(found, key=lambda p: (scan_name(p), str(p)))


def find_cts(folder: str | Path) -> dict[str, Path]:
    """{scan: CT path} for every ``*_ct.nii.gz`` under ``folder`` (flat, or the release's ``rawdata/sub-X/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "CT folder not found")
    found = {}
    for root, directories, files in os.walk(folder, followlinks=True):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in files:
            if name.endswith(CT_SUFFIXES):
                found.setdefault(scan_name(name), Path(root) / name)
    return found


def _table_key(scan: str, table: dict) -> str | None:
    """The table's name for a scan: the full name, then without BIDS entities such as ``_dir-ax``."""
    for candidate in (scan, _ENTITY.sub("", scan), subject_of(scan)):
        if candidate in table:
            return candidate
    return None


def _series_keys(subject: str, table: dict) -> list[str]:
    return sorted(key for key in table if _SERIES.match(key) and _SERIES.match(key)["subject"] == subject)


def match_series(scans: dict[str, set[int]], table: dict[str, dict[int, int]]) -> dict[str, str]:
    """{scan: table key} for scans of split subjects, by the overlap of their labels with each series' labels.

    The VerSe release names the parts of a split scan ``sub-verse414_split-verse273``; grade tables (HealthiVert-GAN's
    VerSe'19 table) name them ``sub-verse414_series1``. The names do not say which is which; the levels do: each
    part is matched to the series whose graded labels overlap its own the most (Jaccard index), one part per series.
    """
    pairs = []
    for scan, present in scans.items():
        for key in _series_keys(subject_of(scan), table):
            graded = set(table[key])
            overlap = len(present & graded) / max(1, len(present | graded))
            if overlap > 0:
                pairs.append((overlap, scan, key))
    matched: dict[str, str] = {}
    for _, scan, key in sorted(pairs, key=lambda item: (-item[0], item[1], item[2])):
        if scan not in matched and key not in matched.values():
            matched[scan] = key
    return matched


# ----------------------------------------------------------------------------------------------- metrics


def wilson_interval(successes: int, total: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (Wilson, JASA 1927); None when ``total`` is 0."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binary_figures(truth: Sequence[bool], predicted: Sequence[bool]) -> dict:
    """Counts, sensitivity and specificity (with 95 % Wilson intervals) of a yes/no call against the truth."""
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    tp = int(np.sum(truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    tn = int(np.sum(~truth & ~predicted))
    fp = int(np.sum(~truth & predicted))
    return {
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "sensitivity_ci95": wilson_interval(tp, tp + fn),
        "specificity": tn / (tn + fp) if tn + fp else None,
        "specificity_ci95": wilson_interval(tn, tn + fp),
    }


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], classes: int = len(GRADES)) -> np.ndarray:
    """counts[true grade, predicted grade]."""
    matrix = np.zeros((classes, classes), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[int(t), int(p)] += 1
    return matrix


def weighted_kappa(matrix: np.ndarray) -> float | None:
    """Cohen's kappa with linear weights (agreement weight 1 - |i - j| / (k - 1)); None when undefined."""
    matrix = np.asarray(matrix, dtype=float)
    total = matrix.sum()
    classes = matrix.shape[0]
    if total == 0 or classes < 2:
        return None
    index = np.arange(classes)
    weights = 1.0 - np.abs(index[:, None] - index[None, :]) / (classes - 1)
    observed = float((weights * matrix).sum() / total)
    expected_counts = np.outer(matrix.sum(axis=1), matrix.sum(axis=0)) / total
    expected = float((weights * expected_counts).sum() / total)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1.0 - expected)


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the probability that a positive outscores a negative, ties counting half."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks for ties; -inf (not measured) ranks lowest
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) with a call ``score >= threshold``, from (0, 0)."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(1, int(positive.sum())), max(1, int((~positive).sum()))
    tpr = [0.0] + [float(np.sum(positive & (scores >= t))) / n_pos for t in thresholds]
    fpr = [0.0] + [float(np.sum(~positive & (scores >= t))) / n_neg for t in thresholds]
    return np.array(fpr), np.array(tpr), np.concatenate([[np.inf], thresholds])


def youden_threshold(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """The score threshold (``score >= t`` calls a fracture) that maximises sensitivity + specificity - 1.

    Candidates lie halfway between consecutive distinct finite scores; among equally good ones the median is
    taken, so the threshold sits in the middle of the best range. None without both classes.
    """
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    if not positive.any() or positive.all():
        return None
    finite = np.unique(scores[np.isfinite(scores)])
    if len(finite) == 0:
        return None
    candidates = np.concatenate([[finite[0] - 1.0], (finite[:-1] + finite[1:]) / 2.0, [finite[-1] + 1.0]])
    sensitivity = np.array([np.mean(scores[positive] >= t) for t in candidates])
    specificity = np.array([np.mean(scores[~positive] < t) for t in candidates])
    youden = sensitivity + specificity - 1.0
    best = candidates[np.isclose(youden, youden.max())]
    return float(np.median(best))


def leave_one_subject_out(
    groups: dict[str, tuple[Sequence[float], Sequence[bool]]],
    fit: Callable[[np.ndarray, np.ndarray], object] = youden_threshold,
    predict: Callable[[object, np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Pooled held-out figures of a rule fitted by ``fit`` on all subjects but one and applied to that one.

    ``groups``: {subject: (scores, truths)}. ``fit(scores, truths)`` returns the fitted parameters (by default the
    Youden threshold); ``predict(parameters, scores)`` returns the held-out calls (by default ``score >=
    threshold``; a fit that returns None calls nothing). Returns the pooled :func:`binary_figures`, the parameters
    fitted per held-out subject and the held-out calls per subject.
    """
    if predict is None:
        def predict(threshold, scores):
            return np.zeros(len(scores), dtype=bool) if threshold is None else np.asarray(scores) >= threshold
    subjects = sorted(groups)
    fitted, calls, truths, predictions = {}, {}, [], []
    for held_out in subjects:
        train = [s for s in subjects if s != held_out]
        train_scores = np.concatenate([np.asarray(groups[s][0], dtype=float) for s in train]) if train else np.array([])
        train_truth = np.concatenate([np.asarray(groups[s][1], dtype=bool) for s in train]) if train else np.array([])
        parameters = fit(train_scores, train_truth)
        held_scores = np.asarray(groups[held_out][0], dtype=float)
        held_calls = np.asarray(predict(parameters, held_scores), dtype=bool)
        fitted[held_out] = parameters
        calls[held_out] = held_calls.tolist()
        truths.extend(np.asarray(groups[held_out][1], dtype=bool).tolist())
        predictions.extend(held_calls.tolist())
    result = binary_figures(truths, predictions)
    result["fitted"] = fitted
    result["calls"] = calls
    return result


# ----------------------------------------------------------------------------------------------- the benchmark


@dataclass
class VertebraRow:
    """One vertebra of the benchmark: what was measured and predicted, and the radiologists' grade."""

    scan: str
    subject: str
    label: int
    level: str
    status: str
    reason: str = ""
    anterior_mm: float | None = None
    middle_mm: float | None = None
    posterior_mm: float | None = None
    wedge_ratio: float | None = None
    biconcavity_ratio: float | None = None
    middle_to_walls_ratio: float | None = None
    height_loss: float | None = None
    fracture_score: float | None = None
    predicted_grade: int | None = None
    borderline: bool | None = None
    morphology: str | None = None
    true_grade: int | None = None
    loso_fracture: dict = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.true_grade is not None and self.status in EVALUATED_STATUSES

    @property
    def grade_for_figures(self) -> int:
        """The predicted grade the figures count: a vertebra that was not measured is a missed one (grade 0)."""
        return self.predicted_grade if self.status == STATUS_GRADED and self.predicted_grade is not None else 0

    @property
    def score_for_figures(self) -> float:
        """The continuous score the ROC uses: not measured ranks below every measured vertebra."""
        return -math.inf if self.fracture_score is None else float(self.fracture_score)


@dataclass
class BenchmarkResult:
    rows: list[VertebraRow]
    scans: list[dict]
    unknown_scans: list[str]
    unmatched_masks: list[str]
    summary: dict
    cross_validated: bool = False


def fracture_score(vertebra) -> float | None:
    """The continuous score of a graded vertebra: ``fracture_score`` where grading gives one, else its height loss."""
    score = getattr(vertebra, "fracture_score", None)
    return vertebra.height_loss if score is None else score


def _row_from_vertebra(scan: str, vertebra, true_grade: int | None) -> VertebraRow:
    row = VertebraRow(scan=scan, subject=subject_of(scan), label=vertebra.label, level=vertebra.level,
                      status=STATUS_GRADED, true_grade=true_grade)
    heights = vertebra.heights_mm or {}
    row.anterior_mm, row.middle_mm, row.posterior_mm = (heights.get(n) for n in ("anterior", "middle", "posterior"))
    ratios = vertebra.ratios or {}
    row.wedge_ratio, row.biconcavity_ratio = ratios.get("wedge"), ratios.get("biconcavity")
    row.middle_to_walls_ratio = ratios.get("middle_to_walls")
    row.height_loss = vertebra.height_loss
    not_assessed = getattr(vertebra, "not_assessed_reason", None)
    if not_assessed:
        row.status, row.reason = STATUS_NOT_ASSESSED, not_assessed
    elif not vertebra.complete or vertebra.genant_grade is None:
        row.status = STATUS_NOT_MEASURED
        row.reason = vertebra.incomplete_reason or vertebra.grade_reason or "no heights"
    else:
        row.fracture_score = fracture_score(vertebra)
        row.predicted_grade = int(vertebra.genant_grade)
        row.borderline = bool(getattr(vertebra, "borderline", False)) and row.predicted_grade == 0
        row.morphology = vertebra.morphology
        row.reason = vertebra.grade_reason
    if true_grade is None and row.status != STATUS_NOT_ASSESSED:
        row.status, row.reason = STATUS_NO_REFERENCE, (row.reason + "; " if row.reason else "") + "not in the table"
    return row


def _measure_scan(mask: Path, ct: Path | None, rules: GradingRules | None = None):
    from VertebralFractureLib import io
    from VertebralFractureLib.morphometry import measure

    ct_volume = io.read_ct(ct) if ct is not None else None
    label_map = io.read_label_map(mask, "verse", reference=ct_volume)
    inputs = {"seg": str(mask), "ct": None if ct is None else str(ct), "labels": label_map.convention,
              "include_upper_thoracic": bool(rules is not None and rules.include_upper_thoracic)}
    return measure.measure_case(label_map.volume, ct_volume, inputs=inputs, rules=rules)


def _measure_safely(mask: Path, ct: Path | None,
                    rules: GradingRules | None = None) -> tuple[object, str | None, float]:
    """(case or None, error or None, seconds) of one scan; a failure is recorded, never raised."""
    started = time.perf_counter()
    case, problem = None, None
    try:
        case = _measure_scan(mask, ct, rules)
    except VertebralFractureError as error:
        problem = str(error)
    except Exception as error:  # a bug on one scan of many must not hide the figures of the others
        log.exception("measuring %s failed", mask)
        problem = f"measurement failed: {type(error).__name__}: {error}"
    return case, problem, round(time.perf_counter() - started, 2)


def _measure_all(todo: list[tuple[Path, Path | None]], jobs: int, report,
                 rules: GradingRules | None = None) -> list[tuple]:
    """:func:`_measure_safely` over every (mask, CT), in order; in ``jobs`` processes when more than one.

    ``rules`` (a frozen dataclass, pickled to the worker processes) grade every scan alike.
    """
    if jobs <= 1 or len(todo) <= 1:
        outcomes = []
        for mask, ct in todo:
            outcomes.append(_measure_safely(mask, ct, rules))
            report(len(outcomes), scan_name(mask))
        return outcomes
    from concurrent.futures import ProcessPoolExecutor, as_completed

    outcomes: list = [None] * len(todo)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_measure_safely, mask, ct, rules): index for index, (mask, ct) in enumerate(todo)}
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            outcomes[index] = future.result()
            report(done, scan_name(todo[index][0]))
    return outcomes


def run_benchmark(masks_dir: str | Path, grades: str | Path | dict, ct_dir: str | Path | None = None,
                  subjects: Sequence[str] | None = None, cross_validate: bool = False,
                  progress=None, jobs: int = 1, rules: GradingRules | None = None,
                  include_upper_thoracic: bool = False) -> BenchmarkResult:
    """Measure every mask of ``masks_dir``, join the grade table, compute the figures (see the module docstring).

    ``subjects``: only scans of these subjects (or scan ids). ``grades``: a table path or {scan: {label: grade}}.
    ``jobs``: scans measured in parallel processes. ``rules``: the grading rules (default: those of ``measure``).
    ``include_upper_thoracic``: grade T1-T3 too and count them in the figures (otherwise they are not assessed).
    """
    from VertebralFractureLib.morphometry import grade as grade_mod

    rules = rules or grade_mod.DEFAULT_RULES
    if include_upper_thoracic:
        rules = replace(rules, include_upper_thoracic=True)
    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    table = grades if isinstance(grades, dict) else read_grade_table(grades)
    masks = find_masks(masks_dir)
    if subjects:
        wanted = set(subjects)
        masks = [m for m in masks if scan_name(m) in wanted or subject_of(scan_name(m)) in wanted]
        if not masks:
            raise InputError(masks_dir, f"holds no mask of {', '.join(sorted(wanted))}")
    cts = find_cts(ct_dir) if ct_dir is not None else {}

    graded_subjects = {subject_of(key) for key in table}
    rows: list[VertebraRow] = []
    scans: list[dict] = []
    unmatched_masks: list[str] = []
    measured: dict[str, object] = {}
    todo = []
    for mask in masks:
        scan = scan_name(mask)
        if _table_key(scan, table) is None and subject_of(scan) not in graded_subjects:
            unmatched_masks.append(scan)
            continue
        ct = cts.get(scan)
        scans.append({"scan": scan, "mask": str(mask), "ct": None if ct is None else str(ct), "table_key": None,
                      "error": None, "seconds": None})
        todo.append((mask, ct))
    outcomes = _measure_all(todo, jobs, lambda done, scan: report(0.9 * done / max(1, len(todo)),
                                                                   f"measured {scan} ({done}/{len(todo)})"), rules)
    for entry, (case, error, seconds) in zip(scans, outcomes):
        entry["error"], entry["seconds"] = error, seconds
        if case is not None:
            measured[entry["scan"]] = case

    if not scans:
        examples = ", ".join(sorted(table)[:3])
        raise InputError(masks_dir, f"no mask matches a scan of the grade table (masks: "
                                    f"{', '.join(unmatched_masks[:3])}{' ...' if len(unmatched_masks) > 3 else ''}; "
                                    f"table: {examples}{' ...' if len(table) > 3 else ''})")
    # Table key of every scan: by name, else (split scans) by the labels its mask holds.
    keys = {e["scan"]: _table_key(e["scan"], table) for e in scans}
    unresolved = {s: {v.label for v in measured[s].vertebrae} for s, k in keys.items() if k is None and s in measured}
    keys.update(match_series(unresolved, table))
    for entry in scans:
        scan, key = entry["scan"], keys.get(entry["scan"])
        entry["table_key"] = key
        reference = table.get(key, {}) if key else {}
        if scan not in measured:
            reason = f"mask not measured: {entry['error']}"
            for label, grade in sorted(reference.items(), key=lambda item: labels_mod.rank(item[0])):
                rows.append(VertebraRow(scan=scan, subject=subject_of(scan), label=label,
                                        level=labels_mod.level_name(label), status=STATUS_NOT_MEASURED,
                                        reason=reason, true_grade=grade))
            continue
        case = measured[scan]
        present = set()
        for vertebra in case.vertebrae:
            present.add(vertebra.label)
            rows.append(_row_from_vertebra(scan, vertebra, reference.get(vertebra.label)))
        for label, grade in sorted(reference.items(), key=lambda item: labels_mod.rank(item[0])):
            if label not in present:
                rows.append(VertebraRow(scan=scan, subject=subject_of(scan), label=label,
                                        level=labels_mod.level_name(label), status=STATUS_UNKNOWN_LABEL,
                                        reason="graded in the table, no such label in the mask", true_grade=grade))
        if key is None:
            entry["error"] = entry["error"] or "no entry in the grade table"
    used_keys = {k for k in keys.values() if k}
    masked_subjects = {subject_of(scan_name(m)) for m in masks}
    unknown_scans = sorted(k for k in table if k not in used_keys
                           and not (subjects and subject_of(k) not in masked_subjects))
    report(0.95, "computing the figures")
    summary = summarize(rows, cross_validate)
    summary["scans"] = len(scans)
    summary["subjects"] = len({subject_of(e["scan"]) for e in scans})
    summary["failed_scans"] = {e["scan"]: e["error"] for e in scans if e["scan"] not in measured}
    summary["unknown_scans"] = unknown_scans
    summary["masks_without_grades"] = unmatched_masks
    summary["grading"] = graded_levels(rules)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return BenchmarkResult(rows=rows, scans=scans, unknown_scans=unknown_scans, unmatched_masks=unmatched_masks,
                           summary=summary, cross_validated=cross_validate)


def graded_levels(rules: GradingRules) -> dict:
    """Which levels the figures can hold, for the summary: a reader must know whether T1-T3 were graded."""
    from VertebralFractureLib.morphometry import grade as grade_mod

    levels = (grade_mod.UPPER_THORACIC_LEVELS if rules.include_upper_thoracic else ()) + grade_mod.GRADED_LEVELS
    return {"include_upper_thoracic": bool(rules.include_upper_thoracic), "graded_levels": list(levels)}


def _rounded(value, digits=3):
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return [_rounded(v, digits) for v in value]
    return round(float(value), digits)


def summarize(rows: list[VertebraRow], cross_validate: bool = False) -> dict:
    """Every figure of the benchmark, as a JSON-ready dict."""
    evaluated = [r for r in rows if r.evaluated]
    truth = [r.true_grade for r in evaluated]
    predicted = [r.grade_for_figures for r in evaluated]
    scores = [r.score_for_figures for r in evaluated]
    matrix = confusion_matrix(truth, predicted)
    kappa = weighted_kappa(matrix)
    summary = {
        "vertebrae_evaluated": len(evaluated),
        "true_grade_counts": {str(g): int(matrix[g].sum()) for g in GRADES},
        "predicted_grade_counts": {str(g): int(matrix[:, g].sum()) for g in GRADES},
        "confusion_matrix": {"rows": "radiologists' grade 0-3", "columns": "predicted grade 0-3",
                             "counts": matrix.tolist()},
        "exact_grade_accuracy": _rounded(np.trace(matrix) / matrix.sum()) if matrix.sum() else None,
        "exact_grade_agreements": int(np.trace(matrix)),
        "linear_weighted_kappa": _rounded(kappa),
        "not_measured": [{"scan": r.scan, "level": r.level, "true_grade": r.true_grade, "reason": r.reason}
                         for r in evaluated if r.status == STATUS_NOT_MEASURED],
        "not_assessed": [{"scan": r.scan, "level": r.level, "true_grade": r.true_grade, "reason": r.reason}
                         for r in rows if r.status == STATUS_NOT_ASSESSED and r.true_grade is not None],
        "unknown_labels": [{"scan": r.scan, "label": r.label, "level": r.level, "true_grade": r.true_grade}
                           for r in rows if r.status == STATUS_UNKNOWN_LABEL],
        "borderline": {
            "count": sum(bool(r.borderline) for r in evaluated),
            "by_true_grade": {str(g): sum(bool(r.borderline) and r.true_grade == g for r in evaluated) for g in GRADES},
            "grade>=1 borderline as positive": None,
        },
        "score": "fracture_score" if any(r.fracture_score is not None and r.height_loss != r.fracture_score
                                         for r in evaluated) else "height_loss",
        "predicted_grade": {},
        "auc": {},
    }
    for cutoff in FRACTURE_CUTOFFS:
        positive = [t >= cutoff for t in truth]
        figures = binary_figures(positive, [p >= cutoff for p in predicted])
        summary["predicted_grade"][f"grade>={cutoff}"] = {k: _rounded(v) if "ity" in k else v
                                                                for k, v in figures.items()}
        summary["auc"][f"grade>={cutoff}"] = _rounded(roc_auc(scores, positive))
    # The borderline band counted as positive (a reader reviews it and may call it grade 1); as negative above.
    called = [p >= 1 or bool(r.borderline) for p, r in zip(predicted, evaluated)]
    figures = binary_figures([t >= 1 for t in truth], called)
    summary["borderline"]["grade>=1 borderline as positive"] = {k: _rounded(v) if "ity" in k else v
                                                                  for k, v in figures.items()}
    if cross_validate:
        summary["cross_validated"] = {}
        for cutoff in FRACTURE_CUTOFFS:
            groups = {}
            for r in evaluated:
                group = groups.setdefault(r.subject, ([], [], []))
                group[0].append(r.score_for_figures)
                group[1].append(r.true_grade >= cutoff)
                group[2].append(r)
            loso = leave_one_subject_out({s: (g[0], g[1]) for s, g in groups.items()})
            for subject, calls in loso.pop("calls").items():
                for r, call in zip(groups[subject][2], calls):
                    r.loso_fracture[f"grade>={cutoff}"] = bool(call)
            fitted = [t for t in loso.pop("fitted").values() if t is not None]
            entry = {k: _rounded(v) if "ity" in k else v for k, v in loso.items()}
            entry["fitted_thresholds"] = {"min": _rounded(min(fitted, default=None)) if fitted else None,
                                          "median": _rounded(float(np.median(fitted))) if fitted else None,
                                          "max": _rounded(max(fitted)) if fitted else None}
            entry["folds"] = len(groups)
            summary["cross_validated"][f"grade>={cutoff}"] = entry
    return summary


# ----------------------------------------------------------------------------------------------- outputs

CSV_COLUMNS = ["scan", "subject", "label", "level", "status", "reason", "anterior_mm", "middle_mm", "posterior_mm",
               "wedge_ratio", "biconcavity_ratio", "middle_to_walls_ratio", "height_loss", "fracture_score",
               "predicted_grade", "borderline", "morphology", "true_grade", "grade_counted"]


def rows_to_csv(result: BenchmarkResult) -> str:
    columns = list(CSV_COLUMNS)
    if result.cross_validated:
        columns += [f"loso_fracture_grade>={c}" for c in FRACTURE_CUTOFFS]
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        data = asdict(row)
        loso = data.pop("loso_fracture")
        for name in ("anterior_mm", "middle_mm", "posterior_mm"):
            data[name] = _rounded(data[name], 2)
        for name in ("wedge_ratio", "biconcavity_ratio", "middle_to_walls_ratio", "height_loss", "fracture_score"):
            data[name] = _rounded(data[name], 4)
        data["grade_counted"] = row.grade_for_figures if row.evaluated else None
        if result.cross_validated:
            for cutoff in FRACTURE_CUTOFFS:
                value = loso.get(f"grade>={cutoff}")
                data[f"loso_fracture_grade>={cutoff}"] = None if value is None else int(value)
        writer.writerow(data)
    return buffer.getvalue()


def confusion_to_csv(summary: dict) -> str:
    lines = ["true_grade\\predicted_grade," + ",".join(str(g) for g in GRADES)]
    for grade, counts in zip(GRADES, summary["confusion_matrix"]["counts"]):
        lines.append(f"{grade}," + ",".join(str(c) for c in counts))
    return "\n".join(lines) + "\n"


def _format_rate(figures: dict, name: str) -> str:
    value, interval = figures.get(name), figures.get(f"{name}_ci95")
    if value is None:
        return "n/a"
    counts = {"sensitivity": (figures["tp"], figures["tp"] + figures["fn"]),
              "specificity": (figures["tn"], figures["tn"] + figures["fp"])}[name]
    # From the counts: the stored value is already rounded to three digits, and 0.895 would print as 0.90.
    return f"{counts[0] / counts[1]:.2f} [{interval[0]:.2f}-{interval[1]:.2f}] {counts[0]}/{counts[1]}"


def format_summary(summary: dict) -> str:
    counts = summary["true_grade_counts"]
    fractured = sum(counts[str(g)] for g in GRADES if g >= 1)
    upper = summary.get("grading", {}).get("include_upper_thoracic")
    lines = [
        f"{summary['scans']} scans ({summary['subjects']} subjects), {summary['vertebrae_evaluated']} graded vertebrae "
        f"({fractured} fractured: " + ", ".join(f"{counts[str(g)]} grade {g}" for g in GRADES if g >= 1)
        + f"); {len(summary['not_measured'])} not measured, counted as missed",
        "levels graded: " + ("T1-L5 (T1-T3 included on request)" if upper else "T4-L5 (T1-T3 not assessed)"),
        "confusion matrix (rows: radiologists' grade, columns: predicted grade)",
        "        " + "".join(f"{g:>5}" for g in GRADES),
    ]
    for grade, row in zip(GRADES, summary["confusion_matrix"]["counts"]):
        lines.append(f"  true {grade}" + "".join(f"{c:>5}" for c in row))
    borderline = summary.get("borderline") or {}
    if borderline:
        by_grade = borderline["by_true_grade"]
        counts = ", ".join(f"{by_grade[str(g)]} of true grade {g}" for g in GRADES if by_grade[str(g)])
        lines.append(f"borderline (graded 0, to review): {borderline['count']}" + (f" ({counts})" if counts else "")
                     + "; the predicted grade counts them negative")
    lines.append(f"{'':<33}{'sensitivity [95% CI]':<26}{'specificity [95% CI]':<26}AUC")
    for cutoff in FRACTURE_CUTOFFS:
        key = f"grade>={cutoff}"
        figures = summary["predicted_grade"][key]
        auc = summary["auc"][key]
        lines.append(f"{key + ' predicted grade':<33}{_format_rate(figures, 'sensitivity'):<26}"
                     f"{_format_rate(figures, 'specificity'):<26}{'n/a' if auc is None else f'{auc:.3f}'}")
        if cutoff == 1 and borderline.get("grade>=1 borderline as positive"):
            figures = borderline["grade>=1 borderline as positive"]
            lines.append(f"{'grade>=1 borderline positive':<33}{_format_rate(figures, 'sensitivity'):<26}"
                         f"{_format_rate(figures, 'specificity'):<26}")
        if "cross_validated" in summary:
            loso = summary["cross_validated"][key]
            thresholds = loso["fitted_thresholds"]
            fitted = "" if thresholds["median"] is None else (
                f"(threshold {thresholds['min']:.3f}-{thresholds['max']:.3f})")
            lines.append(f"{key + ' LOSO threshold':<33}{_format_rate(loso, 'sensitivity'):<26}"
                         f"{_format_rate(loso, 'specificity'):<26}{fitted}")
    accuracy = summary["exact_grade_accuracy"]
    kappa = summary["linear_weighted_kappa"]
    lines.append(f"exact grade {'n/a' if accuracy is None else f'{accuracy:.2f}'} "
                 f"({summary['exact_grade_agreements']}/{summary['vertebrae_evaluated']}); linearly weighted kappa "
                 f"{'n/a' if kappa is None else f'{kappa:.2f}'}; score: {summary['score']}")
    for item in summary["not_measured"]:
        lines.append(f"not measured (counted as grade 0): {item['scan']} {item['level']} (grade {item['true_grade']}): "
                     f"{item['reason']}")
    for item in summary["not_assessed"]:
        lines.append(f"not assessed (left out): {item['scan']} {item['level']} (grade {item['true_grade']}): "
                     f"{item['reason']}")
    for item in summary["unknown_labels"]:
        lines.append(f"unknown label: {item['scan']} {item['level']} (label {item['label']}) is graded in the "
                     "table but not in the mask")
    for scan, error in summary.get("failed_scans", {}).items():
        lines.append(f"failed: {scan}: {error}")
    if summary.get("unknown_scans"):
        shown = ", ".join(summary["unknown_scans"][:5])
        more = len(summary["unknown_scans"]) - 5
        lines.append(f"{len(summary['unknown_scans'])} scans of the table have no mask here: {shown}"
                     + (f" and {more} more (summary.json)" if more > 0 else ""))
    if summary.get("masks_without_grades"):
        lines.append("masks without grades: " + ", ".join(summary["masks_without_grades"]))
    lines.append(f"runtime {summary['seconds']:.1f} s")
    return "\n".join(lines)


def render_roc(result: BenchmarkResult, destination: str | Path) -> None:
    """ROC curves of the continuous score at grade >= 1 and >= 2, with the operating points of the predicted grade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in result.rows if r.evaluated]
    scores = [r.score_for_figures for r in evaluated]
    figure, axes = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    axes.plot([0, 1], [0, 1], color="#bdbdbd", linewidth=0.8, linestyle="--")
    for cutoff, colour in zip(FRACTURE_CUTOFFS, ("#1565c0", "#c62828")):
        positive = [r.true_grade >= cutoff for r in evaluated]
        key = f"grade>={cutoff}"
        auc = result.summary["auc"][key]
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(scores, positive)
        counts = f"{sum(positive)} positive, {len(positive) - sum(positive)} negative"
        axes.plot(fpr, tpr, color=colour, linewidth=1.6, label=f"{key.replace('>=', ' ≥ ')}: AUC {auc:.3f} ({counts})")
        point = result.summary["predicted_grade"][key]
        if point["sensitivity"] is not None and point["specificity"] is not None:
            axes.plot([1 - point["specificity"]], [point["sensitivity"]], "o", color=colour, markersize=6,
                      markeredgecolor="black", label=f"{key.replace('>=', ' ≥ ')}: predicted grade")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title(f"Fracture score ({result.summary['score']}) against radiologists' grades", fontsize=9)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    with open(destination, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


OUTPUT_FILES = ("vertebrae.csv", "confusion_matrix.csv", "summary.json", "summary.txt", "roc.png")


def write_outputs(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every output into ``out_dir`` at once (staged, then moved); returns {name: path}."""
    from VertebralFractureLib.outputs.files import staged_outputs

    out_dir = Path(out_dir)
    with staged_outputs(out_dir) as staging:
        (staging / "vertebrae.csv").write_text(rows_to_csv(result), encoding="utf-8")
        (staging / "confusion_matrix.csv").write_text(confusion_to_csv(result.summary), encoding="utf-8")
        data = dict(result.summary)
        data["scan_details"] = result.scans
        (staging / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (staging / "summary.txt").write_text(format_summary(result.summary) + "\n", encoding="utf-8")
        render_roc(result, staging / "roc.png")
    return {name: out_dir / name for name in OUTPUT_FILES}


# ----------------------------------------------------------------------------------------------- public sample

DATA_ENVIRONMENT = "VERTEBRAL_FRACTURE_DATA"
DOWNLOAD_ENVIRONMENT = "VERTEBRAL_FRACTURE_DOWNLOAD"


class SampleUnavailable(VertebralFractureError):
    """The public VerSe sample is neither in the shared data folder nor allowed to be downloaded; says why."""


@dataclass(frozen=True)
class PublicSample:
    """One real VerSe subject with its radiologists' grades: where the shared data holds it, and where the public
    copies are (URL at a pinned commit + SHA-256 of the exact file)."""

    subject: str
    shared_mask: str
    shared_grades: str
    mask_url: str
    mask_sha256: str
    grades_url: str
    grades_sha256: str
    licence: str

    @property
    def mask_name(self) -> str:
        return self.mask_url.rsplit("/", 1)[-1]

    @property
    def grades_name(self) -> str:
        return self.grades_url.rsplit("/", 1)[-1]


# sub-verse007 (VerSe'19, Löffler et al., Radiol AI 2020; CC BY-SA 4.0): T9-L3 with moderate fractures of T12 and
# L1, stored cropped to the labels' bounding box. The mask is the VerSe file as re-published in a public GitHub
# repository (byte-identical to the copy in the shared test data); the grades are the VerSe'19 table published in
# HealthiVert-GAN's vertebra_data.json (MIT repository; the grades are VerSe data).
VERSE_SAMPLE = PublicSample(
    subject="sub-verse007",
    shared_mask="verse19/sub-verse007_seg-vert_msk.nii.gz",
    shared_grades="verse19/genant_grades.csv",
    mask_url="https://raw.githubusercontent.com/elkhashabs/Spine-Navigation-System-Capstone/"
             "2882986551f33dec9c21e1151478ace9dd614b56/sub-verse007_seg-vert_msk.nii.gz",
    mask_sha256="781a1339773304cb72c800c0b5d2e387f097f9daf0cded189bc5c395f1acbddd",
    grades_url="https://raw.githubusercontent.com/zhibaishouheilab/HealthiVert-GAN/"
               "3284d1e051f4a0ae83c18b708a50ca33ea1e94f3/vertebra_data.json",
    grades_sha256="eb906b576f55186af27cd7718dbbc930da809dd38ae331c7d9304b7b70104b11",
    licence="VerSe data, CC BY-SA 4.0",
)


def shared_data_root() -> Path:
    """``$VERTEBRAL_FRACTURE_DATA``, else ``../shared/data`` beside the repository."""
    configured = os.environ.get(DATA_ENVIRONMENT)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"


def sample_cache_dir() -> Path:
    from VertebralFractureLib.segment.models import cache_root

    return cache_root() / "data" / "verse-sample"


def locate_sample(sample: PublicSample = VERSE_SAMPLE, data_root: str | Path | None = None,
                  allow_download: bool | None = None, cache_dir: str | Path | None = None,
                  progress=None) -> tuple[Path, Path]:
    """(masks folder, grade table) of the public sample: the shared data when it holds the sample, else the
    cache folder, downloading into it (pinned URL, SHA-256 checked, atomic) only with consent.

    ``allow_download``: the consent; None reads ``$VERTEBRAL_FRACTURE_DOWNLOAD=1``. Raises
    :class:`SampleUnavailable` with the reason when the sample is neither here nor allowed to be fetched.
    """
    root = Path(data_root) if data_root is not None else shared_data_root()
    mask, grades = root / sample.shared_mask, root / sample.shared_grades
    if mask.is_file() and grades.is_file():
        return mask.parent, grades
    cache = Path(cache_dir) if cache_dir is not None else sample_cache_dir()
    cached_mask, cached_grades = cache / sample.mask_name, cache / sample.grades_name
    if allow_download is None:
        allow_download = os.environ.get(DOWNLOAD_ENVIRONMENT) == "1"
    if not allow_download:
        from VertebralFractureLib.io.download import sha256_file

        if all(p.is_file() and sha256_file(p) == h for p, h in ((cached_mask, sample.mask_sha256),
                                                                 (cached_grades, sample.grades_sha256))):
            return cache, cached_grades
        raise SampleUnavailable(f"the VerSe sample {sample.subject} is not in {root} and downloading it was not "
                                f"agreed to: set {DOWNLOAD_ENVIRONMENT}=1 to fetch it ({sample.licence}) from "
                                f"{sample.mask_url}")
    from VertebralFractureLib.io.download import fetch_file

    fetch_file(sample.mask_url, sample.mask_sha256, cached_mask, progress)
    fetch_file(sample.grades_url, sample.grades_sha256, cached_grades, progress)
    return cache, cached_grades


def run_sample_benchmark(out_dir: str | Path, sample: PublicSample = VERSE_SAMPLE, **locate_options) -> BenchmarkResult:
    """The benchmark on the public sample subject (self-test of the Slicer module and of ``pytest -m verse``)."""
    masks, grades = locate_sample(sample, **locate_options)
    result = run_benchmark(masks, grades, subjects=[sample.subject])
    write_outputs(result, out_dir)
    return result


def self_test(out_dir: str | Path, sample: PublicSample = VERSE_SAMPLE, **locate_options) -> str:
    """The Slicer module's self-test of the benchmark: the summary text, or why it was skipped.

    Raises :class:`VertebralFractureError` when the outputs disagree with the grade table (a vertebra lost or
    counted twice, or an output missing).
    """
    try:
        _, grades = locate_sample(sample, **locate_options)
    except SampleUnavailable as reason:
        return f"VerSe benchmark skipped: {reason}"
    result = run_sample_benchmark(out_dir, sample, **locate_options)
    graded = len(read_grade_table(grades).get(sample.subject, {}))
    counted = int(np.sum(result.summary["confusion_matrix"]["counts"]))
    missing = [name for name in OUTPUT_FILES if not (Path(out_dir) / name).is_file()]
    if not graded or counted != graded or result.summary["vertebrae_evaluated"] != graded or missing:
        raise VertebralFractureError(f"benchmark self-test on {sample.subject}: {counted} vertebrae counted, "
                                     f"{graded} graded in the table; missing outputs: {', '.join(missing) or 'none'}")
    return format_summary(result.summary)
