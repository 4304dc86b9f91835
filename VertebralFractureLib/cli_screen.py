"""``report`` command: bone-density screening, referral recommendation, clinical report, DICOM SEG/SR, and
de-identified export. Registered with the CLI's decorators when cli.py loads this module."""

from __future__ import annotations

import argparse

from .cli import Progress, add_measure_arguments, arguments, command, read_measure_inputs


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    add_measure_arguments(parser)
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


@command("report", "bone density screening, referral recommendation, report.html/pdf, DICOM SEG/SR")
@arguments(_add_report_arguments)
def cmd_report(args: argparse.Namespace) -> int:
    from . import labels as labels_mod
    from . import measure, screen
    from .errors import InputError

    progress = Progress(not args.quiet)
    ct, label_map, inputs = read_measure_inputs(args, progress)
    if args.dicom_out and ct is None:
        raise InputError(None, "--dicom-out needs --ct with a DICOM series folder")
    if args.dicom_out and not ct.meta.get("dicom_files"):
        raise InputError(args.ct, "is not a DICOM series folder: --dicom-out needs the source DICOM files")
    rules = screen.RecommendationRules()
    if args.levels:
        levels = tuple(level.strip().upper() for level in args.levels.split(",") if level.strip())
        unknown = [level for level in levels if labels_mod.label_from_segment_name(level) is None]
        if unknown or not levels:
            raise InputError(None, f"--levels {args.levels!r}: give vertebra levels such as L1,T12,L2")
        rules.screening_levels = tuple(labels_mod.level_name(labels_mod.label_from_level(v)) for v in levels)
    progress(0.1, "measuring vertebrae")
    case = measure.measure_case(label_map.volume, ct, inputs=inputs, progress=progress)
    progress(0.6, "screening bone density")
    header = dict(ct.meta.get("dicom") or {}) if ct is not None else {}
    if args.kvp is not None:
        header["kvp"] = args.kvp
    if args.contrast_phase:
        # The command line spells phases with hyphens; screen's table uses "portal venous".
        header["contrast_phase"] = {"portal-venous": "portal venous"}.get(args.contrast_phase, args.contrast_phase)
    screening = screen.screen_case(label_map.volume, ct, case, rules=rules, dicom=header or None)
    progress(0.8, "writing outputs")
    from . import report_clinical

    written = report_clinical.write_screening_outputs(case, screening, label_map.volume, ct, args.out,
                                                      dicom_out=args.dicom_out, deidentify=args.deidentify,
                                                      pseudonym=args.pseudonym)
    progress.close()
    from .qc import headline
    from .screen import RESEARCH_USE

    if headline(case):
        print(headline(case))
    print(screening.recommendation.statement)
    print(f"confidence: {screening.recommendation.confidence} "
          f"({'; '.join(screening.recommendation.confidence_reasons)})")
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    print(RESEARCH_USE)
    return 0
