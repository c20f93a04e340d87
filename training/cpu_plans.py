"""The CPU recipe's plans: a new plans identifier derived from nnU-Net's default plans of a dataset.

nnU-Net's default plans for the OpenKBP volumes (128^3 at ~4.7 x 4.7 x 2.5 mm) give a 3-D U-Net with a 128^3 patch
(~57 s per iteration on 2 cores) and a 2-D U-Net with batch 192. Neither trains on this machine. This writes
``<plans_name>.json`` next to the default plans, keeping everything nnU-Net derived from the dataset fingerprint
(intensity statistics, resampling, normalisation) and changing only:

* ``transpose_forward`` = identity, so 2-D slices are AXIAL (nnU-Net would otherwise slice along the first axis of
  largest spacing, here a 4.7 mm in-plane axis, because the slices are the finest axis in this dataset).
* configuration ``2d``: the full 128 x 128 axial slice as the patch (one tile per slice at inference), batch 12,
  a 5-stage PlainConvUNet with features 16/32/64/128/256 (bottleneck 8 x 8, 1.9 M parameters).
* configuration ``2d_f32``: the same with features 32/64/128/256/256 (5.1 M parameters; a trial, same data).
* configuration ``3d_fullres``: patch 80 x 96 x 96 (z, y, x) at the data's spacing, batch 2, 5 stages 16..256
  (an alternative; the 2-D configuration is the shipped one, see training/README.md).

Axis order of every spacing / patch here: nnU-Net's array order after ``transpose_forward`` (z, y, x); mm.

Usage (after ``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` for the dataset)::

    python -m training.cpu_plans -d 501 [--plans-name nnUNetPlansCPU]
    nnUNetv2_preprocess -d 501 -plans_name nnUNetPlansCPU -c 2d -np 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PLANS_NAME = "nnUNetPlansCPU"


def _unet_arch(dim: int, features: list[int], template: dict[str, Any]) -> dict[str, Any]:
    n = len(features)
    arch = copy.deepcopy(template)
    kw = arch["arch_kwargs"]
    kw["n_stages"] = n
    kw["features_per_stage"] = list(features)
    kw["kernel_sizes"] = [[3] * dim for _ in range(n)]
    kw["strides"] = [[1] * dim] + [[2] * dim for _ in range(n - 1)]
    kw["n_conv_per_stage"] = [2] * n
    kw["n_conv_per_stage_decoder"] = [2] * (n - 1)
    return arch


def make_cpu_plans(default_plans: dict[str, Any], plans_name: str = DEFAULT_PLANS_NAME,
                   batch_2d: int = 12, features_2d: tuple[int, ...] = (16, 32, 64, 128, 256),
                   patch_3d: tuple[int, int, int] = (80, 96, 96),
                   features_3d: tuple[int, ...] = (16, 32, 64, 128, 256)) -> dict[str, Any]:
    """Return the CPU plans derived from nnU-Net's default plans (see module docstring)."""
    plans = copy.deepcopy(default_plans)
    plans["plans_name"] = plans_name
    old_t = list(default_plans["transpose_forward"])
    # median spacing / shape were stored after the old transpose: undo it, then the new transpose is identity
    inv = [old_t.index(i) for i in range(3)]
    for key in ("original_median_spacing_after_transp", "original_median_shape_after_transp"):
        values = default_plans[key]
        plans[key] = [values[inv[i]] for i in range(3)]
    plans["transpose_forward"] = [0, 1, 2]
    plans["transpose_backward"] = [0, 1, 2]
    spacing = [float(s) for s in plans["original_median_spacing_after_transp"]]  # z, y, x
    shape = [int(round(s)) for s in plans["original_median_shape_after_transp"]]

    cfg2 = copy.deepcopy(default_plans["configurations"]["2d"])
    cfg2["data_identifier"] = f"{plans_name}_2d"
    cfg2["batch_size"] = batch_2d
    cfg2["spacing"] = spacing[1:]
    cfg2["median_image_size_in_voxels"] = shape[1:]
    cfg2["patch_size"] = [min(128, s) for s in shape[1:]]
    cfg2["architecture"] = _unet_arch(2, list(features_2d), cfg2["architecture"])
    cfg2["batch_dice"] = True

    cfg3 = copy.deepcopy(default_plans["configurations"]["3d_fullres"])
    cfg3["data_identifier"] = f"{plans_name}_3d_fullres"
    cfg3["batch_size"] = 2
    cfg3["spacing"] = spacing
    cfg3["median_image_size_in_voxels"] = shape
    cfg3["patch_size"] = list(patch_3d)
    cfg3["architecture"] = _unet_arch(3, list(features_3d), cfg3["architecture"])
    cfg3["batch_dice"] = False

    cfg2_32 = copy.deepcopy(cfg2)  # trial: same preprocessed data, wider net
    cfg2_32["architecture"] = _unet_arch(2, [32, 64, 128, 256, 256], cfg2["architecture"])

    plans["configurations"] = {"2d": cfg2, "2d_f32": cfg2_32, "3d_fullres": cfg3}
    return plans


def write_cpu_plans(dataset_folder: Path, plans_name: str = DEFAULT_PLANS_NAME, **kwargs: Any) -> Path:
    """Read ``nnUNetPlans.json`` in a preprocessed dataset folder, write ``<plans_name>.json``; return its path."""
    default = json.loads((dataset_folder / "nnUNetPlans.json").read_text())
    plans = make_cpu_plans(default, plans_name, **kwargs)
    out = dataset_folder / f"{plans_name}.json"
    out.write_text(json.dumps(plans, indent=4) + "\n")
    log.info("wrote %s", out)
    return out


def find_dataset_folder(dataset_id: int, preprocessed: Path | None = None) -> Path:
    """``nnUNet_preprocessed/DatasetXXX_*`` for an id."""
    root = preprocessed or Path(os.environ["nnUNet_preprocessed"])
    matches = sorted(root.glob(f"Dataset{dataset_id:03d}_*"))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one Dataset{dataset_id:03d}_* in {root}, found {matches}")
    return matches[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset-id", type=int, required=True)
    parser.add_argument("--plans-name", default=DEFAULT_PLANS_NAME)
    parser.add_argument("--preprocessed", type=Path, default=None, help="default: $nnUNet_preprocessed")
    parser.add_argument("--batch-2d", type=int, default=12)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_cpu_plans(find_dataset_folder(args.dataset_id, args.preprocessed), args.plans_name,
                    batch_2d=args.batch_2d)


if __name__ == "__main__":
    main()
