"""``report`` command: bone-density screening, referral recommendation, clinical report, DICOM SEG/SR, and
de-identified export. Registered with the CLI's decorators when cli.py loads this module."""

from __future__ import annotations

import argparse

from VertebralFractureLib.cli.common import (
    Progress,
    add_measure_arguments,
    add_report_arguments,
    arguments,
    command,
    exit_code,
    print_analysis,
    request_from_args,
)


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    add_measure_arguments(parser)
    add_report_arguments(parser)


@command("report", "bone density screening, referral recommendation, report.html/pdf, DICOM SEG/SR from a label map "
                   "(re-reporting: an analyze output's level status and T1-T3 choice are kept)")
@arguments(_add_report_arguments)
def cmd_report(args: argparse.Namespace) -> int:
    from VertebralFractureLib import pipeline

    progress = Progress(not args.quiet)
    analysis = pipeline.analyze(request_from_args(args), args.out, progress)
    progress.close()
    print_analysis(analysis)
    return exit_code(analysis.case)
