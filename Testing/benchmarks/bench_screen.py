"""Benchmark: bone-density screening, clinical report and DICOM SEG/SR against measuring the same case.

Cases: the TotalSegmentator example (3 mm NIfTI), the real DICOM series (JPEG 2000, 512 x 512 x 20) and a large
synthetic spine (eight levels with posterior elements at ``--spacing`` mm). Goal: screening (density, contrast,
recommendation) costs less than the morphometry it builds on; the report and DICOM outputs a few seconds.

    .venv/bin/python Testing/benchmarks/bench_screen.py [--data ../shared/data] [--spacing 0.7]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "Testing"))

from VertebralFractureLib import io
from VertebralFractureLib.morphometry import measure
from VertebralFractureLib.outputs import clinical as report_clinical
from VertebralFractureLib.outputs import dicom as dicom_outputs
from VertebralFractureLib.screening import recommend as screen


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run_case(name: str, labels, ct, out: Path, dicom: bool) -> None:
    case, t_measure = timed(measure.measure_case, labels, ct)
    result, t_screen = timed(screen.screen_case, labels, ct, case)
    _, t_report = timed(report_clinical.write_clinical_report, case, result, out / name, labels, ct)
    line = (f"{name:<28} {str(ct.shape):>16}  measure {t_measure:6.2f} s  screen {t_screen:6.2f} s  "
            f"report {t_report:6.2f} s")
    if dicom:
        _, t_dicom = timed(dicom_outputs.write_dicom_outputs, case, labels, ct, out / name, result)
        line += f"  SEG+SR {t_dicom:6.2f} s"
    level = result.level or "none"
    value = "" if result.measured_hu is None else f" {result.measured_hu:.0f} HU"
    print(line + f"  -> {level}{value}, contrast {result.contrast.status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    parser.add_argument("--spacing", type=float, default=0.7)
    args = parser.parse_args(argv)
    data = Path(args.data) / "totalsegmentator-example"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        if data.is_dir():
            ct = io.read_ct(data / "example_ct.nii.gz")
            labels = io.read_label_map(data / "spine_report" / "totalseg.nii.gz", "totalseg_v2", reference=ct).volume
            run_case("example_ct (NIfTI)", labels, ct, out, dicom=False)
            ct = io.read_ct(data / "example_ct_dicom")
            labels = io.read_label_map(data / "example_seg_dicom.nii.gz", "totalseg_v2", reference=ct).volume
            run_case("example_ct_dicom (DICOM)", labels, ct, out, dicom=True)
        else:
            print(f"{data} not found: real-data cases skipped")
        from phantoms import make_spine

        ct, labels, _ = make_spine(levels=("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"),
                                   spacing=(args.spacing, args.spacing, 1.0), trabecular_hu=120.0)
        run_case(f"phantom 8 levels {args.spacing} mm", labels, ct, out, dicom=False)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak memory {peak_gb:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
