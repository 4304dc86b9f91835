"""Adapters between MRML nodes and the Lib's volumes and results; the review rules they apply are Slicer-free, in
:mod:`.review` (and :mod:`.renumber`).

The only module of the Lib that imports ``slicer`` (MRML core: in 3D Slicer, or the PyPI package ``slicer-core``
outside it). No Qt: the Slicer module's widget and the tests drive the same logic.

Geometry. ``slicer.util.arrayFromVolume`` returns voxels in **KJI** order; the Lib's :class:`~.io.Volume` holds
them in **IJK** order with the voxel-to-world matrix ``ijk_to_ras`` (``GetIJKToRASMatrix``, times the node's
linear parent transform when it has one). Every point here is in world **RAS** millimetres, as in the scene.

One analysed case is a set of nodes held together by node references from a **case table** node:

- the CT volume node (``VertebralFracture.Volume``);
- a segmentation node with one segment per vertebra, named by level ("L1") with a fixed colour per level
  (``VertebralFracture.Segmentation``);
- three markups line nodes per vertebra, "L1 Ha", "L1 Hm", "L1 Hp", whose end points are the six morphometry
  points (superior point first) and whose lengths, shown in the views, are the heights
  (``VertebralFracture.HeightLine``);
- a text node with the patient summary (``VertebralFracture.Summary``);
- the table node itself: one row per vertebra, plus the whole :class:`~.results.CaseResult` as JSON in its
  ``VertebralFracture.CaseResult`` attribute (automatic values, overrides, reviewed flags, level history).

Screening (bone density, recommendation) and the clinical report: :meth:`VertebralFractureCase.write_report`
(or :func:`write_screening_report`) screens the case **as reviewed** (grades in force: the reviewer's overrides)
and writes ``report.html``/``report.pdf``/``screening.json`` and, for a CT loaded from DICOM, DICOM SEG + SR; the
screening result is kept as JSON in the table's ``VertebralFracture.Screening`` attribute, with the grades it saw.

All of it is ordinary MRML, so saving the scene (.mrb) saves the review and loading it restores it
(:func:`find_cases`).

Kept whole: the one module that imports ``slicer``; keeping every MRML adapter here keeps that boundary to one
file (everything Slicer-free lives in the review rules and the Lib below).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from VertebralFractureLib.curate import (  # also offered here, for Slicer scripts
    export_verse_case,
    next_subject_id,
    verse_centroids,
)
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.io import Volume
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry import measure as measure_mod
from VertebralFractureLib.results import HEIGHT_NAMES, POINT_NAMES, CaseResult, VertebraResult
from VertebralFractureLib.slicer import review
from VertebralFractureLib.slicer.review import (
    grades_in_force,
    heights_from_points,
    level_color,
    level_of,
    regrade,
    summary_text,
)

log = logging.getLogger(__name__)

ATTRIBUTE_PREFIX = "VertebralFracture."
ROLE_ATTRIBUTE = ATTRIBUTE_PREFIX + "Role"
CASE_ATTRIBUTE = ATTRIBUTE_PREFIX + "CaseResult"
LABEL_ATTRIBUTE = ATTRIBUTE_PREFIX + "Label"
HEIGHT_ATTRIBUTE = ATTRIBUTE_PREFIX + "Height"
FOLDER_ATTRIBUTE = ATTRIBUTE_PREFIX + "Folder"
VOLUME_REFERENCE = ATTRIBUTE_PREFIX + "Volume"
SEGMENTATION_REFERENCE = ATTRIBUTE_PREFIX + "Segmentation"
SUMMARY_REFERENCE = ATTRIBUTE_PREFIX + "Summary"
LINE_REFERENCE = ATTRIBUTE_PREFIX + "HeightLine"
CASE_ROLE = "case"
SCREENING_ATTRIBUTE = ATTRIBUTE_PREFIX + "Screening"
# A short random id made once per case and saved with the scene: the suffix of the case's own output folder.
CASE_ID_ATTRIBUTE = ATTRIBUTE_PREFIX + "CaseId"
CASE_ID_LENGTH = 8
"""Hex digits of the case id: two cases of one reports folder share a folder name with odds of 1 in 16**8."""
FOLDER_NAME_MAX_CHARS = 40
"""Characters kept from a volume name or pseudonym in a case folder's name."""
# The terminology of a vertebra segment, in Slicer's serialized form (vtkSlicerTerminologiesModuleLogic::
# SerializeTerminologyEntry: context~category~type~type modifier~anatomic context~region~region modifier, each code as
# scheme^value^meaning): the same SNOMED CT codes the DICOM SEG output uses (category CID 7150, type CID 7603).
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
# Set by Slicer's DICOM scalar volume plugin on the volumes it loads: the SOP Instance UIDs of the source images.
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"

HEIGHT_ABBREVIATIONS = {"anterior": "Ha", "middle": "Hm", "posterior": "Hp"}
POINT_ABBREVIATIONS = {"superior": "s", "inferior": "i"}

TABLE_COLUMNS = (
    # (column name, kind, unit, description)
    ("Level", "string", "", "vertebra level (VerSe naming)"),
    ("Label", "int", "", "VerSe label id"),
    ("Ha", "double", "mm", "anterior height"),
    ("Hm", "double", "mm", "middle height"),
    ("Hp", "double", "mm", "posterior height"),
    ("Ha/Hp", "double", "", "anterior to posterior height ratio (wedge)"),
    ("Hm/Hp", "double", "", "middle to posterior height ratio (biconcave)"),
    ("Hp/expected", "double", "", "posterior height against the one expected from the neighbours (crush)"),
    ("Height loss", "double", "", "largest height loss graded (0..1)"),
    ("Grade", "int", "", "Genant grade in force: the reviewer's override, else the automatic grade (empty: not "
                         "graded)"),
    ("Auto grade", "int", "", "automatic Genant grade (empty: not graded)"),
    ("Grade override", "int", "", "reviewer's Genant grade (empty: none)"),
    ("Morphology", "string", "", "morphology in force"),
    ("Auto morphology", "string", "", "automatic morphology"),
    ("Morphology override", "string", "", "reviewer's morphology (empty: none)"),
    ("Trabecular HU", "double", "HU", "median attenuation of the trabecular bone"),
    ("Reviewed", "bool", "", "ticked when a reviewer has checked this vertebra"),
    ("Status", "string", "", "complete, or why the vertebra is not graded"),
)


