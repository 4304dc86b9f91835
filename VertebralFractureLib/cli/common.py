"""What every command of the command line shares: the command registry, progress on stderr, the common options,
the analysis request built from them and the printed summary of a run.

Each command is a function ``cmd_NAME(args) -> int`` registered with :func:`command`; errors in inputs end with a
one-line message on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

log = logging.getLogger("VertebralFractureLib")

_COMMANDS: dict[str, tuple[callable, callable, str]] = {}


def command(name: str, help_text: str):
    """Register ``cmd_NAME``; the decorated function's ``add_arguments`` attribute fills the subparser."""

    def decorator(function):
        _COMMANDS[name] = (function, getattr(function, "add_arguments", None), help_text)
        return function

    return decorator


def arguments(adder):
    """Attach an argument-adding function to a command function."""

    def decorator(function):
        function.add_arguments = adder
        return function

    return decorator


class Progress:
    """Progress on stderr: a tqdm bar on a terminal, plain lines otherwise (logs of batch runs stay readable)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None
        self._last_message = None
        self._start = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=100, unit="%", leave=False, file=sys.stderr)
            self._bar.set_description(message)
            self._bar.n = int(round(100 * fraction))
            self._bar.refresh()
        elif message != self._last_message:
            print(f"[{time.perf_counter() - self._start:6.1f} s] {100 * fraction:3.0f}% {message}", file=sys.stderr)
        self._last_message = message

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


LABEL_CONVENTIONS = ["auto", "verse", "totalseg_v2", "totalseg_v1"]


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="output folder; it receives the run's files as one set, replacing an earlier run's")


def add_grading_arguments(parser: argparse.ArgumentParser) -> None:
    """--include-upper-thoracic: the grading options of every command that measures (``measure``, ``report``,
    ``analyze``, ``batch``)."""
    parser.add_argument("--include-upper-thoracic", action="store_true",
                        help="also grade T1-T3 (default: T4-L5 only: Genant grading is defined for T4-L5 and "
                             "normative morphometry does not cover T1-T3; they are listed as not assessed)")


def add_segment_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segment-level", action="append", default=[], metavar="SEGMENT=LEVEL",
                        help="level of a .seg.nrrd segment (by name or id) whose name is not one level, e.g. "
                             "'L1 fractured=L1', 'Segment_3=T12'; LEVEL 'none' leaves it out (repeat per segment)")


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """--seg, --ct, --series, --labels, --include-upper-thoracic, --out: the inputs of every command that starts
    from a label map."""
    parser.add_argument("--seg", required=True, metavar="LABELMAP",
                        help="vertebra label map (NIfTI, NRRD, MetaImage or Slicer .seg.nrrd)")
    parser.add_argument("-i", "--ct", metavar="CT", help="CT volume (NIfTI, NRRD, MetaImage or DICOM series folder); "
                                                          "gives trabecular HU and the overview image")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the DICOM folder holds several")
    parser.add_argument("--labels", default="auto", choices=LABEL_CONVENTIONS,
                        help="label convention of --seg (default: auto; .seg.nrrd files are read by segment name)")
    add_segment_level_argument(parser)
    add_grading_arguments(parser)
    add_output_argument(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the screening and the clinical report (``analyze``, ``report``, ``batch``)."""
    parser.add_argument("--dicom-out", action="store_true",
                        help="also write DICOM SEG and SR (TID 1500); needs a DICOM series as --ct")
    parser.add_argument("--deidentify", action="store_true",
                        help="export for sharing: de-identified DICOM (PS3.15 basic profile), report and JSON "
                             "without names, IDs, dates, institution or original UIDs")
    parser.add_argument("--pseudonym", default="", help="patient name/ID to put in de-identified outputs")
    parser.add_argument("--kvp", type=float, default=None,
                        help="tube voltage in kV when the CT file has no DICOM header (NIfTI, NRRD)")
    parser.add_argument("--contrast-phase", choices=["non-contrast", "arterial", "portal-venous", "unknown"],
                        default=None, help="state the contrast phase instead of detecting it from the aorta and the "
                                           "DICOM header (unknown: contrast was given, phase not known)")
    parser.add_argument("--levels", metavar="L1,T12,L2", default=None,
                        help="screening levels in order of preference (default: L1,T12,L2)")


def request_from_args(args: argparse.Namespace, **overrides):
    """The :class:`~.pipeline.AnalysisRequest` of a command's parsed options."""
    from VertebralFractureLib.pipeline import AnalysisRequest

    levels = getattr(args, "levels", None)
    fields = {
        "ct": getattr(args, "ct", None),
        "seg": getattr(args, "seg", None),
        "series": getattr(args, "series", None),
        "labels": getattr(args, "labels", "auto"),
        "segment_levels": tuple(getattr(args, "segment_level", None) or ()),
        "backend": getattr(args, "backend", "auto"),
        "device": getattr(args, "device", "auto"),
        "anchor": getattr(args, "anchor", None),
        "anchor_point": getattr(args, "anchor_point", None),
        "report": not getattr(args, "no_report", False),
        "dicom_out": getattr(args, "dicom_out", False),
        "deidentify": getattr(args, "deidentify", False),
        "pseudonym": getattr(args, "pseudonym", ""),
        "kvp": getattr(args, "kvp", None),
        "contrast_phase": getattr(args, "contrast_phase", None),
        "include_upper_thoracic": getattr(args, "include_upper_thoracic", False),
        "screening_levels": None if levels is None else tuple(
            level.strip().upper() for level in levels.split(",") if level.strip()),
    }
    if hasattr(args, "model"):
        fields["backend_options"] = backend_options(args)
    fields.update(overrides)
    return AnalysisRequest(**fields)


