"""Benchmark: the default (classical) backend on a full-size CT.

The TotalSegmentator example CT (3 mm) is resampled to 0.8 mm isotropic (trilinear, about 457 x 379 x 420 voxels,
a realistic diagnostic grid), then segmented by the classical backend in a fresh process, which reports its wall
time and peak resident memory (``resource.getrusage``; the resampled CT itself is part of the peak). Goal: at most
30 s and 6 GB on a 2-core machine. With ``--evaluate`` the labels are also scored against TotalSegmentator's body
masks (resampled onto the 0.8 mm grid).

    .venv/bin/python Testing/benchmarks/bench_segment.py [--data ../shared/data] [--spacing 0.8] [--evaluate]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import io


def resample_ct(volume: io.Volume, spacing_mm: float) -> io.Volume:
    """Trilinear resampling onto an isotropic grid with the same directions and extent (air outside)."""
    from scipy import ndimage

    extent = np.array(volume.shape) * volume.spacing
    shape = tuple(int(n) for n in np.ceil(extent / spacing_mm))
    target = np.eye(4)
    target[:3, :3] = volume.direction_ras * spacing_mm
    target[:3, 3] = volume.ijk_to_world(np.full(3, -0.5) + 0.5 * spacing_mm / volume.spacing)[0]
    to_source = volume.ras_to_ijk @ target
    array = ndimage.affine_transform(volume.array, to_source[:3, :3], offset=to_source[:3, 3], output_shape=shape,
                                     order=1, cval=-1024.0, output=np.float32)
    return io.Volume(array=array, ijk_to_ras=target)


def child(ct_path: str, out_path: str) -> int:
    """Runs in a fresh process so that the peak memory is this segmentation's own."""
    from VertebralFractureLib.segment import get_backend

    start = time.perf_counter()
    ct = io.read_ct(ct_path)
    read_s = time.perf_counter() - start
    output = get_backend("classical").segment(ct)
    total_s = time.perf_counter() - start
    io.write_nifti(output.labels, out_path)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kilobytes on Linux
    levels = ", ".join(str(v) for v in np.unique(output.labels.array) if v)
    print(f"grid {ct.shape} at {ct.spacing[0]:.2f} mm; read {read_s:.1f} s; read + segment {total_s:.1f} s "
          f"(segment {total_s - read_s:.1f} s); peak memory {peak_gb:.2f} GB; labels {levels}; "
          f"levels {output.levels_status}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    parser.add_argument("--spacing", type=float, default=0.8)
    parser.add_argument("--evaluate", action="store_true", help="score against TotalSegmentator's body masks")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    data = Path(args.data) / "totalsegmentator-example"
    ct = io.read_ct(data / "example_ct.nii.gz")
    with tempfile.TemporaryDirectory() as folder:
        big = resample_ct(ct, args.spacing)
        ct_path = Path(folder) / "ct.nii"
        out_path = Path(folder) / "labels.nii.gz"
        io.write_nifti(big, ct_path)
        print(f"example CT resampled to {args.spacing} mm: {big.shape} voxels")
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", str(ct_path), str(out_path)], check=True)
        print(f"process wall time {time.perf_counter() - start:.1f} s (includes Python start-up and imports)")
        if args.evaluate:
            from VertebralFractureLib import evaluate

            labels = io.read_volume(out_path)
            reference = io.read_label_map(data / "spine_report" / "totalseg_vertebrae_pp_refined.nii.gz",
                                          reference=big).volume
            print(evaluate.format_report(evaluate.evaluate_labels(labels, reference)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
