"""Agreement with the radiologists' Genant grades (VerSe'19) and with the peer's heights (TotalSegmentator example).

Prints, for every graded vertebra of the shared VerSe'19 subjects, the radiologists' grade beside the measured
grade, score and heights, then sensitivity and specificity at grade >= 1 and grade >= 2 (a vertebra left ungraded
counts as called normal: a missed fracture, a correct negative), and the grades of the normal example spines.

    .venv/bin/python Testing/benchmarks/validate_grades.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import io, measure  # noqa: E402


def _rates(pairs, cut):
    """Sensitivity and specificity of `predicted >= cut` against `truth >= cut` (None predicted counts as 0)."""
    positives = [(t, p) for t, p in pairs if t >= cut]
    negatives = [(t, p) for t, p in pairs if t < cut]
    hits = sum((p or 0) >= cut for _, p in positives)
    rejections = sum((p or 0) < cut for _, p in negatives)
    return hits, len(positives), rejections, len(negatives)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    reference = {}
    with open(data / "verse19" / "genant_grades.csv") as handle:
        for row in csv.DictReader(handle):
            reference.setdefault(row["subject"], {})[row["level"]] = int(row["genant_grade"])
    pairs = []
    print("subject       level  truth  grade  score   Ha    Hm    Hp   reason")
    for subject, grades in reference.items():
        label_map = io.read_label_map(data / "verse19" / f"{subject}_seg-vert_msk.nii.gz")
        case = measure.measure_case(label_map.volume)
        for level, expected in grades.items():
            vertebra = case.vertebra(level)
            measured = vertebra.genant_grade
            pairs.append((expected, measured))
            score = getattr(vertebra, "fracture_score", None)
            heights = vertebra.heights_mm or {}
            columns = "  ".join(f"{heights.get(name, float('nan')):4.1f}" for name in ("anterior", "middle", "posterior"))
            mark = "" if (measured or 0) >= 1 and expected >= 1 or (measured or 0) == 0 and expected == 0 else " *"
            score_text = "  -  " if score is None else f"{score:5.2f}"
            reason = vertebra.grade_reason if vertebra.complete else vertebra.incomplete_reason
            print(f"{subject}  {level:>5}  {expected:>5}  {measured!s:>5}  {score_text}  {columns}  "
                  f"{(reason or '')[:90]}{mark}")
    exact = sum(t == p for t, p in pairs)
    print(f"\nexact grade: {exact}/{len(pairs)}")
    for cut in (1, 2):
        hits, positives, rejections, negatives = _rates(pairs, cut)
        print(f"grade >= {cut}: sensitivity {hits}/{positives} = {hits / positives:.2f}, "
              f"specificity {rejections}/{negatives} = {rejections / negatives:.2f}")

    ct = io.read_ct(data / "totalsegmentator-example" / "example_ct.nii.gz")
    label_map = io.read_label_map(
        data / "totalsegmentator-example" / "spine_report" / "totalseg_vertebrae_pp_refined.nii.gz", reference=ct
    )
    case = measure.measure_case(label_map.volume, ct)
    peer = json.loads((data / "totalsegmentator-example" / "spine_report" / "spine_report.json").read_text())["results"]
    print("\nTotalSegmentator example (3 mm): ours - peer, mm; grade")
    for level in ("L1", "L2", "L3", "L4", "L5"):
        vertebra = case.vertebra(level)
        differences = "  ".join(
            f"{name[0].upper()} {vertebra.heights_mm[name] - peer[f'vertebrae_{level}_height_{name}_mm']:+5.1f}"
            for name in ("anterior", "middle", "posterior")
        )
        volume = vertebra.body_volume_ml - peer[f"vertebrae_{level}_volume_ml"]
        print(f"  {level}: {differences}  volume {volume:+.2f} ml  grade {vertebra.genant_grade}")
    full = io.read_label_map(data / "totalsegmentator-example" / "spine_report" / "totalseg.nii.gz", reference=ct)
    case = measure.measure_case(full.volume, ct)
    print("full-vertebra labels (totalseg.nii.gz):", {v.level: v.genant_grade for v in case.vertebrae})
    for name in ("sub-gl003_dir-ax", "sub-gl017", "healthivert-0007", "sub-sample001"):
        path = data / "ungraded-masks" / f"{name}_seg-vert_msk.nii.gz"
        case = measure.measure_case(io.read_label_map(path).volume)
        print(f"{name}:", {v.level: v.genant_grade for v in case.vertebrae})
    return 0


if __name__ == "__main__":
    sys.exit(main())
