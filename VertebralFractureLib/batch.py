"""Batch analysis: every study of a folder (or a CSV list) through :func:`.pipeline.analyze`, one summary table.

Studies: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) files, and folders holding DICOM
series, searched through their sub-folders (one case per series); or a CSV file with a ``ct`` column (and optional
``case``, ``seg``, ``series`` columns; relative paths are relative to the CSV file). Vertebrae come from a label map
(the CSV's ``seg`` column, or a file in ``--seg-dir`` whose name starts with the case name: ``case.nii.gz``,
``case_seg.nii.gz``, ``case.seg.nrrd``...), else from the segmentation backend.

Each case publishes ``OUT/CASE/`` as one set (see :mod:`.outputs`): the files of ``analyze`` or, when the case
failed, ``error.txt``. ``OUT/summary.csv`` lists every case with its status (``assessed``, ``findings withheld``,
``qc-failed``, ``failed``: :data:`.screening.rules.CASE_STATUSES`) and the reason, and is rewritten as cases finish.
``--resume`` skips cases whose results an earlier run published with the same ``--include-upper-thoracic`` choice.
Exit code: 0 every case assessed or its findings withheld, 5 some failed quality control (none failed), 1 some
failed, 2 unusable arguments or input.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.archive import (  # noqa: F401  (the names callers know from here)
    IMAGE_SUFFIXES,
    Case,
    cases_from_csv,
    dicom_series_under,
    find_cases,
    find_label_map,
    input_size_bytes,
    one_line,
    safe_case_name,
    strip_suffix,
)
from VertebralFractureLib.errors import InputError

SUMMARY_COLUMNS = ("case", "status", "reason", "input", "series", "segmentation", "backend", "levels",
                   "levels_status", "fractured_levels", "worst_grade", "l1_trabecular_hu", "recommendation", "qc",
                   "warnings", "seconds", "output", "dataset_subject")
STATUS_OK, STATUS_WITHHELD, STATUS_QC_FAILED, STATUS_FAILED = "assessed", "findings withheld", "qc-failed", "failed"
SUMMARY_INTERVAL_S = 2.0
"""summary.csv is rewritten after a case at most this often (and after the last): a batch of 100,000 cases would
spend its time rewriting it otherwise. An interrupted batch loses nothing by it: ``--resume`` rebuilds the rows of
finished cases from their folders."""

PROCESS_BACKENDS: dict = {}
"""The segmentation backends this process made, kept for its next case: in the batch process and on each Dask
worker a deep model is loaded once, not once per case."""

log = logging.getLogger(__name__)


# ---- one case -------------------------------------------------------------------------------------------------


def quality_verdict(case) -> tuple[bool, str]:
    """(passed, one-line summary) of the case's quality findings; passed when it has none."""
    quality = getattr(case, "quality", None)
    if quality is None:
        return True, ""
    if hasattr(quality, "status") and hasattr(quality, "failed_checks"):  # a .qc.QualityReport
        from VertebralFractureLib.morphometry import qc

        text = "; ".join(quality.failed_checks) or getattr(quality, "headline", "") or ""
        return quality.status != qc.FAILED, text
    if hasattr(quality, "to_dict"):
        quality = quality.to_dict()
    if not isinstance(quality, dict):
        return True, str(quality)
    passed = quality.get("passed", quality.get("status") not in ("fail", "failed"))
    reasons = (quality.get("failed_checks") or quality.get("reasons") or quality.get("failures")
               or quality.get("findings") or [])
    text = "; ".join(str(r.get("message", r) if isinstance(r, dict) else r) for r in reasons)
    # Findings withheld without a failure (level names unconfirmed): the headline says so.
    return bool(passed), text or quality.get("headline", "")


def summary_row(case: Case, analysis_case, out_dir: Path, screening=None) -> dict:
    """The summary-table row of a finished case (from its CaseResult, just computed or read back)."""
    from VertebralFractureLib.screening.rules import ASSESSED, case_status

    patient = analysis_case.patient
    _passed, quality = quality_verdict(analysis_case)
    status, reason = case_status(analysis_case)
    recommendation = ""
    if screening is not None:
        recommendation = screening.recommendation.statement
    assessed = status == ASSESSED
    return {
        "case": case.name, "status": status, "reason": reason,
        "input": str(case.path), "series": case.series or "",
        "segmentation": analysis_case.inputs.get("seg") or f"backend {analysis_case.segmentation_backend}",
        "backend": analysis_case.segmentation_backend or "",
        "levels": " ".join(v.level for v in analysis_case.vertebrae),
        "levels_status": analysis_case.levels_status or "",
        # Findings only where the status lets them be stated (a withheld grade is no "none").
        "fractured_levels": " ".join(patient.fractured_levels) if assessed else "",
        "worst_grade": "" if patient.worst_grade is None or not assessed else patient.worst_grade,
        "l1_trabecular_hu": "" if patient.l1_trabecular_hu is None else round(patient.l1_trabecular_hu, 1),
        "recommendation": recommendation, "qc": quality, "warnings": " | ".join(analysis_case.warnings),
        "output": str(out_dir),
    }


