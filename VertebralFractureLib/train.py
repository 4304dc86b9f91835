"""Training the project's own MONAI vertebra network on a folder in VerSe layout.

Layout (what VerSe'19/'20 downloads look like)::

    DIR/rawdata/sub-*/[ses-*/]*_ct.nii.gz
    DIR/derivatives/sub-*/[ses-*/]*_seg-vert_msk.nii.gz      (VerSe ids 1-28)

A CT and its mask pair up by file-name prefix (``sub-verse004_ct`` <-> ``sub-verse004_seg-vert_msk``), or as the
only mask of that subject.

Pipeline (MONAI transforms): load, channel first, orientation RAS, isotropic spacing (bilinear CT, nearest mask),
HU window scaled to 0..1, VerSe ids mapped to output channels, padding to the crop size; random crops centred on
vertebra or background voxels (RandCropByPosNegLabeld) and a small intensity shift for training. Loss: Dice + cross
entropy. Validation: sliding-window inference on whole held-out CTs, mean Dice over the vertebra classes present
(monai.metrics.DiceMetric).

The model folder holds ``checkpoint_latest.pt`` (after every epoch) and ``checkpoint_best.pt`` (best validation
Dice), each with the network weights, the optimizer state, the epoch, the training history and the model
description; ``model.json`` describes the best checkpoint for the monai backend (architecture, spacing, HU window,
VerSe id of every channel, SHA-256 of the weights); ``checksums.sha256`` lists the checkpoints' hashes. Every file
is written to a temporary name and renamed, so an interrupted run leaves the previous epoch's files intact and
``--resume`` continues from the last completed epoch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.io import atomic_path, write_text_atomic
from VertebralFractureLib.segment import models
from VertebralFractureLib.segment.monai_backend import PROJECT_MODEL_FORMAT, build_project_network, resolve_device

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
ALL_CLASSES = list(range(0, 29))  # background + VerSe ids 1-28


@dataclass
class TrainOptions:
    epochs: int = 100
    network: str = "unet"
    width: int = 16
    spacing_mm: float = 1.5
    roi: int = 96
    classes: str = "all"
    batch_size: int = 2
    lr: float = 1e-3
    val_fraction: float = 0.2
    val_every: int = 1
    seed: int = 0
    steps_per_epoch: int | None = None
    hu_min: float = -1000.0
    hu_max: float = 2000.0


def find_cases(data_dir: str | Path) -> list[dict]:
    """Pairs of CT and vertebra mask in a VerSe-layout folder, sorted by subject."""
    data_dir = Path(data_dir)
    raw, derivatives = data_dir / "rawdata", data_dir / "derivatives"
    if not raw.is_dir() or not derivatives.is_dir():
        raise InputError(data_dir, "is not a VerSe-layout folder (needs rawdata/sub-*/ and derivatives/sub-*/)")
    cases = []
    for ct in sorted(raw.glob("sub-*/**/*_ct.nii.gz")):
        subject = ct.relative_to(raw).parts[0]
        masks = sorted((derivatives / subject).glob("**/*_seg-vert_msk.nii.gz"))
        prefix = ct.name[: -len("_ct.nii.gz")]
        matching = [m for m in masks if m.name[: -len("_seg-vert_msk.nii.gz")] == prefix]
        mask = matching[0] if matching else (masks[0] if len(masks) == 1 else None)
        if mask is None:
            log.warning("%s: no matching *_seg-vert_msk.nii.gz under %s; skipped", ct, derivatives / subject)
            continue
        cases.append({"image": str(ct), "label": str(mask), "subject": subject})
    if not cases:
        raise InputError(data_dir, "holds no CT with a vertebra mask (rawdata/sub-*/*_ct.nii.gz with "
                                   "derivatives/sub-*/*_seg-vert_msk.nii.gz)")
    return cases


def present_classes(cases: list[dict]) -> list[int]:
    import nibabel as nib

    found = set()
    for case in cases:
        found.update(int(v) for v in np.unique(np.asarray(nib.load(case["label"]).dataobj)))
    return [0] + sorted(v for v in found if 1 <= v <= 28)


def split_cases(cases: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out validation cases (at least one when there are two or more); a single case validates on itself."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    if len(order) == 1 or val_fraction <= 0:
        log.warning("validating on the training cases (%d case(s), val_fraction %.2f)", len(order), val_fraction)
        return order, order
    count = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return order[count:], order[:count]


def network_description(options: TrainOptions, classes: int) -> dict:
    w = int(options.width)
    if options.network == "unet":
        return {"name": "UNet", "parameters": {"spatial_dims": 3, "in_channels": 1, "out_channels": classes,
                                               "channels": [w, 2 * w, 4 * w, 8 * w], "strides": [2, 2, 2],
                                               "num_res_units": 1, "norm": "batch"}}
    if options.network == "segresnet":
        return {"name": "SegResNet", "parameters": {"spatial_dims": 3, "in_channels": 1, "out_channels": classes,
                                                    "init_filters": w, "blocks_down": [1, 2, 2, 4],
                                                    "blocks_up": [1, 1, 1], "dropout_prob": 0.2}}
    raise VertebralFractureError(f"unknown network {options.network!r}; use unet or segresnet")


class VerseToChannel:
    """Label transform: VerSe ids -> output channel index (ids the model does not have become background)."""

    def __init__(self, classes: list[int]):
        self.table = np.zeros(256, dtype=np.int64)
        for channel, verse in enumerate(classes):
            self.table[verse] = channel

    def __call__(self, label):
        import torch

        values = torch.as_tensor(label).long().clamp(0, 255)
        mapped = torch.as_tensor(self.table)[values]
        result = label.clone()  # keeps the MetaTensor's affine and transform history
        result.copy_(mapped)
        return result


def _transforms(config: dict, options: TrainOptions, training: bool):
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Lambdad,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    steps = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes=config["orientation"], labels=None),
        Spacingd(keys=keys, pixdim=tuple(config["spacing_mm"]), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=config["intensity"]["hu_min"], a_max=config["intensity"]["hu_max"],
                             b_min=0.0, b_max=1.0, clip=True),
        Lambdad(keys="label", func=VerseToChannel(config["classes"])),
        EnsureTyped(keys=keys, track_meta=not training),
    ]
    if training:
        roi = (int(config["training"]["roi"]),) * 3
        steps += [
            SpatialPadd(keys=keys, spatial_size=roi),
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi, pos=2, neg=1,
                                   num_samples=options.batch_size, image_key="image", image_threshold=0.0),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        ]
    return Compose(steps)


def inference_window(training_roi: int) -> int:
    """Sliding-window size for validation and inference: the networks are fully convolutional, so windows larger
    than the training crops are fine and far fewer of them are needed (at least 96 voxels, a multiple of 16)."""
    return int(max(96, math.ceil(training_roi / 16) * 16))


def _save(obj, path: Path) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, str(temporary))


def _load_checkpoint(folder: Path, name: str) -> dict:
    import torch

    path = folder / name
    models.verify_sha256(path, models.expected_sha256(folder, path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _write_model_json(folder: Path, config: dict, checkpoint: dict) -> None:
    description = {**config, "weights": BEST, "weights_key": "model", "sha256": models.sha256_file(folder / BEST),
                   "epoch": checkpoint["epoch"], "val_dice": checkpoint["best_dice"]}
    write_text_atomic(folder / "model.json", json.dumps(description, indent=2))


def train(data_dir: str | Path, out_dir: str | Path, options: TrainOptions | None = None, resume: bool = False,
          device: str = "auto", show_progress: bool = True) -> dict:
    """Train (or resume) until ``options.epochs`` epochs are done; returns a summary with the history."""
    options = options or TrainOptions()
    torch = _import_torch()
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.utils import set_determinism
    from tqdm import tqdm

    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    cases = find_cases(data_dir)
    checkpoint = None
    if resume:
        if not (out_dir / LATEST).is_file():
            raise InputError(out_dir, f"has no {LATEST} to resume from")
        checkpoint = _load_checkpoint(out_dir, LATEST)
        config = checkpoint["config"]
        log.info("resuming after epoch %d", checkpoint["epoch"])
    else:
        if (out_dir / LATEST).exists():
            raise InputError(out_dir, f"already holds a training run ({LATEST}); add --resume to continue it or "
                                      "choose another folder")
        classes = ALL_CLASSES if options.classes == "all" else present_classes(cases)
        config = {"format": PROJECT_MODEL_FORMAT, "format_version": 1, "name": out_dir.name,
                  "network": network_description(options, len(classes)), "spacing_mm": [options.spacing_mm] * 3,
                  "orientation": "RAS", "intensity": {"hu_min": options.hu_min, "hu_max": options.hu_max,
                                                      "clip": True},
                  "classes": classes, "roi_size": [inference_window(options.roi)] * 3, "overlap": 0.25,
                  "full_vertebrae": True,
                  "training": {**asdict(options), "data": str(data_dir)}}
    set_determinism(seed=options.seed + (checkpoint["epoch"] if checkpoint else 0))
    train_cases, val_cases = split_cases(cases, options.val_fraction, options.seed)
    n_classes = len(config["classes"])

    network = build_project_network(config["network"]).to(torch_device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.lr, weight_decay=1e-5)
    use_amp = torch_device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history, start_epoch, best_dice, best_epoch = [], 0, -1.0, 0
    if checkpoint:
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = options.lr
        if use_amp and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        history, start_epoch = list(checkpoint["history"]), int(checkpoint["epoch"])
        best_dice, best_epoch = float(checkpoint["best_dice"]), int(checkpoint["best_epoch"])
    if start_epoch >= options.epochs:
        log.warning("already trained for %d epochs (asked for %d); nothing to do", start_epoch, options.epochs)
        return _summary(history, start_epoch, best_dice, best_epoch)

    train_data = CacheDataset(train_cases, _transforms(config, options, True), cache_rate=1.0, num_workers=0,
                              progress=False)
    val_data = CacheDataset(val_cases, _transforms(config, options, False), cache_rate=1.0, num_workers=0,
                            progress=False)
    steps = options.steps_per_epoch or len(train_cases)
    sampler = torch.utils.data.RandomSampler(train_data, replacement=True, num_samples=steps)
    loader = DataLoader(train_data, batch_size=1, sampler=sampler, num_workers=0)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    dice_metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    total = (options.epochs - start_epoch) * steps
    bar = tqdm(total=total, unit="step", disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for epoch in range(start_epoch + 1, options.epochs + 1):
            network.train()
            losses = []
            for batch in loader:
                images, targets = batch["image"].to(torch_device), batch["label"].to(torch_device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=torch_device.type, dtype=torch.float16, enabled=use_amp):
                    loss = loss_function(network(images), targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                bar.set_description(f"epoch {epoch}/{options.epochs}")
                bar.set_postfix(loss=f"{losses[-1]:.4f}", best_dice=f"{max(best_dice, 0):.3f}")
                bar.update(1)
            record = {"epoch": epoch, "loss": float(np.mean(losses))}
            if epoch % options.val_every == 0 or epoch == options.epochs:
                network.eval()
                dice_metric.reset()
                with torch.inference_mode(), torch.autocast(device_type=torch_device.type, dtype=torch.float16,
                                                            enabled=use_amp):
                    for item in val_data:
                        image = item["image"].as_tensor()[None].to(torch_device)
                        label = item["label"].as_tensor()[None].to(torch_device)
                        logits = sliding_window_inference(image, tuple(config["roi_size"]), 2, network,
                                                          overlap=config["overlap"], mode="gaussian")
                        prediction = one_hot(logits.argmax(dim=1, keepdim=True), n_classes)
                        dice_metric(y_pred=prediction, y=one_hot(label.long(), n_classes))
                value = dice_metric.aggregate().item()
                record["val_dice"] = 0.0 if math.isnan(value) else float(value)
            history.append(record)
            state = {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict() if use_amp else {}, "epoch": epoch, "history": history,
                     "best_dice": best_dice, "best_epoch": best_epoch, "config": config}
            improved = "val_dice" in record and record["val_dice"] > best_dice
            if improved:
                best_dice, best_epoch = record["val_dice"], epoch
                state.update(best_dice=best_dice, best_epoch=best_epoch)
                _save(state, out_dir / BEST)
            _save(state, out_dir / LATEST)
            models.write_checksums(out_dir, [out_dir / name for name in (LATEST, BEST) if (out_dir / name).exists()])
            if improved:
                _write_model_json(out_dir, config, state)
            write_text_atomic(out_dir / "history.json", json.dumps(history, indent=2))
            log.info("epoch %d: loss %.4f%s", epoch, record["loss"],
                     f", validation Dice {record['val_dice']:.3f}" if "val_dice" in record else "")
    finally:
        bar.close()
    return _summary(history, options.epochs, best_dice, best_epoch)


def _summary(history: list[dict], epoch: int, best_dice: float, best_epoch: int) -> dict:
    return {"epoch": epoch, "best_dice": max(best_dice, 0.0), "best_epoch": best_epoch,
            "last_loss": history[-1]["loss"] if history else float("nan"), "history": history}


def _import_torch():
    from VertebralFractureLib.segment.monai_backend import _import_torch as import_torch

    return import_torch()