# --------------------------------------------------------------------------------------------------------------
# Scene set-up outside the Slicer application


def register_segmentation_converters() -> None:
    """Register the labelmap <-> surface conversion rules (the Segmentations module does this inside Slicer).

    Without them slicer-core cannot create an empty binary-labelmap segment. Registering twice is harmless: the
    factory replaces a rule of the same name.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {factory.GetConverterRules()[i].GetName() for i in range(len(factory.GetConverterRules()))} \
        if hasattr(factory, "GetConverterRules") else set()
    for rule_class in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                       slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        rule = rule_class()
        if rule.GetName() not in registered:
            factory.RegisterConverterRule(rule)


@dataclass
class SceneContext:
    """A scene with the logic objects MRML core needs to read, write and interact (kept alive together)."""

    scene: object
    application_logic: object
    markups_logic: object
    cache_folder: str


CACHE_FOLDER_PREFIX = "VertebralFracture-cache-"
_OWNED_CACHE_FOLDERS: set[str] = set()
"""Cache folders :func:`new_scene` made whose scene still lives."""


def _remove_cache_folder(folder: str) -> None:
    _OWNED_CACHE_FOLDERS.discard(folder)
    shutil.rmtree(folder, ignore_errors=True)


@atexit.register
def _remove_remaining_cache_folders() -> None:
    for folder in list(_OWNED_CACHE_FOLDERS):
        _remove_cache_folder(folder)


def new_scene(cache_folder: str | None = None) -> SceneContext:
    """A fresh MRML scene usable without the Slicer application (scripts, tests, batch under plain Python).

    Inside Slicer use ``slicer.mrmlScene`` instead. The data I/O and cache managers are what
    ``vtkMRMLScene.ReadFromMRB`` needs to unpack a bundle. The cache folder made here (``VertebralFracture-cache-*`` in
    the temporary folder; none when ``cache_folder`` is given) is removed when the scene is deleted, or at exit.
    """
    register_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLScene(scene)
    if cache_folder is None:
        # Ours to remove: when the scene is deleted (its last reference dropped), else when Python exits.
        cache_folder = tempfile.mkdtemp(prefix=CACHE_FOLDER_PREFIX)
        _OWNED_CACHE_FOLDERS.add(cache_folder)
        scene.AddObserver(vtk.vtkCommand.DeleteEvent, lambda *_args, folder=cache_folder: _remove_cache_folder(folder))
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_folder)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    scene.SetCacheManager(cache)
    return SceneContext(scene=scene, application_logic=application_logic, markups_logic=markups_logic,
                        cache_folder=cache_folder)


# --------------------------------------------------------------------------------------------------------------
# Volumes


def _node_to_world(node) -> np.ndarray:
    """4x4 from the node's local coordinates to world RAS (identity without a parent transform)."""
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise ValueError(f"{node.GetName()}: its parent transform is not linear; harden the transform first")
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(volume_node) -> Volume:
    """A volume node as a :class:`Volume`: voxels reordered KJI -> IJK, ``ijk_to_ras`` in world RAS."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("the volume node holds no image data")
    array_kji = slicer.util.arrayFromVolume(volume_node)
    if array_kji.ndim != 3:
        raise ValueError(f"{volume_node.GetName()}: a scalar 3-D volume is needed, not shape {array_kji.shape}")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _node_to_world(volume_node) @ slicer.util.arrayFromVTKMatrix(matrix)
    return Volume(array=np.ascontiguousarray(array_kji.transpose(2, 1, 0)), ijk_to_ras=ijk_to_ras,
                  path=volume_node.GetName(), meta={"node_id": volume_node.GetID()})


def update_node_from_volume(volume_node, volume: Volume) -> None:
    """Set a volume node's voxels and geometry from a :class:`Volume` (IJK -> KJI, ``ijk_to_ras`` as given)."""
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    volume_node.Modified()


def add_volume_node(scene, volume: Volume, name: str, label_map: bool = False):
    """Add a scalar (or label map) volume node holding ``volume``."""
    node_class = "vtkMRMLLabelMapVolumeNode" if label_map else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, name)
    update_node_from_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def load_volume_node(scene, path: str | Path, name: str | None = None, label_map: bool = False):
    """Read a volume file into a new node through a storage node (works without ``slicer.app``)."""
    path = Path(path)
    node_class = "vtkMRMLLabelMapVolumeNode" if label_map else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if label_map:
        storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise ValueError(f"{path}: cannot be read as a volume")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def load_dicom_series_node(scene, files, name: str | None = None):
    """Read a DICOM series into a new volume node the way Slicer's DICOM module does (outside Slicer: scripts, tests).

    The archetype storage node gets the whole file list (given one file, ITK would guess the series and its slice
    spacing from the folder), and the node gets the ``DICOM.instanceUIDs`` attribute the DICOM plugin sets, so
    the report can find its source images (:func:`dicom_files_of_volume`). ``files`` in slice order
    (``io.list_dicom_series`` gives them so).
    """
    files = [str(f) for f in files]
    if not files:
        raise InputError(None, "no DICOM files given")
    uids = [_instance_uid(path) for path in files]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or Path(files[0]).parent.name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(files[0])
    storage.ResetFileNameList()
    for path in files:
        storage.AddFileName(path)
    storage.SetSingleFile(False)
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(files[0], "the DICOM series cannot be read as a volume")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.SetAttribute(DICOM_UIDS_ATTRIBUTE, " ".join(uids))
    node.CreateDefaultDisplayNodes()
    return node


