"""The one analysis every front end runs: the command line (``analyze``, ``measure``, ``report``), the Slicer
module's child process and ``batch``.

CT (or a given label map) → segmentation → level anchoring → measurement and Genant grading → quality control →
bone-density screening → outputs. :func:`analyze` returns an :class:`Analysis` whose :class:`~.results.CaseResult`
carries the level status, its evidence, the segmentation backend, the warnings and the quality findings; every
output (results.json, vertebrae.csv, overview.png, report.html/pdf, screening.json, DICOM SEG/SR, batch summary,
Slicer summary) is written from that one object.

Outputs are published as one set (see :mod:`.outputs`): a run that stops for any reason leaves the output folder as
it was.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from VertebralFractureLib.errors import InputError, NoVertebraeError
from VertebralFractureLib.io import LabelMap, Volume
from VertebralFractureLib.results import CaseResult, json_text

log = logging.getLogger(__name__)

CONTRAST_PHASES = ("non-contrast", "arterial", "portal-venous", "unknown")
KVP_RANGE = (70.0, 150.0)
"""Tube voltages clinical CT scanners use (kV): 70-150 (80-140 on most; dual-energy and paediatric protocols reach
70 and 150). A stated ``--kvp`` outside is a typing error, not a scan."""
"""Contrast phases a user may state (command-line spelling); screen's table spells "portal venous"."""


@dataclass
class AnalysisRequest:
    """What to analyse and what to write; the command-line options map one to one onto these fields."""

    ct: str | Path | None = None
    seg: str | Path | None = None
    """A vertebra label map to use instead of segmenting (resampled onto the CT's grid)."""
    series: str | None = None
    labels: str = "auto"
    segment_levels: tuple[str, ...] = ()
    """``--segment-level NAME=LEVEL`` values: the level of a .seg.nrrd segment whose name is not one level."""
    backend: str = "auto"
    """A ``--backend`` value; "auto" picks TotalSegmentator, an installed MONAI model or classical (see segment)."""
    device: str = "auto"
    backend_options: dict = field(default_factory=dict)
    anchor: str | None = None
    """The lowest vertebra not cut by the field of view is this level (e.g. "L3")."""
    anchor_point: str | None = None
    """"LEVEL:x,y,z": the vertebra containing (or nearest to) the RAS point is LEVEL."""
    screen: bool = True
    """Bone-density screening and referral recommendation (needs nothing but the measured case)."""
    report: bool = True
    """The clinical report (report.html, report.pdf) and screening.json."""
    dicom_out: bool = False
    deidentify: bool = False
    pseudonym: str = ""
    kvp: float | None = None
    contrast_phase: str | None = None
    screening_levels: tuple[str, ...] | None = None
    include_upper_thoracic: bool = False
    """Grade T1-T3 too (Genant grading is defined for T4-L5); recorded in the case's ``inputs`` so that every
    re-grade of the case (the Slicer review) grades the same levels."""


@dataclass
class Analysis:
    """The result of one run: the measured case (levels, grades, warnings, QC) and what it was measured on."""

    case: CaseResult
    labels: Volume
    ct: Volume | None
    screening: object | None = None
    """:class:`.screen.ScreeningResult` when screened."""
    written: dict[str, Path] = field(default_factory=dict)
    labels_file: bytes | None = None
    """The given label map's file when it holds ``labels`` exactly (:attr:`.io.LabelMap.stored_file`): written as
    the output's segmentation as it is."""

    @property
    def levels_status(self) -> str | None:
        return self.case.levels_status

    @property
    def level_evidence(self) -> list[str]:
        return self.case.level_evidence

    @property
    def backend(self) -> str | None:
        return self.case.segmentation_backend

    @property
    def warnings(self) -> list[str]:
        return self.case.warnings

    @property
    def quality(self):
        return getattr(self.case, "quality", None)


# ---- checks before any work -----------------------------------------------------------------------------------


