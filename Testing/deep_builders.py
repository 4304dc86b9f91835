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

# ------------------------------------------------------------------------------- the real Model Zoo bundle config

MODEL_ZOO_BUNDLE = Path(__file__).resolve().parent / "data" / "model-zoo" / "wholeBody_ct_segmentation"
"""The MONAI Model Zoo's wholeBody_ct_segmentation v0.2.5 configuration as published (configs/, large_files.yml,
docs/; Apache-2.0, the repository's own LICENSE), without its weights: see README.md in that folder."""


def make_model_zoo_bundle(folder: Path, seed: int = 0, highres: bool | None = None, checksums: bool = True) -> Path:
    """The real bundle configuration with random weights of the network its ``network_def`` declares, saved where its
    ``checkpointloader`` looks (``models/model.pt`` and ``models/model_lowres.pt``, the two files of its
    large_files.yml). ``highres`` sets the configuration's own switch (None keeps the published value)."""
    import shutil

    import torch
    from monai.bundle import ConfigParser

    folder = Path(folder)
    shutil.copytree(MODEL_ZOO_BUNDLE, folder, dirs_exist_ok=True)
    (folder / "README.md").unlink(missing_ok=True)  # ours, about the copy; not part of the bundle
    if highres is not None:
        config_path = folder / "configs" / "inference.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["displayable_configs"]["highres"] = bool(highres)
        config_path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (folder / "models").mkdir(exist_ok=True)
    state = network.state_dict()
    for name in ("model.pt", "model_lowres.pt"):
        torch.save(state, folder / "models" / name)
    if checksums:
        from VertebralFractureLib.segment import models

        models.write_checksums(folder)
    return folder


# -------------------------------------------------------------------- TotalSegmentator's weights folder, tiny nnU-Net

TINY_NNUNET_FEATURES = (4, 8, 16)
"""Features per stage of the tiny PlainConvUNet in each data set (about 12k parameters: seconds on a CPU)."""
TINY_NNUNET_PATCH = (32, 32, 32)
TOTALSEG_CONFIG = {"totalseg_id": "totalseg_TESTS", "send_usage_stats": False, "prediction_counter": 0,
                   "statistics_disclaimer_shown": True}
"""TotalSegmentator's config.json for the tests: no usage statistics are sent (it posts them after predicting
when this is missing or true)."""


def _totalseg_datasets() -> dict[int, tuple[str, str, float, dict]]:
    """Data set id -> (folder, trainer, spacing mm, {label: class name}) exactly as TotalSegmentator names them."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, map_taskid_to_partname_ct

    datasets = {}
    for dataset, spacing in ((297, 3.0), (298, 6.0)):
        datasets[dataset] = (TASK_ID_WEIGHTS_CONFIGS[dataset]["foldername"], "nnUNetTrainer_4000epochs_NoMirroring",
                             spacing, class_map["total"])
    for dataset in (291, 292, 293, 294, 295):
        datasets[dataset] = (TASK_ID_WEIGHTS_CONFIGS[dataset]["foldername"], "nnUNetTrainerNoMirroring", 1.5,
                             class_map_5_parts[map_taskid_to_partname_ct[dataset]])
    return datasets


def nnunet_plans(dataset_name: str, spacing: float, features=TINY_NNUNET_FEATURES, patch=TINY_NNUNET_PATCH,
                 convs_per_stage: int = 1) -> dict:
    """An nnU-Net v2 plans.json with one 3d_fullres configuration: CT normalisation, a PlainConvUNet."""
    stages = len(features)
    resampling = {"force_separate_z": None, "order_z": 0}
    strides = [[1, 1, 1]] + [[2 if patch[axis] // 2 ** level >= 4 else 1 for axis in range(3)]
                             for level in range(1, stages)]
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3, "original_median_shape_after_transp": [128] * 3,
        "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [128] * 3,
            "spacing": [spacing] * 3, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": stages, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3]] * stages, "strides": strides,
                    "n_conv_per_stage": [convs_per_stage] * stages,
                    "n_conv_per_stage_decoder": [convs_per_stage] * (stages - 1), "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": True}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3071.0, "mean": 100.0, "median": 80.0, "min": -1024.0, "percentile_00_5": -1000.0,
            "percentile_99_5": 1500.0, "std": 300.0}},
    }


def make_totalseg_dataset(results: Path, dataset: int, seed: int = 0, plans: dict | None = None) -> Path:
    """One data set folder of TotalSegmentator's weights folder with a tiny network built by nnU-Net's own trainer
    class, saved as nnU-Net saves a final checkpoint (the keys its predictor reads)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder_name, trainer, spacing, classes = _totalseg_datasets()[dataset]
    folder = Path(results) / folder_name / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    dataset_json = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 0,
                    "labels": {"background": 0, **{name: int(label) for label, name in classes.items()}}}
    plans = plans or nnunet_plans(folder_name, spacing)
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1), encoding="utf-8")
    (folder / "plans.json").write_text(json.dumps(plans, indent=1), encoding="utf-8")
    manager = PlansManager(plans)
    torch.manual_seed(seed + dataset)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1,
                                                       len(dataset_json["labels"]), enable_deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json},
                "inference_allowed_mirroring_axes": None}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def make_totalseg_home(home: Path, datasets=(297, 298), seed: int = 0) -> Path:
    """``TOTALSEG_HOME_DIR`` with its config.json (no usage statistics) and the given data sets in
    ``nnunet/results``, where TotalSegmentator looks for its weights."""
    home = Path(home)
    (home / "nnunet" / "results").mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps(TOTALSEG_CONFIG, indent=1), encoding="utf-8")
    for dataset in datasets:
        make_totalseg_dataset(home / "nnunet" / "results", dataset, seed)
    return home
