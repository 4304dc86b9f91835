"""DICOM series: discovery in a folder, header summaries, checks of slice spacing, pixel data and geometry,
reading a series into a :class:`~VertebralFractureLib.io.volumes.Volume` (LPS converted to RAS here)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io.volumes import Volume, _first_line, _sitk_to_volume, check_memory

log = logging.getLogger(__name__)




def series_uids(folder: Path) -> tuple[str, ...]:
    """The DICOM series in a folder (not its sub-folders), as GDCM identifies them: one read of every file's
    header. :func:`list_dicom_series` also lists each series' files, sorted, at the cost of a second read."""
    import SimpleITK as sitk

    # ITK prints a warning to the terminal for every folder without a series: a batch scans many such folders.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def list_dicom_series(folder: Path) -> list[dict]:
    """Series in a DICOM folder: uid, number of files, description (read with pydicom, headers only)."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = []
    for uid in series_uids(folder):
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        description = ""
        try:
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            description = str(header.get("SeriesDescription", "") or header.get("Modality", ""))
        except Exception:  # description is only informative
            pass
        series.append({"uid": uid, "files": list(files), "description": description})
    return series


def dicom_header_summary(path: str | Path) -> dict:
    """Acquisition facts later steps need (kVp, contrast, modality, manufacturer), read from one file's header."""
    import pydicom

    header = pydicom.dcmread(str(path), stop_before_pixels=True)

    def text(keyword):
        value = header.get(keyword, None)
        return None if value in (None, "") else str(value)

    kvp = header.get("KVP", None)
    return {
        "modality": text("Modality"),
        "kvp": float(kvp) if kvp not in (None, "") else None,
        "contrast_bolus_agent": text("ContrastBolusAgent"),
        "manufacturer": text("Manufacturer"),
        "series_description": text("SeriesDescription"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "rescale_type": text("RescaleType"),
        "rescale_present": "RescaleIntercept" in header and "RescaleSlope" in header,
    }


SLICE_POSITION_TOLERANCE_FRACTION = 0.01
SLICE_POSITION_TOLERANCE_MIN_MM = 0.01
"""Slice positions may differ from a uniform grid by 1 % of the spacing (at least 0.01 mm, the rounding of DICOM
decimal strings): beyond that, heights measured across slices would be off by more than a tenth of a voxel."""
_JPEG_FAMILY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
}
"""JPEG, JPEG-LS, JPEG 2000 and HTJ2K transfer syntaxes: every frame's code stream ends with the EOI/EOC marker
FFD9 (ISO/IEC 10918-1, 14495-1, 15444-1)."""


def _check_dicom_pixel_data(dataset, file: Path) -> None:
    """Refuse a file whose pixel data are missing, short, or hold a JPEG-family frame cut before its end marker.

    A cut or zero-filled compressed frame still decodes (OpenJPEG and GDCM fill the rest silently); its missing end
    marker gives it away. Damage inside a frame that keeps the markers cannot be seen: lossless JPEG 2000 carries
    no checksum.
    """
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None or not transfer_syntax.is_encapsulated:
        expected = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                    * int(dataset.BitsAllocated) // 8 * frames)
        if len(dataset.PixelData) < expected:
            raise InputError(file, f"holds {len(dataset.PixelData)} bytes of pixel data for {expected} expected "
                                   "(a truncated DICOM file)")
        return
    if str(transfer_syntax) not in _JPEG_FAMILY_SYNTAXES:
        return
    try:
        encoded = _encapsulated_frames(dataset.PixelData, frames)
    except Exception as error:  # pydicom raises ValueError or its own errors for broken encapsulation
        raise InputError(file, f"has damaged compressed pixel data ({_first_line(error)})") from None
    for index, frame in enumerate(encoded):
        end = frame.rstrip(b"\0")[-2:]
        if end != b"\xff\xd9":
            raise InputError(file, f"has a damaged compressed frame ({index + 1} of {frames}): its code stream is cut "
                                   "before its end marker, it would decode to wrong values")


def scan_dicom_folder(folder: Path) -> dict[str, object]:
    """Read every DICOM image file of a folder once with pydicom, refusing incomplete ones; headers by path.

    Runs before GDCM lists the series: a truncated file makes its scan take tens of seconds and drops the file
    from the series without a word. Files that are not DICOM, or DICOM without an image (DICOMDIR, reports),
    are skipped. The pixel data are checked (:func:`_check_dicom_pixel_data`) and dropped; headers are kept.
    """
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about a truncated file; the check below refuses it
            try:
                dataset = pydicom.dcmread(file)
            except InvalidDicomError:
                continue
            except Exception as error:  # EOFError, OSError, ValueError from a damaged file
                if _has_dicom_preamble(file):
                    raise InputError(file, f"is a damaged or truncated DICOM file ({_first_line(error)})") from None
                continue
        if "PixelData" not in dataset and (len(dataset) == 0 or "Rows" in dataset):
            # An image without its pixel data, or nothing readable after the file meta: cut short.
            raise InputError(file, "has no pixel data (a truncated or incomplete DICOM file)")
        if "Rows" not in dataset:
            continue
        _check_dicom_pixel_data(dataset, file)
        del dataset.PixelData
        headers[str(file)] = dataset
    if headers:
        first = next(iter(headers.values()))
        frames = sum(int(d.get("NumberOfFrames", 1) or 1) for d in headers.values())
        check_memory(folder, (int(first.Columns), int(first.Rows), frames), 4)
    return headers


