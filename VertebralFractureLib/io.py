"""Reading and writing volumes with their full geometry.

A :class:`Volume` is a voxel array indexed ``[i, j, k]`` (the file's own axis order, as nibabel gives it)
together with the 4x4 matrix that maps voxel indices to world millimetres in **RAS**
(right, anterior, superior). ITK, DICOM and NRRD store LPS; conversion happens here, once, so every other
module works in RAS. Oblique direction cosines are kept as they are.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import labels as labels_mod
from .errors import InputError

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """Voxel array ``[i, j, k]`` with its voxel-to-world matrix (``ijk_to_ras``, world in RAS millimetres)."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    path: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction_ras(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin_ras(self) -> np.ndarray:
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return LPS_TO_RAS @ self.ijk_to_ras

    def axis_codes(self) -> str:
        """Orientation letters of the i, j, k axes (e.g. "RAS", "PIR"), from the dominant direction component."""
        letters = []
        for column in self.direction_ras.T:
            axis = int(np.argmax(np.abs(column)))
            letters.append(("LR", "PA", "IS")[axis][int(column[axis] > 0)])
        return "".join(letters)

    def ijk_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel indices (N x 3, may be fractional) -> RAS mm (N x 3)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return np.einsum("ij,kj->ik", ijk, self.ijk_to_ras[:3, :3]) + self.ijk_to_ras[:3, 3]

    def world_to_ijk(self, ras: np.ndarray) -> np.ndarray:
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        inverse = self.ras_to_ijk
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def with_array(self, array: np.ndarray, **meta) -> Volume:
        """A volume on the same grid holding another array."""
        return Volume(array=array, ijk_to_ras=self.ijk_to_ras.copy(), path=self.path, meta={**self.meta, **meta})

    def same_grid(self, other: Volume, tolerance_mm: float = 1e-3) -> bool:
        return self.shape == other.shape and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance_mm)

    def bounds_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounding box of the voxel centres."""
        corners = np.array(
            [[i, j, k] for i in (0, self.shape[0] - 1) for j in (0, self.shape[1] - 1) for k in (0, self.shape[2] - 1)],
            dtype=float,
        )
        world = self.ijk_to_world(corners)
        return world.min(axis=0), world.max(axis=0)


@dataclass
class LabelMap:
    """A vertebra label map converted to VerSe ids, with the convention it was read in."""

    volume: Volume
    convention: str
    present: list[int]


def _strip_image_suffix(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return suffix
    return ""


def _sitk_to_volume(image, path: Path) -> Volume:
    import SimpleITK as sitk

    dimension = image.GetDimension()
    if dimension != 3:
        raise InputError(path, f"is a {dimension}-D image; a 3-D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed"
        )
    array_kji = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return Volume(
        array=np.ascontiguousarray(array_kji.transpose(2, 1, 0)), ijk_to_ras=LPS_TO_RAS @ ijk_to_lps, path=str(path)
    )


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(path, f"is a {array.ndim}-D image of shape {tuple(array.shape)}; a 3-D volume is needed")
    if min(array.shape) < 2:
        raise InputError(path, f"has shape {tuple(array.shape)}: a single slice, a 3-D volume is needed")
    return array


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several types for non-NIfTI content
        raise InputError(
            path, f"is not a readable NIfTI image ({type(error).__name__}: {_first_line(error)})"
        ) from None
    if len(image.shape) < 3:
        raise InputError(path, f"is a {len(image.shape)}-D image of shape {tuple(image.shape)}; a 3-D volume is needed")
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    scaled = (slope not in (None, 1) and np.isfinite(slope)) or (intercept not in (None, 0) and np.isfinite(intercept))
    check_memory(path, image.shape, 8 if scaled else image.get_data_dtype().itemsize)
    try:
        array = _read_nifti_voxels(image, path)
    except (EOFError, OSError, ValueError, zlib.error) as error:  # truncated, corrupt or failing the gzip CRC
        raise InputError(
            path, f"is truncated or corrupt: its voxel data cannot be read ({_first_line(error)})"
        ) from None
    array = _squeeze_to_3d(array, path)
    affine = image.affine.astype(float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "has an invalid voxel-to-world matrix (singular or not finite)")
    return Volume(array=array, ijk_to_ras=affine, path=str(path))


def _read_nifti_voxels(image, path: Path) -> np.ndarray:
    """The voxels of a NIfTI image; a .nii.gz is read through one gzip stream to its end, so its CRC-32 and length
    are checked (nibabel alone stops after the voxels and never reaches the checksum: a flipped bit would pass)."""
    import gzip

    import nibabel as nib

    if not path.name.lower().endswith(".gz"):
        return np.asanyarray(image.dataobj)
    with gzip.open(path, "rb") as stream:
        holder = nib.FileHolder(fileobj=stream)
        streamed = type(image).from_file_map({"header": holder, "image": holder})
        array = np.asanyarray(streamed.dataobj)
        while stream.read(1 << 20):  # the rest of the stream, then the CRC-32 and length check at its end
            pass
    return array


MEMORY_COPY_BYTES_PER_VOXEL = 8
"""Beyond the stored voxels, the pipeline holds about two float32 copies of a volume (the CT in HU and a working or
resampled copy; a label map's VerSe ids and their resampling take less)."""


def available_memory_bytes() -> int | None:
    """Memory the machine can still give (psutil if installed, else /proc/meminfo, else sysconf); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(path: str | Path, shape, itemsize: int) -> None:
    """Refuse an image whose header declares more voxels than this machine's memory holds, before reading it."""
    voxels = math.prod(int(n) for n in shape)
    needed = voxels * (int(itemsize) + MEMORY_COPY_BYTES_PER_VOXEL)
    available = available_memory_bytes()
    if available is not None and needed > available:
        size = "x".join(str(int(n)) for n in shape)
        raise InputError(path, f"declares {size} voxels: reading and measuring it needs about "
                               f"{needed / 2**30:.1f} GiB of memory, this machine has {available / 2**30:.1f} GiB "
                               "available (crop or downsample the image)")


def _itk_pixel_bytes(pixel_id: int) -> int:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize


def _read_itk_file(path: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(path, f"is not a readable image ({_first_line(error)})") from None
    check_memory(path, reader.GetSize(), _itk_pixel_bytes(reader.GetPixelID()))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(path, f"is not a readable image ({_first_line(error)})") from None
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(path, f"is a 4-D image of size {size}; a 3-D volume is needed")
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        raise InputError(path, "is a 2-D image; a 3-D volume is needed")
    return _sitk_to_volume(image, path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1].strip() if text else type(error).__name__


def list_dicom_series(folder: Path) -> list[dict]:
    """Series in a DICOM folder: uid, number of files, description (read with pydicom, headers only)."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = []
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
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
    if multi_frame or len(positions) != len(files) or len(files) < 2:
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


def _describe_series(series: list[dict]) -> str:
    return "; ".join(
        f"{s['uid'] or '(no UID)'} ({s['description'] or 'no description'}, {len(s['files'])} files)" for s in series
    )


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a 3-D image: NIfTI, NRRD, MetaImage or a DICOM series folder. Raises :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        return _read_dicom_folder(path, series_uid)
    if path.stat().st_size == 0:
        raise InputError(path, "is an empty file")
    suffix = _strip_image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in ITK_SUFFIXES or suffix == ".seg.nrrd":
        return _read_itk_file(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom_folder(path.parent, series_uid)
    raise InputError(
        path,
        "is not a supported image (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd, "
        "or a DICOM series folder)",
    )


def read_ct(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a CT volume as float32 Hounsfield units; refuses NaN/inf voxels and values that are not HU."""
    volume = read_volume(path, series_uid)
    array = volume.array
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(path, f"contains {bad} NaN or infinite voxels; a CT in Hounsfield units has none")
    if array.dtype.kind not in "iuf":
        raise InputError(path, f"has voxel type {array.dtype}, not a number type")
    volume.array = array.astype(np.float32, copy=False)
    check_ct_hounsfield(volume)
    return volume


class NotCTError(InputError):
    """The volume is not a CT in Hounsfield units (MR, raw scanner values, normalized intensities)."""


AIR_OR_FAT_MAX_HU = -200.0
"""A body CT always holds air, lung or fat (-1000, -500, -100 HU), so some voxel lies below this."""
MIN_HU_SPAN = 500.0
"""Between the 0.5th and 99.9th percentile a CT spans air or fat to bone: hundreds of HU."""
HU_SAMPLE_PER_AXIS = 64
"""The percentiles and the dense share are taken on every n-th voxel, at most this many per axis."""
DENSE_BONE_HU = 600.0
DENSE_BONE_MAX_FRACTION = 0.20
"""Only cortical bone, contrast-filled vessels and metal exceed 600 HU: a few per cent of a CT's voxels (at most
2 % in the shared CTs, a tight crop around a vertebra included). Raw stored values (HU + 1024) put all soft
tissue there (35-100 % of the voxels)."""


def check_ct_hounsfield(ct: Volume) -> None:
    """Refuse volumes that are not CT in Hounsfield units, with the reason (every command that reads a CT).

    A DICOM modality other than CT is refused outright. Otherwise the value range must look like HU: a body CT
    always holds air, lung or fat (below -200 HU), its range spans more than 500 HU, and only a small share of it is
    denser than cortical bone; MR magnitude images and CT stored without the rescale (0..4095, or HU + 1024) fail
    one of these, normalized images span a few units.
    """
    dicom = ct.meta.get("dicom") or {}
    modality = dicom.get("modality")
    if modality and modality.upper() != "CT":
        raise NotCTError(ct.path, f"is a DICOM {modality} series, not CT; the vertebra segmentation needs CT in "
                                  "Hounsfield units")
    rescale_type = (dicom.get("rescale_type") or "").upper()
    if rescale_type and rescale_type not in ("HU", "US"):
        raise NotCTError(ct.path, f"DICOM rescale type is {rescale_type!r}, not Hounsfield units (HU)")
    missing_rescale = dicom and not dicom.get("rescale_present", True)
    prefix = "has no RescaleIntercept/RescaleSlope and " if missing_rescale else ""
    array = ct.array
    sample = array[tuple(slice(None, None, -(-n // HU_SAMPLE_PER_AXIS)) for n in array.shape)]
    low, high = np.percentile(sample, [0.5, 99.9])
    minimum = float(array.min())
    if high - low < MIN_HU_SPAN:
        raise NotCTError(ct.path, f"{prefix}values span only {low:.3g}..{high:.3g}; a CT in Hounsfield units spans "
                                  "air or fat to bone (hundreds of HU): this looks like a normalized or non-CT image")
    if minimum > AIR_OR_FAT_MAX_HU:
        raise NotCTError(ct.path, f"{prefix}has no value below {minimum:.0f}: no air, lung or fat in Hounsfield units "
                                  "(-1000, -500, -100 HU), so it is not a CT in HU (an MR image, or CT values "
                                  "stored without the rescale slope/intercept?)")
    dense = float(np.count_nonzero(sample > DENSE_BONE_HU)) / sample.size
    if dense > DENSE_BONE_MAX_FRACTION:
        raise NotCTError(ct.path, f"{prefix}has {100 * dense:.0f} % of its voxels above {DENSE_BONE_HU:.0f}: in "
                                  "Hounsfield units only cortical bone, contrast and metal are that dense (a few per "
                                  "cent of a CT), so it is not a CT in HU (values stored without the rescale "
                                  "intercept, HU + 1024?)")
    if missing_rescale:
        log.warning("%s: the DICOM files have no RescaleIntercept/RescaleSlope; their values look like Hounsfield "
                    "units and are used as such", ct.path)


def _read_segmentation_nrrd(path: Path) -> tuple[Volume, dict[int, int]]:
    """Slicer .seg.nrrd: voxels plus a map from stored label value to VerSe id, from the segment names.

    Segments whose names are not a vertebra ("disc L1-L2", "T12 rib", "liver") are ignored with a warning; two
    segments naming the same level are refused. With overlapping segments slicerio returns one layer per first
    axis; the layers are flattened (a voxel two vertebra segments claim goes to the later one, with a warning).
    """
    import slicerio

    check_memory(path, _nrrd_sizes(path), 1)
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:
        raise InputError(path, f"is not a readable Slicer segmentation ({_first_line(error)})") from None
    voxels = np.asarray(segmentation["voxels"])
    segments = segmentation["segments"]
    named: dict[int, str] = {}
    ignored = []
    for segment in segments:
        name = str(segment.get("name", ""))
        verse = labels_mod.label_from_segment_name(name)
        if verse is None:
            ignored.append(name)
        elif verse in named:
            raise InputError(path, f"has two segments naming {labels_mod.level_name(verse)} ({named[verse]!r} and "
                                   f"{name!r}): rename or merge them in Slicer's Segment Editor")
        else:
            named[verse] = name
    if ignored:
        log.warning("%s: segments not named after a vertebra are ignored: %s", path.name,
                    ", ".join(repr(name) for name in ignored))
    if voxels.ndim == 4:
        layers = [voxels[index] for index in range(voxels.shape[0])]
    else:
        layers = [voxels]
    verse_array = np.zeros(layers[0].shape, dtype=np.int16)
    claimed = np.zeros(layers[0].shape, dtype=bool)
    overlap = 0
    for segment in segments:
        verse = labels_mod.label_from_segment_name(str(segment.get("name", "")))
        layer = int(segment.get("layer", 0) or 0)
        if verse is None or layer >= len(layers):
            continue
        mask = layers[layer] == int(segment["labelValue"])
        overlap += int(np.count_nonzero(mask & claimed))
        verse_array[mask] = verse
        claimed |= mask
    if overlap:
        log.warning("%s: %d voxels belong to two vertebra segments; each is counted in the later one", path.name,
                    overlap)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    volume = Volume(array=_squeeze_to_3d(verse_array, path), ijk_to_ras=LPS_TO_RAS @ ijk_to_lps, path=str(path))
    return volume, {verse: verse for verse in named}


def _nrrd_sizes(path: Path) -> list[int]:
    """Voxel counts along the spatial axes from a NRRD header (the layer axis of overlapping segments included)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as error:  # pynrrd raises NRRDError or ValueError on a bad header
        raise InputError(path, f"is not a readable Slicer segmentation ({_first_line(error)})") from None
    return [int(n) for n in header.get("sizes", [])]


def read_label_map(path: str | Path, convention: str = "auto", reference: Volume | None = None) -> LabelMap:
    """Read a vertebra label map and convert it to VerSe ids.

    ``convention`` is "auto", "verse", "totalseg_v2" or "totalseg_v1"; Slicer ``.seg.nrrd`` files are read by
    segment name ("L1", "vertebrae_L1", ...) whatever the convention. With ``reference`` (the CT) the map is
    resampled onto the reference grid by nearest neighbour when the grids differ.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.name.lower().endswith(".seg.nrrd"):
        volume, mapping = _read_segmentation_nrrd(path)
        if not mapping:
            raise InputError(
                path, "has no segment named after a vertebra (expected names such as 'L1' or 'vertebrae_L1')"
            )
        lookup = np.zeros(int(volume.array.max(initial=0)) + 1, dtype=np.int16)
        for stored, verse in mapping.items():
            if stored < len(lookup):
                lookup[stored] = verse
        verse_array = lookup[volume.array.astype(np.int64)]
        used = "segment names"
    else:
        volume = read_volume(path)
        array = volume.array
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)):
                raise InputError(path, "label map contains NaN or infinite values")
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise InputError(
                    path, "label map holds non-integer values; it looks like an intensity image, not a label map"
                )
        elif array.dtype.kind not in "iub":
            raise InputError(path, f"label map has voxel type {array.dtype}, not integers")
        if array.min(initial=0) < 0:
            raise InputError(path, "label map holds negative values; it looks like an intensity image")
        if array.max(initial=0) > 65535:
            raise InputError(path, "label map holds values above 65535; it looks like an intensity image")
        # Integer labels of the smallest type that holds them: counting and lookups stay fast on large maps.
        array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16, copy=False)
        present_raw = present_labels(array)
        if not present_raw:
            raise InputError(path, "label map is empty (every voxel is 0)")
        if len(present_raw) > 256:
            raise InputError(
                path, f"holds {len(present_raw)} distinct values; it looks like an intensity image, not a label map"
            )
        try:
            used = labels_mod.decide_convention(label_extents(volume.with_array(array)), convention)
        except labels_mod.ConventionError as error:
            raise InputError(path, str(error)) from None
        if convention == "auto":
            log.info("%s: label convention decided as %s", path.name, used)
        verse_array = labels_mod.to_verse(array, used)
    present = present_labels(verse_array)
    if not any(labels_mod.is_vertebra(v) for v in present):
        raise InputError(
            path, f"label map has no vertebra labels in the {used} convention (choose another with --labels)"
        )
    label_volume = volume.with_array(verse_array.astype(np.int16))
    if reference is not None and not label_volume.same_grid(reference):
        check_overlap(reference, label_volume)
        label_volume = resample_labels_to(label_volume, reference)
        present = present_labels(label_volume.array)
        if not any(labels_mod.is_vertebra(v) for v in present):
            raise InputError(
                path,
                f"label map does not overlap the CT {reference.path} in space "
                "(no vertebra voxel falls inside the CT's field of view)",
            )
    return LabelMap(volume=label_volume, convention=used, present=present)


def label_extents(volume: Volume) -> dict[int, labels_mod.LabelExtent]:
    """Voxel count, centroid (RAS mm) and edge contact of every non-zero label.

    One histogram of labels per voxel plane along each axis (linear time, no index arrays): the counts per plane
    give the centroid's voxel coordinates and whether a label reaches the first or last plane.
    """
    array = volume.array
    size = int(array.max(initial=0)) + 1
    centroid_ijk = np.zeros((3, size))
    touches = np.zeros(size, dtype=bool)
    counts = np.zeros(size, dtype=np.int64)
    for axis in range(3):
        # A view with the axis first; ravel("K") copies each plane in memory order, fast for C and Fortran order.
        planes = np.stack([np.bincount(plane.ravel("K"), minlength=size) for plane in np.moveaxis(array, axis, 0)])
        counts = planes.sum(axis=0)
        centroid_ijk[axis] = (np.arange(planes.shape[0]) @ planes) / np.maximum(counts, 1)
        touches |= (planes[0] > 0) | (planes[-1] > 0)
    centroids = volume.ijk_to_world(centroid_ijk.T)
    return {
        int(label): labels_mod.LabelExtent(int(counts[label]), tuple(float(v) for v in centroids[label]),
                                           bool(touches[label]))
        for label in np.flatnonzero(counts) if label != 0
    }


def present_labels(array: np.ndarray) -> list[int]:
    """Sorted non-zero labels of a non-negative integer array (a histogram: linear time, unlike sorting)."""
    counts = np.bincount(array.ravel(), minlength=1)
    return [int(v) for v in np.flatnonzero(counts) if v != 0]


def resample_labels_to(labels: Volume, reference: Volume) -> Volume:
    """Nearest-neighbour resampling of a label volume onto the reference grid (world RAS matched)."""
    from scipy import ndimage

    reference_to_label = labels.ras_to_ijk @ reference.ijk_to_ras
    resampled = ndimage.affine_transform(
        labels.array,
        reference_to_label[:3, :3],
        offset=reference_to_label[:3, 3],
        output_shape=reference.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    return reference.with_array(resampled.astype(labels.array.dtype), resampled_from=labels.path)


def check_overlap(ct: Volume, labels: Volume) -> None:
    """Raise if the label map's bounding box does not intersect the CT's (before any resampling)."""
    ct_low, ct_high = ct.bounds_ras()
    label_low, label_high = labels.bounds_ras()
    if np.any(label_low > ct_high + 1) or np.any(label_high < ct_low - 1):
        raise InputError(labels.path, f"label map and CT {ct.path} do not overlap in space")


@contextlib.contextmanager
def atomic_path(destination: str | Path):
    """Yield a temporary path beside ``destination`` and rename it into place only if the block succeeds.

    The temporary name keeps the destination's suffixes, so format-by-extension writers (nibabel, matplotlib)
    behave as for the real name. Nothing half-written is ever left under the destination's name.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name.split('.')[0]}-", suffix=suffix, dir=destination.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp creates the file readable by its owner only; give it the permissions any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomic(destination: str | Path, text: str) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_nifti(volume: Volume, destination: str | Path) -> None:
    """Write a volume as NIfTI (RAS affine as sform and qform), atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.array, volume.ijk_to_ras)
    image.set_sform(volume.ijk_to_ras, code=1)
    image.set_qform(volume.ijk_to_ras, code=1)
    with atomic_path(destination) as temporary:
        nib.save(image, str(temporary))
