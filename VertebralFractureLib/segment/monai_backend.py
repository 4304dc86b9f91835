"""MONAI segmentation backend: a MONAI bundle or the project's own network, sliding-window inference.

Two kinds of model folder are loaded (see :func:`load_model`):

* a **MONAI bundle** in the Model Zoo layout (``configs/inference.json|yaml``, ``configs/metadata.json``,
  ``models/model.pt``), e.g. ``wholeBody_ct_segmentation``. The network, the preprocessing (orientation,
  spacing, intensity normalisation) and the sliding-window settings are read from the bundle's inference config
  with MONAI's own :class:`monai.bundle.ConfigParser`; output channels are named by ``metadata.json``
  (``network_data_format.outputs.pred.channel_def``) and channels named ``vertebrae_L1`` ... / ``sacrum`` are
  mapped to VerSe ids. Bundle configs contain Python expressions that MONAI evaluates: load bundles only from
  sources you trust (``models download`` checks the archive against the hash its publisher publishes).
* a **project model** (``model.json`` written by ``train``): a ``monai.networks.nets`` architecture, its
  parameters, voxel spacing, HU window and the VerSe id of every output channel. Plain data, nothing evaluated.

Weights are loaded with ``torch.load(..., weights_only=True)`` and only after their SHA-256 matches
(``checksums.sha256`` in the model folder, the ``sha256`` in ``model.json``, or one the user gives).

Inference runs on CUDA with mixed precision (``torch.autocast`` float16) when a GPU is available, else on CPU in
float32. The prediction (argmax over the blended logits) lies on the model's grid; it is resampled with nearest
neighbour **onto the CT's grid** (:func:`VertebralFractureLib.io.resample_labels_to`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from VertebralFractureLib.errors import InputError, NoVertebraeError, VertebralFractureError
from VertebralFractureLib.io import Volume, resample_labels_to
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.segment import ProgressCallback, SegmentationOutput, models, register_backend

log = logging.getLogger(__name__)

PROJECT_MODEL_FORMAT = "VertebralFracture-monai-model"
# Architectures a model.json may name; all live in monai.networks.nets and take plain keyword parameters.
ALLOWED_NETWORKS = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "AttentionUnet", "UNETR", "SwinUNETR")
# Bundle preprocessing steps that read files or add the channel axis; the backend gives an in-memory
# channel-first MetaTensor instead.
_SKIPPED_BUNDLE_TRANSFORMS = ("LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd")


def _import_torch():
    try:
        import monai  # noqa: F401
        import torch
    except ImportError as error:
        from VertebralFractureLib.segment import environment

        raise VertebralFractureError(f"the monai backend needs PyTorch and MONAI ({error.name} is missing): "
                                     f"{environment.monai_install_hint()}") from None
    return torch


def resolve_device(device: str | None = "auto"):
    """'auto' -> CUDA when PyTorch sees a GPU, else Apple's MPS, else CPU; a device asked for but absent is an error
    that says why (see :func:`VertebralFractureLib.segment.torch_device_name`)."""
    from . import torch_device_name

    torch = _import_torch()
    return torch.device(torch_device_name(device))


def channel_names_to_verse(channel_def: dict) -> dict[int, int]:
    """{channel index: name} of a bundle -> {channel index: VerSe id} for the vertebra and sacrum channels."""
    mapping = {}
    for index, name in channel_def.items():
        text = str(name).lower()
        if "vertebra" not in text and "sacrum" not in text:
            continue  # ribs ("rib_left_1") and organs never name a vertebra
        verse = labels_mod.label_from_segment_name(str(name))
        if verse is not None:
            mapping[int(index)] = verse
    return mapping


@dataclass
class LoadedModel:
    """Everything inference needs, independent of where the model came from."""

    name: str
    folder: Path
    kind: str
    network: object
    preprocessing: list
    image_key: str
    channel_to_verse: dict[int, int]
    roi_size: tuple[int, ...]
    overlap: float = 0.25
    blend_mode: str = "gaussian"
    padding_mode: str = "constant"
    full_vertebrae: bool = True
    weights: Path | None = None
    weights_sha256: str = ""
    details: dict = field(default_factory=dict)

    def lookup(self) -> np.ndarray:
        """Channel index -> VerSe id (0 for every channel that is not a vertebra)."""
        size = max([0, *self.channel_to_verse]) + 1
        table = np.zeros(size, dtype=np.int16)
        for channel, verse in self.channel_to_verse.items():
            table[channel] = verse
        return table


# ------------------------------------------------------------------------------------------------------ loading


def load_state_dict(path: Path, expected_sha256: str, key: str | None = None) -> dict:
    """Check the SHA-256, then ``torch.load(weights_only=True)``; unwraps {"model": ...}/{"state_dict": ...}."""
    torch = _import_torch()
    models.verify_sha256(path, expected_sha256)
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors for non-tensor content are what weights_only is for
        raise InputError(path, f"is not a weights-only PyTorch checkpoint ({type(error).__name__}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"holds a {type(checkpoint).__name__}, not a state dict")
    for candidate in ([key] if key else []) + ["model", "state_dict", "network"]:
        if candidate in checkpoint and isinstance(checkpoint[candidate], dict):
            return checkpoint[candidate]
    if key:
        raise InputError(path, f"has no {key!r} entry")
    return checkpoint


def _apply_weights(network, state: dict, path: Path) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise InputError(path, "weights do not fit the network the model describes "
                               f"({first[0] if first else 'shape mismatch'}; {len(first) - 1} more lines)") from None


def _inference_config(folder: Path) -> Path:
    for suffix in (".json", ".yaml", ".yml"):
        path = folder / "configs" / f"inference{suffix}"
        if path.is_file():
            return path
    raise InputError(folder, "has no configs/inference.json or .yaml")


def load_bundle(folder: Path, sha256: str | None = None, highres: bool | None = None) -> LoadedModel:
    """Load a MONAI bundle folder (Model Zoo layout) for inference on in-memory volumes."""
    _import_torch()
    from monai.bundle import ConfigParser

    folder = Path(folder)
    config_path = _inference_config(folder)
    metadata_path = folder / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise InputError(folder, "has no configs/metadata.json (it names the output channels)")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_path))
        parser.read_meta(str(metadata_path))
    except Exception as error:  # JSON/YAML syntax errors, or PyYAML missing for a .yaml config
        raise InputError(config_path, f"cannot be read as a MONAI bundle config ({error})") from None
    parser["bundle_root"] = str(folder)
    if highres is not None:
        # newer bundle versions keep the switch under displayable_configs, older ones at the top level
        for switch in ("displayable_configs#highres", "highres"):
            if parser.get(switch) is not None:
                parser[switch] = bool(highres)
                break

    def parsed(item_id: str, default=None):
        if parser.get(item_id) is None:
            return default
        try:
            return parser.get_parsed_content(item_id, instantiate=True)
        except Exception as error:
            raise InputError(config_path, f"item {item_id!r} cannot be built ({type(error).__name__}: "
                                          f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") \
                from None

    network_id = "network_def" if parser.get("network_def") is not None else "network"
    network = parsed(network_id)
    if network is None:
        raise InputError(config_path, "defines no network_def")
    image_key = parsed("image_key", "image")
    preprocessing = []
    for index, item in enumerate(parser.get("preprocessing#transforms", []) or []):
        target = str(item.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(item, dict) else ""
        if target in _SKIPPED_BUNDLE_TRANSFORMS:
            continue
        preprocessing.append(parsed(f"preprocessing#transforms#{index}"))
    roi_size = tuple(int(v) for v in parsed("inferer#roi_size", [96, 96, 96]))
    overlap = float(parsed("inferer#overlap", 0.25))
    blend_mode = str(parsed("inferer#mode", "gaussian"))
    padding_mode = str(parsed("inferer#padding_mode", "constant"))

    weights = parsed("checkpointloader#load_path", None)
    weights = Path(weights) if weights else folder / "models" / "model.pt"
    if not weights.is_file():
        raise InputError(weights, "does not exist (the bundle's weights; download the bundle with the models command)")
    expected = models.expected_sha256(folder, weights, sha256)
    _apply_weights(network, load_state_dict(weights, expected), weights)

    meta = json.loads(metadata_path.read_text(encoding="utf-8"))
    channel_def = (meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {}))
    mapping = channel_names_to_verse(channel_def)
    if not mapping:
        raise InputError(metadata_path, "names no vertebra output channel (channel_def entries like 'vertebrae_L1')")
    return LoadedModel(name=str(meta.get("name") or folder.name), folder=folder, kind="monai-bundle", network=network,
                       preprocessing=preprocessing, image_key=image_key, channel_to_verse=mapping, roi_size=roi_size,
                       overlap=overlap, blend_mode=blend_mode, padding_mode=padding_mode, full_vertebrae=True,
                       weights=weights, weights_sha256=expected,
                       details={"version": meta.get("version"), "config": config_path.name})


def build_project_network(description: dict):
    """``{"name": "UNet", "parameters": {...}}`` -> a monai.networks.nets module (allow-listed names only)."""
    _import_torch()
    from monai.networks import nets

    name = description.get("name")
    if name not in ALLOWED_NETWORKS:
        raise VertebralFractureError(f"network {name!r} is not one of {', '.join(ALLOWED_NETWORKS)}")
    return getattr(nets, name)(**description.get("parameters", {}))


def project_preprocessing(config: dict, image_key: str = "image") -> list:
    """Orientation, spacing and HU window of a project model as MONAI dictionary transforms."""
    from monai.transforms import Orientationd, ScaleIntensityRanged, Spacingd

    window = config.get("intensity", {})
    return [
        Orientationd(keys=image_key, axcodes=config.get("orientation", "RAS"), labels=None),
        Spacingd(keys=image_key, pixdim=tuple(float(v) for v in config["spacing_mm"]), mode="bilinear"),
        ScaleIntensityRanged(keys=image_key, a_min=float(window.get("hu_min", -1000.0)),
                             a_max=float(window.get("hu_max", 2000.0)), b_min=0.0, b_max=1.0,
                             clip=bool(window.get("clip", True))),
    ]


def read_project_config(folder: Path) -> dict:
    path = Path(folder) / "model.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot be read ({error})") from None
    if config.get("format") != PROJECT_MODEL_FORMAT:
        raise InputError(path, f"is not a {PROJECT_MODEL_FORMAT} description (format {config.get('format')!r})")
    missing = [key for key in ("network", "spacing_mm", "classes", "weights") if key not in config]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}")
    return config


def load_project_model(folder: Path, sha256: str | None = None) -> LoadedModel:
    folder = Path(folder)
    config = read_project_config(folder)
    weights = folder / config["weights"]
    if not weights.is_file():
        raise InputError(weights, "does not exist (named by model.json)")
    expected = sha256 or config.get("sha256") or models.expected_sha256(folder, weights)
    network = build_project_network(config["network"])
    _apply_weights(network, load_state_dict(weights, expected, config.get("weights_key")), weights)
    classes = [int(c) for c in config["classes"]]
    mapping = {channel: verse for channel, verse in enumerate(classes) if verse != 0}
    return LoadedModel(name=config.get("name", folder.name), folder=folder, kind="project", network=network,
                       preprocessing=project_preprocessing(config), image_key="image", channel_to_verse=mapping,
                       roi_size=tuple(int(v) for v in config.get("roi_size", (96, 96, 96))),
                       overlap=float(config.get("overlap", 0.25)),
                       full_vertebrae=bool(config.get("full_vertebrae", True)),
                       weights=weights, weights_sha256=expected,
                       details={"epoch": config.get("epoch"), "val_dice": config.get("val_dice")})


def load_model(model: str | Path | None = None, sha256: str | None = None, highres: bool | None = None) -> LoadedModel:
    """A model folder, the name of an installed model, or None for the installed whole-body bundle."""
    folder = models.find_model(model)
    if models.model_kind(folder) == "project":
        return load_project_model(folder, sha256)
    return load_bundle(folder, sha256, highres)


# ---------------------------------------------------------------------------------------------------- inference


def count_windows(shape, roi_size, overlap: float) -> int:
    """Number of sliding windows MONAI visits (same scan intervals as sliding_window_inference)."""
    total = 1
    for size, roi in zip(shape, roi_size):
        size, roi = int(size), int(roi)
        if size <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        total *= math.ceil((size - roi) / interval) + 1
    return total


def preprocess(model: LoadedModel, ct: Volume):
    """The CT as a (1, X, Y, Z) MetaTensor on the model's grid (orientation, spacing, intensity as configured)."""
    torch = _import_torch()
    from monai.data import MetaTensor

    image = MetaTensor(torch.as_tensor(np.asarray(ct.array, dtype=np.float32))[None],
                       affine=torch.as_tensor(ct.ijk_to_ras, dtype=torch.float64))
    data = {model.image_key: image}
    for transform in model.preprocessing:
        data = transform(data)
    return data[model.image_key]


