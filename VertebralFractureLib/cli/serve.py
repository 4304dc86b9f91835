"""``serve`` and ``worklist`` commands: the screening node beside a DICOM server, and its worklist.

Credentials (the server's password, a PostgreSQL password, the pseudonym key) come from the configuration file or
the environment only (see :mod:`VertebralFractureLib.serve.config`); no option takes one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from VertebralFractureLib.cli.common import arguments, command
from VertebralFractureLib.errors import InputError

CONFIG_HELP = ("TOML settings: [server] url/username/password, [worklist] database, [node] ... (see the README); "
               "the environment (VERTEBRAL_FRACTURE_*) overrides it")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--backend", choices=["auto", "classical", "monai", "totalsegmentator"], default=None,
                        help="segmentation backend (default: [node] backend, else auto)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    parser.add_argument("--node-name", default=None,
                        help="this node's name in the worklist; unique per node (default: [node] name, else the host "
                             "name)")
    parser.add_argument("--poll-interval", type=float, default=None, metavar="S",
                        help="seconds between reads of the change feed when it is idle (default 5)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder for the series being analysed (default: the system's temporary folder)")
    parser.add_argument("--once", action="store_true",
                        help="analyse what the feed holds now, then exit (a cron job instead of a service)")
    parser.add_argument("--allow-no-authentication", action="store_true", default=None,
                        help="run against a server that answers without authentication (refused otherwise)")


@command("serve", "screening node: follow an Orthanc server's new CT studies, send DICOM SEG + SR + PDF report back "
                  "into each study, keep the worklist")
@arguments(add_serve_arguments)
def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from VertebralFractureLib.serve.config import check_server_settings, load_config
    from VertebralFractureLib.serve.node import Node

    require_packages()
    config = load_config(args.config, backend=args.backend, device=args.device, node_name=args.node_name,
                         poll_interval_s=args.poll_interval,
                         work_dir=None if args.work_dir is None else str(args.work_dir),
                         allow_no_authentication=args.allow_no_authentication)
    check_server_settings(config, None if args.config is None else str(args.config))
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise InputError(args.work_dir, "is not a folder")
    if not args.quiet:
        logging.getLogger("VertebralFractureLib.serve").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    node = Node(config)
    # systemd (and docker stop) send SIGTERM: finish the study being analysed, then stop.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: node.stop_event.set())
    try:
        handled = node.run(once=args.once)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.once:
        print(f"{handled} studies analysed; worklist: {worklist_location(config.database)}")
    return 0


def require_packages() -> None:
    """The node's packages beyond the core (the ``serve`` extra): a clear error, not a traceback, when absent."""
    import importlib.util

    from VertebralFractureLib.errors import VertebralFractureError

    for module in ("requests", "highdicom"):
        if importlib.util.find_spec(module) is None:
            raise VertebralFractureError(f"the screening node needs the {module} package: "
                                         "pip install 'VertebralFracture[serve]'")


def worklist_location(url: str) -> str:
    from VertebralFractureLib.serve.worklist import redacted

    return redacted(url)


def add_worklist_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--database", metavar="URL",
                        help="SQLite file or postgresql://user@host/db (default: [worklist] database); a password "
                             "goes in the configuration file or the environment, not here")
    parser.add_argument("--status", action="append", choices=["screened", "not-assessed", "skipped", "failed"],
                        help="only rows with this status (repeatable)")
    parser.add_argument("--recommendation", action="append",
                        choices=["refer", "dxa", "consider", "none", "indeterminate"],
                        help="only rows with this recommendation (repeatable)")
    parser.add_argument("--fractured", action="store_true", help="only studies with a fracture (Genant grade >= 1)")
    review = parser.add_mutually_exclusive_group()
    review.add_argument("--unreviewed", action="store_true", help="only rows nobody marked reviewed")
    review.add_argument("--reviewed", action="store_true", help="only rows marked reviewed")
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="only studies from this date on")
    parser.add_argument("--study", metavar="UID", help="only this StudyInstanceUID")
    parser.add_argument("--patient", help="only this patient (ID or pseudonym, as the worklist shows it)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="export the rows as CSV ('-': standard output)")
    parser.add_argument("--mark-reviewed", action="append", metavar="STUDY_UID", default=[],
                        help="mark the study's row reviewed (repeatable)")
    parser.add_argument("--reviewer", help="who reviewed (default: the login name)")
    parser.add_argument("--note", help="review note stored with --mark-reviewed")


@command("worklist", "list, filter and export (CSV) the screening node's worklist; mark studies reviewed")
@arguments(add_worklist_arguments)
def cmd_worklist(args: argparse.Namespace) -> int:
    import datetime
    import getpass
    import urllib.parse

    from VertebralFractureLib.serve.config import load_config
    from VertebralFractureLib.serve.worklist import Worklist, write_csv

    if args.database and urllib.parse.urlsplit(args.database).password:
        raise InputError(None, "--database: a password on the command line is visible to every user of the machine; "
                               "put it in the configuration file or VERTEBRAL_FRACTURE_WORKLIST_PASSWORD")
    if args.since:
        try:
            datetime.date.fromisoformat(args.since)
        except ValueError:
            raise InputError(None, f"--since {args.since!r}: give a date as YYYY-MM-DD") from None
    config = load_config(args.config, database=args.database)
    worklist = Worklist(config.database, password=config.database_password, create=False)
    try:
        for study_uid in args.mark_reviewed:
            reviewer = args.reviewer or getpass.getuser()
            if worklist.mark_reviewed(study_uid, reviewer, args.note) == 0:
                raise InputError(None, f"--mark-reviewed {study_uid}: no such study in the worklist")
            print(f"marked reviewed: {study_uid} ({reviewer})", file=sys.stderr)
        rows = worklist.rows(status=[s.replace("-", " ") for s in args.status or []] or None,
                             recommendation=args.recommendation, fractured=True if args.fractured else None,
                             reviewed=True if args.reviewed else (False if args.unreviewed else None),
                             since=args.since, study_uid=args.study, patient=args.patient)
    finally:
        worklist.close()
    if args.csv is not None:
        if str(args.csv) == "-":
            write_csv(rows, sys.stdout)
        else:
            from VertebralFractureLib.io import atomic_path

            with atomic_path(args.csv) as temporary, open(temporary, "w", newline="", encoding="utf-8") as out:
                write_csv(rows, out)
            print(f"wrote {len(rows)} rows: {args.csv}", file=sys.stderr)
        return 0
    if not args.mark_reviewed or rows:
        print_rows(rows)
    return 0


def print_rows(rows: list[dict]) -> None:
    headers = ("study date", "patient", "status", "fractures", "density", "recommendation", "reviewed", "study")
    table = []
    for row in rows:
        density = ""
        if row["density_hu"] is not None:
            density = f"{row['density_level']} {row['density_hu']:.0f} HU {row['density_category'] or ''}".strip()
        table.append((row["study_date"] or "", row["patient"] or "", row["status"],
                      row["fractured_levels"] or ("none" if row["worst_grade"] == 0 else ""), density,
                      row["recommendation"] or "", "yes" if row["reviewed"] else "no", row["study_uid"]))
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    for line in [headers, *table]:
        print("  ".join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip())
    print(f"{len(table)} studies", file=sys.stderr)
