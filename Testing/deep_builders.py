"""Builders of tiny models for the tests of the deep-learning paths (MONAI bundle, project model, VerSe folder).

The bundle has the layout and config structure of the public MONAI Model Zoo ``wholeBody_ct_segmentation``
bundle (configs/inference.json with network_def/preprocessing/inferer/checkpointloader, configs/metadata.json
with 105 named output channels in the TotalSegmentator-v1 order, models/model.pt), with a tiny SegResNet so it
runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

# Output channel names of wholeBody_ct_segmentation (metadata.json channel_def): 1-17 organs and lungs,
# 18-41 vertebrae L5..C1, 42-57 other organs, 58-81 ribs, 82-91 other bones, 92 sacrum, 93-104 others.
_ORGANS = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "inferior_vena_cava",
           "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
           "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
           "lung_lower_lobe_right"]
_VERTEBRAE = [f"vertebrae_L{i}" for i in range(5, 0, -1)] + [f"vertebrae_T{i}" for i in range(12, 0, -1)] + \
             [f"vertebrae_C{i}" for i in range(7, 0, -1)]
_MIDDLE = ["esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
           "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "brain", "iliac_artery_left",
           "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum", "colon"]
_RIBS = [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
_BONES = ["humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
          "femur_left", "femur_right", "hip_left", "hip_right", "sacrum", "face"]
_LAST = ["gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
         "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
         "iliopsoas_right", "urinary_bladder"]
WHOLEBODY_CHANNELS = ["background", *_ORGANS, *_VERTEBRAE, *_MIDDLE, *_RIBS, *_BONES, *_LAST]
assert len(WHOLEBODY_CHANNELS) == 105

# Same structure as the public bundle's configs/inference.json; only the network width is a parameter.
WHOLEBODY_INFERENCE = {
    "displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1},
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
    "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
    "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 105,
                    "init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureTyped", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
        {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96],
                "sw_batch_size": "@displayable_configs#sw_batch_size", "overlap": "@displayable_configs#sw_overlap",
                "padding_mode": "replicate", "mode": "gaussian",
                "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/' + @modelname",
                         "load_dict": {"model": "@network"}},
}


def wholebody_metadata() -> dict:
    return {
        "version": "0.1.9-test",
        "name": "Whole body CT segmentation",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 105,
                                 "channel_def": {str(i): name for i, name in enumerate(WHOLEBODY_CHANNELS)}}},
        },
    }


def make_wholebody_bundle(folder: Path, init_filters: int = 8, roi_size: int = 32, highres: bool = False,
                          seed: int = 0, state_dict=None, blocks_down=(1, 1, 1, 1), checksums: bool = True) -> Path:
    """A tiny bundle in the wholeBody_ct_segmentation layout (random SegResNet weights unless given)."""
    import torch
    from monai.networks.nets import SegResNet

    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(WHOLEBODY_INFERENCE)
    config["displayable_configs"]["highres"] = highres
    config["network_def"].update(init_filters=init_filters, blocks_down=list(blocks_down))
    config["inferer"]["roi_size"] = [roi_size] * 3
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps(wholebody_metadata(), indent=1), encoding="utf-8")
    if state_dict is None:
        torch.manual_seed(seed)
        network = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=init_filters,
                            blocks_down=tuple(blocks_down), blocks_up=(1, 1, 1), dropout_prob=0.2)
        state_dict = network.state_dict()
    name = "model.pt" if highres else "model_lowres.pt"
    torch.save(state_dict, folder / "models" / name)
    if checksums:
        from VertebralFractureLib.segment import models

        models.write_checksums(folder)
    return folder


def constant_class_state(channel: int, init_filters: int = 8) -> dict:
    """Tiny SegResNet weights whose output is ``channel`` everywhere: last conv zeroed, bias favours that channel."""
    import torch
    from monai.networks.nets import SegResNet

    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=init_filters,
                        blocks_down=(1, 1, 1, 1), blocks_up=(1, 1, 1), dropout_prob=0.2)
    state = network.state_dict()
    state["conv_final.2.conv.weight"].zero_()
    bias = torch.zeros(105)
    bias[channel] = 5.0
    state["conv_final.2.conv.bias"] = bias
    return state


def zip_folder(folder: Path, archive: Path, wrapper: str | None = None) -> Path:
    """Zip ``folder`` (inside a wrapper folder, as Model Zoo archives are) into ``archive``."""
    folder = Path(folder)
    wrapper = folder.name if wrapper is None else wrapper
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, f"{wrapper}/{path.relative_to(folder).as_posix()}")
    return archive