def predict_channels(model: LoadedModel, image, device, amp: bool = True, sw_batch_size: int = 1,
                     progress: ProgressCallback | None = None, spine_channels_only: bool = True) -> np.ndarray:
    """Sliding-window inference; returns the argmax output channel per voxel on the preprocessed grid.

    ``spine_channels_only``: each window's logits are reduced to the vertebra channels plus one channel holding
    the highest logit of all other structures before blending. For the 105-class whole-body bundle that blends 26
    instead of 105 full-volume channels (a quarter of the memory and blending time). A voxel is labelled as a
    vertebra only where the full 105-channel argmax would label it so (the blended maximum is at least the maximum
    of the blended logits); results can differ only in window overlaps where windows disagree on which other
    structure wins, and then towards background.
    """
    torch = _import_torch()
    from monai.inferers import sliding_window_inference

    network = model.network.to(device).eval()
    inputs = image.as_tensor()[None].to(device) if hasattr(image, "as_tensor") else image[None].to(device)
    spatial = tuple(inputs.shape[2:])
    windows = count_windows(spatial, model.roi_size, model.overlap)
    done = [0]
    spine = sorted(model.channel_to_verse)
    kept: list[int] = []  # output channel behind each blended channel, set on the first window

    def predictor(batch):
        result = network(batch)
        if spine_channels_only:
            others = [c for c in range(result.shape[1]) if c not in model.channel_to_verse]
            if len(others) > 1:
                if not kept:
                    kept.extend([others[0], *spine])  # others[0] maps to background in the lookup
                result = torch.cat([result[:, others].amax(dim=1, keepdim=True), result[:, spine]], dim=1)
        done[0] += batch.shape[0]
        if progress:
            progress(0.1 + 0.8 * min(done[0] / windows, 1.0), f"sliding window {done[0]}/{windows}")
        return result

    use_amp = amp and device.type == "cuda"

    def run(output_device):
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = sliding_window_inference(inputs, roi_size=model.roi_size, sw_batch_size=sw_batch_size,
                                              predictor=predictor, overlap=model.overlap, mode=model.blend_mode,
                                              padding_mode=model.padding_mode, sw_device=device,
                                              device=output_device)
            index = logits.argmax(dim=1)[0].to("cpu").numpy()
        return np.asarray(kept, dtype=np.int64)[index] if kept else index

    try:
        return run(device)
    except torch.cuda.OutOfMemoryError:
        # The blended full-volume logits (classes x voxels) are what fills the GPU on large CTs; keep the windows
        # on the GPU and gather the output in host memory instead.
        log.warning("GPU memory exhausted by the full-volume output; gathering the output on the CPU")
        torch.cuda.empty_cache()
        done[0] = 0
        return run(torch.device("cpu"))


