"""``batch`` command: every study of a folder or CSV list through the analysis pipeline, with a summary table.

Registered with the decorators of :mod:`.cli` when :func:`cli._load_command_modules` imports this module; the
Slicer batch script (``VertebralFracture/Batch/VertebralFractureBatch.py``) is a wrapper around it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from VertebralFractureLib.cli.common import LABEL_CONVENTIONS, add_grading_arguments, arguments, command


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, type=Path, metavar="FOLDER_OR_CSV",
                        help="folder of studies (NIfTI, NRRD, MetaImage files; DICOM series in sub-folders, found "
                             "at any depth) or a CSV list with a 'ct' column (optional: case, seg, series)")
    parser.add_argument("-o", "--out", "--output", dest="out", required=True, type=Path, metavar="DIR",
                        help="output folder: one sub-folder per case and summary.csv")
    parser.add_argument("--seg-dir", type=Path, help="folder of label maps matched to the cases by name")
    parser.add_argument("--labels", default="auto", choices=LABEL_CONVENTIONS,
                        help="label convention of the label maps (default: auto)")
    add_grading_arguments(parser)
    parser.add_argument("--backend", default="auto", choices=["auto", "classical", "monai", "totalsegmentator"],
                        help="segmentation backend for cases without a label map (default: auto, as for analyze)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--no-report", action="store_true",
                        help="measurements only: no screening, no report.html/pdf, no screening.json")
    parser.add_argument("--dicom-out", action="store_true", help="also write DICOM SEG and SR for DICOM studies")
    parser.add_argument("--kvp", type=float, default=None, help="tube voltage in kV for studies without a DICOM header")
    parser.add_argument("--contrast-phase", choices=["non-contrast", "arterial", "portal-venous", "unknown"],
                        default=None, help="state the contrast phase of every study")
    parser.add_argument("--resume", action="store_true",
                        help="skip cases whose results an earlier run published (rows rebuilt from their results)")
    parser.add_argument("--export-dataset", type=Path, metavar="DIR",
                        help="also append every case to a curated dataset in VerSe layout (generated subject ids; "
                             "the case -> subject link is only in the summary table)")
    parallel = parser.add_argument_group("parallel runs (Dask distributed; see docs/cohort.md)")
    parallel.add_argument("--workers", type=int, metavar="N",
                          help="run the cases on N worker processes of a Dask cluster on this machine (listening on "
                               "127.0.0.1 only); default: one case after another in this process")
    parallel.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                          help="run the cases on the workers of an existing Dask cluster (they must see the input "
                               "and output folders under the same paths)")
    parallel.add_argument("--memory-per-worker", metavar="SIZE",
                          help="memory each --workers process may use, e.g. 6GB (default: the memory available, "
                               "shared equally); a worker above it is restarted and its case handed out once more")
    parser.add_argument("--save-scene", action="store_true",
                        help="also write CASE/CASE.mrb with the review nodes (needs Slicer or slicer-core)")


@command("batch", "analyze every study of a folder or CSV list; continue past failures; summary.csv")
@arguments(add_batch_arguments)
def cmd_batch(args: argparse.Namespace) -> int:
    from VertebralFractureLib import batch

    return batch.run_batch(args)