def _instance_uid(path: str) -> str:
    """SOP Instance UID of a DICOM file; the file meta's copy where an anonymiser blanked the data set's."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises several types on corrupt files
        raise InputError(path, f"is not a readable DICOM image ({error})") from None
    meta = getattr(dataset, "file_meta", None)
    uid = str(dataset.get("SOPInstanceUID", "") or "") or \
        (str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta is not None else "")
    if not uid:
        raise InputError(path, "has no SOP Instance UID")
    return uid


def dicom_files_of_volume(volume_node, dicom_database=None) -> list[str]:
    """The source DICOM files of a volume loaded from a DICOM series, in the node's order; [] for other volumes.

    Slicer's DICOM module leaves the SOP Instance UIDs in the ``DICOM.instanceUIDs`` attribute; the files come from
    the DICOM database (``slicer.dicomDatabase.fileForInstance``), else (no database open, as with MRML core outside
    Slicer, or a series the database does not hold) from the node's storage node when its files are those
    instances.
    """
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return []
    database = dicom_database if dicom_database is not None else getattr(slicer, "dicomDatabase", None)
    name = volume_node.GetName()
    missing = []
    if database is not None and database.isOpen:
        files = [database.fileForInstance(uid) for uid in uids]
        missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
        if not missing:
            return list(files)
    storage = volume_node.GetStorageNode()
    stored = [storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames())] \
        if storage is not None and hasattr(storage, "GetNumberOfFileNames") else []
    if len(stored) == len(uids) and all(os.path.isfile(path) for path in stored):
        try:
            by_uid = {_instance_uid(path): path for path in stored}
        except InputError:  # not DICOM after all: the error below says what to do
            by_uid = {}
        if all(uid in by_uid for uid in uids):
            return [by_uid[uid] for uid in uids]
    if missing:
        raise InputError(name, f"{len(missing)} of its {len(uids)} DICOM images are not in the DICOM database "
                               f"(first: {missing[0]}); import the series again, or give its files (dicom_files)")
    raise InputError(name, "was loaded from DICOM but its source files cannot be found (no DICOM database open); "
                           "give the series' files (dicom_files)")


# --------------------------------------------------------------------------------------------------------------
# Segmentations


def _segments(segmentation_node) -> list[tuple[str, object]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i))
            for i in range(segmentation.GetNumberOfSegments())]


def vertebra_segments(segmentation_node) -> dict[int, str]:
    """VerSe id -> segment id, read from segment names ("L1", "vertebrae_L1", "L1 vertebra", "sacrum").

    Segments that name no vertebra (organs, ribs) are ignored; two segments naming one level is an error.
    """
    found: dict[int, str] = {}
    for segment_id, segment in _segments(segmentation_node):
        label = labels_mod.label_from_segment_name(segment.GetName())
        if label is None:
            continue
        if label in found:
            raise ValueError(f"segments {found[label]!r} and {segment_id!r} of {segmentation_node.GetName()} both "
                             f"name {labels_mod.level_name(label)}; rename one")
        found[label] = segment_id
    return found


def labels_from_segmentation(segmentation_node, reference_volume_node) -> Volume:
    """The vertebra segments as a VerSe-id label :class:`Volume` on the reference volume's grid."""
    mapping = vertebra_segments(segmentation_node)
    if not mapping:
        raise ValueError(f"{segmentation_node.GetName()}: no segment is named after a vertebra "
                         "(expected names such as 'L1' or 'vertebrae_L1')")
    order = labels_mod.neighbours_in_order(mapping)
    segment_ids = vtk.vtkStringArray()
    for label in order:
        segment_ids.InsertNextValue(mapping[label])
    scene = segmentation_node.GetScene()
    colour_nodes_before = {scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode").GetID()
                           for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))}
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__VertebralFracture_export__")
    try:
        # Export writes value i + 1 for the i-th segment id given; it is mapped back to VerSe ids below.
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, segment_ids, labelmap_node, reference_volume_node):
            raise ValueError(f"{segmentation_node.GetName()}: its segments cannot be exported to a label map")
        exported = volume_from_node(labelmap_node)
    finally:
        display = labelmap_node.GetDisplayNode()
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap_node)
        # The export makes a colour table for the temporary label map; it would pile up in the scene.
        for index in reversed(range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))):
            node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
            if node.GetID() not in colour_nodes_before:
                scene.RemoveNode(node)
    lookup = np.zeros(len(order) + 1, dtype=np.int16)
    lookup[1:] = order
    values = np.clip(exported.array.astype(np.int64), 0, len(order))
    return exported.with_array(lookup[values], source=segmentation_node.GetName())


def _oriented_image(mask: np.ndarray, offset_ijk, ijk_to_ras: np.ndarray):
    """A binary ``vtkOrientedImageData`` for ``mask`` (IJK, cropped), placed at ``offset_ijk`` of the grid."""
    image = slicer.vtkOrientedImageData()
    i0, j0, k0 = (int(v) for v in offset_ijk)
    ni, nj, nk = mask.shape
    image.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    scalars[:] = mask.transpose(2, 1, 0).astype(np.uint8).ravel()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return image


def terminology_entry(label: int) -> str:
    """Slicer's terminology of the vertebra segment with VerSe id ``label`` (SNOMED CT, as in the DICOM SEG); "" for a
    level without a standard code (L6, T13, sacrum)."""
    level = labels_mod.level_name(label)
    if level not in labels_mod.VERTEBRA_SCT:
        return ""
    category_value, category_meaning = labels_mod.ANATOMICAL_STRUCTURE_SCT
    type_value, type_meaning = labels_mod.VERTEBRA_SCT[level]
    return (f"{TERMINOLOGY_CONTEXT}~SCT^{category_value}^{category_meaning}~SCT^{type_value}^{type_meaning}~^^~"
            f"{ANATOMIC_CONTEXT}~^^~^^")


def _name_segment(segment, label: int) -> None:
    """Name, colour, VerSe-id tag and standard terminology of a vertebra segment: all follow its level."""
    segment.SetName(labels_mod.level_name(label))
    segment.SetColor(*level_color(label))
    segment.SetTag(LABEL_ATTRIBUTE, str(label))
    terminology = terminology_entry(label)
    if terminology:
        segment.SetTerminology(terminology)
    else:
        segment.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())


