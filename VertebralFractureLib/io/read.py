"""Reading any supported input by its kind: a CT (NIfTI, NRRD, MetaImage or a DICOM series folder) in Hounsfield
units, and a vertebra label map in one of the label conventions (VerSe, TotalSegmentator v1/v2, Slicer segment
names)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.io.dicom import _read_dicom_folder
from VertebralFractureLib.io.labels import label_boxes, label_extents, present_labels
from VertebralFractureLib.io.volumes import (
    ITK_SUFFIXES,
    LPS_TO_RAS,
    NIFTI_SUFFIXES,
    LabelMap,
    Volume,
    _first_line,
    _read_itk_file,
    _read_nifti,
    _squeeze_to_3d,
    _strip_image_suffix,
    check_ct_hounsfield,
    check_labels_on_bone,
    check_memory,
    check_overlap,
    resample_labels_to,
)

log = logging.getLogger(__name__)




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
        return _read_nifti(path)[0]
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


def _read_segmentation_nrrd(path: Path, segment_levels: dict[str, int | None] | None = None
                            ) -> tuple[Volume, dict[int, int], list[str]]:
    """Slicer .seg.nrrd: voxels plus a map from stored label value to VerSe id, from the segment names; and the
    warnings of what was left out.

    ``segment_levels`` ({segment name or id, lower case: VerSe id or None}, from ``--segment-level``) names the
    level of a segment explicitly. Otherwise a segment named after one level is that level; a segment whose name
    says it is something else ("disc L1-L2", "T12 rib", "liver") is left out with a warning; a segment without a
    name, or with a level and a word not understood ("L1 fractured"), is refused, and so are two segments naming
    the same level or sharing one stored value (their voxels cannot be told apart): a vertebra must never vanish
    silently. With overlapping segments slicerio returns one layer per first axis; the layers are flattened (a
    voxel two vertebra segments claim goes to the later one, with a warning).
    """
    import slicerio

    explicit = segment_levels or {}
    check_memory(path, _nrrd_sizes(path), 1)
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:
        raise InputError(path, f"is not a readable Slicer segmentation ({_first_line(error)})") from None
    voxels = np.asarray(segmentation["voxels"])
    segments = segmentation["segments"]
    named: dict[int, str] = {}
    levels: list[int | None] = []
    ignored = []
    for segment in segments:
        name = str(segment.get("name", "") or "").strip()
        identifier = str(segment.get("id", "") or "").strip()
        shown = repr(name) if name else f"{identifier or 'a segment'} (no name)"
        if name.lower() in explicit or identifier.lower() in explicit:
            verse = explicit.get(name.lower(), explicit.get(identifier.lower()))
            if verse is None:
                ignored.append(shown)
        elif not name:
            raise InputError(path, f"segment {identifier or '(no id)'} has no name: name it after its level in "
                                   f"Slicer, or say which level it is with --segment-level '{identifier}=L1' (or "
                                   f"'{identifier}=none' to leave it out)")
        else:
            verse = labels_mod.label_from_segment_name(name)
            if verse is None:
                if not labels_mod.names_other_structure(name):
                    raise InputError(path, f"segment {name!r} is not named after one vertebra level: rename it in "
                                           f"Slicer, or say which level it is with --segment-level '{name}=L1' (or "
                                           f"'{name}=none' to leave it out)")
                ignored.append(shown)
        if verse is not None and verse in named:
            raise InputError(path, f"has two segments naming {labels_mod.level_name(verse)} ({named[verse]!r} and "
                                   f"{name!r}): rename or merge them in Slicer's Segment Editor")
        if verse is not None:
            named[verse] = name or identifier
        levels.append(verse)
    stored: dict[tuple[int, int], tuple[str, bool]] = {}
    for segment, verse in zip(segments, levels):
        key = (int(segment.get("layer", 0) or 0), int(segment["labelValue"]))
        name = str(segment.get("name", "") or segment.get("id", ""))
        if key in stored and (verse is not None or stored[key][1]):
            raise InputError(path, f"segments {stored[key][0]!r} and {name!r} share one stored value ({key[1]} on "
                                   f"layer {key[0]}): their voxels cannot be told apart; export the segmentation "
                                   "again from Slicer (one value per segment)")
        stored.setdefault(key, (name, verse is not None))
    warnings = []
    if ignored:
        warnings.append(f"{path.name}: segments not named after a vertebra were left out: {', '.join(ignored)}")
    if voxels.ndim == 4:
        layers = [voxels[index] for index in range(voxels.shape[0])]
    else:
        layers = [voxels]
    verse_array = np.zeros(layers[0].shape, dtype=np.int16)
    claimed = np.zeros(layers[0].shape, dtype=bool)
    overlap = 0
    for segment, verse in zip(segments, levels):
        layer = int(segment.get("layer", 0) or 0)
        if verse is None or layer >= len(layers):
            continue
        mask = layers[layer] == int(segment["labelValue"])
        overlap += int(np.count_nonzero(mask & claimed))
        verse_array[mask] = verse
        claimed |= mask
    if overlap:
        warnings.append(f"{path.name}: {overlap} voxels belong to two vertebra segments; each is counted in the "
                        "later one")
    for warning in warnings:
        log.warning("%s", warning)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    volume = Volume(array=_squeeze_to_3d(verse_array, path), ijk_to_ras=LPS_TO_RAS @ ijk_to_lps, path=str(path))
    return volume, {verse: verse for verse in named}, warnings


def _nrrd_sizes(path: Path) -> list[int]:
    """Voxel counts along the spatial axes from a NRRD header (the layer axis of overlapping segments included)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as error:  # pynrrd raises NRRDError or ValueError on a bad header
        raise InputError(path, f"is not a readable Slicer segmentation ({_first_line(error)})") from None
    return [int(n) for n in header.get("sizes", [])]


