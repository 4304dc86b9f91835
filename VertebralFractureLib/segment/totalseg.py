"""TotalSegmentator backend: runs the ``totalsegmentator`` package when the user has installed it.

TotalSegmentator (Wasserthal et al., Radiol AI 2023;5:e230024) is not a dependency of this project: it pins its own
PyTorch and nnU-Net versions and downloads its weights, with its own licence notes (the ``total`` task needs no
licence key). This backend calls its Python API on the CT in memory (task ``total``, only the vertebra and sacrum
classes via ``roi_subset``), names the labels with the class names TotalSegmentator writes into its output
(falling back to :data:`VertebralFractureLib.io.labels.TOTALSEG_V2`), maps them to VerSe ids and puts the result on
the CT's grid. Supported: TotalSegmentator 2.x, task ``total`` (tested end to end with
:data:`TESTED_VERSION`, its nnU-Net predictor and small weights in the layout of the real ones).

Resolution: its 3 mm model (``fast=True``) for CTs whose slices are at least :data:`FAST_MODEL_MIN_SLICE_MM` apart
(the 1.5 mm model has no craniocaudal detail to add there), its 1.5 mm model otherwise; ``fast`` forces either.
Missing weights are fetched first with TotalSegmentator's own ``download_pretrained_weights`` (so a failed download
is reported as one), or refused with ``allow_download=False`` (``--no-download``); either way the message names the
command that fetches them.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import NoVertebraeError, VertebralFractureError
from VertebralFractureLib.io import Volume, resample_labels_to
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.segment import ProgressCallback, SegmentationOutput, environment, register_backend

log = logging.getLogger(__name__)

TESTED_VERSION = "2.18.0"
"""The TotalSegmentator release the end-to-end tests install (Testing/requirements-totalsegmentator.txt)."""

# TotalSegmentator v2 ``total`` class names of the spine, cranial to caudal.
VERTEBRA_CLASSES = ([f"vertebrae_C{i}" for i in range(1, 8)] + [f"vertebrae_T{i}" for i in range(1, 13)]
                    + [f"vertebrae_L{i}" for i in range(1, 6)] + ["vertebrae_S1", "sacrum"])
# nnU-Net data sets TotalSegmentator fetches for task "total" with roi_subset (totalsegmentator/python_api.py): the
# 1.5 mm model's five parts 291-295 (vertebrae in 292; all five folders must exist) or the 3 mm model 297, plus the
# 6 mm model 298 it runs first to crop to the requested structures.
WEIGHTS_DATASETS = {False: (291, 292, 293, 294, 295, 298), True: (297, 298)}
WEIGHTS_FOLDERS = {
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
"""Folder of each data set in TotalSegmentator's weights folder (its map_tasks_config.TASK_ID_WEIGHTS_CONFIGS; read
from there when it is installed). TotalSegmentator downloads a data set when this folder does not exist."""
FAST_MODEL_MIN_SLICE_MM = 2.5
"""Use the 3 mm model when the CT's coarsest voxel spacing is at least this (e.g. 3 mm slices): halfway between the
two models' grids (1.5 and 3 mm), so a CT finer than 2.5 mm along every axis gets the 1.5 mm model."""
NNUNET_TRAINERS = {
    "nnUNetTrainer_4000epochs_NoMirroring":
        "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring",
    "nnUNetTrainerNoMirroring": "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring",
}
"""The nnU-Net trainer classes the ``total`` task's checkpoints name (297/298 and 291-295), and their modules."""


def install_hint() -> str:
    return ("the totalsegmentator backend needs the TotalSegmentator package, which is not installed: "
            f"{environment.totalsegmentator_install_hint()} (or use --backend monai / classical)")


def _import_api():
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError:
        raise VertebralFractureError(install_hint()) from None
    return totalsegmentator


def weights_dir() -> Path:
    """TotalSegmentator's weights folder (its own ``get_weights_dir`` when available)."""
    try:
        from totalsegmentator.config import get_weights_dir

        return Path(get_weights_dir())
    except ImportError:
        if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
            return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
        home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
        return home / "nnunet" / "results"


def weights_folders() -> dict[int, str]:
    """Data set id -> folder name, from the installed TotalSegmentator when it has the table, else ours."""
    try:
        from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    except ImportError:
        return dict(WEIGHTS_FOLDERS)
    return {dataset: str(TASK_ID_WEIGHTS_CONFIGS.get(dataset, {}).get("foldername") or folder)
            for dataset, folder in WEIGHTS_FOLDERS.items()}