def fill_segmentation_from_labels(segmentation_node, labels: Volume, reference_volume_node=None) -> dict[int, str]:
    """Replace every segment of ``segmentation_node`` by one segment per VerSe id in ``labels``.

    Segments are named by level with :func:`level_color` colours and share one labelmap layer (they do not
    overlap), so the .seg.nrrd stays a 3-D file. Returns VerSe id -> segment id.
    """
    from scipy import ndimage

    segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    array = np.clip(labels.array, 0, None).astype(np.int32, copy=False)
    objects = ndimage.find_objects(array)
    present = [label for label in range(1, len(objects) + 1) if objects[label - 1] is not None
               and label in labels_mod.CONVENTION_TO_VERSE[labels_mod.VERSE]]
    mapping = {}
    for label in labels_mod.neighbours_in_order(present):
        box = objects[label - 1]
        mask = array[box] == label
        image = _oriented_image(mask, [s.start for s in box], labels.ijk_to_ras)
        name = labels_mod.level_name(label)
        segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(image, name, level_color(label))
        _name_segment(segmentation.GetSegment(segment_id), label)
        mapping[label] = segment_id
    segmentation.CollapseBinaryLabelmaps(False)
    return mapping


def update_segment_from_mask(segmentation_node, level, mask: Volume) -> None:
    """Replace one vertebra segment's voxels by a binary mask (what a Segment Editor edit does), by level name."""
    label = level_of(level)
    segment_id = vertebra_segments(segmentation_node).get(label)
    if segment_id is None:
        raise KeyError(f"{segmentation_node.GetName()} has no segment for {labels_mod.level_name(label)}")
    image = _oriented_image(np.asarray(mask.array) > 0, (0, 0, 0), mask.ijk_to_ras)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


# --------------------------------------------------------------------------------------------------------------
# Review state