@dataclass
class CaseOutcome:
    """What one case gives the batch: its summary row, its results record and screening summary (None when it
    failed) -- small enough to travel back from a worker process."""

    row: dict
    result: dict | None = None
    screening: dict | None = None


def process_case(case: Case, options) -> CaseOutcome:
    """Analyse one case into ``OUT/CASE`` (published as one set); raises on failure."""
    from VertebralFractureLib import pipeline
    from VertebralFractureLib.outputs import cohort

    if case.error:
        raise InputError(None, case.error)
    out_dir = case_folder(options.out, case.name)
    seg = case.seg
    if seg is None and options.seg_dir is not None:
        seg = find_label_map(options.seg_dir, strip_suffix(case.name))
    request = pipeline.AnalysisRequest(
        ct=case.path, series=case.series, seg=seg, labels=options.labels, backend=options.backend,
        device=options.device, report=not options.no_report, screen=not options.no_report,
        dicom_out=options.dicom_out, kvp=options.kvp, contrast_phase=options.contrast_phase,
        include_upper_thoracic=options.include_upper_thoracic)
    add_scene = None
    if options.save_scene:
        def add_scene(analysis, staging):
            return {"scene": save_review_scene(case.name, staging, analysis)}
    analysis = pipeline.analyze(request, out_dir, also_write=add_scene, backends=PROCESS_BACKENDS)
    row = summary_row(case, analysis.case, out_dir, analysis.screening)
    row["segmentation"] = str(seg) if seg is not None else f"backend {analysis.backend}"
    if options.export_dataset is not None:
        from VertebralFractureLib import curate

        row["dataset_subject"] = curate.export_verse_case(options.export_dataset, analysis.ct, analysis.labels,
                                                          analysis.case)["ct"].parent.name
    screening = None if analysis.screening is None else cohort.screening_summary(analysis.screening.to_dict())
    return CaseOutcome(row, analysis.case.to_dict(), screening)


def case_folder(out: Path, name: str) -> Path:
    """``OUT/NAME``, checked to lie inside the output folder (a case name never leads out of it)."""
    folder = out / name
    if safe_case_name(name, "") != name or folder.resolve().parent != out.resolve():
        raise InputError(folder, "is not a folder inside the output folder; case names are single folder names")
    return folder