def segment_with_model(model: LoadedModel, ct: Volume, device="auto", amp: bool = True, sw_batch_size: int = 1,
                       progress: ProgressCallback | None = None,
                       spine_channels_only: bool = True) -> SegmentationOutput:
    torch_device = resolve_device(device) if isinstance(device, (str, type(None))) else device
    if progress:
        progress(0.0, f"preparing the CT for {model.name}")
    image = preprocess(model, ct)
    grid = np.asarray(image.affine, dtype=float)
    if progress:
        progress(0.1, f"running {model.name} on {torch_device.type}")
    channels = predict_channels(model, image, torch_device, amp=amp, sw_batch_size=sw_batch_size, progress=progress,
                                spine_channels_only=spine_channels_only)
    lookup = model.lookup()
    verse = lookup[np.clip(channels, 0, len(lookup) - 1)]
    verse[channels >= len(lookup)] = 0
    if progress:
        progress(0.92, "resampling the labels onto the CT grid")
    on_model_grid = Volume(array=verse.astype(np.int16), ijk_to_ras=grid, path=f"{model.name} prediction")
    on_ct = resample_labels_to(on_model_grid, ct)
    on_ct = on_ct.with_array(on_ct.array.astype(np.int16), backend="monai", model=model.name)
    present = [int(v) for v in np.unique(on_ct.array) if v != 0]
    warnings = [] if any(labels_mod.is_vertebra(v) for v in present) else ["no vertebrae found"]
    spacing = ", ".join(f"{s:.2f}" for s in np.linalg.norm(grid[:3, :3], axis=0))
    evidence = [f"levels named by the network {model.name} ({model.kind}, inference at {spacing} mm on "
                f"{torch_device.type}); not checked against anatomical anchors"]
    if progress:
        progress(1.0, "segmentation done")
    details = {"model": model.name, "kind": model.kind, "version": model.details.get("version") or "",
               "weights_sha256": model.weights_sha256, "spacing_mm": spacing, "device": torch_device.type,
               "amp": bool(amp and torch_device.type == "cuda")}
    return SegmentationOutput(labels=on_ct, backend="monai", full_vertebrae=model.full_vertebrae,
                              levels_status="unconfirmed", level_evidence=evidence, warnings=warnings,
                              backend_details=details)