def check_request(request: AnalysisRequest) -> None:
    """Refuse contradictory or malformed options before reading anything (one-line :class:`InputError`)."""
    from VertebralFractureLib.io import labels as labels_mod
    from VertebralFractureLib.segment import levels

    if request.ct is None and request.seg is None:
        raise InputError(None, "give a CT (--ct) or a label map (--seg)")
    if request.anchor and request.anchor_point:
        raise InputError(None, "give either --anchor or --anchor-point, not both")
    if request.anchor_point:
        try:
            levels.parse_anchor_point(request.anchor_point)
        except ValueError as error:
            raise InputError(None, str(error)) from None
    if request.anchor:
        try:
            labels_mod.label_from_level(request.anchor)
        except ValueError as error:
            raise InputError(None, f"--anchor: {error}") from None
    if request.screening_levels is not None:
        unknown = [level for level in request.screening_levels if labels_mod.label_from_segment_name(level) is None]
        if unknown or not request.screening_levels:
            raise InputError(None, f"--levels {','.join(request.screening_levels)!r}: give vertebra levels such as "
                                   "L1,T12,L2")
    if request.kvp is not None:
        try:
            kvp = float(request.kvp)
        except (TypeError, ValueError):
            kvp = math.nan
        if not math.isfinite(kvp) or not KVP_RANGE[0] <= kvp <= KVP_RANGE[1]:
            raise InputError(None, f"--kvp {request.kvp}: give the tube voltage in kV as a number from "
                                   f"{KVP_RANGE[0]:g} to {KVP_RANGE[1]:g} (e.g. 120)")
    if request.segment_levels:
        try:
            labels_mod.parse_segment_levels(request.segment_levels)
        except ValueError as error:
            raise InputError(None, str(error)) from None
        if request.seg is None:
            raise InputError(None, "--segment-level names segments of a --seg label map; give --seg")
    if request.contrast_phase is not None and request.contrast_phase not in CONTRAST_PHASES:
        raise InputError(None, f"--contrast-phase {request.contrast_phase!r}: one of {', '.join(CONTRAST_PHASES)}")
    if (request.dicom_out or request.deidentify) and not request.report:
        raise InputError(None, "--dicom-out and --deidentify write report files: leave out --no-report")
    if request.dicom_out and request.ct is None:
        raise InputError(None, "--dicom-out needs --ct with a DICOM series folder")


# ---- the stages -----------------------------------------------------------------------------------------------


