"""Benchmark: `measure` on a large label map against merely loading it.

The VerSe mask sub-verse004 (1 x 1 x 2 mm) is resampled to 0.5 mm isotropic (nearest neighbour), written as
.nii.gz, then read and measured. Goal: measuring takes at most 3x the time of loading the file.

    .venv/bin/python Testing/benchmarks/bench_measure.py [--data ../shared/data] [--spacing 0.5]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import measure


def resample_to(volume: io.Volume, spacing_mm: float) -> io.Volume:
    """Nearest-neighbour resampling onto an isotropic grid with the same directions and extent."""
    extent = np.array(volume.shape) * volume.spacing
    shape = tuple(int(n) for n in np.ceil(extent / spacing_mm))
    target = np.eye(4)
    target[:3, :3] = volume.direction_ras * spacing_mm
    target[:3, 3] = volume.ijk_to_world(np.full(3, -0.5) + 0.5 * spacing_mm / volume.spacing)[0]
    reference = io.Volume(array=np.zeros(shape, dtype=np.int16), ijk_to_ras=target)
    return io.resample_labels_to(volume, reference)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    parser.add_argument("--spacing", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    source = Path(args.data) / "verse19" / "sub-verse004_seg-vert_msk.nii.gz"
    labels = io.read_label_map(source).volume
    large = resample_to(labels, args.spacing)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large_seg.nii.gz"
        io.write_nifti(large, path)
        size_mb = path.stat().st_size / 1e6
        load_times, measure_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = io.read_label_map(path)
            load_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            case = measure.measure_case(loaded.volume)
            measure_times.append(time.perf_counter() - start)
    load, work = min(load_times), min(measure_times)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"label map: {large.shape} voxels at {args.spacing} mm ({np.prod(large.shape) / 1e6:.1f} M voxels), "
        f"{size_mb:.1f} MB .nii.gz, {len(case.vertebrae)} vertebrae"
    )
    print(f"load:    {load:6.2f} s (best of {args.repeats})")
    print(f"measure: {work:6.2f} s (best of {args.repeats}) = {work / load:.2f} x load (goal <= 3 x)")
    print(f"peak resident memory: {peak_gb:.2f} GB")
    print("grades:", {v.level: v.genant_grade for v in case.vertebrae})
    return 0


if __name__ == "__main__":
    sys.exit(main())