@register_backend("monai")
class MonaiBackend:
    """``get_backend("monai", model=DIR_OR_NAME, model_sha256=None, highres=None, amp=True, sw_batch_size=1,
    all_channels=False)``; ``all_channels`` blends every output channel (exact argmax, more memory)."""

    name = "monai"

    def __init__(self, model: str | Path | None = None, model_sha256: str | None = None, highres: bool | None = None,
                 amp: bool = True, sw_batch_size: int = 1, all_channels: bool = False, **_ignored):
        self.model_ref = model
        self.model_sha256 = model_sha256
        self.highres = highres
        self.amp = amp
        self.sw_batch_size = sw_batch_size
        self.all_channels = all_channels
        self._model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.model_ref, self.model_sha256, self.highres)
        return self._model

    def segment(self, ct: Volume, device: str = "auto", progress: ProgressCallback | None = None) -> SegmentationOutput:
        torch_device = resolve_device(device)  # a missing GPU is reported before any model is loaded
        output = segment_with_model(self.model, ct, device=torch_device, amp=self.amp,
                                    sw_batch_size=self.sw_batch_size, progress=progress,
                                    spine_channels_only=not self.all_channels)
        if "no vertebrae found" in output.warnings:
            raise NoVertebraeError(f"{self.model.name} labelled no vertebra in {ct.path or 'the CT'}")
        return output
