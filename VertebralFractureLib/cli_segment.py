"""Commands ``analyze`` (segment, name, measure and grade from a CT) and ``evaluate`` (segmentation accuracy).

Registered with the decorators of :mod:`.cli` when :func:`cli._load_command_modules` imports this module.

Exit codes of ``analyze``: 0 done; 2 a bad input (one line names the file and the problem: unreadable, not a CT
in Hounsfield units, ...); 4 no vertebrae found in the CT (one line says so; nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import Progress, _print_summary, arguments, command
from .cli_deep import add_backend_arguments, backend_options
from .errors import InputError, NoVertebraeError

EXIT_NO_VERTEBRAE = 4


def _add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="CT",
                        help="CT volume in Hounsfield units (NIfTI, NRRD, MetaImage or a DICOM series folder)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--backend", default="classical", choices=["classical", "monai", "totalsegmentator"],
                        help="segmentation backend (default: classical, no downloaded weights, CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="device for backends that use one (default: auto)")
    parser.add_argument("--seg", metavar="LABELMAP",
                        help="use this vertebra label map instead of segmenting (resampled onto the CT grid)")
    parser.add_argument("--labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --seg (default: auto)")
    parser.add_argument("--anchor", metavar="LEVEL",
                        help="fix the level count: the lowest vertebra not cut by the field of view is LEVEL "
                             "(e.g. L3); every other vertebra is renumbered from it")
    parser.add_argument("--anchor-point", metavar="LEVEL:X,Y,Z",
                        help="fix the level count: the vertebra containing (or nearest to) the RAS point X,Y,Z "
                             "in mm is LEVEL, e.g. L1:2.5,-30,95")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the DICOM folder holds several")
    add_backend_arguments(parser)


@command("analyze", "find, separate and name the vertebrae in a CT, then measure and grade them")
@arguments(_add_analyze_arguments)
def cmd_analyze(args: argparse.Namespace) -> int:
    from . import io, measure, report
    from .segment import SegmentationOutput, get_backend, levels

    if args.anchor and args.anchor_point:
        raise InputError(None, "give either --anchor or --anchor-point, not both")
    anchor_point = None
    if args.anchor_point:
        try:
            anchor_point = levels.parse_anchor_point(args.anchor_point)
        except ValueError as error:
            raise InputError(None, str(error)) from None
    if args.anchor:
        try:
            levels.labels_mod.label_from_level(args.anchor)
        except ValueError as error:
            raise InputError(None, f"--anchor: {error}") from None

    progress = Progress(not args.quiet)
    progress(0.0, "reading the CT")
    ct = io.read_ct(args.ct, args.series)
    if args.seg:
        label_map = io.read_label_map(args.seg, args.labels, reference=ct)
        output = SegmentationOutput(labels=label_map.volume, backend="given", full_vertebrae=True,
                                    levels_status="given", level_evidence=[f"levels as named in {args.seg}"])
    else:
        try:
            backend = get_backend(args.backend, **backend_options(args))
        except ValueError as error:
            raise InputError(None, str(error)) from None

        def segment_progress(fraction, message):
            progress(0.05 + 0.6 * fraction, message)

        try:
            output = backend.segment(ct, device=args.device, progress=segment_progress)
        except NoVertebraeError as error:
            progress.close()
            print(f"no vertebrae found: {error}", file=sys.stderr)
            return EXIT_NO_VERTEBRAE

    labels = output.labels
    evidence = list(output.level_evidence)
    status = output.levels_status
    try:
        if args.anchor:
            labels, text = levels.renumber_lowest_complete(labels, args.anchor)
            evidence.append(text)
            status = "anchored"
        elif anchor_point is not None:
            labels, text = levels.renumber_at_point(labels, *anchor_point)
            evidence.append(text)
            status = "anchored"
    except ValueError as error:
        raise InputError(None, f"cannot apply the anchor: {error}") from None

    out_dir = Path(args.out)
    inputs = {
        "ct": str(args.ct),
        "seg": str(args.seg) if args.seg else None,
        "segmentation": {
            "file": "segmentation.nii.gz",
            "backend": output.backend,
            "full_vertebrae": bool(output.full_vertebrae),
            "levels_status": status,
            "level_evidence": evidence,
            "label_convention": "verse",
        },
    }
    progress(0.75, "measuring")
    case = measure.measure_case(labels, ct, inputs=inputs)
    case.warnings.extend(output.warnings)
    if status in ("unconfirmed", "conflicting"):
        case.warnings.insert(0, f"vertebra levels are {status} (nothing in view confirms the count): "
                                + "; ".join(evidence) + "; fix them with --anchor or --anchor-point")
    if not output.full_vertebrae:
        case.warnings.append("the segmentation holds vertebral bodies only (no posterior elements)")
    progress(0.95, "writing outputs")
    # Written only once everything is measured: a failure leaves no segmentation without its results.
    io.write_nifti(labels.with_array(labels.array.astype("int16")), out_dir / "segmentation.nii.gz")
    written = report.write_measure_outputs(case, out_dir, labels, ct)
    written = {"segmentation": str(out_dir / "segmentation.nii.gz"), **written}
    progress.close()
    print(f"levels {status}: " + "; ".join(evidence))
    _print_summary(case, written)
    return 0


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="LABELMAP", help="predicted vertebra label map")
    parser.add_argument("--ref", required=True, metavar="LABELMAP", help="reference (ground-truth) label map")
    parser.add_argument("--pred-labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --pred (default: auto)")
    parser.add_argument("--ref-labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --ref (default: auto)")
    parser.add_argument("--out", metavar="JSON", help="also write the figures to this JSON file")


@command("evaluate", "per-level Dice and VerSe identification rate of a segmentation against a reference")
@arguments(_add_evaluate_arguments)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate, io

    reference = io.read_label_map(args.ref, args.ref_labels)
    predicted = io.read_label_map(args.pred, args.pred_labels)
    io.check_overlap(reference.volume, predicted.volume)
    result = evaluate.evaluate_labels(predicted.volume, reference.volume)
    result["pred"] = str(args.pred)
    result["ref"] = str(args.ref)
    print(evaluate.format_report(result))
    if args.out:
        evaluate.write_json(result, args.out)
        print(f"wrote {args.out}")
    return 0