def missing_weights(fast: bool) -> list[int]:
    """nnU-Net data sets of the chosen model whose folder is not in TotalSegmentator's weights folder (the test
    TotalSegmentator itself makes before downloading)."""
    folder, names = weights_dir(), weights_folders()
    return [dataset for dataset in WEIGHTS_DATASETS[fast] if not (folder / names[dataset]).is_dir()]


def weights_installed(fast: bool) -> bool:
    return not missing_weights(fast)


def installed_weights() -> list[dict]:
    """The ``total`` task's data sets in the weights folder: id, folder, checkpoint files and their sizes."""
    folder, found = weights_dir(), []
    for dataset, name in weights_folders().items():
        path = folder / name
        if not path.is_dir():
            continue
        checkpoints = sorted(path.glob("*/fold_*/checkpoint_final.pth"))
        found.append({"dataset": dataset, "folder": str(path),
                      "checkpoints": [{"path": str(p.relative_to(path)), "bytes": p.stat().st_size}
                                      for p in checkpoints]})
    return found


def model_name(fast: bool) -> str:
    return "3 mm" if fast else "1.5 mm"


def use_fast_model(ct: Volume, fast: bool | None) -> bool:
    """``fast`` when given, else the 3 mm model for CTs with voxels at least FAST_MODEL_MIN_SLICE_MM deep."""
    if fast is not None:
        return bool(fast)
    return float(np.max(ct.spacing)) >= FAST_MODEL_MIN_SLICE_MM


def totalseg_to_verse(array: np.ndarray, names: dict[int, str] | None = None) -> np.ndarray:
    """TotalSegmentator ``total`` labels -> VerSe ids (non-spine classes become 0).

    ``names`` ({label: class name}, as TotalSegmentator writes them into its output) names the labels; without
    them the v2 ``total`` numbering is assumed."""
    array = np.asarray(array).astype(np.int64)
    if not names:
        return labels_mod.to_verse(array, labels_mod.TOTALSEG_V2).astype(np.int16)
    table = np.zeros(max([int(array.max(initial=0)), *names]) + 1, dtype=np.int16)
    for label, name in names.items():
        verse = class_to_verse(name)
        if verse is not None:
            table[int(label)] = verse
    return table[np.clip(array, 0, len(table) - 1)]


def class_to_verse(name: str) -> int | None:
    """A TotalSegmentator class name -> VerSe id for the spine classes (``vertebrae_S1`` is part of the sacrum)."""
    text = str(name)
    if text in ("sacrum", "vertebrae_S1"):
        return labels_mod.SACRUM
    if not text.startswith("vertebrae_"):
        return None
    return labels_mod.label_from_level(text.removeprefix("vertebrae_"))


def output_class_names(image) -> dict[int, str]:
    """{label: class name} from the label table TotalSegmentator writes into its output's NIfTI header extension
    (its ``add_label_map_to_nifti``); {} when there is none."""
    import re

    for extension in getattr(image.header, "extensions", []):
        try:
            text = extension.get_content().decode("utf-8", "replace")
        except AttributeError:
            continue
        if "<LabelTable>" not in text:
            continue
        return {int(key): name for key, name in
                re.findall(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[([^\]]*)\]\]></Label>', text)}
    return {}


def _device_name(device: str) -> str:
    """This project's auto|cpu|cuda[:N]|mps -> TotalSegmentator's cpu|gpu[:N]|mps."""
    from . import torch_device_name

    name = torch_device_name(device)
    return "gpu" + name[4:] if name.startswith("cuda") else name


def _register_trainers() -> None:
    """Hand nnU-Net the trainer classes of the ``total`` checkpoints directly.

    nnU-Net finds a checkpoint's trainer class by importing its trainer modules one by one; one of them (Primus)
    imports timm and so torchvision, which fails outright where torchvision's compiled operators do not fit the
    installed PyTorch (pip pairs a CPU-only PyTorch with a CUDA torchvision: "operator torchvision::nms does not
    exist"). TotalSegmentator consults its own table of trainer names first (``totalsegmentator.nnunet
    .custom_trainers``); the two trainers its ``total`` models name go there, imported from their own modules.
    Its environment variables are set first: nnU-Net reads its results folder when imported.
    """
    try:
        from totalsegmentator.config import setup_nnunet

        setup_nnunet()
        from totalsegmentator import nnunet as totalseg_nnunet
    except ImportError:
        return
    table = getattr(totalseg_nnunet, "custom_trainers", None)
    if not isinstance(table, dict):
        return
    for name, module in NNUNET_TRAINERS.items():
        if name not in table:
            try:
                table[name] = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):  # another nnU-Net layout: its own search applies
                continue


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def fetch_weights(fast: bool, progress: ProgressCallback | None = None) -> None:
    """Download the missing data sets of the chosen model with TotalSegmentator's own downloader."""
    try:
        from totalsegmentator.config import setup_totalseg
        from totalsegmentator.libs import download_pretrained_weights
    except ImportError:  # another package layout: its API downloads what it needs itself
        return
    missing = missing_weights(fast)
    setup_totalseg()
    for number, dataset in enumerate(missing, start=1):
        if progress:
            progress(0.02 + 0.03 * (number - 1) / len(missing),
                     f"downloading TotalSegmentator weights Dataset{dataset} ({number}/{len(missing)})")
        try:
            download_pretrained_weights(dataset)
        except (Exception, SystemExit) as error:  # requests' connection errors, HTTP errors, bad archives
            raise VertebralFractureError(
                f"TotalSegmentator is installed but the weights of its {model_name(fast)} model "
                f"({', '.join(f'Dataset{d}' for d in missing)}) are not in {weights_dir()} and could not be "
                f"downloaded ({_first_line(error)}); fetch them with "
                f"{environment.totalsegmentator_weights_hint(fast)} when online") from None


