"""``benchmark`` command: grading against radiologists' Genant grades over a VerSe-layout folder.
Registered with the CLI's decorators when cli.py loads this module."""

from __future__ import annotations

import argparse

from VertebralFractureLib.cli.common import Progress, arguments, command


def _add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, metavar="DIR",
                        help="VerSe masks (*_seg-vert_msk.nii.gz): a flat folder, or a VerSe release "
                             "(derivatives/sub-X/ is searched)")
    parser.add_argument("--grades", required=True, metavar="TABLE",
                        help="radiologists' grades: CSV with scan (or subject), label (or level), genant_grade; "
                             "or the VerSe'19 vertebra_data.json of HealthiVert-GAN")
    parser.add_argument("--ct", metavar="DIR", help="CT volumes (*_ct.nii.gz, e.g. the release's rawdata/); "
                                                     "optional, adds trabecular HU to the measurements")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--subjects", metavar="ID,ID", default=None,
                        help="only these subjects or scans (default: every mask in --masks)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="measure N scans at a time in separate processes (default 1)")
    parser.add_argument("--include-upper-thoracic", action="store_true",
                        help="also grade T1-T3 and count them in the figures (default: T4-L5 only, as normative "
                             "morphometry covers; T1-T3 are listed as not assessed)")
    parser.add_argument("--cross-validate", action="store_true",
                        help="also fit the score threshold for grade>=1 and grade>=2 leaving one subject out and "
                             "report the pooled held-out figures beside the literature thresholds'")


@command("benchmark", "grade every subject of a VerSe folder against the radiologists' Genant grades")
@arguments(_add_benchmark_arguments)
def cmd_benchmark(args: argparse.Namespace) -> int:
    from VertebralFractureLib import benchmark

    progress = Progress(not args.quiet)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    result = benchmark.run_benchmark(args.masks, args.grades, ct_dir=args.ct, subjects=subjects,
                                     cross_validate=args.cross_validate, progress=progress,
                                     jobs=max(1, args.jobs), include_upper_thoracic=args.include_upper_thoracic)
    progress(0.97, "writing outputs")
    written = benchmark.write_outputs(result, args.out)
    progress.close()
    print(benchmark.format_summary(result.summary))
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0
