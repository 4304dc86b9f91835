"""Batch analysis: every study of a folder (or a CSV list) through :func:`.pipeline.analyze`, one summary table.

Studies: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) files, and folders holding DICOM
series, searched through their sub-folders (one case per series); or a CSV file with a ``ct`` column (and optional
``case``, ``seg``, ``series`` columns; relative paths are relative to the CSV file). Vertebrae come from a label map
(the CSV's ``seg`` column, or a file in ``--seg-dir`` whose name starts with the case name: ``case.nii.gz``,
``case_seg.nii.gz``, ``case.seg.nrrd``...), else from the segmentation backend.

Each case publishes ``OUT/CASE/`` as one set (see :mod:`.outputs`): the files of ``analyze`` or, when the case
failed, ``error.txt``. ``OUT/summary.csv`` lists every case with its status (``ok``, ``qc-failed``, ``failed``)
and the reason, and is rewritten after every case. ``--resume`` skips cases whose results an earlier run
published with the same ``--include-upper-thoracic`` choice. Exit code: 0 all cases ok, 1 some failed, 2 unusable
arguments or input.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUMMARY_COLUMNS = ("case", "status", "reason", "input", "series", "segmentation", "backend", "levels",
                   "levels_status", "fractured_levels", "worst_grade", "l1_trabecular_hu", "recommendation", "qc",
                   "warnings", "seconds", "output", "dataset_subject")
STATUS_OK, STATUS_QC_FAILED, STATUS_FAILED = "ok", "qc-failed", "failed"

log = logging.getLogger(__name__)


@dataclass
class Case:
    name: str
    path: Path
    series: str | None = None
    seg: Path | None = None
    error: str | None = None
    """Why the case cannot even start (unreadable folder, bad CSV row); reported as its failure."""


# ---- finding the cases ----------------------------------------------------------------------------------------


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(path: Path) -> bool:
    lower = path.name.lower()
    return path.is_file() and lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


def dicom_series_under(folder: Path, seen: set | None = None) -> list[dict]:
    """Every DICOM series in ``folder`` and its sub-folders (a series is read from the folder holding its files).

    Links are followed, but each real folder is read once (``seen``: the (device, inode) pairs already read, shared
    by the calls of one batch), so a symlink loop or two links to one series give each series once.
    """
    from VertebralFractureLib import io

    seen = set() if seen is None else seen
    series = []
    for root, directories, files in os.walk(folder, followlinks=True):
        try:
            status = os.stat(root)
        except OSError:
            directories[:] = []
            continue
        if (status.st_dev, status.st_ino) in seen:
            directories[:] = []  # a folder already read (through a link): once is enough, and a loop ends here
            continue
        seen.add((status.st_dev, status.st_ino))
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        if files:
            series.extend(io.list_dicom_series(Path(root)))
    return series


def safe_case_name(name: str, fallback: str) -> str:
    """A case name usable as one folder inside the output folder: path separators, ``..`` and leading dots (a CSV's
    ``../../escaped`` or ``/abs_case``) and characters other than letters, digits, ``.``, ``_``, ``-`` and spaces are
    replaced, so no case is written outside the output folder."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    cleaned = "".join(char if char.isalnum() or char in "._- " else "_" for char in "_".join(parts)).strip(" ")
    cleaned = cleaned.lstrip(".")[:120].rstrip(" .")
    return cleaned or fallback


