"""Commands ``analyze`` (segment, name, measure and grade from a CT) and ``evaluate`` (segmentation accuracy).

Registered with the decorators of :mod:`.cli` when :func:`cli._load_command_modules` imports this module.

Exit codes of ``analyze``: 0 done (all outputs published as one set, see :mod:`.outputs`); 2 a bad input or a
file-system problem (one line names the file and the problem: unreadable, not a CT in Hounsfield units, disk full,
...); 4 no vertebrae found in the CT (one line says so; nothing is written); 5 the segmentation failed quality
control (:mod:`.qc`: every output is written and says so at its top; no fracture grade in them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from VertebralFractureLib.cli.common import (
    LABEL_CONVENTIONS,
    Progress,
    add_grading_arguments,
    add_output_argument,
    add_report_arguments,
    add_segment_level_argument,
    arguments,
    command,
    exit_code,
    print_analysis,
    request_from_args,
)
from VertebralFractureLib.cli.deep import add_backend_arguments
from VertebralFractureLib.errors import InputError, NoVertebraeError

EXIT_NO_VERTEBRAE = 4


def add_analyze_arguments(parser: argparse.ArgumentParser, single_case: bool = True) -> None:
    """Options of ``analyze`` (and, without the input and output, of ``batch``)."""
    if single_case:
        parser.add_argument("-i", "--ct", required=True, metavar="CT",
                            help="CT volume in Hounsfield units (NIfTI, NRRD, MetaImage or a DICOM series folder)")
        add_output_argument(parser)
    parser.add_argument("--backend", default="auto", choices=["auto", "classical", "monai", "totalsegmentator"],
                        help="segmentation backend (default: auto = TotalSegmentator when installed, else an "
                             "installed MONAI model, else the weight-free classical backend)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="device for backends that use one (default: auto)")
    if single_case:
        parser.add_argument("--seg", metavar="LABELMAP",
                            help="use this vertebra label map instead of segmenting (resampled onto the CT grid)")
    parser.add_argument("--labels", default="auto", choices=LABEL_CONVENTIONS,
                        help="label convention of --seg (default: auto)")
    if single_case:
        add_segment_level_argument(parser)
    add_grading_arguments(parser)
    if single_case:
        parser.add_argument("--anchor", metavar="LEVEL",
                            help="fix the level count: the lowest vertebra not cut by the field of view is LEVEL "
                                 "(e.g. L3); every other vertebra is renumbered from it")
        parser.add_argument("--anchor-point", metavar="LEVEL:X,Y,Z",
                            help="fix the level count: the vertebra containing (or nearest to) the RAS point X,Y,Z "
                                 "in mm is LEVEL, e.g. L1:2.5,-30,95")
        parser.add_argument("--series", metavar="UID",
                            help="SeriesInstanceUID to read when the DICOM folder holds several")
    parser.add_argument("--no-report", action="store_true",
                        help="measurements only: no screening, no report.html/pdf, no screening.json")
    add_report_arguments(parser)
    add_backend_arguments(parser)


@command("analyze", "find, separate and name the vertebrae in a CT, measure and grade them, screen bone density "
                    "and write the clinical report")
@arguments(add_analyze_arguments)
def cmd_analyze(args: argparse.Namespace) -> int:
    from VertebralFractureLib import pipeline

    request = request_from_args(args)
    request.screen = request.report
    progress = Progress(not args.quiet)
    try:
        analysis = pipeline.analyze(request, args.out, progress)
    except NoVertebraeError as error:
        progress.close()
        print(f"no vertebrae found: {error}", file=sys.stderr)
        return EXIT_NO_VERTEBRAE
    progress.close()
    print_analysis(analysis)
    return exit_code(analysis.case)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="LABELMAP", help="predicted vertebra label map")
    parser.add_argument("--ref", required=True, metavar="LABELMAP", help="reference (ground-truth) label map")
    parser.add_argument("--pred-labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --pred (default: auto)")
    parser.add_argument("--ref-labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --ref (default: auto)")
    parser.add_argument("-o", "--out", metavar="JSON", help="also write the figures to this JSON file")


@command("evaluate", "per-level Dice and VerSe identification rate of a segmentation against a reference")
@arguments(_add_evaluate_arguments)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from VertebralFractureLib import evaluate, io

    reference = io.read_label_map(args.ref, args.ref_labels)
    predicted = io.read_label_map(args.pred, args.pred_labels)
    io.check_overlap(reference.volume, predicted.volume)
    result = evaluate.evaluate_labels(predicted.volume, reference.volume)
    result["pred"] = str(args.pred)
    result["ref"] = str(args.ref)
    print(evaluate.format_report(result))
    if args.out:
        if Path(args.out).is_dir():
            raise InputError(args.out, "is a folder; --out names the JSON file to write")
        evaluate.write_json(result, args.out)
        print(f"wrote {args.out}")
    return 0
