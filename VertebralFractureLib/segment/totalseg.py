"""TotalSegmentator backend: runs the ``totalsegmentator`` package when the user has installed it.

TotalSegmentator (Wasserthal et al., Radiol AI 2023;5:e230024) is not a dependency of this project: it pins its own
PyTorch and nnU-Net versions and downloads its weights on first use, with its own licence notes (the ``total`` task
is openly licensed). This backend calls its Python API on the CT in memory (task ``total``, only the vertebra and
sacrum classes via ``roi_subset``), maps the v2 ``total`` labels to VerSe ids
(:data:`VertebralFractureLib.io.labels.TOTALSEG_V2`) and puts the result on the CT's grid.

Resolution: its 3 mm model (``fast=True``) for CTs whose slices are at least :data:`FAST_MODEL_MIN_SLICE_MM` apart
(the 1.5 mm model has no craniocaudal detail to add there), its 1.5 mm model otherwise; ``fast`` forces either.
``allow_download=False`` (``--no-download``) refuses to run when the weights are not yet in its weights folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import NoVertebraeError, VertebralFractureError
from VertebralFractureLib.io import Volume, resample_labels_to
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.segment import ProgressCallback, SegmentationOutput, register_backend

log = logging.getLogger(__name__)

INSTALL_HINT = ("the totalsegmentator backend needs the TotalSegmentator package, which is not installed: "
                "pip install TotalSegmentator (into this environment, with a PyTorch it supports), then download "
                "its weights once with `totalseg_download_weights -t total` (or use --backend monai / classical)")

# TotalSegmentator v2 ``total`` class names of the spine, cranial to caudal.
VERTEBRA_CLASSES = ([f"vertebrae_C{i}" for i in range(1, 8)] + [f"vertebrae_T{i}" for i in range(1, 13)]
                    + [f"vertebrae_L{i}" for i in range(1, 6)] + ["vertebrae_S1", "sacrum"])
# nnU-Net data sets TotalSegmentator fetches for task "total" with roi_subset (totalsegmentator/map_tasks_config.py
# and python_api.py): the 1.5 mm model's five parts 291-295 (vertebrae in 292) or the 3 mm model 297, plus the
# 6 mm model 298 it runs first to crop to the requested structures.
WEIGHTS_DATASETS = {False: (291, 292, 293, 294, 295, 298), True: (297, 298)}
FAST_MODEL_MIN_SLICE_MM = 2.5
"""Use the 3 mm model when the CT's coarsest voxel spacing is at least this (e.g. 3 mm slices): halfway between the
two models' grids (1.5 and 3 mm), so a CT finer than 2.5 mm along every axis gets the 1.5 mm model."""


def _import_api():
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError:
        raise VertebralFractureError(INSTALL_HINT) from None
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


def missing_weights(fast: bool) -> list[int]:
    """nnU-Net data sets of the chosen model that are not yet in TotalSegmentator's weights folder."""
    folder = weights_dir()
    return [dataset for dataset in WEIGHTS_DATASETS[fast]
            if not (folder.is_dir() and any(folder.glob(f"Dataset{dataset}_*")))]


def weights_installed(fast: bool) -> bool:
    return not missing_weights(fast)


def use_fast_model(ct: Volume, fast: bool | None) -> bool:
    """``fast`` when given, else the 3 mm model for CTs with voxels at least FAST_MODEL_MIN_SLICE_MM deep."""
    if fast is not None:
        return bool(fast)
    return float(np.max(ct.spacing)) >= FAST_MODEL_MIN_SLICE_MM


def totalseg_to_verse(array: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 ``total`` labels -> VerSe ids (non-spine classes become 0)."""
    return labels_mod.to_verse(np.asarray(array).astype(np.int64), labels_mod.TOTALSEG_V2).astype(np.int16)


def _device_name(device: str) -> str:
    """This project's auto|cpu|cuda[:N]|mps -> TotalSegmentator's cpu|gpu[:N]|mps."""
    from . import torch_device_name

    name = torch_device_name(device)
    return "gpu" + name[4:] if name.startswith("cuda") else name


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
        resolution = "3 mm" if fast else "1.5 mm"
        missing = missing_weights(fast)
        if missing and not self.allow_download:
            raise VertebralFractureError(
                f"TotalSegmentator is installed but the weights of its {resolution} model "
                f"({', '.join(f'Dataset{d}' for d in missing)}) are not in {weights_dir()}, and downloading them "
                f"was refused (--no-download); download them with `totalseg_download_weights -t "
                f"total{'_fast' if fast else ''}` or allow it")
        device_name = _device_name(device)
        if progress:
            fetch = " (it downloads its weights first)" if missing else ""
            progress(0.05, f"running TotalSegmentator ({resolution}) on {device_name}{fetch}")
        image = nib.Nifti1Image(np.asarray(ct.array, dtype=np.float32), ct.ijk_to_ras)
        try:
            result = run(image, None, ml=True, fast=fast, task="total", roi_subset=VERTEBRA_CLASSES,
                         device=device_name, quiet=True)
        except SystemExit as stop:  # its licence and configuration checks end the process; keep ours running
            raise VertebralFractureError(f"TotalSegmentator stopped (exit status {stop.code}); run `TotalSegmentator "
                                         "-i CT.nii.gz -o out --fast` once to see its message") from None
        array = np.asarray(result.dataobj)
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
        verse = Volume(array=totalseg_to_verse(array), ijk_to_ras=np.asarray(result.affine, dtype=float),
                       path="TotalSegmentator output")
        on_ct = verse if verse.same_grid(ct) else resample_labels_to(verse, ct)
        on_ct = on_ct.with_array(on_ct.array.astype(np.int16), backend="totalsegmentator")
        present = [int(v) for v in np.unique(on_ct.array) if v != 0]
        if progress:
            progress(1.0, "TotalSegmentator done")
        if not any(labels_mod.is_vertebra(v) for v in present):
            raise NoVertebraeError(f"TotalSegmentator labelled no vertebra in {ct.path or 'the CT'}")
        details = {"task": "total", "model": f"{resolution} ({'fast' if fast else 'default'})",
                   "device": device_name, "version": _package_version()}
        return SegmentationOutput(
            labels=on_ct, backend="totalsegmentator", full_vertebrae=True, levels_status="unconfirmed",
            level_evidence=[f"levels named by TotalSegmentator (task total, {resolution} model); not checked against "
                            "anatomical anchors"], backend_details=details)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("TotalSegmentator")
    except PackageNotFoundError:
        return ""
