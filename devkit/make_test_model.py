"""Build a small but complete nnU-Net v2 model folder with random weights, for tests and container checks.

The folder is what ``nnUNetv2_train`` would leave (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``),
valid for nnU-Net's own ``nnUNetPredictor`` too, so the two predictors can be compared on the same weights.

    python -m devkit.make_test_model OUT_DIR [--folds 2] [--ct-only] [--shuffle-labels]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from contract.labels import HANSEG_OAR_NAMES

log = logging.getLogger(__name__)

UNET_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"

# Foreground intensity statistics of a head-and-neck CT (HU), as nnU-Net's fingerprint would record them.
CT_INTENSITY_PROPERTIES = {
    "max": 3071.0, "mean": 40.0, "median": 35.0, "min": -1024.0,
    "percentile_00_5": -950.0, "percentile_99_5": 1500.0, "std": 350.0,
}


def make_plans(
    n_channels: int,
    spacing_zyx: Sequence[float] = (3.0, 4.0, 4.0),
    patch_size: Sequence[int] = (32, 48, 48),
    features: Sequence[int] = (8, 16, 32, 64),
    configuration: str = "3d_fullres",
    arch_overrides: dict | None = None,
) -> dict:
    """nnU-Net v2 plans for a small PlainConvUNet (axis order z, y, x; spacing in mm); ``arch_overrides`` replace
    entries of its ``arch_kwargs`` (e.g. 1x1x1 kernels for a voxel-wise network)."""
    n_stages = len(features)
    dims = len(patch_size)
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    strides = [[1] * dims] + [[2] * dims] * (n_stages - 1)
    schemes = ["CTNormalization"] + ["ZScoreNormalization"] * (n_channels - 1)
    return {
        "dataset_name": "Dataset999_HaNSegTest",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing_zyx),
        "original_median_shape_after_transp": [64, 128, 128],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch_size),
                "median_image_size_in_voxels": [64, 128, 128][-dims:],
                "spacing": list(spacing_zyx)[-dims:],
                "normalization_schemes": schemes,
                "use_mask_for_norm": [False] * n_channels,
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": UNET_CLASS,
                    "arch_kwargs": {
                        "n_stages": n_stages,
                        "features_per_stage": list(features),
                        "conv_op": conv,
                        "kernel_sizes": [[3] * dims] * n_stages,
                        "strides": strides,
                        "n_conv_per_stage": [2] * n_stages,
                        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                        "conv_bias": True,
                        "norm_op": norm,
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                        **(arch_overrides or {}),
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): CT_INTENSITY_PROPERTIES if c == 0 else {
                "max": 1000.0, "mean": 300.0, "median": 280.0, "min": 0.0,
                "percentile_00_5": 5.0, "percentile_99_5": 900.0, "std": 150.0,
            }
            for c in range(n_channels)
        },
    }


def make_dataset_json(label_names: Sequence[str], channel_names: Sequence[str] = ("CT", "T1"),
                      extra: dict | None = None) -> dict:
    """dataset.json with the given OAR names as consecutive labels 1..N after background; ``extra`` keys added
    (e.g. ``channel_recipes``, ``mr_registration``, ``head_neck_crop``)."""
    return {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(label_names)}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
        **(extra or {}),
    }


def build_random_network(plans: dict, dataset: dict, configuration: str, seed: int) -> torch.nn.Module:
    """Instantiate the plans' network with seeded random weights (through this project's own builder)."""
    from model.model_folder import parse_configuration
    from model.network import locate

    config = parse_configuration(plans, configuration, Path("plans.json"), len(dataset["channel_names"]))
    kwargs = dict(config.arch_kwargs)
    for key in config.arch_kwargs_requiring_import:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(kwargs[key])
    torch.manual_seed(seed)
    network = locate(config.network_class_name)(
        input_channels=len(dataset["channel_names"]), num_classes=len(dataset["labels"]),
        deep_supervision=False, **kwargs,
    )
    with torch.no_grad():
        # Spread the random logits so every class wins somewhere (a freshly initialised head is nearly flat).
        head = network.decoder.seg_layers[-1]
        head.weight.mul_(8.0)
        head.bias.copy_(torch.linspace(-1.0, 1.0, head.bias.numel()))
    return network


def make_test_model(
    out_dir: str | Path,
    folds: int = 2,
    label_names: Sequence[str] = HANSEG_OAR_NAMES,
    channel_names: Sequence[str] = ("CT", "T1"),
    spacing_zyx: Sequence[float] = (3.0, 4.0, 4.0),
    patch_size: Sequence[int] = (32, 48, 48),
    features: Sequence[int] = (8, 16, 32, 64),
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    trainer_name: str = "nnUNetTrainer",
    seed: int = 0,
    dataset_extra: dict | None = None,
    arch_overrides: dict | None = None,
) -> Path:
    """Write a random-weight model folder to ``out_dir`` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configuration = "3d_fullres" if len(patch_size) == 3 else "2d"
    plans = make_plans(len(channel_names), spacing_zyx, patch_size, features, configuration, arch_overrides)
    dataset = make_dataset_json(label_names, channel_names, dataset_extra)
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for fold in range(folds):
        network = build_random_network(plans, dataset, configuration, seed + fold)
        checkpoint = {
            "network_weights": network.state_dict(),
            "init_args": {
                "plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset,
            },
            "trainer_name": trainer_name,
            "current_epoch": 1,
        }
        if mirror_axes is not None:
            checkpoint["inference_allowed_mirroring_axes"] = tuple(mirror_axes)
        (out / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint, out / f"fold_{fold}" / "checkpoint_final.pth")
    log.info("wrote random-weight model folder %s (%d folds)", out, folds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--ct-only", action="store_true", help="a model with only a CT input channel")
    parser.add_argument("--shuffle-labels", action="store_true", help="labels in reversed HaN-Seg order")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    names = tuple(reversed(HANSEG_OAR_NAMES)) if args.shuffle_labels else HANSEG_OAR_NAMES
    make_test_model(args.out_dir, folds=args.folds, label_names=names,
                    channel_names=("CT",) if args.ct_only else ("CT", "T1"))


if __name__ == "__main__":
    main()