def read_label_map(path: str | Path, convention: str = "auto", reference: Volume | None = None,
                   segment_levels: dict[str, int | None] | None = None) -> LabelMap:
    """Read a vertebra label map and convert it to VerSe ids.

    ``convention`` is "auto", "verse", "totalseg_v2" or "totalseg_v1"; Slicer ``.seg.nrrd`` files are read by
    segment name ("L1", "vertebrae_L1", ...) whatever the convention, or by ``segment_levels`` (see
    :func:`_read_segmentation_nrrd`). With ``reference`` (the CT) the map is resampled onto the reference grid by
    nearest neighbour when the grids differ.
    """
    path = Path(path)
    warnings: list[str] = []
    stored_file = boxes = None
    if not path.exists():
        raise InputError(path, "does not exist")
    if segment_levels and not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(path, "--segment-level names the segments of a Slicer .seg.nrrd; this is a plain label map")
    if path.name.lower().endswith(".seg.nrrd"):
        volume, mapping, warnings = _read_segmentation_nrrd(path, segment_levels)
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
        present = present_labels(verse_array)
    else:
        if _strip_image_suffix(path) == ".nii.gz" and path.is_file() and path.stat().st_size:
            volume, stored_file = _read_nifti(path, keep_file=True)
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
        largest = array.max(initial=0)
        if largest > 65535:
            raise InputError(path, "label map holds values above 65535; it looks like an intensity image")
        if array.dtype.kind not in "iu" or array.dtype.itemsize > 2:
            # Integer labels of the smallest type that holds them: boxes and lookups stay fast on large maps. Maps
            # stored as 8- or 16-bit integers are used as they are (no copy).
            array = array.astype(np.uint8 if largest < 256 else np.uint16)
        boxes = label_boxes(array)
        present_raw = present_labels(array, boxes)
        if not present_raw:
            raise InputError(path, "label map is empty (every voxel is 0)")
        if len(present_raw) > 256:
            raise InputError(
                path, f"holds {len(present_raw)} distinct values; it looks like an intensity image, not a label map"
            )
        try:
            used = labels_mod.decide_convention(label_extents(volume.with_array(array), boxes), convention)
        except labels_mod.ConventionError as error:
            raise InputError(path, str(error)) from None
        if convention == "auto":
            log.info("%s: label convention decided as %s", path.name, used)
        verse_array = labels_mod.to_verse(array, used, present_raw)
        if verse_array is not array:
            stored_file = boxes = None  # relabelled: the file and the boxes hold other values
        present = labels_mod.verse_ids(present_raw, used)
    if not any(labels_mod.is_vertebra(v) for v in present):
        raise InputError(
            path, f"label map has no vertebra labels in the {used} convention (choose another with --labels)"
        )
    label_volume = volume.with_array(verse_array.astype(np.int16, copy=False))
    if reference is not None and not label_volume.same_grid(reference):
        check_overlap(reference, label_volume)
        label_volume = resample_labels_to(label_volume, reference)
        stored_file = boxes = None
        present = present_labels(label_volume.array)
        if not any(labels_mod.is_vertebra(v) for v in present):
            raise InputError(
                path,
                f"label map does not overlap the CT {reference.path} in space "
                "(no vertebra voxel falls inside the CT's field of view)",
            )
    if reference is not None:
        check_labels_on_bone(reference, label_volume, path)
    return LabelMap(volume=label_volume, convention=used, present=present, warnings=warnings, stored_file=stored_file,
                    boxes=boxes)
