"""TotalSegmentator backend: runs the ``totalsegmentator`` package when the user has installed it (and its weights).

TotalSegmentator (Wasserthal et al., Radiol AI 2023) is not a dependency of this project: it pins its own PyTorch
and nnU-Net versions and downloads its weights on first use. This backend calls its Python API on the CT in memory
(task ``total``, only the vertebra and sacrum classes via ``roi_subset``), maps the v2 ``total`` labels to VerSe
ids (:data:`VertebralFractureLib.labels.TOTALSEG_V2`) and puts the result on the CT's grid.

It never lets TotalSegmentator download weights silently: unless ``allow_download`` is given, the weights of the
needed nnU-Net data set must already be in TotalSegmentator's weights folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import labels as labels_mod
from ..errors import NoVertebraeError, VertebralFractureError
from ..io import Volume, resample_labels_to
from . import ProgressCallback, SegmentationOutput, register_backend

log = logging.getLogger(__name__)

INSTALL_HINT = ("the totalsegmentator backend needs the TotalSegmentator package, which is not installed: "
                "pip install TotalSegmentator (into this environment, with a PyTorch it supports), then download "
                "its weights once with `totalseg_download_weights -t total` (or use --backend monai / classical)")

# TotalSegmentator v2 ``total`` class names of the spine, cranial to caudal.
VERTEBRA_CLASSES = ([f"vertebrae_C{i}" for i in range(1, 8)] + [f"vertebrae_T{i}" for i in range(1, 13)]
                    + [f"vertebrae_L{i}" for i in range(1, 6)] + ["vertebrae_S1", "sacrum"])
# nnU-Net data sets of task "total" that hold the vertebrae: 292 (1.5 mm, part 2 "vertebrae"), 297 (3 mm, --fast).
WEIGHTS_DATASET = {False: 292, True: 297}


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


def weights_installed(fast: bool) -> bool:
    folder = weights_dir()
    return folder.is_dir() and any(folder.glob(f"Dataset{WEIGHTS_DATASET[fast]}_*"))


def totalseg_to_verse(array: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 ``total`` labels -> VerSe ids (non-spine classes become 0)."""
    return labels_mod.to_verse(np.asarray(array).astype(np.int64), labels_mod.TOTALSEG_V2).astype(np.int16)


def _device_name(device: str) -> str:
    """This project's auto|cpu|cuda -> TotalSegmentator's gpu|cpu."""
    device = (device or "auto").lower()
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if device.startswith("cuda"):
        if not has_gpu:
            raise VertebralFractureError(f"--device {device} was asked for but PyTorch sees no CUDA GPU; "
                                         "use --device auto or cpu")
        return "gpu" + device[4:]
    return "gpu" if has_gpu else "cpu"


@register_backend("totalsegmentator")
class TotalSegmentatorBackend:
    """``get_backend("totalsegmentator", fast=False, allow_download=False)``."""

    name = "totalsegmentator"

    def __init__(self, fast: bool = False, allow_download: bool = False, **_ignored):
        self.fast = bool(fast)
        self.allow_download = bool(allow_download)

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        import nibabel as nib

        run = _import_api()
        if not self.allow_download and not weights_installed(self.fast):
            dataset = WEIGHTS_DATASET[self.fast]
            raise VertebralFractureError(
                f"TotalSegmentator is installed but the weights of its task total (Dataset{dataset}) are not in "
                f"{weights_dir()}; it would download them on first use. Download them yourself with "
                f"`totalseg_download_weights -t total{'_fast' if self.fast else ''}` or allow it with --allow-download")
        device_name = _device_name(device)
        if progress:
            progress(0.05, f"running TotalSegmentator ({'3 mm' if self.fast else '1.5 mm'}) on {device_name}")
        image = nib.Nifti1Image(np.asarray(ct.array, dtype=np.float32), ct.ijk_to_ras)
        result = run(image, None, ml=True, fast=self.fast, task="total", roi_subset=VERTEBRA_CLASSES,
                     device=device_name, quiet=True)
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
        return SegmentationOutput(
            labels=on_ct, backend="totalsegmentator", full_vertebrae=True, levels_status="unconfirmed",
            level_evidence=["levels named by TotalSegmentator (task total); not checked against anatomical anchors"])
