"""Agreement with the radiologists' Genant grades (VerSe'19) and with the peer's heights (TotalSegmentator example).

Prints, for every graded vertebra of the shared VerSe'19 subjects, the radiologists' grade beside the measured
grade (``B``: borderline), fracture score, heights and reason; sensitivity and specificity at grade >= 1 and
grade >= 2 (a vertebra left ungraded counts as called normal: a missed fracture, a correct negative), at grade >= 1
with the borderline vertebrae counted as negative and as positive; the z-scores of the vertebrae graded 0
against the per-level normal shapes of grade.py; a leave-one-subject-out fit of grade.REDUCTION_SCALE (the only
fitted number) beside its in-sample fit; and the grades of the normal example spines.

    .venv/bin/python Testing/benchmarks/validate_grades.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import grade, measure

SCALES = np.round(np.arange(1.0, 2.001, 0.05), 2)
"""Candidate reduction scales of the leave-one-subject-out fit."""


def _rates(pairs, cut, borderline_positive=False):
    """(hits, positives, correct rejections, negatives) of `predicted >= cut` against `truth >= cut`; a borderline
    vertebra is called positive with ``borderline_positive``."""
    def called(p, b):
        return (p or 0) >= cut or (borderline_positive and b)
    positives = [(p, b) for t, p, b in pairs if t >= cut]
    negatives = [(p, b) for t, p, b in pairs if t < cut]
    hits = sum(called(p, b) for p, b in positives)
    rejections = sum(not called(p, b) for p, b in negatives)
    return hits, len(positives), rejections, len(negatives)


def _summary(pairs) -> str:
    lines = [f"exact grade: {sum(t == (p or 0) for t, p, _ in pairs)}/{len(pairs)}; borderline: "
             f"{sum(b for _, _, b in pairs)} ({sum(b and t >= 1 for t, _, b in pairs)} fractured)"]
    for cut, borderline_positive in ((1, False), (1, True), (2, False)):
        hits, positives, rejections, negatives = _rates(pairs, cut, borderline_positive)
        lines.append(
            f"grade >= {cut}{' borderline positive' if borderline_positive else ''}: sensitivity {hits}/{positives} "
            f"= {hits / positives:.2f}, specificity {rejections}/{negatives} = {rejections / negatives:.2f}"
        )
    return "\n".join(lines)


def _pairs(cases, reference, rules, subjects):
    """(radiologists' grade, predicted grade, borderline) of every graded vertebra of these subjects."""
    pairs = []
    for subject in subjects:
        grade.grade_vertebrae(cases[subject].vertebrae, rules)
        for level, truth in reference[subject].items():
            vertebra = cases[subject].vertebra(level)
            pairs.append((truth, vertebra.genant_grade, bool(vertebra.borderline)))
    return pairs


def _grades(case, assessed_only=False) -> str:
    """Level: grade of every vertebra, ``B`` after a borderline one."""
    return ", ".join(f"{v.level} {v.genant_grade}{'B' if v.borderline else ''}" for v in case.vertebrae
                     if not (assessed_only and v.not_assessed_reason))


def _fit_scale(cases, reference, subjects) -> float:
    """The scale with the smallest mean absolute grade error on these subjects (the smallest such scale on ties)."""
    errors = []
    for scale in SCALES:
        rules = dataclasses.replace(grade.DEFAULT_RULES, reduction_scale=float(scale))
        errors.append(sum(abs(t - (p or 0)) for t, p, _ in _pairs(cases, reference, rules, subjects)))
    return float(SCALES[int(np.argmin(errors))])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    reference = {}
    with open(data / "verse19" / "genant_grades.csv") as handle:
        for row in csv.DictReader(handle):
            reference.setdefault(row["subject"], {})[row["level"]] = int(row["genant_grade"])
    cases = {
        subject: measure.measure_case(io.read_label_map(data / "verse19" / f"{subject}_seg-vert_msk.nii.gz").volume)
        for subject in reference
    }
    subjects = list(reference)

    print(f"With the rules of grade.py (reduction scale {grade.REDUCTION_SCALE}):")
    print("subject       level  truth  grade  score   Ha    Hm    Hp   reason")
    pairs = _pairs(cases, reference, grade.DEFAULT_RULES, subjects)
    for subject in subjects:
        for level, expected in reference[subject].items():
            vertebra = cases[subject].vertebra(level)
            measured = vertebra.genant_grade
            heights = vertebra.heights_mm or {}
            columns = "  ".join(f"{heights.get(n, float('nan')):4.1f}" for n in ("anterior", "middle", "posterior"))
            wrong = ((measured or 0) >= 1) != (expected >= 1)
            score = "  -  " if vertebra.fracture_score is None else f"{vertebra.fracture_score:5.2f}"
            reason = vertebra.grade_reason if vertebra.complete else vertebra.incomplete_reason
            mark = "B" if vertebra.borderline else " "
            print(f"{subject}  {level:>5}  {expected:>5}  {measured!s:>4}{mark}  {score}  {columns}  "
                  f"{(reason or '')[:100]}{' *' if wrong else ''}")
    print(_summary(pairs))

    print("\nz-scores of the vertebrae graded 0 against the per-level normal shape (NORMAL_SHAPE, SD fraction "
          f"{grade.NORMAL_WEDGE_SD} for Ha/Hp, {grade.NORMAL_SHAPE_SD} for the middle height's ratios):")
    all_z = []
    for subject in subjects:
        for level, expected in reference[subject].items():
            vertebra = cases[subject].vertebra(level)
            if expected or not vertebra.heights_mm:
                continue
            h = vertebra.heights_mm
            normal = grade.normal_ratios(level)
            measured = {
                "wedge": h["anterior"] / h["posterior"],
                "middle_to_posterior": h["middle"] / h["posterior"],
                "middle_to_anterior": h["middle"] / h["anterior"],
            }
            sd = {"wedge": grade.NORMAL_WEDGE_SD}
            z = {k: (measured[k] / normal[k] - 1) / sd.get(k, grade.NORMAL_SHAPE_SD) for k in measured}
            all_z.append(list(z.values()))
            print(f"  {subject} {level:>4}: " + "  ".join(f"{k} {measured[k]:.2f} (z {z[k]:+.1f})" for k in z))
    all_z = np.array(all_z)
    print("  mean z: " + "  ".join(f"{v:+.2f}" for v in all_z.mean(axis=0))
          + ";  SD of z: " + "  ".join(f"{v:.2f}" for v in all_z.std(axis=0, ddof=1)))

    print("\nReduction scale fitted leaving one subject out (mean absolute grade error on the other four):")
    loso = []
    for held_out in subjects:
        scale = _fit_scale(cases, reference, [s for s in subjects if s != held_out])
        rules = dataclasses.replace(grade.DEFAULT_RULES, reduction_scale=scale)
        held = _pairs(cases, reference, rules, [held_out])
        loso += held
        print(f"  {held_out}: scale {scale:.2f}; truth/predicted " + ", ".join(
            f"{t}/{p}{'B' if b else ''}" for t, p, b in held))
    print("LOSO: " + _summary(loso).replace("\n", "; "))
    scale = _fit_scale(cases, reference, subjects)
    rules = dataclasses.replace(grade.DEFAULT_RULES, reduction_scale=scale)
    print(f"in-sample (scale {scale:.2f} fitted on all five): "
          + _summary(_pairs(cases, reference, rules, subjects)).replace("\n", "; "))

    ct = io.read_ct(data / "totalsegmentator-example" / "example_ct.nii.gz")
    label_map = io.read_label_map(
        data / "totalsegmentator-example" / "spine_report" / "totalseg_vertebrae_pp_refined.nii.gz", reference=ct
    )
    case = measure.measure_case(label_map.volume, ct)
    peer = json.loads((data / "totalsegmentator-example" / "spine_report" / "spine_report.json").read_text())["results"]
    print("\nTotalSegmentator example (3 mm): ours - peer, mm; grade; score")
    for level in ("L1", "L2", "L3", "L4", "L5"):
        vertebra = case.vertebra(level)
        differences = "  ".join(
            f"{name[0].upper()} {vertebra.heights_mm[name] - peer[f'vertebrae_{level}_height_{name}_mm']:+5.1f}"
            for name in ("anterior", "middle", "posterior")
        )
        volume = vertebra.body_volume_ml - peer[f"vertebrae_{level}_volume_ml"]
        print(f"  {level}: {differences}  volume {volume:+.2f} ml  grade {vertebra.genant_grade}"
              f"{' borderline' if vertebra.borderline else ''}  "
              f"score {vertebra.fracture_score:.2f}")
    full = io.read_label_map(data / "totalsegmentator-example" / "spine_report" / "totalseg.nii.gz", reference=ct)
    case = measure.measure_case(full.volume, ct)
    print("full-vertebra labels (totalseg.nii.gz):", _grades(case))
    for name in ("sub-gl003_dir-ax", "sub-gl017", "healthivert-0007", "sub-sample001"):
        path = data / "ungraded-masks" / f"{name}_seg-vert_msk.nii.gz"
        case = measure.measure_case(io.read_label_map(path).volume)
        print(f"{name}:", _grades(case, assessed_only=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