class VertebralFractureCase:
    """One analysed CT in a scene and the review rules on it (see the module docstring for the nodes).

    Create with :meth:`create` (measures), :meth:`from_table_node` (after loading a scene) or :func:`find_cases`.
    Call :meth:`start_observing` to let dragged points update the table at once; the Slicer widget does.
    """

    def __init__(self, table_node):
        self.table_node = table_node
        self.scene = table_node.GetScene()
        self.case = CaseResult.from_dict(json.loads(table_node.GetAttribute(CASE_ATTRIBUTE) or "{}"))
        self._observations: list[tuple[object, int]] = []
        self._updating = False
        self.listeners: list = []
        """Callables ``listener(case)`` run after every change (the widget refreshes its panel)."""

    # ---- creation -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, volume_node, segmentation_node=None, labels: Volume | None = None,
               case: CaseResult | None = None, name: str | None = None, progress=None,
               volume_is_ct: bool = True, include_upper_thoracic: bool = False) -> VertebralFractureCase:
        """Measure and grade a CT volume node and build the case's nodes.

        The vertebrae come from ``labels`` (a VerSe-id label volume, e.g. from a segmentation backend) or from
        ``segmentation_node`` (segments named after levels: Segment Editor, TotalSegmentator); that node is left
        as it is and a new segmentation node is made. ``case`` skips measuring (results computed elsewhere, its
        grading rules recorded in it). ``volume_is_ct=False`` treats the volume node as a reference grid only (no
        Hounsfield units to read). ``include_upper_thoracic`` grades T1-T3 too, now and in every re-grade.
        """
        scene = volume_node.GetScene()
        ct = volume_from_node(volume_node)
        if labels is None:
            if segmentation_node is None:
                raise ValueError("give a segmentation node or a label volume (or run a segmentation backend first)")
            labels = labels_from_segmentation(segmentation_node, volume_node)
        elif not labels.same_grid(ct):
            from VertebralFractureLib.io import resample_labels_to

            labels = resample_labels_to(labels, ct)
        if case is None:
            inputs = {"ct": volume_node.GetName(),
                      "seg": segmentation_node.GetName() if segmentation_node is not None else labels.path or None,
                      "labels": "segment names" if segmentation_node is not None else "verse",
                      "include_upper_thoracic": bool(include_upper_thoracic)}
            case = measure_mod.measure_case(labels, ct if volume_is_ct else None, inputs=inputs, progress=progress)
            from VertebralFractureLib.pipeline import finish_case

            finish_case(case, labels, ct if volume_is_ct else None, "given",
                        [f"levels as named in {inputs['seg'] or 'the given label map'}"], "given", True)
        case.inputs.setdefault("volume_is_ct", bool(volume_is_ct))
        base = name or volume_node.GetName() or "CT"
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} vertebrae table"))
        table_node.SetAttribute(ROLE_ATTRIBUTE, CASE_ROLE)
        table_node.SetNodeReferenceID(VOLUME_REFERENCE, volume_node.GetID())
        output_segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                      scene.GenerateUniqueName(f"{base} vertebrae"))
        fill_segmentation_from_labels(output_segmentation, labels, volume_node)
        table_node.SetNodeReferenceID(SEGMENTATION_REFERENCE, output_segmentation.GetID())
        summary_node = scene.AddNewNodeByClass("vtkMRMLTextNode", scene.GenerateUniqueName(f"{base} summary"))
        table_node.SetNodeReferenceID(SUMMARY_REFERENCE, summary_node.GetID())
        # One Data-module folder per case; a second case of the same CT gets the table's unique name in its own.
        unique = table_node.GetName() == f"{base} vertebrae table"
        table_node.SetAttribute(FOLDER_ATTRIBUTE, f"{base} review" if unique else f"{table_node.GetName()} review")
        self = cls(table_node)
        self.case = case
        _place_in_folder(scene, [table_node, output_segmentation, summary_node], self.folder_name)
        self._rebuild_lines()
        self._publish()
        log.info("%s: %d vertebrae measured", base, len(case.vertebrae))
        return self

    @classmethod
    def from_table_node(cls, table_node) -> VertebralFractureCase:
        """The case whose hub is ``table_node`` (e.g. after loading a scene); points are read from the lines."""
        if table_node.GetAttribute(ROLE_ATTRIBUTE) != CASE_ROLE:
            raise ValueError(f"{table_node.GetName()} is not a VertebralFracture case table")
        self = cls(table_node)
        self.update_from_points()
        return self

    # ---- nodes ------------------------------------------------------------------------------------------------

    @property
    def volume_node(self):
        return self.table_node.GetNodeReference(VOLUME_REFERENCE)

    @property
    def segmentation_node(self):
        return self.table_node.GetNodeReference(SEGMENTATION_REFERENCE)

    @property
    def summary_node(self):
        return self.table_node.GetNodeReference(SUMMARY_REFERENCE)

    def line_nodes(self, level=None) -> list:
        nodes = [self.table_node.GetNthNodeReference(LINE_REFERENCE, i)
                 for i in range(self.table_node.GetNumberOfNodeReferences(LINE_REFERENCE))]
        nodes = [n for n in nodes if n is not None]
        if level is None:
            return nodes
        label = level_of(level)
        return [n for n in nodes if n.GetAttribute(LABEL_ATTRIBUTE) == str(label)]

    def line_node(self, level, height: str):
        for node in self.line_nodes(level):
            if node.GetAttribute(HEIGHT_ATTRIBUTE) == height:
                return node
        raise KeyError(f"no {height} height line for {level}")

    @property
    def folder_name(self) -> str:
        """Subject-hierarchy folder of the case's nodes (e.g. "CT review")."""
        return self.table_node.GetAttribute(FOLDER_ATTRIBUTE) or f"{self.table_node.GetName()} review"

    def vertebra(self, level) -> VertebraResult:
        return self.case.vertebra(level_of(level))

    def nodes(self) -> list:
        """Every node of the case (for saving, showing, or removing it)."""
        return [n for n in (self.table_node, self.segmentation_node, self.summary_node) if n is not None] + \
            self.line_nodes()

    def _rebuild_lines(self) -> None:
        was_observing = bool(self._observations)
        self.stop_observing()
        for node in self.line_nodes():
            _remove_with_display_nodes(self.scene, node)
        self.table_node.RemoveNodeReferenceIDs(LINE_REFERENCE)
        for vertebra in self.case.vertebrae:
            if not vertebra.points_ras:
                continue
            for height in HEIGHT_NAMES:
                node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
                node.SetAttribute(HEIGHT_ATTRIBUTE, height)
                top = vertebra.points_ras[f"superior_{height}"]
                bottom = vertebra.points_ras[f"inferior_{height}"]
                node.AddControlPoint(vtk.vtkVector3d(*top), "")
                node.AddControlPoint(vtk.vtkVector3d(*bottom), "")
                # Points may be dragged but not added or deleted: each line is exactly one height.
                node.SetFixedNumberOfControlPoints(True)
                node.CreateDefaultDisplayNodes()
                self._name_line(node, vertebra.label, height)
                self.table_node.AddNodeReferenceID(LINE_REFERENCE, node.GetID())
        review_folder = _place_in_folder(self.scene, [self.table_node], self.folder_name)
        _place_in_folder(self.scene, self.line_nodes(), "height lines", review_folder)
        if was_observing:
            self.start_observing()

    @staticmethod
    def _name_line(node, label: int, height: str) -> None:
        level = labels_mod.level_name(label)
        abbreviation = HEIGHT_ABBREVIATIONS[height]
        node.SetName(f"{level} {abbreviation}")
        node.SetAttribute(LABEL_ATTRIBUTE, str(label))
        for index, side in enumerate(("superior", "inferior")):
            node.SetNthControlPointLabel(index, f"{level} {POINT_ABBREVIATIONS[side]}{height[0]}")
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*level_color(label))
            display.SetColor(*level_color(label))
            # The line's name and length ("L1 Ha 24.0 mm") say it all; six point labels per vertebra would clutter.
            display.SetPointLabelsVisibility(False)
            display.SetPropertiesLabelVisibility(True)

    # ---- observation ------------------------------------------------------------------------------------------

    def start_observing(self) -> None:
        """Recompute heights and grades whenever a line's point moves (drag in a view, or from Python)."""
        self.stop_observing()
        for node in self.line_nodes():
            for event in (slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                          slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent):
                tag = node.AddObserver(event, self._on_point_modified)
                self._observations.append((node, tag))

    def stop_observing(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    def _on_point_modified(self, caller, event) -> None:
        if self._updating:
            return
        label = caller.GetAttribute(LABEL_ATTRIBUTE)
        if label is not None:
            self.update_from_points(int(label))

    # ---- review rules -----------------------------------------------------------------------------------------

    def points_from_lines(self, level) -> dict[str, list[float]]:
        """The six morphometry points (world RAS) of one vertebra as the lines hold them now."""
        points = {}
        for height in HEIGHT_NAMES:
            node = self.line_node(level, height)
            for index, side in enumerate(("superior", "inferior")):
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(index, position)
                points[f"{side}_{height}"] = [float(v) for v in position]
        return points

    def update_from_points(self, level=None) -> None:
        """Read points from the lines (one vertebra, or all), recompute heights, re-grade the case, publish."""
        targets = [self.vertebra(level)] if level is not None else \
            [v for v in self.case.vertebrae if v.points_ras and self.line_nodes(v.label)]
        changed = False
        for vertebra in targets:
            if not self.line_nodes(vertebra.label):
                continue
            points = self.points_from_lines(vertebra.label)
            if points != vertebra.points_ras:
                vertebra.points_ras = points
                vertebra.heights_mm = heights_from_points(points)
                changed = True
        if changed or level is None:
            regrade(self.case)
        self._publish()

    def set_grade_override(self, level, grade: int | None) -> None:
        """Reviewer's Genant grade (0-3), or None to go back to the automatic grade (which stays recorded)."""
        review.set_grade_override(self.case, level, grade)
        self._publish()

    def set_morphology_override(self, level, morphology: str | None) -> None:
        review.set_morphology_override(self.case, level, morphology)
        self._publish()

    def set_reviewed(self, level, reviewed: bool = True) -> None:
        self.vertebra(level).reviewed = bool(reviewed)
        self._publish()

    def set_level(self, level, new_level) -> None:
        """Fix the level count: the vertebra now called ``level`` is ``new_level``; every vertebra renumbers.

        Segments, height lines and rows are renamed together; grades are recomputed (the reference neighbours
        keep their places, only the names change). The sacrum and coccyx, when segmented, are anatomical anchors
        and keep their names, so a shift that would land a vertebra on them is refused.
        """
        old_label, new_label = level_of(level), level_of(new_level)
        mapping = review.level_mapping(self.case, old_label, new_label)
        if not mapping:
            return
        segments = vertebra_segments(self.segmentation_node)
        fixed = {label for label in segments if label not in mapping}
        clash = fixed & set(mapping.values())
        if clash:
            raise ValueError(f"the segmentation already has {', '.join(labels_mod.level_name(c) for c in clash)} "
                             "outside the measured vertebrae; renumbering would duplicate it")
        self._updating = True
        try:
            segmentation = self.segmentation_node.GetSegmentation()
            for old, segment_id in segments.items():
                if old in mapping:
                    _name_segment(segmentation.GetSegment(segment_id), mapping[old])
            for node in self.line_nodes():
                old = int(node.GetAttribute(LABEL_ATTRIBUTE))
                self._name_line(node, mapping.get(old, old), node.GetAttribute(HEIGHT_ATTRIBUTE))
            review.apply_level_mapping(self.case, mapping, old_label, new_label)
        finally:
            self._updating = False
        self._publish()
        log.info("levels renumbered: %s is now %s", labels_mod.level_name(old_label), labels_mod.level_name(new_label))

    def remeasure(self, progress=None) -> None:
        """Measure again from the (edited) segmentation; overrides and reviewed flags stay with their levels.

        Points return to their automatic positions on the new masks: after a segmentation edit the old points
        no longer sit on the endplates.
        """
        labels = labels_from_segmentation(self.segmentation_node, self.volume_node)
        ct = volume_from_node(self.volume_node) if self.case.inputs.get("volume_is_ct", True) else None
        review = {v.label: (v.grade_override, v.morphology_override, v.reviewed) for v in self.case.vertebrae}
        inputs = dict(self.case.inputs)
        new_case = measure_mod.measure_case(labels, ct, inputs=inputs, progress=progress)
        # How the segmentation and its level names came about stays with the case: the quality gate needs it, so a
        # re-measure never resurrects a finding it withheld (the reviewer's overrides stay in force).
        for name in ("levels_status", "level_evidence", "segmentation_backend", "full_vertebrae", "level_corrections"):
            if hasattr(self.case, name):
                setattr(new_case, name, getattr(self.case, name))
        for vertebra in new_case.vertebrae:
            if vertebra.label in review:
                vertebra.grade_override, vertebra.morphology_override, vertebra.reviewed = review[vertebra.label]
        from VertebralFractureLib.morphometry import qc

        qc.apply_quality_gate(new_case, labels, ct)
        self._updating = True
        try:
            segmentation = self.segmentation_node.GetSegmentation()
            for label, segment_id in vertebra_segments(self.segmentation_node).items():
                _name_segment(segmentation.GetSegment(segment_id), label)
            self.case = new_case
            self._rebuild_lines()
        finally:
            self._updating = False
        self._publish()
        log.info("re-measured %d vertebrae from %s", len(new_case.vertebrae), self.segmentation_node.GetName())

    # ---- publishing to MRML -----------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Write the case into the table (rows + JSON attribute) and the summary text node; notify listeners."""
        self.table_node.SetAttribute(CASE_ATTRIBUTE, json.dumps(self.case.to_dict()))
        _fill_table(self.table_node, self.case)
        summary = self.summary_node
        if summary is not None:
            summary.SetText(self.summary())
        for listener in list(self.listeners):
            listener(self)

    def summary(self) -> str:
        """The patient summary, with the screening recommendation once the case has been screened."""
        text = summary_text(self.case)
        stored = self.screening()
        if stored is None:
            return text
        recommendation = stored["screening"].get("recommendation") or {}
        lines = [text, f"Recommendation: {recommendation.get('statement', '')}".rstrip(),
                 f"Confidence: {recommendation.get('confidence', 'n/a')}"]
        if not self.screening_current():
            lines.append("(grades changed since the screening: write the report again)")
        return "\n".join(lines)

    # ---- screening and clinical report ------------------------------------------------------------------------

    def screening(self) -> dict | None:
        """The last screening of this case as stored in the scene: {"screening": ScreeningResult.to_dict(),
        "grades": {level: [grade, morphology]} it saw, "written": {name: path}}; None before any."""
        text = self.table_node.GetAttribute(SCREENING_ATTRIBUTE)
        return json.loads(text) if text else None

    def screening_current(self) -> bool:
        """True when the stored screening saw the grades and morphologies in force now."""
        stored = self.screening()
        return stored is not None and stored.get("grades") == grades_in_force(self.case)

    @property
    def case_id(self) -> str:
        """The case's short random id, made on first use and kept in the table (so saved with the scene)."""
        case_id = self.table_node.GetAttribute(CASE_ID_ATTRIBUTE)
        if not case_id:
            taken = {node.GetAttribute(CASE_ID_ATTRIBUTE) for node in _case_table_nodes(self.scene)}
            case_id = uuid.uuid4().hex[:CASE_ID_LENGTH]
            while case_id in taken:
                case_id = uuid.uuid4().hex[:CASE_ID_LENGTH]
            self.table_node.SetAttribute(CASE_ID_ATTRIBUTE, case_id)
        return case_id

    def report_folder(self, reports_folder: str | Path, deidentify: bool = False, pseudonym: str = "") -> Path:
        """This case's own output folder under ``reports_folder``: ``NAME-CASEID``, never another case's.

        NAME is the CT volume's name, or for a de-identified export the pseudonym ("deidentified" without one), so
        that no patient detail reaches a shared folder's name; CASEID (:attr:`case_id`) keeps two cases of the same
        name apart and one case in the same folder every time. Publishing replaces a folder's contents as one set
        (see :mod:`.outputs`), so one folder per case is what keeps one case's report from replacing another's.
        """
        if deidentify:
            name = pseudonym.strip() or "deidentified"
        else:
            volume_node = self.volume_node
            name = volume_node.GetName() if volume_node is not None else self.table_node.GetName()
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:FOLDER_NAME_MAX_CHARS] or "case"
        return Path(reports_folder) / f"{name}-{self.case_id}"

    def write_report(self, out_dir: str | Path, dicom_out: bool = False, deidentify: bool = False,
                     pseudonym: str = "", dicom_files: list | None = None, kvp: float | None = None,
                     contrast_phase: str | None = None) -> dict[str, Path]:
        """Screen the case as reviewed and write the clinical report; returns {name: path} of the files written.

        ``report.html``, ``report.pdf``, ``screening.json``, ``results.json``, ``vertebrae.csv``, ``overview.png``
        and, with ``dicom_out``, DICOM SEG + SR referencing the source series; ``deidentify`` writes the
        de-identified export instead (see ``report_clinical.write_screening_outputs``). Grades are those in force
        (the reviewer's overrides), heights those of the lines now. The source DICOM files come from
        ``dicom_files`` or from the volume node (:func:`dicom_files_of_volume`); with them the report's header
        shows the patient and study, and kVp and contrast agent are read from the DICOM header (``kvp`` and
        ``contrast_phase``, e.g. "portal venous", state them for other volumes or override them).

        ``out_dir`` is replaced as one set: give each case its own (:meth:`report_folder`). The files are written in
        this process, or in a fresh one when packages it imported changed on disk since (:mod:`.reporting`: Slicer
        5.10 after installing highdicom), so no restart is needed.
        """
        from VertebralFractureLib.screening import recommend as screen
        from VertebralFractureLib.slicer import reporting

        volume_node = self.volume_node
        if volume_node is None or self.segmentation_node is None:
            raise ValueError(f"{self.table_node.GetName()}: the case's CT or segmentation node is missing")
        # Phase names as screen knows them ("non-contrast", "portal venous"); "portal-venous" (CLI spelling) too.
        phases = {name.replace("-", " "): name for name in screen.DensityThresholds().contrast_offset_hu}
        phase = phases.get((contrast_phase or "").strip().lower().replace("-", " "))
        if contrast_phase and phase is None:
            raise ValueError(f"unknown contrast phase {contrast_phase!r}; one of {', '.join(phases.values())}")
        # Points moved while nothing observed the lines (a script without start_observing) count too.
        self.update_from_points()
        if dicom_files:
            files = [str(f) for f in dicom_files]
        else:
            try:
                files = dicom_files_of_volume(volume_node)
            except InputError:
                if dicom_out:
                    raise
                # Without its source files the report has no patient header, which is no reason to refuse it.
                log.warning("%s: source DICOM files not found; the report has no patient header", volume_node.GetName())
                files = []
        if dicom_out and not files:
            raise InputError(volume_node.GetName(), "is not a DICOM series (loaded from a file such as NIfTI or "
                                                    "NRRD): DICOM SEG and SR need the source DICOM images; load the "
                                                    "series with the DICOM module, or give its files")
        volume_is_ct = self.case.inputs.get("volume_is_ct", True)
        ct = volume_from_node(volume_node)
        labels = labels_from_segmentation(self.segmentation_node, volume_node)
        # In this process, or in a fresh one when packages changed on disk since they were imported here (Slicer 5.10
        # after installing highdicom: see .reporting); the screening fills the case's trabecular fields.
        screened, screening, written = reporting.report(
            self.case, ct, labels, out_dir, dicom_files=files, kvp=kvp, contrast_phase=phase, volume_is_ct=volume_is_ct,
            dicom_out=dicom_out, deidentify=deidentify, pseudonym=pseudonym)
        self.case = screened
        stored = {"screening": screening, "grades": grades_in_force(self.case),
                  "written": {name: str(path) for name, path in written.items()}}
        self.table_node.SetAttribute(SCREENING_ATTRIBUTE, json.dumps(stored))
        self._publish()
        log.info("%s: report written to %s (%s)", volume_node.GetName(), out_dir,
                 screening["recommendation"]["statement"])
        return written

    # ---- export -----------------------------------------------------------------------------------------------

    def export_training_data(self, folder: str | Path, subject: str | None = None) -> dict[str, Path]:
        """Write this case in VerSe layout under ``folder`` (see :func:`export_verse_case`)."""
        labels = labels_from_segmentation(self.segmentation_node, self.volume_node)
        return export_verse_case(folder, volume_from_node(self.volume_node), labels, self.case, subject)