def exit_code(case) -> int:
    """0, or :data:`qc.EXIT_QUALITY_FAILED` (5) when the segmentation failed quality control."""
    from VertebralFractureLib.morphometry import qc

    return qc.EXIT_QUALITY_FAILED if case.quality is not None and case.quality.status == qc.FAILED else 0


def print_analysis(analysis) -> None:
    """The run's summary on stdout: the quality-control headline, levels and how they were named, grades,
    screening, files written."""
    from VertebralFractureLib.morphometry import qc
    from VertebralFractureLib.outputs.files import levels_line
    from VertebralFractureLib.screening.rules import case_status, status_text
    from VertebralFractureLib.segment import describe_backend

    case = analysis.case
    if qc.headline(case):
        print(qc.headline(case))
        for item in case.quality.failed_checks:
            print(f"  {item}")
    print(f"status: {status_text(*case_status(case))}")
    if case.segmentation_backend:
        contents = {False: "; masks of the vertebral bodies (no posterior elements)",
                    True: "; masks of whole vertebrae"}.get(case.full_vertebrae, "")
        print("segmentation: " + describe_backend(case.segmentation_backend, case.segmentation_backend_reason,
                                                  case.segmentation_backend_details) + contents)
    line = levels_line(case)
    if line:
        print(line)
    for vertebra in case.vertebrae:
        print(vertebra_line(case, vertebra))
    print(findings_line(case))
    for warning in case.warnings:
        if warning != qc.headline(case):
            print(f"warning: {warning}")
    screening = analysis.screening
    if screening is not None:
        print(screening.recommendation.statement)
        print(f"confidence: {screening.recommendation.confidence} "
              f"({'; '.join(screening.recommendation.confidence_reasons)})")
    for name, path in analysis.written.items():
        print(f"wrote {name}: {path}")
    if screening is not None:
        from VertebralFractureLib.screening.rules import RESEARCH_USE

        print(RESEARCH_USE)


def vertebra_line(case, vertebra) -> str:
    """One vertebra in the printed summary: its heights and grade, or why it has none."""
    from VertebralFractureLib.screening.rules import grade_words, height_loss_text

    if not vertebra.complete:
        return f"{vertebra.level:>4}  incomplete ({vertebra.incomplete_reason})"
    heights = vertebra.heights_mm
    measured = "" if not heights else (f"Ha {heights['anterior']:5.1f}  Hm {heights['middle']:5.1f}  "
                                       f"Hp {heights['posterior']:5.1f} mm  ")
    if vertebra.final_grade is None:
        quality = case.quality.vertebra(vertebra.label) if case.quality is not None else None
        own = f" (this body: {'; '.join(quality.problems)})" if quality is not None and quality.problems \
            and not (vertebra.not_assessed_reason or "").endswith(quality.problems[-1]) else ""
        return f"{vertebra.level:>4}  {measured}{vertebra.not_assessed_reason or vertebra.grade_reason}{own}"
    loss = height_loss_text(vertebra)
    return f"{vertebra.level:>4}  {measured}{grade_words(vertebra)}" + (f", {loss}" if loss else "")


def findings_line(case) -> str:
    """Fractures, worst grade and L1 density, each stated only where the case's status lets it be."""
    from VertebralFractureLib.screening.rules import ASSESSED, case_status, density_not_usable

    patient = case.patient
    status, _reason = case_status(case)
    if status != ASSESSED:
        fractures = f"fractures not assessed ({status})"
    elif not patient.graded_levels:
        fractures = "fractures not assessed (no vertebra graded)"
    elif patient.fractured_levels:
        fractures = f"fractured: {', '.join(patient.fractured_levels)}; worst grade {patient.worst_grade}"
    else:
        fractures = f"fractured: none of {len(patient.graded_levels)} graded"
    if patient.l1_trabecular_hu is not None:
        density = f"L1 trabecular HU {round(patient.l1_trabecular_hu)}"
    else:
        l1 = next((v for v in case.vertebrae if v.level == "L1"), None)
        why = density_not_usable(case, l1)
        density = "L1 density not measured" if why is None else f"L1 density not stated ({why})"
    return f"{fractures}; {density}"


def backend_options(args: argparse.Namespace) -> dict:
    """Keyword options for :func:`VertebralFractureLib.segment.get_backend` from :func:`add_backend_arguments`."""
    backend = getattr(args, "backend", "monai")
    monai = {"model": args.model, "model_sha256": args.model_sha256, "highres": False if args.lowres else None,
             "amp": not args.no_amp, "all_channels": args.all_channels}
    totalsegmentator = {"fast": args.fast, "allow_download": args.allow_download}
    if backend == "monai":
        return monai
    if backend == "totalsegmentator":
        return totalsegmentator
    if backend == "auto":
        return {**monai, **totalsegmentator}
    return {}