def _distinct_names(cases: list[Case]) -> list[Case]:
    """Cases whose names differ only by the file type (``case1.nii.gz`` and ``case1.nrrd``), or by upper and lower
    case, would share one output folder: such files are named by their whole file name instead."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.name.lower(), []).append(case)
    for group in groups.values():
        if len(group) > 1:
            for case in group:
                if case.path.is_file() and case.series is None:
                    case.name = safe_case_name(case.path.name, case.name)
    taken: set[str] = set()
    for case in cases:  # what is still shared (a folder and a file name alike): numbered
        name, number = case.name, 2
        while name.lower() in taken:
            name, number = f"{case.name}-{number}", number + 1
        case.name = name
        taken.add(name.lower())
    return cases


def find_cases(source: Path) -> list[Case]:
    """Cases of an input folder or CSV list, in name order for a folder, in row order for a CSV."""
    if source.is_file() and source.suffix.lower() == ".csv":
        return _distinct_names(cases_from_csv(source))
    cases, seen_files, seen_folders = [], set(), set()
    for path in sorted(source.iterdir()):
        if path.name.startswith("."):
            continue
        if _is_image(path):
            real = path.resolve()
            if real in seen_files:
                log.warning("%s: the same file as an earlier case (a link); analysed once", path)
                continue
            seen_files.add(real)
            cases.append(Case(safe_case_name(strip_suffix(path.name), path.name), path))
        elif path.is_dir():
            try:
                series = dicom_series_under(path, seen_folders)
            except Exception as error:  # an unreadable folder is a failing case, not the end of the batch
                cases.append(Case(path.name, path, error=one_line(error)))
                continue
            if len(series) == 1:
                cases.append(Case(path.name, Path(series[0]["files"][0]).parent, series[0]["uid"]))
            for index, item in enumerate(series if len(series) > 1 else [], start=1):
                cases.append(Case(f"{path.name}-series{index}", Path(item["files"][0]).parent, item["uid"]))
    return _distinct_names(cases)


def cases_from_csv(path: Path) -> list[Case]:
    """Rows ``ct[,case][,seg][,series]``; a row without a CT is a failing case (the rest of the list runs)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "ct" not in [name.strip().lower() for name in reader.fieldnames]:
            raise InputError(path, "a case list needs a header row with a 'ct' column (and optional case, seg, "
                                   "series columns)")
        rows = [{(key or "").strip().lower(): (value or "").strip() for key, value in row.items()} for row in reader]
    cases, seen = [], set()
    for number, row in enumerate(rows, start=2):
        ct = row.get("ct", "")
        name = row.get("case") or (strip_suffix(Path(ct).name) if ct else f"row{number}")
        name = safe_case_name(name, f"row{number}")
        if name.lower() in seen:
            name = f"{name}-row{number}"
        seen.add(name.lower())
        resolve = lambda text: None if not text else (Path(text) if Path(text).is_absolute()  # noqa: E731
                                                      else path.parent / text)
        case = Case(name, resolve(ct) or path, row.get("series") or None, resolve(row.get("seg", "")))
        if not ct:
            case.error = f"{path}: row {number} has no CT path"
        cases.append(case)
    return cases


def find_label_map(seg_dir: Path, case_name: str) -> Path | None:
    """The label map in ``seg_dir`` named after the case (exactly, or followed by ``_``, ``-`` or ``.``)."""
    matches = []
    for path in sorted(seg_dir.iterdir()):
        if not path.is_file() or not path.name.lower().endswith((".seg.nrrd",) + IMAGE_SUFFIXES):
            continue
        stem = strip_suffix(path.name)
        if stem == case_name or (stem.startswith(case_name) and stem[len(case_name)] in "_-."):
            matches.append(path)
    if len(matches) > 1:
        exact = [m for m in matches if strip_suffix(m.name) == case_name]
        if len(exact) == 1:
            return exact[0]
        raise InputError(seg_dir, f"{len(matches)} label maps match case {case_name!r}: "
                                  f"{', '.join(m.name for m in matches)}")
    return matches[0] if matches else None


# ---- one case -------------------------------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        from VertebralFractureLib.errors import os_error_line

        return os_error_line(error)
    text = " ".join(str(error).split())
    return text if text else type(error).__name__


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
    patient = analysis_case.patient
    passed, quality = quality_verdict(analysis_case)
    recommendation = ""
    if screening is not None:
        recommendation = screening.recommendation.statement
    return {
        "case": case.name, "status": STATUS_OK if passed else STATUS_QC_FAILED,
        "reason": "" if passed else f"quality control: {quality}",
        "input": str(case.path), "series": case.series or "",
        "segmentation": analysis_case.inputs.get("seg") or f"backend {analysis_case.segmentation_backend}",
        "backend": analysis_case.segmentation_backend or "",
        "levels": " ".join(v.level for v in analysis_case.vertebrae),
        "levels_status": analysis_case.levels_status or "",
        "fractured_levels": " ".join(patient.fractured_levels),
        "worst_grade": "" if patient.worst_grade is None else patient.worst_grade,
        "l1_trabecular_hu": "" if patient.l1_trabecular_hu is None else round(patient.l1_trabecular_hu, 1),
        "recommendation": recommendation, "qc": quality, "warnings": " | ".join(analysis_case.warnings),
        "output": str(out_dir),
    }


