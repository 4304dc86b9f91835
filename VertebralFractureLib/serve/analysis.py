"""One study's analysis on the node: the pipeline on the downloaded series, the three DICOM outputs and the
worklist row's findings."""

from __future__ import annotations

import logging
from pathlib import Path

from VertebralFractureLib.serve.config import NodeConfig

log = logging.getLogger(__name__)

SERIES_FOLDER = "series"
OUTPUT_FOLDER = "out"


def run_analysis(folder: Path, config: NodeConfig, row: dict) -> list[Path] | None:
    """Analyse ``folder/series`` and write the DICOM SEG, SR and Encapsulated PDF into ``folder/out``; returns
    their paths, or None when the analysis could not run (``row`` then says why: status "failed")."""
    from VertebralFractureLib import pipeline
    from VertebralFractureLib.outputs import dicom as dicom_outputs

    series_dir, out = folder / SERIES_FOLDER, folder / OUTPUT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    request = pipeline.AnalysisRequest(ct=series_dir, backend=config.backend, device=config.device,
                                       dicom_out=True, report=True, screen=True)
    try:
        analysis = pipeline.run(request)
        scrub_case(analysis, folder)
        written = pipeline.write_files(analysis.case, analysis.screening, analysis.labels, analysis.ct, out,
                                       report=True, dicom_out=True)
        files = analysis.ct.meta.get("dicom_files") or []
        sources, _ = dicom_outputs.read_source_datasets(files)
        dicom_outputs.write_encapsulated_pdf(written["report_pdf"], sources[0], out / "report_pdf.dcm",
                                             source_datasets=sources)
    except Exception as error:  # noqa: BLE001 - a study that cannot be analysed is recorded, never a crash
        reason = scrub_text(_one_line(error), folder)
        if not isinstance(error, _expected_errors()):
            log.exception("study %s: the analysis failed", row.get("study_uid"))
            reason = f"internal error ({type(error).__name__}: {reason})"
        row.update(status="failed", reason=reason)
        log.warning("study %s: analysis failed: %s", row.get("study_uid"), reason)
        return None
    paths = [Path(written["dicom_seg"]), Path(written["dicom_sr"]), out / "report_pdf.dcm"]
    row.update(findings(analysis))
    row.update(zip(("seg_uid", "sr_uid", "pdf_uid"), (_sop_uid(p) for p in paths)))
    return paths


def findings(analysis) -> dict:
    """The worklist's columns for an analysed case."""
    case, screening = analysis.case, analysis.screening
    quality = getattr(case, "quality", None)
    withheld = quality is not None and quality.findings_withheld
    graded = [v for v in case.vertebrae if v.final_grade is not None]
    fractured = [v for v in graded if v.final_grade >= 1]
    recommendation = screening.recommendation if screening is not None else None
    return {
        "status": "not assessed" if withheld else "screened",
        "reason": quality.headline if withheld else None,
        "fractured_levels": " ".join(f"{v.level}:{v.final_grade}" for v in fractured),
        "worst_grade": max((v.final_grade for v in graded), default=None),
        "density_level": getattr(screening, "level", None),
        "density_hu": getattr(screening, "measured_hu", None),
        "density_category": getattr(screening, "category", None),
        "recommendation": getattr(recommendation, "action", None),
        "confidence": getattr(recommendation, "confidence", None),
        "statement": getattr(recommendation, "statement", None),
        "qc_status": quality.status if quality is not None else None,
        "qc_reason": "; ".join(quality.failed_checks) if withheld else None,
        "backend": case.segmentation_backend,
    }


def scrub_text(text: str, folder: Path) -> str:
    """Text sent back to the server or kept in the worklist names no path of the node's machine."""
    for path in (folder / SERIES_FOLDER, folder):
        text = text.replace(str(path), "the series")
    return text


def scrub_case(analysis, folder: Path) -> None:
    case = analysis.case
    case.warnings = [scrub_text(w, folder) for w in case.warnings]
    case.level_evidence = [scrub_text(e, folder) for e in case.level_evidence]
    if case.segmentation_backend_reason:
        case.segmentation_backend_reason = scrub_text(case.segmentation_backend_reason, folder)
    case.segmentation_backend_details = {k: scrub_text(v, folder) if isinstance(v, str) else v
                                         for k, v in case.segmentation_backend_details.items()}
    case.inputs = {k: scrub_text(v, folder) if isinstance(v, str) else v for k, v in case.inputs.items()}
    screening = analysis.screening
    if screening is not None:
        screening.caveats = [scrub_text(c, folder) for c in screening.caveats]
        recommendation = screening.recommendation
        recommendation.statement = scrub_text(recommendation.statement, folder)
        recommendation.reasons = [scrub_text(r, folder) for r in recommendation.reasons]
        recommendation.confidence_reasons = [scrub_text(r, folder) for r in recommendation.confidence_reasons]


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _expected_errors() -> tuple:
    from VertebralFractureLib.errors import VertebralFractureError

    return (VertebralFractureError,)