def previous_record(seg_path: str | Path) -> CaseResult | None:
    """The results.json published with a label map (``OUT/segmentation.nii.gz`` beside ``OUT/results.json``), so
    re-reporting from it keeps how its levels were named; None for a label map from elsewhere.

    Only the record written for this very segmentation counts: the output set's manifest must list both files with
    the SHA-256 they have now. A segmentation put beside another case's results.json, or either file edited since,
    is read as a plain given label map (its levels "as named"), never with the other record's confirmed levels.
    """
    from VertebralFractureLib.outputs import publish

    seg_path = Path(seg_path)
    results = seg_path.parent / "results.json"
    if seg_path.name != "segmentation.nii.gz" or not results.is_file():
        return None
    manifest = publish.read_manifest(seg_path.parent) or {}
    for path in (seg_path, results):
        recorded = manifest.get(path.name)
        if not isinstance(recorded, dict) or recorded.get("sha256") != publish.file_sha256(path):
            log.warning("%s: not the record of %s (no output-set manifest lists both as they are now); its level "
                        "status is not used", results, seg_path)
            return None
    try:
        return CaseResult.from_dict(json.loads(results.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        log.warning("%s: unreadable; level status of %s not known", results, seg_path)
        return None


def read_inputs(request: AnalysisRequest, progress=None) -> tuple[Volume | None, LabelMap | None, dict]:
    """(CT or None, the given label map (on the CT's grid) or None, inputs record)."""
    from VertebralFractureLib import io

    report = progress or (lambda fraction, message: None)
    report(0.0, "reading the inputs")
    ct = io.read_ct(request.ct, request.series) if request.ct is not None else None
    if ct is not None:
        from VertebralFractureLib.screening.calibration import on_checked_scale

        # Checked against the body's own tissues (and corrected) before segmentation, measurement and screening.
        ct = on_checked_scale(ct)
    label_map = None
    inputs = {"ct": None if request.ct is None else str(request.ct), "series": request.series,
              "seg": None if request.seg is None else str(request.seg),
              "include_upper_thoracic": bool(request.include_upper_thoracic)}
    if request.seg is not None:
        from VertebralFractureLib.io import labels as labels_mod

        label_map = io.read_label_map(request.seg, request.labels, reference=ct,
                                      segment_levels=labels_mod.parse_segment_levels(request.segment_levels))
        inputs["labels"] = label_map.convention
        if request.segment_levels:
            inputs["segment_levels"] = list(request.segment_levels)
    return ct, label_map, inputs


def segment(request: AnalysisRequest, ct: Volume, progress=None, backends: dict | None = None):
    """Run the requested backend on the CT; returns its :class:`~.segment.SegmentationOutput`.

    ``backends``: a dictionary that keeps the backends made, by name and options, for the next CT of the same
    process (``batch`` on a worker: a deep model is loaded once per worker, not once per case)."""
    from VertebralFractureLib.segment import get_backend

    key = (request.backend, repr(sorted(request.backend_options.items())))
    backend = None if backends is None else backends.get(key)
    if backend is None:
        try:
            backend = get_backend(request.backend, **request.backend_options)
        except ValueError as error:
            raise InputError(None, str(error)) from None
        if backends is not None:
            backends[key] = backend
    return backend.segment(ct, device=request.device, progress=progress)


def apply_anchor(labels: Volume, request: AnalysisRequest) -> tuple[Volume, str | None]:
    """Renumber the levels as the user said (``--anchor`` / ``--anchor-point``); (labels, evidence or None)."""
    from VertebralFractureLib.segment import levels

    try:
        if request.anchor:
            return levels.renumber_lowest_complete(labels, request.anchor)
        if request.anchor_point:
            level, point = levels.parse_anchor_point(request.anchor_point)
            return levels.renumber_at_point(labels, level, point)
    except ValueError as error:
        raise InputError(None, f"cannot apply the anchor: {error}") from None
    return labels, None


def apply_quality_control(case: CaseResult, labels: Volume, ct: Volume | None) -> None:
    """The quality gate of :mod:`.morphometry.qc`: findings that fail it leave the results."""
    from VertebralFractureLib.morphometry import qc

    qc.apply_quality_gate(case, labels, ct)


def finish_case(case: CaseResult, labels: Volume, ct: Volume | None, levels_status: str | None,
                level_evidence: list[str], backend: str | None, full_vertebrae: bool | None,
                warnings: list[str] = (), backend_reason: str | None = None,
                backend_details: dict | None = None) -> CaseResult:
    """Record how the segmentation and its level names came about, add the warnings a reader must see, and apply
    the quality gate: the step between grading and screening, the same for every front end."""
    case.levels_status, case.level_evidence = levels_status, list(level_evidence)
    case.segmentation_backend, case.full_vertebrae = backend, full_vertebrae
    case.segmentation_backend_reason = backend_reason
    case.segmentation_backend_details = dict(backend_details or {})
    case.warnings.extend(warnings)
    if levels_status in ("unconfirmed", "conflicting"):
        case.warnings.insert(0, f"vertebra levels are {levels_status} (nothing in view confirms the count): "
                                + "; ".join(level_evidence) + "; fix them with --anchor or --anchor-point")
    if not any(v.axes_ras and v.centroid_ras for v in case.vertebrae):
        from VertebralFractureLib.outputs.overview import nothing_measured_statement

        case.warnings.insert(0, nothing_measured_statement(case))
    apply_quality_control(case, labels, ct)
    return case


def screening_header(ct: Volume | None, request: AnalysisRequest) -> dict | None:
    """The DICOM header summary screening reads (kVp, contrast), with the user's statements over it."""
    header = dict(ct.meta.get("dicom") or {}) if ct is not None else {}
    if request.kvp is not None:
        header["kvp"] = float(request.kvp)
    if request.contrast_phase:
        header["contrast_phase"] = {"portal-venous": "portal venous"}.get(request.contrast_phase,
                                                                          request.contrast_phase)
    return header or None


def screen_analysis(analysis: Analysis, request: AnalysisRequest) -> None:
    from VertebralFractureLib.io import labels as labels_mod
    from VertebralFractureLib.screening import recommend as screen

    rules = screen.RecommendationRules()
    if request.screening_levels:
        rules.screening_levels = tuple(labels_mod.level_name(labels_mod.label_from_level(level))
                                       for level in request.screening_levels)
    analysis.screening = screen.screen_case(analysis.labels, analysis.ct, analysis.case, rules=rules,
                                            dicom=screening_header(analysis.ct, request))


def run(request: AnalysisRequest, progress=None, backends: dict | None = None) -> Analysis:
    """Every stage but writing: returns the :class:`Analysis` (raises :class:`InputError`,
    :class:`NoVertebraeError`). ``backends``: see :func:`segment`."""
    from VertebralFractureLib.morphometry import measure

    check_request(request)
    report = progress or (lambda fraction, message: None)
    ct, label_map, inputs = read_inputs(request, report)
    if request.dicom_out and not ct.meta.get("dicom_files"):
        raise InputError(request.ct, "is not a DICOM series folder: --dicom-out needs the source DICOM files")
    labels = None if label_map is None else label_map.volume
    warnings: list[str] = [] if label_map is None else list(label_map.warnings)
    calibration = None if ct is None else ct.meta.get("hu_calibration")
    if calibration is not None and calibration.status != "consistent":
        warnings.append(calibration.note)
    reason, details = None, {}
    if labels is not None:
        prior = previous_record(request.seg)
        if prior is not None and (prior.inputs or {}).get("include_upper_thoracic") is True:
            # Re-reporting an output measured with T1-T3 grades them again (the flag only ever adds them).
            inputs["include_upper_thoracic"] = True
        if prior is not None and prior.levels_status:
            status, evidence = prior.levels_status, list(prior.level_evidence)
            backend, full = prior.segmentation_backend, prior.full_vertebrae
            reason, details = prior.segmentation_backend_reason, prior.segmentation_backend_details
        else:
            status, evidence, backend, full = "given", [f"levels as named in {request.seg}"], "given", True
            reason = f"label map given with --seg {request.seg}"
    else:
        output = segment(request, ct, lambda fraction, message: report(0.05 + 0.6 * fraction, message), backends)
        labels, status, evidence = output.labels, output.levels_status, list(output.level_evidence)
        backend, full = output.backend, output.full_vertebrae
        reason, details = output.backend_reason, output.backend_details
        warnings.extend(output.warnings)
    labels, anchor_evidence = apply_anchor(labels, request)
    # The file read and its labels' boxes hold the label map as read; a renumbered one is written and boxed anew.
    as_read = label_map if label_map is not None and labels is label_map.volume else None
    if anchor_evidence:
        evidence.append(anchor_evidence)
        status = "anchored"
    report(0.7, "measuring and grading")
    case = measure.measure_case(labels, ct, inputs=inputs,
                               progress=lambda fraction, message: report(0.7 + 0.1 * fraction, message),
                               boxes=None if as_read is None else as_read.boxes)
    finish_case(case, labels, ct, status, evidence, backend, full, warnings, reason, details)
    analysis = Analysis(case=case, labels=labels, ct=ct, labels_file=None if as_read is None else as_read.stored_file)
    if request.screen:
        report(0.8, "screening bone density")
        screen_analysis(analysis, request)
    return analysis


# ---- outputs --------------------------------------------------------------------------------------------------


def write_files(case: CaseResult, screening, labels: Volume, ct: Volume | None, folder: str | Path,
                report: bool = True, dicom_out: bool = False, deidentify: bool = False, pseudonym: str = "",
                labels_file: bytes | None = None) -> dict:
    """Write a run's files into ``folder`` as is (a staging folder); returns {name: path}.

    Always the measurement files (segmentation.nii.gz, results.json, vertebrae.csv, overview.png); with a screening
    and ``report`` the clinical report (report.html, report.pdf) and screening.json; with ``dicom_out`` DICOM SEG +
    SR. ``deidentify``: the de-identified export of :func:`.deid.export_case` instead. ``labels_file``: see
    :attr:`Analysis.labels_file`.
    """
    from VertebralFractureLib.outputs import files as measure_report

    folder = Path(folder)
    if dicom_out and (ct is None or not ct.meta.get("dicom_files")):
        raise InputError(None if ct is None else ct.path,
                         "is not a DICOM series: DICOM SEG and SR need the source DICOM files")
    if deidentify:
        from VertebralFractureLib.outputs import deid

        return deid.export_case(case, screening, labels, ct, folder, pseudonym=pseudonym, dicom_outputs=dicom_out)
    written: dict = {}
    if screening is not None and report:
        from VertebralFractureLib import io
        from VertebralFractureLib.outputs import clinical as report_clinical

        if dicom_out:
            from VertebralFractureLib.outputs import dicom as dicom_outputs

            written.update(dicom_outputs.write_dicom_outputs(case, labels, ct, folder, screening))
        written.update(report_clinical.write_clinical_report(case, screening, folder, labels, ct))
        data = {"case": case.to_dict(), "screening": screening.to_dict(), "deidentified": False}
        io.write_text_atomic(folder / "screening.json", json_text(data))
        written["screening_json"] = folder / "screening.json"
    written.update(measure_report.write_measure_files(case, folder, labels, ct, labels_file=labels_file))
    return written


def publish(case: CaseResult, screening, labels: Volume, ct: Volume | None, out_dir: str | Path,
            wait_s: float = 0.0, **options) -> dict[str, Path]:
    """:func:`write_files` as one set that replaces whatever ``out_dir`` held (see :mod:`.outputs`); returns
    {name: published path}."""
    from VertebralFractureLib.outputs.publish import OutputSet

    output_set = OutputSet(out_dir, wait_s=wait_s)
    with output_set as staging:
        written = write_files(case, screening, labels, ct, staging, **options)
    return {name: output_set.path(Path(path).relative_to(staging).as_posix()) for name, path in written.items()}


def _import_drawing() -> None:
    """Import matplotlib, which draws the report (``overview.png`` is drawn with Pillow, a few milliseconds)."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except Exception:  # the report says what failed to import when it draws
        pass


def analyze(request: AnalysisRequest, out_dir: str | Path | None = None, progress=None,
            wait_s: float = 0.0, also_write=None, backends: dict | None = None) -> Analysis:
    """Run the whole analysis and, with ``out_dir``, publish its outputs there as one set.

    The output folder is locked before any work, so a second run on it is refused at once (or waits ``wait_s``).
    ``also_write(analysis, staging) -> {name: path}`` adds files of a front end's own (batch: the review scene) to
    the set before it is published. ``backends``: see :func:`segment`.
    """
    from VertebralFractureLib.outputs.publish import OutputSet

    report = progress or (lambda fraction, message: None)
    check_request(request)
    if out_dir is None:
        return run(request, progress, backends)
    output_set = OutputSet(out_dir, wait_s=wait_s, inputs=(request.ct, request.seg))
    with output_set as staging:
        # The report's drawing library (a quarter of a second to import) loads while the case is read and
        # measured: the array work of both runs outside the interpreter lock. Without a report it is not loaded.
        if request.report and request.screen:
            threading.Thread(target=_import_drawing, name="import-drawing", daemon=True).start()
        analysis = run(request, progress, backends)
        report(0.9, "writing outputs")
        written = write_files(analysis.case, analysis.screening, analysis.labels, analysis.ct, staging,
                              report=request.report and request.screen, dicom_out=request.dicom_out,
                              deidentify=request.deidentify, pseudonym=request.pseudonym,
                              labels_file=analysis.labels_file)
        if also_write is not None:
            written.update(also_write(analysis, staging) or {})
    analysis.written = {name: output_set.path(Path(path).relative_to(staging).as_posix())
                        for name, path in written.items()}
    return analysis


__all__ = ["Analysis", "AnalysisRequest", "NoVertebraeError", "analyze", "check_request", "publish", "run",
           "write_files"]
