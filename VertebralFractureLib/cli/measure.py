"""``measure``: heights, six points, Genant grades and trabecular HU from a vertebra label map."""

from __future__ import annotations

import argparse

from VertebralFractureLib.cli.common import (
    Progress,
    add_measure_arguments,
    arguments,
    command,
    exit_code,
    print_analysis,
    request_from_args,
)


@command("measure", "measure vertebral body heights, grade fractures (Genant) from a label map")
@arguments(add_measure_arguments)
def cmd_measure(args: argparse.Namespace) -> int:
    from VertebralFractureLib import pipeline

    progress = Progress(not args.quiet)
    analysis = pipeline.analyze(request_from_args(args, screen=False, report=False), args.out, progress)
    progress.close()
    print_analysis(analysis)
    return exit_code(analysis.case)