def run_case(case: Case, options) -> CaseOutcome:
    """One case as the batch runs it, in this process or on a worker: analysed, or its failure recorded
    (``OUT/CASE/error.txt``); its time and the process that ran it in the row."""
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        outcome = process_case(case, options)
    except Exception as error:  # one case failing must not stop the batch; the reason goes in the summary
        outcome = CaseOutcome(record_failure(case, options, error))
    outcome.row["seconds"] = round(time.perf_counter() - started, 1)
    outcome.row["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    outcome.row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    outcome.row["worker_peak_memory_mb"] = peak_memory_mb()
    return outcome


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the system does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def finished_row(case: Case, options) -> CaseOutcome | None:
    """The outcome of a case an earlier run finished (its results.json was published), for ``--resume``."""
    from VertebralFractureLib.outputs import cohort
    from VertebralFractureLib.results import CaseResult

    out_dir = case_folder(options.out, case.name)
    results = out_dir / "results.json"
    if case.error or not results.is_file():
        return None
    try:
        record = json.loads(results.read_text(encoding="utf-8"))
        analysis_case = CaseResult.from_dict(record)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if bool(analysis_case.inputs.get("include_upper_thoracic")) != options.include_upper_thoracic:
        return None  # graded other levels than this run asks for: not finished for it
    row = summary_row(case, analysis_case, out_dir)
    screening = None
    screening_path = out_dir / "screening.json"
    if screening_path.is_file():
        try:
            screening = json.loads(screening_path.read_text(encoding="utf-8"))["screening"]
            row["recommendation"] = screening["recommendation"]["statement"]
        except (OSError, ValueError, KeyError, TypeError):
            screening = None
    row["reason"] = (row["reason"] + "; " if row["reason"] else "") + "finished by an earlier run"
    return CaseOutcome(row, record, cohort.screening_summary(screening))


def save_review_scene(name: str, out_dir: Path, analysis) -> Path:
    """``out_dir/NAME.mrb``, a scene a reviewer opens in Slicer: CT, named segments, height lines, table (MRML core
    only); returns its path."""
    import slicer

    from VertebralFractureLib.slicer import mrml

    context = None
    scene = getattr(slicer, "mrmlScene", None) if hasattr(slicer, "app") else None
    if scene is None:
        context = mrml.new_scene()
        scene = context.scene
    else:
        scene.Clear()
    volume_node = mrml.add_volume_node(scene, analysis.ct, name)
    mrml.VertebralFractureCase.create(volume_node, labels=analysis.labels, case=analysis.case)
    path = mrml.save_scene(scene, out_dir / f"{name}.mrb")
    if context is None:
        scene.Clear()
    return path


def record_failure(case: Case, options, error: BaseException, reason: str | None = None) -> dict:
    """A failing case publishes ``OUT/CASE/error.txt`` (the reason, then the traceback) in place of results."""
    from VertebralFractureLib.outputs.publish import OutputSet

    out_dir = options.out / case.name
    reason = reason or one_line(error)
    try:
        case_folder(options.out, case.name)
        with OutputSet(out_dir) as staging:
            (staging / "error.txt").write_text(
                reason + "\n\n" + "".join(traceback.format_exception(type(error), error, error.__traceback__)),
                encoding="utf-8")
    except Exception as failure:  # the summary row still says why the case failed
        log.warning("%s: error.txt not written (%s)", out_dir, one_line(failure))
    return {"case": case.name, "status": STATUS_FAILED, "reason": reason, "input": str(case.path),
            "series": case.series or "", "output": str(out_dir)}


def check_batch_output(out: Path, inputs: list) -> None:
    """Refuse an output folder that holds an input of the batch (a study, the case list, the label-map folder) or a
    ``summary.csv`` this program did not write: the cases' folders and the summary are replaced there."""
    from VertebralFractureLib.outputs import publish

    publish.check_inputs_outside(publish.resolve_output_folder(out), inputs, out)
    summary = out / "summary.csv"
    if summary.exists() and not _summary_written_here(summary):
        raise InputError(out, "holds a summary.csv this program did not write; it is never replaced: choose an "
                              "empty or new output folder")
    for name in COHORT_FILES:
        if (out / name).exists() and not _cohort_file_written_here(out / name):
            raise InputError(out, f"holds a {name} this program did not write; it is never replaced: choose an "
                                  "empty or new output folder")


COHORT_FILES = ("cases.parquet", "vertebrae.parquet", "cohort.html", "cohort_fractures_by_level.png",
                "cohort_trabecular_hu_by_level.png", "cohort_recommendations.png")
"""What a batch writes beside the case folders and summary.csv (see :mod:`.outputs.cohort`)."""


def _cohort_file_written_here(path: Path) -> bool:
    if path.suffix == ".parquet":
        try:
            from VertebralFractureLib.outputs import cohort

            return cohort.written_here(path)
        except ImportError:  # without pyarrow no table is written, so none is replaced
            return True
    from VertebralFractureLib.outputs import cohort_report

    return cohort_report.written_here(path)


def _summary_written_here(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return handle.readline().startswith("case,status,")  # the summary's first columns in every version
    except (OSError, UnicodeDecodeError):
        return False


def write_summary(path: Path, rows: list[dict]) -> None:
    from VertebralFractureLib import io

    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.write_text_atomic(path, buffer.getvalue())


class BatchProgress:
    """A line per finished case with the running counts (done / each status / running) and an ETA
    from the rate of the cases this run analysed; a status line at least every :data:`.cluster.PROGRESS_INTERVAL_S`
    while cases run. Failures go to stderr even with ``--quiet``."""

    def __init__(self, total: int, echo=print, quiet: bool = False, interval_s: float = 60.0):
        self.total, self.echo, self.quiet, self.interval_s = total, echo, quiet, interval_s
        self.counts = {STATUS_OK: 0, STATUS_WITHHELD: 0, STATUS_QC_FAILED: 0, STATUS_FAILED: 0}
        self.done = self.analysed = self.running = 0
        self.started = time.monotonic()
        self.last_line = self.started

    def counts_text(self) -> str:
        text = (f"done {self.done}/{self.total}: " + ", ".join(f"{status} {count}" for status, count in
                                                                 self.counts.items()) + f"; running {self.running}")
        eta = self.eta_s()
        return text + ("" if eta is None else f"; ETA {format_duration(eta)}")

    def eta_s(self) -> float | None:
        remaining = self.total - self.done
        if remaining == 0:
            return 0.0
        if self.analysed == 0:
            return None
        return remaining * (time.monotonic() - self.started) / self.analysed

    def case_done(self, case: Case, row: dict, resumed: bool) -> None:
        self.done += 1
        self.analysed += 0 if resumed else 1
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        self.last_line = time.monotonic()
        if row["status"] == STATUS_FAILED:
            print(f"[{self.done}/{self.total}] {case.name}: FAILED: {row['reason']}", file=sys.stderr)
            if not self.quiet:
                self.echo(f"  {self.counts_text()}")
        elif not self.quiet:
            seconds = "" if resumed else f" ({row['seconds']:.1f} s)"
            from VertebralFractureLib.screening.rules import fractures_text, status_text

            self.echo(f"[{self.done}/{self.total}] {case.name}: {status_text(row['status'], row['reason'])}, "
                      f"{row['levels']} (levels {row['levels_status'] or 'n/a'}); "
                      f"{fractures_text(row['status'], row['fractured_levels'], row['worst_grade'])}{seconds}"
                      f" -- {self.counts_text()}")

    def tick(self, running: int) -> None:
        self.running = running
        if not self.quiet and time.monotonic() - self.last_line >= self.interval_s:
            self.last_line = time.monotonic()
            self.echo(f"  {self.counts_text()}")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def check_options(options) -> None:
    """Refuse unusable parallel options before anything runs."""
    workers, scheduler = getattr(options, "workers", None), getattr(options, "scheduler", None)
    if workers is not None and scheduler is not None:
        raise InputError(None, "give either --workers (a cluster on this machine) or --scheduler (an existing one), "
                               "not both")
    if workers is not None and workers < 1:
        raise InputError(None, f"--workers {workers}: give at least 1")
    if getattr(options, "memory_per_worker", None) and workers is None:
        raise InputError(None, "--memory-per-worker applies to the workers --workers starts")
    if getattr(options, "save_scene", False) and (workers is not None or scheduler is not None):
        raise InputError(None, "--save-scene runs in the batch process only: leave out --workers/--scheduler")


def cohort_tables():
    """An empty :class:`.cohort.CohortTables`, or None (with a warning) without pyarrow."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print("warning: cases.parquet, vertebrae.parquet and cohort.html not written: pyarrow is not installed "
              "(pip install 'VertebralFracture[batch]')", file=sys.stderr)
        return None
    from VertebralFractureLib.outputs.cohort import CohortTables

    return CohortTables()


def run_batch(options, echo=print) -> int:
    """Run every case; returns the exit code (:func:`.screening.rules.exit_code_of`)."""
    check_options(options)
    source = Path(options.input)
    if not source.exists():
        raise InputError(source, "does not exist")
    if not (source.is_dir() or (source.is_file() and source.suffix.lower() == ".csv")):
        raise InputError(source, "is neither a folder of studies nor a CSV case list")
    if options.seg_dir is not None and not Path(options.seg_dir).is_dir():
        raise InputError(options.seg_dir, "not a folder")
    workers, scheduler = getattr(options, "workers", None), getattr(options, "scheduler", None)
    starting = None
    if workers is not None or scheduler is not None:
        from VertebralFractureLib import cluster

        # The workers start, and import the pipeline, while this process scans the input.
        starting = cluster.start_in_background(workers, scheduler, getattr(options, "memory_per_worker", None),
                                               warm_up=worker_modules(options))
    try:
        cases = find_cases(source)
        if not cases:
            raise InputError(source, "no CT found (NIfTI, NRRD, MetaImage files or DICOM series folders)")
        options.out = Path(options.out)
        if options.out.exists() and not options.out.is_dir():
            raise InputError(options.out, "is a file, not a folder")
        check_batch_output(options.out,
                           [source, options.seg_dir] + [p for case in cases for p in (case.path, case.seg)])
        # Workers may run in other folders: every path they are given is absolute.
        options.out = options.out.resolve()
        if options.seg_dir is not None:
            options.seg_dir = Path(options.seg_dir).resolve()
        for case in cases:
            case.path = Path(os.path.abspath(case.path))
            case.seg = None if case.seg is None else Path(os.path.abspath(case.seg))
        handle = None if starting is None else starting.handle()
        options.out.mkdir(parents=True, exist_ok=True)
        return _run(cases, options, handle, echo)
    finally:
        if starting is not None:
            starting.close()


WORKER_MODULES = (
    "VertebralFractureLib.pipeline", "VertebralFractureLib.segment.classical",
    "VertebralFractureLib.morphometry.measure", "VertebralFractureLib.morphometry.qc",
    "VertebralFractureLib.morphometry.density", "VertebralFractureLib.screening.calibration",
    "VertebralFractureLib.screening.recommend", "VertebralFractureLib.outputs.files",
    "VertebralFractureLib.outputs.overview", "VertebralFractureLib.outputs.publish",
    "VertebralFractureLib.outputs.cohort", "nibabel", "pydicom", "SimpleITK", "scipy.ndimage",
)
"""What a case imports (a second of a worker's first case otherwise), imported by every worker as it starts."""
REPORT_MODULES = ("VertebralFractureLib.outputs.clinical", "matplotlib.figure", "matplotlib.backends.backend_agg")
"""What a case's report adds (the PDF is drawn with matplotlib)."""


def worker_modules(options) -> tuple[str, ...]:
    """:data:`WORKER_MODULES`, and :data:`REPORT_MODULES` unless the batch writes no reports (``--no-report``)."""
    return WORKER_MODULES + (() if getattr(options, "no_report", False) else REPORT_MODULES)


def _run(cases: list[Case], options, handle, echo) -> int:
    summary_path = options.out / "summary.csv"
    rows: dict[int, dict] = {}
    progress = BatchProgress(len(cases), echo, options.quiet)
    started = time.monotonic()

    tables = cohort_tables()
    last_summary = [0.0]

    def finished(index: int, case: Case, outcome: CaseOutcome, resumed: bool = False) -> None:
        rows[index] = outcome.row
        if tables is not None:
            tables.add(index, outcome.row, outcome.result, outcome.screening)
        if time.monotonic() - last_summary[0] >= SUMMARY_INTERVAL_S or len(rows) == len(cases):
            write_summary(summary_path, [rows[i] for i in sorted(rows)])
            last_summary[0] = time.monotonic()
        progress.case_done(case, outcome.row, resumed)

    work = []
    for index, case in enumerate(cases):
        outcome = finished_row(case, options) if options.resume else None
        if outcome is not None:
            finished(index, case, outcome, resumed=True)
        else:
            work.append((index, case))
    try:
        if handle is None:
            for index, case in work:
                progress.tick(1)
                finished(index, case, run_case(case, options))
        else:
            from VertebralFractureLib import cluster

            if not options.quiet:
                echo(f"{len(work)} case{'s' if len(work) != 1 else ''} on {handle.description}")

            def lost(index: int, case: Case, reason: str | None, error: BaseException) -> None:
                finished(index, case, CaseOutcome(record_failure(case, options, error, reason)))

            # The largest studies first: a worker that starts a large CT last keeps the others waiting.
            largest_first = sorted(work, key=lambda item: -input_size_bytes(item[1]))
            cluster.run_cases(handle, largest_first, run_case, options, lambda i, c, o: finished(i, c, o), lost,
                              progress.tick)
            handle.close_in_background()  # the workers stop while the cohort files are written
    finally:  # Ctrl-C too: the summary lists every case finished so far
        write_summary(summary_path, [rows[i] for i in sorted(rows)])
    throughput = {"workers": "this process" if handle is None else handle.description, "analysed": len(work),
                  "resumed": len(cases) - len(work), "wall_s": time.monotonic() - started}
    write_cohort_outputs(options, tables, throughput)
    from VertebralFractureLib.screening.rules import EXIT_FAILED, count_text, exit_code_of

    statuses = [row["status"] for row in rows.values()]
    code = exit_code_of(statuses)
    print(f"{count_text(statuses)}; summary: {summary_path}", file=sys.stderr if code == EXIT_FAILED else sys.stdout)
    return code


def write_cohort_outputs(options, tables, throughput: dict) -> None:
    """cases.parquet, vertebrae.parquet and (unless ``--no-report``) cohort.html with its figures."""
    if tables is None:
        return
    written = tables.write(options.out)
    if not options.no_report:
        from VertebralFractureLib.outputs import cohort_report

        cases, vertebrae = tables.tables()
        cohort_report.write_cohort_report(options.out, cases, vertebrae, throughput)
    return written