def write_screening_report(case_or_table_node, out_dir: str | Path, dicom_out: bool = False,
                           deidentify: bool = False, pseudonym: str = "", **options) -> dict[str, Path]:
    """Screen a case (a :class:`VertebralFractureCase` or its table node) and write its clinical report.

    See :meth:`VertebralFractureCase.write_report` for ``options`` (``dicom_files``, ``kvp``, ``contrast_phase``).
    """
    case = case_or_table_node if isinstance(case_or_table_node, VertebralFractureCase) else \
        VertebralFractureCase.from_table_node(case_or_table_node)
    return case.write_report(out_dir, dicom_out=dicom_out, deidentify=deidentify, pseudonym=pseudonym, **options)


def _place_in_folder(scene, nodes, folder_name: str, parent_folder: int | None = None) -> int:
    """Put nodes under a subject-hierarchy folder (the Data module's tree), creating it once; returns its item.

    Inside Slicer every data node already has an item; with MRML core alone the item is made here.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return 0
    parent = hierarchy.GetSceneItemID() if parent_folder is None else parent_folder
    folder = hierarchy.GetItemChildWithName(parent, folder_name)
    if not folder:
        folder = hierarchy.CreateFolderItem(parent, folder_name)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:
            hierarchy.CreateItem(folder, node)
    return folder


def _remove_with_display_nodes(scene, node) -> None:
    """Remove a displayable node and its display nodes (RemoveNode alone leaves them in the scene)."""
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node) if hierarchy is not None else 0
    if item:
        # The item first: with MRML core alone (no subject-hierarchy logic) removing only the node leaves a stale
        # item whose cache entry later clashes with a new node ("DataNodeCache inconsistency").
        hierarchy.RemoveItem(item, False, False)
    if node.GetScene() is not None:
        scene.RemoveNode(node)
    for display in displays:
        if display is not None:
            scene.RemoveNode(display)


TABLE_DIGITS = {"Ha": 1, "Hm": 1, "Hp": 1, "Ha/Hp": 3, "Hm/Hp": 3, "Hp/expected": 3, "Height loss": 3,
                "Trabecular HU": 0}
"""Decimals shown per number column (heights to 0.1 mm, ratios to 0.001, HU whole)."""


def _fill_table(table_node, case: CaseResult) -> None:
    """One row per vertebra. Numbers are shown as text with their decimals, and a missing one as an empty cell:
    Slicer's table view prints a number column's missing value as "nan" or a sentinel such as -1, which a reader
    takes for a value. :func:`table_rows` gives them back as numbers (None when missing)."""
    table = vtk.vtkTable()
    arrays = {}
    for name, _kind, _unit, _description in TABLE_COLUMNS:
        # Label is always there: a number column. Reviewed: a check box in the table view.
        array = {"Label": vtk.vtkIntArray, "Reviewed": vtk.vtkBitArray}.get(name, vtk.vtkStringArray)()
        array.SetName(name)
        arrays[name] = array
        table.AddColumn(array)

    for vertebra in case.vertebrae:
        heights = vertebra.heights_mm or {}
        ratios = vertebra.ratios or {}
        row = {
            "Level": vertebra.level, "Label": vertebra.label,
            "Ha": heights.get("anterior"), "Hm": heights.get("middle"), "Hp": heights.get("posterior"),
            "Ha/Hp": ratios.get("wedge"), "Hm/Hp": ratios.get("biconcavity"), "Hp/expected": ratios.get("crush"),
            "Height loss": vertebra.height_loss,
            "Grade": vertebra.final_grade, "Auto grade": vertebra.genant_grade,
            "Grade override": vertebra.grade_override,
            "Morphology": vertebra.final_morphology or "",
            "Auto morphology": vertebra.morphology or "",
            "Morphology override": vertebra.morphology_override or "",
            "Trabecular HU": vertebra.trabecular_hu,
            "Reviewed": int(vertebra.reviewed),
            "Status": "complete" if vertebra.complete else f"not graded: {vertebra.incomplete_reason}",
        }
        for name, value in row.items():
            array = arrays[name]
            if not isinstance(array, vtk.vtkStringArray):
                array.InsertNextValue(value)
            elif value is None:
                array.InsertNextValue("")
            elif name in TABLE_DIGITS:
                array.InsertNextValue(f"{float(value):.{TABLE_DIGITS[name]}f}")
            else:
                array.InsertNextValue(str(value))
    table_node.SetAndObserveTable(table)
    for name, _kind, unit, description in TABLE_COLUMNS:
        if unit:
            table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnDescription(name, description)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    # Read-only in the table view: the rows are rewritten from the case on every change, so an edit typed into a
    # cell would be silently lost; review goes through the module's controls and the height lines.
    table_node.SetLocked(True)
    table_node.Modified()


def table_rows(table_node) -> list[dict]:
    """The case table as a list of dicts (column name -> value: numbers as int or float, None where the cell is
    empty; Reviewed as 0 or 1), for checks and scripts."""
    kinds = {name: kind for name, kind, _unit, _description in TABLE_COLUMNS}
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        values = {}
        for column in range(table.GetNumberOfColumns()):
            array = table.GetColumn(column)
            name = array.GetName()
            value = array.GetValue(row)
            if isinstance(array, vtk.vtkStringArray) and kinds.get(name) in ("int", "double"):
                value = None if value == "" else (int(value) if kinds[name] == "int" else float(value))
            values[name] = value
        rows.append(values)
    return rows


def _case_table_nodes(scene) -> list:
    nodes = [scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
             for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    return [node for node in nodes
            if node.GetAttribute(ROLE_ATTRIBUTE) == CASE_ROLE and node.GetAttribute(CASE_ATTRIBUTE)]


def find_cases(scene) -> list[VertebralFractureCase]:
    """Every VertebralFracture case in a scene (e.g. after loading a .mrb), review state restored."""
    return [VertebralFractureCase.from_table_node(node) for node in _case_table_nodes(scene)]


def cancel_job_with_scene(scene, job, volume_node=None):
    """Cancel ``job`` (anything with ``cancel()``: a segmentation job) when ``scene`` closes or ``volume_node``, the
    volume it analyses, leaves the scene, so that no result arrives for a CT that is gone. Returns a function that
    stops watching (call it when the job ends)."""
    tags = []

    def stop():
        while tags:
            scene.RemoveObserver(tags.pop())

    def cancel(reason: str) -> None:
        log.info("cancelling the segmentation: %s", reason)
        stop()
        job.cancel()

    tags.append(scene.AddObserver(scene.StartCloseEvent, lambda *_args: cancel("the scene closes")))
    if volume_node is not None:
        tags.append(scene.AddObserver(scene.NodeRemovedEvent, lambda *_args: None if scene.IsNodePresent(volume_node)
                                      else cancel(f"{volume_node.GetName()} was removed from the scene")))
    return stop


# --------------------------------------------------------------------------------------------------------------
# Scene files


def save_scene(scene, path: str | Path) -> Path:
    """Save the whole scene as a Medical Reality Bundle (.mrb), atomically: volumes, segmentation, lines, table.

    In Slicer the File > Save dialog does the same; this serves scripts and tests.
    """
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"{path}: a scene bundle file name ends with .mrb")
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary folder beside the target, holding the bundle under its final name (the name of the scene inside
    # the bundle comes from the file name), renamed into place only when complete.
    staging = Path(tempfile.mkdtemp(prefix=".mrb-", dir=path.parent))
    try:
        temporary = staging / path.name
        if not scene.WriteToMRB(str(temporary)):
            raise OSError(f"{path}: the scene could not be written")
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_scene(scene, path: str | Path) -> list[VertebralFractureCase]:
    """Load a .mrb into ``scene`` (replacing what it holds) and return its cases with their review state."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene file")
    if not scene.ReadFromMRB(str(path), True):
        raise OSError(f"{path}: not a readable scene bundle")
    return find_cases(scene)


__all__ = [
    "POINT_NAMES", "SceneContext", "VertebralFractureCase", "add_volume_node", "dicom_files_of_volume",
    "export_verse_case", "fill_segmentation_from_labels", "find_cases", "heights_from_points",
    "labels_from_segmentation", "level_color", "load_dicom_series_node", "load_scene", "load_volume_node",
    "new_scene", "next_subject_id", "register_segmentation_converters", "save_scene", "summary_text", "table_rows",
    "update_node_from_volume", "update_segment_from_mask", "verse_centroids", "volume_from_node",
    "write_screening_report",
]
