"""Agreement with the radiologists' Genant grades (VerSe'19) and with the peer's heights (TotalSegmentator example).

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    reference = {}
    with open(data / "verse19" / "genant_grades.csv") as handle:
        for row in csv.DictReader(handle):
            reference.setdefault(row["subject"], {})[row["level"]] = int(row["genant_grade"])
    exact = within_one = fracture_agree = total = 0
    print("subject       level  radiologists  measured  reason")
    for subject, grades in reference.items():
        label_map = io.read_label_map(data / "verse19" / f"{subject}_seg-vert_msk.nii.gz")
        case = measure.measure_case(label_map.volume)
        for level, expected in grades.items():
            vertebra = case.vertebra(level)
            measured = vertebra.genant_grade
            total += 1
            exact += measured == expected
            within_one += measured is not None and abs(measured - expected) <= 1
            fracture_agree += (measured or 0) >= 1 and expected >= 1 or (measured or 0) == 0 and expected == 0
            print(f"{subject}  {level:>5}  {expected:>12}  {measured!s:>8}  {vertebra.grade_reason[:70]}")
    print(f"\nexact grade: {exact}/{total}; within one grade: {within_one}/{total}; "
          f"fracture yes/no: {fracture_agree}/{total}")

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