def process_case(case: Case, options) -> dict:
    """Analyse one case into ``OUT/CASE`` (published as one set); returns its summary row (raises on failure)."""
    from VertebralFractureLib import pipeline

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
    analysis = pipeline.analyze(request, out_dir, also_write=add_scene)
    row = summary_row(case, analysis.case, out_dir, analysis.screening)
    row["segmentation"] = str(seg) if seg is not None else f"backend {analysis.backend}"
    if options.export_dataset is not None:
        from VertebralFractureLib import curate

        row["dataset_subject"] = curate.export_verse_case(options.export_dataset, analysis.ct, analysis.labels,
                                                          analysis.case)["ct"].parent.name
    return row


def case_folder(out: Path, name: str) -> Path:
    """``OUT/NAME``, checked to lie inside the output folder (a case name never leads out of it)."""
    folder = out / name
    if safe_case_name(name, "") != name or folder.resolve().parent != out.resolve():
        raise InputError(folder, "is not a folder inside the output folder; case names are single folder names")
    return folder


def finished_row(case: Case, options) -> dict | None:
    """The row of a case an earlier run finished (its results.json was published), for ``--resume``."""
    from VertebralFractureLib.results import CaseResult

    out_dir = case_folder(options.out, case.name)
    results = out_dir / "results.json"
    if case.error or not results.is_file():
        return None
    try:
        analysis_case = CaseResult.from_dict(json.loads(results.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if bool(analysis_case.inputs.get("include_upper_thoracic")) != options.include_upper_thoracic:
        return None  # graded other levels than this run asks for: not finished for it
    row = summary_row(case, analysis_case, out_dir)
    screening = out_dir / "screening.json"
    if screening.is_file():
        try:
            data = json.loads(screening.read_text(encoding="utf-8"))
            row["recommendation"] = data["screening"]["recommendation"]["statement"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    row["reason"] = (row["reason"] + "; " if row["reason"] else "") + "finished by an earlier run"
    return row


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


def record_failure(case: Case, options, error: BaseException) -> dict:
    """A failing case publishes ``OUT/CASE/error.txt`` (the traceback) in place of results."""
    from VertebralFractureLib.outputs.publish import OutputSet

    out_dir = options.out / case.name
    try:
        case_folder(options.out, case.name)
        with OutputSet(out_dir) as staging:
            (staging / "error.txt").write_text(
                "".join(traceback.format_exception(type(error), error, error.__traceback__)), encoding="utf-8")
    except Exception as failure:  # the summary row still says why the case failed
        log.warning("%s: error.txt not written (%s)", out_dir, one_line(failure))
    return {"case": case.name, "status": STATUS_FAILED, "reason": one_line(error), "input": str(case.path),
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


def run_batch(options, echo=print) -> int:
    """Run every case; returns the exit code (0 all ok, 1 some failed)."""
    source = Path(options.input)
    if not source.exists():
        raise InputError(source, "does not exist")
    if not (source.is_dir() or (source.is_file() and source.suffix.lower() == ".csv")):
        raise InputError(source, "is neither a folder of studies nor a CSV case list")
    if options.seg_dir is not None and not Path(options.seg_dir).is_dir():
        raise InputError(options.seg_dir, "not a folder")
    cases = find_cases(source)
    if not cases:
        raise InputError(source, "no CT found (NIfTI, NRRD, MetaImage files or DICOM series folders)")
    options.out = Path(options.out)
    if options.out.exists() and not options.out.is_dir():
        raise InputError(options.out, "is a file, not a folder")
    check_batch_output(options.out, [source, options.seg_dir] + [p for case in cases for p in (case.path, case.seg)])
    options.out.mkdir(parents=True, exist_ok=True)
    summary_path = options.out / "summary.csv"
    rows = []
    for index, case in enumerate(cases, start=1):
        started = time.perf_counter()
        row = finished_row(case, options) if options.resume else None
        resumed = row is not None
        if row is None:
            try:
                row = process_case(case, options)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # one case failing must not stop the batch; the reason goes in the summary
                row = record_failure(case, options, error)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        write_summary(summary_path, rows)  # after every case, so an interrupted run keeps what it did
        if row["status"] == STATUS_FAILED:
            print(f"[{index}/{len(cases)}] {case.name}: FAILED: {row['reason']}", file=sys.stderr)
        elif not options.quiet:
            echo(f"[{index}/{len(cases)}] {case.name}: {row['status']}{' (earlier run)' if resumed else ''}, "
                 f"{row['levels']} (levels {row['levels_status'] or 'n/a'}); fractured: "
                 f"{row['fractured_levels'] or 'none'} ({row['seconds']:.1f} s)")
    failed = sum(1 for row in rows if row["status"] != STATUS_OK)
    print(f"{len(rows) - failed} of {len(rows)} cases done, {failed} failed; summary: {summary_path}",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