def _has_dicom_preamble(file: Path) -> bool:
    with open(file, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _encapsulated_frames(pixel_data: bytes, frames: int) -> list[bytes]:
    """The encoded frames of encapsulated pixel data (pydicom 3, or pydicom 2.4 as Slicer bundles it)."""
    try:
        from pydicom.encaps import generate_frames
    except ImportError:
        from pydicom.encaps import generate_pixel_data_frame

        return list(generate_pixel_data_frame(pixel_data, frames))
    return list(generate_frames(pixel_data, number_of_frames=frames))


def check_dicom_series(folder: Path, files: list[str], headers: dict) -> dict:
    """Check a single-frame DICOM series before it is read, refusing what would turn a measurement silently.

    Every file must share orientation, pixel spacing and matrix; slice positions (ImagePositionPatient projected
    on the slice normal) must be distinct and uniformly spaced, with no in-plane offset between slices (gantry
    tilt). A series with a missing, duplicate or moved slice is refused: resampling it onto a uniform grid would
    not keep the geometry exact. Rescale slope/intercept must be in all files or in none. ``headers``: from
    :func:`scan_dicom_folder`. Returns {"rescale_present": bool}.
    """
    positions, orientations, grids, rescale = [], [], set(), []
    multi_frame = False
    for file in files:
        dataset = headers.get(str(file))
        if dataset is None:
            raise InputError(file, "is not a readable DICOM image file")
        multi_frame |= int(dataset.get("NumberOfFrames", 1) or 1) > 1
        rescale.append("RescaleIntercept" in dataset and "RescaleSlope" in dataset)
        if "ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset:
            positions.append([float(v) for v in dataset.ImagePositionPatient])
            orientations.append([float(v) for v in dataset.ImageOrientationPatient])
        grids.add((int(dataset.Rows), int(dataset.Columns),
                   tuple(round(float(v), 4) for v in dataset.get("PixelSpacing", []) or [])))
    if any(rescale) and not all(rescale):
        raise InputError(folder, f"{rescale.count(False)} of {len(files)} DICOM files have no RescaleIntercept/"
                                 "RescaleSlope: their values cannot be put in Hounsfield units like the others")
    if len(grids) > 1:
        raise InputError(folder, f"DICOM files differ in matrix or pixel spacing ({len(grids)} kinds): not one volume")
    if not multi_frame and len(positions) != len(files):
        raise InputError(folder, f"{len(files) - len(positions)} of {len(files)} DICOM files have no "
                                 "ImagePositionPatient/ImageOrientationPatient: slice order, spacing and the position "
                                 "in the patient cannot be checked; not one measurable volume")
    if multi_frame or len(files) < 2:
        return {"rescale_present": all(rescale)}
    orientations = np.array(orientations)
    if np.max(np.abs(orientations - orientations[0])) > 1e-4:
        raise InputError(folder, "DICOM files differ in slice orientation (ImageOrientationPatient): not one volume")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    positions = np.array(positions)
    along = positions @ normal
    order = np.argsort(along)
    along, positions = along[order], positions[order]
    names = [Path(files[i]).name for i in order]
    gaps = np.diff(along)
    spacing = float(np.median(gaps))
    tolerance = max(SLICE_POSITION_TOLERANCE_MIN_MM, SLICE_POSITION_TOLERANCE_FRACTION * spacing)
    for index in np.flatnonzero(gaps <= tolerance):
        raise InputError(folder, f"holds two files at the same slice position ({along[index]:.2f} mm along the "
                                 f"normal): {names[index]} and {names[index + 1]} (a duplicate slice)")
    for index in np.flatnonzero(np.abs(gaps - spacing) > tolerance):
        gap = float(gaps[index])
        missing = round(gap / spacing) - 1
        if missing >= 1 and abs(gap - (missing + 1) * spacing) <= tolerance:
            raise InputError(folder, f"has {missing} slice{'s' if missing > 1 else ''} missing: a gap of {gap:.2f} mm "
                                     f"after {names[index]} where the series is {spacing:.2f} mm apart")
        raise InputError(folder, f"has uneven slice spacing: {gap:.2f} mm after {names[index]} against {spacing:.2f} "
                                 "mm elsewhere; resampling onto a uniform grid would not be exact")
    in_plane = positions - np.outer(along - along[0], normal) - positions[0]
    if np.max(np.linalg.norm(in_plane, axis=1)) > tolerance:
        raise InputError(folder, "has slices shifted in-plane from one to the next (gantry tilt or a sheared stack): "
                                 "the geometry cannot be represented exactly; reconstruct it without tilt")
    return {"rescale_present": all(rescale)}


def _describe_series(series: list[dict]) -> str:
    return "; ".join(
        f"{s['uid'] or '(no UID)'} ({s['description'] or 'no description'}, {len(s['files'])} files)" for s in series
    )


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    import SimpleITK as sitk

    headers = scan_dicom_folder(folder)
    series = list_dicom_series(folder) if headers else []
    if not series:
        raise InputError(folder, "is a folder with no DICOM image series in it")
    if series_uid is not None:
        chosen = [s for s in series if s["uid"] == series_uid]
        if not chosen:
            raise InputError(folder, f"has no series {series_uid}; it has {_describe_series(series)}")
    elif len(series) > 1:
        raise InputError(
            folder, f"holds {len(series)} series, choose one with --series UID: {_describe_series(series)}"
        )
    else:
        chosen = series
    files = chosen[0]["files"]
    series_facts = check_dicom_series(folder, files, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(folder, f"DICOM series cannot be decoded ({_first_line(error)})") from None
    if image.GetDimension() == 3 and image.GetSize()[2] < 2:
        raise InputError(folder, "holds a single DICOM slice; a 3-D series is needed")
    volume = _sitk_to_volume(image, folder)
    volume.meta["dicom"] = {**dicom_header_summary(files[0]), **series_facts}
    volume.meta["dicom_files"] = [str(f) for f in files]
    return volume
