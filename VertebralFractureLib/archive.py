"""The studies of an archive: the cases of a folder (NIfTI, NRRD and MetaImage files, DICOM series in its
sub-folders, one case per series) or of a CSV case list, each named by one safe folder name, with the label map of
``--seg-dir`` that belongs to it and its input's size (the batch hands out the largest first)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

log = logging.getLogger(__name__)


@dataclass
class Case:
    name: str
    path: Path
    series: str | None = None
    seg: Path | None = None
    error: str | None = None
    """Why the case cannot even start (unreadable folder, bad CSV row); reported as its failure."""


# ---- finding the cases ----------------------------------------------------------------------------------------


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(path: Path) -> bool:
    lower = path.name.lower()
    return path.is_file() and lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


def dicom_series_under(folder: Path, seen: set | None = None) -> list[dict]:
    """Every DICOM series in ``folder`` and its sub-folders, as {"uid", "folder"} (a series is read from the folder
    holding its files; the worker that analyses it lists and sorts its files).

    Links are followed, but each real folder is read once (``seen``: the (device, inode) pairs already read, shared
    by the calls of one batch), so a symlink loop or two links to one series give each series once.
    """
    from VertebralFractureLib import io

    seen = set() if seen is None else seen
    series = []
    for root, directories, files in os.walk(folder, followlinks=True):
        try:
            status = os.stat(root)
        except OSError:
            directories[:] = []
            continue
        if (status.st_dev, status.st_ino) in seen:
            directories[:] = []  # a folder already read (through a link): once is enough, and a loop ends here
            continue
        seen.add((status.st_dev, status.st_ino))
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        if files:
            series.extend({"uid": uid, "folder": Path(root)} for uid in io.series_uids(Path(root)))
    return series


def safe_case_name(name: str, fallback: str) -> str:
    """A case name usable as one folder inside the output folder: path separators, ``..`` and leading dots (a CSV's
    ``../../escaped`` or ``/abs_case``) and characters other than letters, digits, ``.``, ``_``, ``-`` and spaces are
    replaced, so no case is written outside the output folder."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    cleaned = "".join(char if char.isalnum() or char in "._- " else "_" for char in "_".join(parts)).strip(" ")
    cleaned = cleaned.lstrip(".")[:120].rstrip(" .")
    return cleaned or fallback


def _distinct_names(cases: list[Case]) -> list[Case]:
    """Cases whose names differ only by the file type (``case1.nii.gz`` and ``case1.nrrd``), or by upper and lower
    case, would share one output folder: such files are named by their whole file name instead."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.name.lower(), []).append(case)
    for group in groups.values():
        if len(group) > 1:
            for case in group:
                if case.path.is_file() and case.series is None:
                    case.name = safe_case_name(case.path.name, case.name)
    taken: set[str] = set()
    for case in cases:  # what is still shared (a folder and a file name alike): numbered
        name, number = case.name, 2
        while name.lower() in taken:
            name, number = f"{case.name}-{number}", number + 1
        case.name = name
        taken.add(name.lower())
    return cases


def find_cases(source: Path) -> list[Case]:
    """Cases of an input folder or CSV list, in name order for a folder, in row order for a CSV."""
    if source.is_file() and source.suffix.lower() == ".csv":
        return _distinct_names(cases_from_csv(source))
    cases, seen_files, seen_folders = [], set(), set()
    for path in sorted(source.iterdir()):
        if path.name.startswith("."):
            continue
        if _is_image(path):
            real = path.resolve()
            if real in seen_files:
                log.warning("%s: the same file as an earlier case (a link); analysed once", path)
                continue
            seen_files.add(real)
            cases.append(Case(safe_case_name(strip_suffix(path.name), path.name), path))
        elif path.is_dir():
            try:
                series = dicom_series_under(path, seen_folders)
            except Exception as error:  # an unreadable folder is a failing case, not the end of the batch
                cases.append(Case(path.name, path, error=one_line(error)))
                continue
            if len(series) == 1:
                cases.append(Case(path.name, series[0]["folder"], series[0]["uid"]))
            for index, item in enumerate(series if len(series) > 1 else [], start=1):
                cases.append(Case(f"{path.name}-series{index}", item["folder"], item["uid"]))
    return _distinct_names(cases)


def cases_from_csv(path: Path) -> list[Case]:
    """Rows ``ct[,case][,seg][,series]``; a row without a CT is a failing case (the rest of the list runs)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "ct" not in [name.strip().lower() for name in reader.fieldnames]:
            raise InputError(path, "a case list needs a header row with a 'ct' column (and optional case, seg, "
                                   "series columns)")
        rows = [{(key or "").strip().lower(): (value or "").strip() for key, value in row.items()} for row in reader]
    cases, seen = [], set()
    for number, row in enumerate(rows, start=2):
        ct = row.get("ct", "")
        name = row.get("case") or (strip_suffix(Path(ct).name) if ct else f"row{number}")
        name = safe_case_name(name, f"row{number}")
        if name.lower() in seen:
            name = f"{name}-row{number}"
        seen.add(name.lower())
        resolve = lambda text: None if not text else (Path(text) if Path(text).is_absolute()  # noqa: E731
                                                      else path.parent / text)
        case = Case(name, resolve(ct) or path, row.get("series") or None, resolve(row.get("seg", "")))
        if not ct:
            case.error = f"{path}: row {number} has no CT path"
        cases.append(case)
    return cases


def find_label_map(seg_dir: Path, case_name: str) -> Path | None:
    """The label map in ``seg_dir`` named after the case (exactly, or followed by ``_``, ``-`` or ``.``)."""
    matches = []
    for path in sorted(seg_dir.iterdir()):
        if not path.is_file() or not path.name.lower().endswith((".seg.nrrd",) + IMAGE_SUFFIXES):
            continue
        stem = strip_suffix(path.name)
        if stem == case_name or (stem.startswith(case_name) and stem[len(case_name)] in "_-."):
            matches.append(path)
    if len(matches) > 1:
        exact = [m for m in matches if strip_suffix(m.name) == case_name]
        if len(exact) == 1:
            return exact[0]
        raise InputError(seg_dir, f"{len(matches)} label maps match case {case_name!r}: "
                                  f"{', '.join(m.name for m in matches)}")
    return matches[0] if matches else None


def input_size_bytes(case: Case) -> int:
    """Bytes of a case's input (a file, or the files of its DICOM series folder): how long it will take, roughly."""
    try:
        if case.path.is_file():
            return case.path.stat().st_size
        with os.scandir(case.path) as entries:
            return sum(entry.stat().st_size for entry in entries if entry.is_file())
    except OSError:
        return 0


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        from VertebralFractureLib.errors import os_error_line

        return os_error_line(error)
    text = " ".join(str(error).split())
    return text if text else type(error).__name__