def _torchvision_problem(error: BaseException) -> str | None:
    if "torchvision::" not in str(error):
        return None
    return (f"torchvision {environment.version('torchvision') or ''} does not fit PyTorch "
            f"{environment.version('torch') or ''} (its compiled operators do not load: {_first_line(error)}); "
            "install the torchvision built for this PyTorch").replace("  ", " ")


@register_backend("totalsegmentator")
class TotalSegmentatorBackend:
    """``get_backend("totalsegmentator", fast=None, allow_download=True)``; ``fast=None`` chooses by the CT's
    spacing (:func:`use_fast_model`)."""

    name = "totalsegmentator"

    def __init__(self, fast: bool | None = None, allow_download: bool = True, **_ignored):
        self.fast = None if fast is None else bool(fast)
        self.allow_download = bool(allow_download)

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        import nibabel as nib

        run = _import_api()
        fast = use_fast_model(ct, self.fast)
        resolution = model_name(fast)
        missing = missing_weights(fast)
        if missing and not self.allow_download:
            raise VertebralFractureError(
                f"TotalSegmentator is installed but the weights of its {resolution} model "
                f"({', '.join(f'Dataset{d}' for d in missing)}) are not in {weights_dir()}, and --no-download "
                f"forbids fetching them; fetch them with {environment.totalsegmentator_weights_hint(fast)}")
        device_name = _device_name(device)
        if missing:
            fetch_weights(fast, progress)
        if progress:
            progress(0.05, f"running TotalSegmentator ({resolution}) on {device_name}")
        _register_trainers()
        image = nib.Nifti1Image(np.asarray(ct.array, dtype=np.float32), ct.ijk_to_ras)
        try:
            result = run(image, None, ml=True, fast=fast, task="total", roi_subset=VERTEBRA_CLASSES,
                         device=device_name, quiet=True)
        except SystemExit as stop:  # its licence and configuration checks end the process; keep ours running
            raise VertebralFractureError(f"TotalSegmentator stopped (exit status {stop.code}); run `TotalSegmentator "
                                         "-i CT.nii.gz -o out --fast` once to see its message") from None
        except Exception as error:  # nnU-Net and TotalSegmentator raise anything; one line, with the cause
            problem = _torchvision_problem(error)
            raise VertebralFractureError(f"TotalSegmentator failed: {problem or _first_line(error)}") from error
        array = np.asarray(result.dataobj)
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
        names = output_class_names(result)
        verse = Volume(array=totalseg_to_verse(array, names), ijk_to_ras=np.asarray(result.affine, dtype=float),
                       path="TotalSegmentator output")
        on_ct = verse if verse.same_grid(ct) else resample_labels_to(verse, ct)
        on_ct = on_ct.with_array(on_ct.array.astype(np.int16), backend="totalsegmentator")
        present = [int(v) for v in np.unique(on_ct.array) if v != 0]
        if progress:
            progress(1.0, "TotalSegmentator done")
        if not any(labels_mod.is_vertebra(v) for v in present):
            raise NoVertebraeError(f"TotalSegmentator labelled no vertebra in {ct.path or 'the CT'}")
        details = {"task": "total", "model": f"{resolution} ({'fast' if fast else 'default'})",
                   "device": device_name, "version": environment.version("TotalSegmentator") or "",
                   "weights": [weights_folders()[d] for d in WEIGHTS_DATASETS[fast]],
                   "label_names": "from its output" if names else "v2 numbering"}
        return SegmentationOutput(
            labels=on_ct, backend="totalsegmentator", full_vertebrae=True, levels_status="unconfirmed",
            level_evidence=[f"levels named by TotalSegmentator (task total, {resolution} model); not checked against "
                            "anatomical anchors"], backend_details=details)
