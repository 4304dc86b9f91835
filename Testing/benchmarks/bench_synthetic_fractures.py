"""Known compressions of several real normal vertebrae: how well the measured reduction and the grade follow them.

Testing/test_synthetic_fractures.py checks one vertebra (sub-verse010 L3) to 3 percentage points. This script
applies the same compression (wedge, biconcave, crush and posterior, Genant's crush type with the posterior height
reduced, at 15, 22, 30 and 45 %) to normal vertebrae of other subjects
and levels (radiologists' grade 0 in the shared VerSe'19 masks), each cropped with its two neighbours, and prints
the measured reduction of the ratio the grade depends on, the grade and morphology, the grades of the untouched
neighbours, and in the end the error of the measured reductions and how often the grade falls in the Genant band of
the imposed reduction (after grade.REDUCTION_SCALE, with 3 points of tolerance as in the test).

    .venv/bin/python Testing/benchmarks/bench_synthetic_fractures.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "Testing"))

import test_synthetic_fractures as synthetic

from VertebralFractureLib import io
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import measure

SOURCES = (
    ("verse19/sub-verse010_seg-vert_msk.nii.gz", "L3", ("L2", "L3", "L4")),
    ("verse19/sub-verse010_seg-vert_msk.nii.gz", "L4", ("L3", "L4", "L5")),
    ("verse19/sub-verse004_seg-vert_msk.nii.gz", "L2", ("L1", "L2", "L3")),
    ("verse19/sub-verse004_seg-vert_msk.nii.gz", "T11", ("T10", "T11", "T12")),
    ("verse19/sub-verse008_seg-vert_msk.nii.gz", "L3", ("L2", "L3", "L4")),
    ("verse19/sub-verse007_seg-vert_msk.nii.gz", "T10", ("T9", "T10", "T11")),
)
"""Normal vertebrae (radiologists' grade 0) and the neighbours kept beside them."""
REDUCTIONS = (0.15, 0.22, 0.30, 0.45)
KINDS = ("wedge", "biconcave", "crush", "posterior")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    errors, in_band, morphology_right, fractured, neighbours_called, neighbours_borderline = [], 0, 0, 0, 0, 0
    borderline = 0
    total = neighbours_total = 0
    for path, level, levels in SOURCES:
        volume = io.read_label_map(Path(args.data) / path).volume
        ids = tuple(labels_mod.label_from_level(name) for name in levels)
        cropped = synthetic._crop(volume, ids)
        label = labels_mod.label_from_level(level)
        baseline = measure.measure_case(cropped)
        before = baseline.vertebra(label)
        normal_neighbours = [n for n in levels if n != level and baseline.vertebra(n).genant_grade == 0]
        heights = ", ".join(f"{name[0].upper()} {value:.1f}" for name, value in before.heights_mm.items())
        print(f"{Path(path).name.split('_')[0]} {level}: grade {before.genant_grade}, {heights} mm, "
              f"score {before.fracture_score:.2f}")
        for kind in KINDS:
            cells = []
            for reduction in REDUCTIONS:
                case = measure.measure_case(synthetic._compress(cropped, before, label, kind, reduction))
                after = case.vertebra(label)
                ratio = synthetic.RATIO[kind]
                measured = 1.0 - ratio(after.heights_mm) / ratio(before.heights_mm)
                errors.append(measured - reduction)
                total += 1
                in_band += after.genant_grade in synthetic._allowed_grades(reduction)
                if after.genant_grade:
                    fractured += 1
                    morphology_right += after.morphology == synthetic.MORPHOLOGY[kind]
                borderline += bool(after.borderline)
                neighbours_called += sum(bool(case.vertebra(n).genant_grade) for n in normal_neighbours)
                neighbours_borderline += sum(bool(case.vertebra(n).borderline) for n in normal_neighbours)
                neighbours_total += len(normal_neighbours)
                mark = "B" if after.borderline else " "
                cells.append(f"{100 * reduction:.0f} %: {100 * measured:5.1f} % g{after.genant_grade}{mark}")
            print(f"  {kind:9s} " + " | ".join(cells))
    errors = np.array(errors)
    print(f"\nmeasured minus imposed reduction over {total} compressions: mean {100 * errors.mean():+.1f}, "
          f"SD {100 * errors.std(ddof=1):.1f}, largest {100 * np.abs(errors).max():.1f} percentage points; "
          f"within 3 points: {np.mean(np.abs(errors) <= 0.03):.2f}")
    print(f"grade in the band of the imposed reduction (3 points of tolerance): {in_band}/{total}; morphology right "
          f"where graded >= 1: {morphology_right}/{fractured}; untouched normal neighbours called fractured: "
          f"{neighbours_called}/{neighbours_total}, borderline: {neighbours_borderline}/{neighbours_total}; compressed "
          f"vertebrae borderline (B): {borderline}/{total}")
    print(f"runtime {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
