"""How far expert readers disagree on six-point morphometry of CT, and how widely the shapes vary: the numbers behind
grade.READER_DISAGREEMENT_SD (the borderline band) and the normal spread the SD criterion lives with.

Reads the experts' six-point annotations of 100 chest CTs (ctlungca-keypoints in the shared data: two or three
experts per CT, each point in voxel indices; Pisov et al., MICCAI 2020). Per vertebra the three segments (anterior,
middle, posterior wall, in that order from the front) give Ha, Hm, Hp as their extent along z (the slice axis), so
their ratios do not depend on the voxel spacing, which the annotations do not give. The same vertebra read by two
experts is matched by the position of its points (within 5 voxels). Prints the SD of the difference between two
readers' log ratios (Ha/Hp, Hm/Hp, Hm/Ha) and of their largest reduction (1 - min/max), the spread of the ratios
over all annotated vertebrae (an older screening population, fractures included), and how often a second reader
calls >= 20 % where the first read a smaller reduction.

    .venv/bin/python Testing/benchmarks/bench_reader_agreement.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
MATCH_VOXELS = 5.0
"""Two readers' annotations are of the same vertebra when their point centres lie this close (in-plane row, z)."""


def _heights(points) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=float)
    return np.array([abs(p[2 * i + 1, 2] - p[2 * i, 2]) for i in range(3)]), p.mean(axis=0)


def _ratios(h: np.ndarray) -> dict[str, np.ndarray]:
    a, m, p = h[..., 0], h[..., 1], h[..., 2]
    return {"Ha/Hp": a / p, "Hm/Hp": m / p, "Hm/Ha": m / a}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    files = sorted((Path(args.data) / "ctlungca-keypoints" / "annotation").glob("*.json"))
    every, pairs = [], []
    for path in files:
        readings = {expert: [_heights(v) for v in vertebrae]
                    for expert, vertebrae in json.loads(path.read_text())["Annotation"].items()}
        every += [h for vertebrae in readings.values() for h, _ in vertebrae]
        for first, second in itertools.combinations(sorted(readings), 2):
            for h1, c1 in readings[first]:
                distances = [np.linalg.norm((c2 - c1)[[0, 2]]) for _, c2 in readings[second]]
                if distances and min(distances) < MATCH_VOXELS:
                    pairs.append((h1, readings[second][int(np.argmin(distances))][0]))
    heights = np.array([h for h in every if np.all(h > 0)])
    pairs = np.array([pair for pair in pairs if np.all(pair[0] > 0) and np.all(pair[1] > 0)])
    print(f"{len(files)} CTs, {len(heights)} vertebra annotations, {len(pairs)} pairs of readings of one vertebra")
    print("\nBetween two readers (SD of the difference; 95 % limits of agreement = 1.96 SD):")
    first, second = _ratios(pairs[:, 0]), _ratios(pairs[:, 1])
    for name in first:
        difference = np.log(first[name] / second[name])
        print(f"  {name}: SD {difference.std(ddof=1):.3f}, limits of agreement +-{1.96 * difference.std(ddof=1):.3f}")
    reduction = 1 - pairs.min(axis=2) / pairs.max(axis=2)
    difference = reduction[:, 0] - reduction[:, 1]
    print(f"  largest reduction 1 - min/max: SD {difference.std(ddof=1):.3f}, limits of agreement "
          f"+-{1.96 * difference.std(ddof=1):.3f}")
    both = np.concatenate([reduction, reduction[:, ::-1]])
    for low in (0.10, 0.13, 0.15):
        inside = (both[:, 0] >= low) & (both[:, 0] < 0.20)
        print(f"  one reader {100 * low:.0f}-20 %: the other reads >= 20 % in {np.mean(both[inside, 1] >= 0.2):.2f} "
              f"({inside.sum()} readings); below {100 * low:.0f} %: {np.mean(both[both[:, 0] < low, 1] >= 0.2):.3f}")
    print("\nShapes over all annotated vertebrae (median, robust SD = 1.4826 MAD, 2.5-97.5 %):")
    for name, values in _ratios(heights).items():
        median = np.median(values)
        robust = 1.4826 * np.median(np.abs(values - median))
        print(f"  {name}: {median:.3f}, {robust:.3f} ({robust / median:.3f} of the median), "
              f"{np.percentile(values, 2.5):.3f}-{np.percentile(values, 97.5):.3f}")
    smallest = heights.min(axis=1) / heights.max(axis=1)
    print(f"  min/max: median {np.median(smallest):.3f}; < 0.8 in {np.mean(smallest < 0.8):.2f}, "
          f"< 0.75 in {np.mean(smallest < 0.75):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
