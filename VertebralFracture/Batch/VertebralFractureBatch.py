"""Batch analysis of a folder of CTs: per-case results and one summary table.

Runs headless in 3D Slicer or with plain Python::

    Slicer --no-main-window --python-script VertebralFractureBatch.py --input CT_DIR --output OUT_DIR
    python VertebralFractureBatch.py --input CT_DIR --output OUT_DIR [--seg-dir LABEL_DIR]

Every CT in ``--input`` is a case: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) files, and
sub-folders holding DICOM series (one case per series). Vertebrae come from a label map in ``--seg-dir`` whose
name starts with the case name (``case.nii.gz``, ``case_seg.nii.gz``, ``case.seg.nrrd``...), else from the
segmentation backend (``--backend``). Each case writes ``OUT_DIR/CASE/`` (results.json, vertebrae.csv, overview.png
and, when segmented here, segmentation.nii.gz; with ``--save-scene`` a review scene CASE.mrb; with
``--export-dataset`` the case is appended to a curated VerSe-layout dataset). A failing case is
recorded with its reason in ``OUT_DIR/summary.csv`` (and ``OUT_DIR/CASE/error.txt``) and the run goes on; the exit
code is 1 when any case failed, 2 when the arguments or the input folder are unusable.
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
import json
import logging
import sys
import time
import traceback
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUMMARY_COLUMNS = ("case", "status", "error", "input", "segmentation", "levels", "quality", "fractured_levels",
                   "worst_grade", "l1_trabecular_hu", "seconds", "output", "dataset_subject")

log = logging.getLogger("VertebralFractureBatch")


def _make_lib_importable() -> None:
    """Use the Lib that ships with this script: beside its folder when installed in Slicer, two folders up in a
    source checkout; an installed copy elsewhere is used only when neither exists."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1], here.parents[2]):
        if (candidate / "VertebralFractureLib" / "__init__.py").exists():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="VertebralFractureBatch",
                                     description="Measure and grade every CT of a folder; write a summary table.")
    parser.add_argument("--input", required=True, type=Path, help="folder of CTs (NIfTI, NRRD, MetaImage files; "
                                                                   "DICOM series in sub-folders)")
    parser.add_argument("--output", required=True, type=Path, help="output folder (one sub-folder per case)")
    parser.add_argument("--seg-dir", type=Path, help="folder of label maps matched to the CTs by case name")
    parser.add_argument("--labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of the label maps (default: auto)")
    parser.add_argument("--backend", default="classical",
                        help="segmentation backend for cases without a label map (default: classical)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--export-dataset", type=Path, metavar="DIR",
                        help="also append every case to a curated dataset in VerSe layout (generated subject ids; "
                             "the case -> subject link is only in the summary table)")
    parser.add_argument("--save-scene", action="store_true",
                        help="also write CASE/CASE.mrb with the review nodes (needs Slicer or slicer-core)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return parser


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(path: Path) -> bool:
    lower = path.name.lower()
    return path.is_file() and lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


def find_cases(folder: Path) -> list[dict]:
    """Cases in the input folder: ``{"name", "path", "series"}`` sorted by name."""
    from VertebralFractureLib import io

    cases = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if _is_image(path):
            cases.append({"name": _strip_suffix(path.name), "path": path, "series": None})
        elif path.is_dir():
            try:
                series = io.list_dicom_series(path)
            except Exception as error:  # unreadable folder: reported as a failing case below
                cases.append({"name": path.name, "path": path, "series": None, "error": str(error)})
                continue
            if len(series) == 1:
                cases.append({"name": path.name, "path": path, "series": series[0]["uid"]})
            for index, item in enumerate(series if len(series) > 1 else [], start=1):
                cases.append({"name": f"{path.name}-series{index}", "path": path, "series": item["uid"]})
    return cases


def find_label_map(seg_dir: Path, case_name: str) -> Path | None:
    """The label map in ``seg_dir`` named after the case (exactly, or followed by ``_``, ``-`` or ``.``)."""
    matches = []
    for path in sorted(seg_dir.iterdir()):
        if not path.is_file() or not path.name.lower().endswith((".seg.nrrd",) + IMAGE_SUFFIXES):
            continue
        stem = _strip_suffix(path.name)
        if stem == case_name or (stem.startswith(case_name) and stem[len(case_name)] in "_-."):
            matches.append(path)
    if len(matches) > 1:
        exact = [m for m in matches if _strip_suffix(m.name) == case_name]
        if len(exact) == 1:
            return exact[0]
        from VertebralFractureLib.errors import InputError

        raise InputError(seg_dir, f"{len(matches)} label maps match case {case_name!r}: "
                                  f"{', '.join(m.name for m in matches)}")
    return matches[0] if matches else None


def _write_results(case_result, out_dir: Path, labels, ct) -> dict:
    """The Lib's report when available; at least results.json (atomically)."""
    from VertebralFractureLib import io

    try:
        from VertebralFractureLib import report
    except ImportError:
        report = None
    if report is not None and hasattr(report, "write_measure_outputs"):
        return report.write_measure_outputs(case_result, out_dir, labels, ct)
    path = out_dir / "results.json"
    io.write_text_atomic(path, json.dumps(case_result.to_dict(), indent=2))
    return {"results": path}


def process_case(case: dict, args) -> dict:
    """Analyse one case; returns its summary row (raises on failure)."""
    from VertebralFractureLib import io, measure

    if case.get("error"):
        raise RuntimeError(case["error"])
    out_dir = args.output / case["name"]
    ct = io.read_ct(case["path"], case["series"])
    label_path = find_label_map(args.seg_dir, case["name"]) if args.seg_dir else None
    provenance = None
    if label_path is not None:
        label_map = io.read_label_map(label_path, args.labels)
        io.check_overlap(ct, label_map.volume)
        labels = label_map.volume if label_map.volume.same_grid(ct) else io.resample_labels_to(label_map.volume, ct)
        source = str(label_path)
    else:
        from VertebralFractureLib.segment import get_backend

        backend = get_backend(args.backend)
        output = backend.segment(ct, device=args.device)
        labels = output.labels
        source = f"backend {args.backend}"
        io.write_nifti(labels, out_dir / "segmentation.nii.gz")
        # Quality control treats a backend's output as automatic and needs to know whether its levels were anchored.
        provenance = {"file": "segmentation.nii.gz", "backend": output.backend, "levels_status": output.levels_status,
                      "level_evidence": list(output.level_evidence)}
    inputs = {"ct": str(case["path"]), "series": case["series"], "seg": source}
    if provenance is not None:
        inputs["segmentation"] = provenance
    result = measure.measure_case(labels, ct, inputs=inputs)
    _write_results(result, out_dir, labels, ct)
    subject = ""
    if args.export_dataset is not None:
        from VertebralFractureLib import curate

        subject = curate.export_verse_case(args.export_dataset, ct, labels, result)["ct"].parent.name
    if args.save_scene:
        _save_review_scene(case["name"], out_dir, ct, labels, result)
    patient = result.patient
    return {
        "case": case["name"], "status": "ok", "error": "", "input": str(case["path"]), "segmentation": source,
        "levels": " ".join(v.level for v in result.vertebrae),
        # "failed" (segmentation failed quality control: no grades), "levels unconfirmed" or "passed".
        "quality": "" if result.quality is None else result.quality.status,
        "fractured_levels": " ".join(patient.fractured_levels),
        "worst_grade": "" if patient.worst_grade is None else patient.worst_grade,
        "l1_trabecular_hu": "" if patient.l1_trabecular_hu is None else round(patient.l1_trabecular_hu, 1),
        "output": str(out_dir), "dataset_subject": subject,
    }


def _save_review_scene(name: str, out_dir: Path, ct, labels, result) -> None:
    """A scene a reviewer opens in Slicer: CT, named segments, height lines, table (MRML core only)."""
    import slicer

    from VertebralFractureLib import mrml

    context = None
    scene = getattr(slicer, "mrmlScene", None) if hasattr(slicer, "app") else None
    if scene is None:
        context = mrml.new_scene()
        scene = context.scene
    else:
        scene.Clear()
    volume_node = mrml.add_volume_node(scene, ct, name)
    mrml.VertebralFractureCase.create(volume_node, labels=labels, case=result)
    mrml.save_scene(scene, out_dir / f"{name}.mrb")
    if context is None:
        scene.Clear()


def _write_summary(path: Path, rows: list[dict]) -> None:
    from VertebralFractureLib import io

    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.write_text_atomic(path, buffer.getvalue())


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    _make_lib_importable()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help (0) and on bad arguments (2)
        return int(exit_request.code or 0)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    if not args.input.is_dir():
        print(f"error: {args.input}: not a folder", file=sys.stderr)
        return 2
    if args.seg_dir is not None and not args.seg_dir.is_dir():
        print(f"error: {args.seg_dir}: not a folder", file=sys.stderr)
        return 2
    cases = find_cases(args.input)
    if not cases:
        print(f"error: {args.input}: no CT found (NIfTI, NRRD, MetaImage files or DICOM series folders)",
              file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    summary_path = args.output / "summary.csv"
    rows = []
    for index, case in enumerate(cases, start=1):
        started = time.perf_counter()
        try:
            row = process_case(case, args)
        except Exception as error:  # one case failing must not stop the batch; the reason goes in the summary
            row = {"case": case["name"], "status": "failed", "error": _one_line(error), "input": str(case["path"]),
                   "output": str(args.output / case["name"])}
            (args.output / case["name"]).mkdir(parents=True, exist_ok=True)
            (args.output / case["name"] / "error.txt").write_text(
                "".join(traceback.format_exception(type(error), error, error.__traceback__)), encoding="utf-8")
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        _write_summary(summary_path, rows)  # after every case, so an interrupted run keeps what it did
        if row["status"] == "ok":
            log.info("[%d/%d] %s: ok, %s; fractured: %s (%.1f s)", index, len(cases), case["name"], row["levels"],
                     row["fractured_levels"] or "none", row["seconds"])
        else:
            print(f"[{index}/{len(cases)}] {case['name']}: FAILED: {row['error']}", file=sys.stderr)
    failed = sum(1 for row in rows if row["status"] != "ok")
    print(f"{len(rows) - failed} of {len(rows)} cases done, {failed} failed; summary: {summary_path}",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def _exit(code: int) -> None:
    """Inside Slicer the application must be asked to exit (with the code); plain Python exits directly."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
