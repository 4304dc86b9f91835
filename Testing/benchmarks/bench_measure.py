"""Benchmark: the whole ``measure`` command on a large label map against a bare nibabel read of the same file.

The VerSe mask sub-verse004 (1 x 1 x 2 mm) is resampled to 0.5 mm isotropic (nearest neighbour, 53 M voxels) and
written as .nii.gz. Then, each in a fresh Python process, alternating so that both see the same machine load:

- the floor: ``import nibabel, numpy; numpy.asanyarray(nibabel.load(PATH).dataobj)`` (the voxels as stored);
- the command: ``python -m VertebralFractureLib measure --seg PATH -o OUT`` (start-up, imports, reading and
  checking, measuring and grading, quality control, writing its four files).

The package's modules are compiled to bytecode first, as an installed package's are (pip compiles them when it
installs; a source checkout run with PYTHONDONTWRITEBYTECODE set would compile them again in every run, about a
tenth of a second that no installed copy spends).

Goal: the command takes at most 3 x the floor. Also prints where the command's time goes (one more run of the
command in a fresh process, under cProfile, which slows it somewhat) and the machine's load average before and after
(the machine may be shared: compare ratios, and repeat when the load is high).

    .venv/bin/python Testing/benchmarks/bench_measure.py [--data ../shared/data] [--spacing 0.5] [--repeats 9]
"""

from __future__ import annotations

import argparse
import io as _stdio
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import io  # noqa: E402

GOAL_RATIO = 3.0
FLOOR = "import sys, numpy, nibabel; numpy.asanyarray(nibabel.load(sys.argv[1]).dataobj)"
STAGES = (  # (label, function whose cumulative time is the stage's), in the order the command runs them
    ("read and check the label map", "read_label_map"),
    ("measure, grade, quality control", "measure_case"),
    ("write the files", "write_measure_files"),
)
PARTS = (  # parts of a stage, printed below it
    ("  of which the overview image", "render_overview"),
    ("  of which segmentation.nii.gz", "write_nifti"),
)


def resample_to(volume: io.Volume, spacing_mm: float) -> io.Volume:
    """Nearest-neighbour resampling onto an isotropic grid with the same directions and extent."""
    extent = np.array(volume.shape) * volume.spacing
    shape = tuple(int(n) for n in np.ceil(extent / spacing_mm))
    target = np.eye(4)
    target[:3, :3] = volume.direction_ras * spacing_mm
    target[:3, 3] = volume.ijk_to_world(np.full(3, -0.5) + 0.5 * spacing_mm / volume.spacing)[0]
    reference = io.Volume(array=np.zeros(shape, dtype=np.int16), ijk_to_ras=target)
    return io.resample_labels_to(volume, reference)


def timed(command: list[str], environment: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=environment)
    return time.perf_counter() - start


def stage_times(command: list[str], environment: dict, profile: Path) -> tuple[float, dict[str, float]]:
    """(total, {stage or part: seconds}) of one run of the command in a fresh process under cProfile (start-up and
    imports as in any run)."""
    module = command.index("-m")
    profiled = command[:module] + ["-m", "cProfile", "-o", str(profile)] + command[module:]
    start = time.perf_counter()
    subprocess.run(profiled, check=True, stdout=subprocess.DEVNULL, env=environment)
    total = time.perf_counter() - start
    stats = pstats.Stats(str(profile), stream=_stdio.StringIO())
    found = {}
    for (_, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        for label, function in STAGES + PARTS:
            if name == function:
                found[label] = max(found.get(label, 0.0), cumulative)
    return total, found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("VERTEBRAL_FRACTURE_DATA",
                                                         str(REPOSITORY.parent / "shared" / "data")))
    parser.add_argument("--spacing", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    source = Path(args.data) / "verse19" / "sub-verse004_seg-vert_msk.nii.gz"
    large = resample_to(io.read_label_map(source).volume, args.spacing)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    import compileall

    compileall.compile_dir(str(REPOSITORY / "VertebralFractureLib"), quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large_seg.nii.gz"
        io.write_nifti(large, path)
        floor_command = [sys.executable, "-c", FLOOR, str(path)]
        command = [sys.executable, "-m", "VertebralFractureLib", "measure", "--seg", str(path), "-o",
                   str(Path(folder) / "out"), "-q"]
        load_before = os.getloadavg()[0]
        floors, commands = [], []
        for _ in range(args.repeats):
            floors.append(timed(floor_command, environment))
            commands.append(timed(command, environment))
        load_after = os.getloadavg()[0]
        total, stages = stage_times(command, environment, Path(folder) / "profile")
        files = sorted(p.name for p in (Path(folder) / "out").iterdir())
    floor, whole = float(np.median(floors)), float(np.median(commands))
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after the timed runs "
          f"({os.cpu_count()} cores)")
    print(f"label map: {large.shape} voxels at {args.spacing} mm ({np.prod(large.shape) / 1e6:.1f} M voxels)")
    print(f"nibabel read, fresh process:    {floor:6.2f} s (median of {args.repeats})")
    print(f"measure command, fresh process: {whole:6.2f} s (median of {args.repeats}) = {whole / floor:.2f} x the "
          f"nibabel read (goal <= {GOAL_RATIO:g} x)")
    ratios = sorted(command / floor_run for command, floor_run in zip(commands, floors))
    print(f"each run against the floor run before it: {', '.join(f'{r:.2f}' for r in ratios)} x "
          f"(median {float(np.median(ratios)):.2f} x)")
    print(f"one profiled run, fresh process ({total:.2f} s; imports inside a stage count in it):")
    for label, function in STAGES:
        print(f"  {label:34s} {stages.get(label, 0.0):6.2f} s")
        if function == "write_measure_files":
            for part, _ in PARTS:
                if part in stages:
                    print(f"  {part:34s} {stages[part]:6.2f} s")
    staged = sum(stages.get(label, 0.0) for label, _ in STAGES)
    print(f"  {'start-up, imports, the rest':34s} {total - staged:6.2f} s")
    print("files written:", ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
