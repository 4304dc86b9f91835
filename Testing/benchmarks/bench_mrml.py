"""Timings of the MRML logic on the example CT (prints figures; no assertions).

    python Testing/benchmarks/bench_mrml.py [--data ../shared/data] [--repeat 20]

Builds a case (measure + nodes), times one point drag (heights, re-grade, table, summary: what a reviewer waits
for while dragging), a level renumbering, re-measuring, and the .mrb save / load round trip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))


def main() -> None:
    parser = argparse.ArgumentParser()
    default_data = os.environ.get("VERTEBRAL_FRACTURE_DATA", REPOSITORY.parent / "shared" / "data")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    data = Path(args.data) / "totalsegmentator-example"

    started = time.perf_counter()
    import numpy as np

    from VertebralFractureLib import io
    from VertebralFractureLib.slicer import mrml

    print(f"import slicer-core + Lib: {time.perf_counter() - started:.2f} s")
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, data / "example_ct.nii.gz", "CT")
    labels = io.read_label_map(data / "spine_report" / "totalseg_vertebrae_pp_refined.nii.gz").volume

    started = time.perf_counter()
    case = mrml.VertebralFractureCase.create(volume_node, labels=labels)
    print(f"create case (measure {len(case.case.vertebrae)} vertebrae + nodes): {time.perf_counter() - started:.2f} s")
    case.start_observing()

    line = case.line_node("L2", "anterior")
    superior = np.asarray(case.vertebra("L2").axes_ras["superior"])
    position = [0.0, 0.0, 0.0]
    line.GetNthControlPointPositionWorld(1, position)
    times = []
    for step in range(args.repeat):
        offset = 0.5 * (step % 10)
        started = time.perf_counter()
        line.SetNthControlPointPositionWorld(1, *(np.asarray(position) + offset * superior))
        times.append(time.perf_counter() - started)
    print(f"point drag -> heights, grades, table, summary: median {1000 * statistics.median(times):.1f} ms, "
          f"max {1000 * max(times):.1f} ms over {len(times)} moves")

    started = time.perf_counter()
    case.set_level("L1", "T12")
    print(f"renumber levels: {1000 * (time.perf_counter() - started):.1f} ms")

    started = time.perf_counter()
    case.remeasure()
    print(f"re-measure from the segmentation: {time.perf_counter() - started:.2f} s")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "review.mrb"
        started = time.perf_counter()
        mrml.save_scene(context.scene, path)
        saved = time.perf_counter() - started
        started = time.perf_counter()
        cases = mrml.load_scene(mrml.new_scene().scene, path)
        loaded = time.perf_counter() - started
        print(f"save .mrb: {saved:.2f} s ({path.stat().st_size / 1e6:.1f} MB); load + restore {len(cases)} case: "
              f"{loaded:.2f} s")


if __name__ == "__main__":
    main()
