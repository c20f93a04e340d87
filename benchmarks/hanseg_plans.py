"""nnU-Net's own default 3d_fullres plan for a HaN-Seg-sized dataset, as a model folder without weights.

nnU-Net v2's ``ExperimentPlanner`` (2.8.1) plans from a dataset fingerprint (per-case spacing and shape after
cropping, foreground intensity statistics). Here the fingerprint describes ``n_cases`` CTs of one size and spacing
(HaN-Seg: ~1024 x 1024 x 200 voxels at 0.56 x 0.56 x 2.0 mm) and the planner's own
``determine_fullres_target_spacing`` / ``get_plans_for_configuration`` choose spacing, patch, topology and batch,
exactly as ``nnUNetv2_plan_experiment`` would for such data (only the 3d_lowres search, irrelevant here, is
skipped). The result is written as ``plans.json`` + ``dataset.json`` (CT + T1 channels, K classes), which
``model.fit`` estimates and a random-weight model can be built from.

    python -m benchmarks.hanseg_plans --out work_dirs/hanseg_plan [--size 1024 1024 200] [--spacing 0.56 0.56 2.0]
        [--classes 31] [--target-spacing 1.0 1.0 2.0] [--random-folds 5 [--no-mirroring]]
    python -m model.fit --model work_dirs/hanseg_plan

Sizes and spacings are SimpleITK order (x, y, z).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.labels import HANSEG_OAR_NAMES

log = logging.getLogger("benchmarks.hanseg_plans")
HANSEG_SIZE_XYZ = (1024, 1024, 200)
HANSEG_SPACING_XYZ = (0.56, 0.56, 2.0)
CT_INTENSITIES = {"max": 3071.0, "mean": 80.0, "median": 60.0, "min": -1024.0, "percentile_00_5": -900.0,
                  "percentile_99_5": 1600.0, "std": 300.0}
T1_INTENSITIES = {"max": 1000.0, "mean": 300.0, "median": 280.0, "min": 0.0, "percentile_00_5": 5.0,
                  "percentile_99_5": 900.0, "std": 150.0}


def dataset_json(num_classes: int) -> dict[str, Any]:
    """dataset.json of a CT + T1 model with ``num_classes`` labels (background + the first HaN-Seg OARs)."""
    names = list(HANSEG_OAR_NAMES) + [f"Extra_{i}" for i in range(max(0, num_classes - 1 - len(HANSEG_OAR_NAMES)))]
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names[: num_classes - 1])}}
    return {"channel_names": {"0": "CT", "1": "T1"}, "labels": labels, "numTraining": 40, "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO", "orientation": "LPS"}


def nnunet_default_plans(size_xyz: Sequence[int] = HANSEG_SIZE_XYZ,
                         spacing_xyz: Sequence[float] = HANSEG_SPACING_XYZ,
                         num_classes: int = 31, n_cases: int = 40,
                         target_spacing_xyz: Sequence[float] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plans, dataset.json) that nnU-Net's default planner makes for ``n_cases`` CTs of this size and spacing.

    ``target_spacing_xyz`` = ``nnUNetv2_plan_experiment -overwrite_target_spacing`` (given there in z, y, x).
    """
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep

    dataset = dataset_json(num_classes)
    shape_zyx = [int(s) for s in size_xyz][::-1]
    spacing_zyx = [float(s) for s in spacing_xyz][::-1]
    fingerprint = {
        "spacings": [spacing_zyx] * n_cases, "shapes_after_crop": [shape_zyx] * n_cases,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": CT_INTENSITIES, "1": T1_INTENSITIES},
    }
    with tempfile.TemporaryDirectory() as tmp:
        name = "Dataset999_HaNSegSized"
        raw, pre = Path(tmp) / "raw" / name, Path(tmp) / "pre" / name
        for folder in (raw, pre):
            folder.mkdir(parents=True)
        cases = {f"case_{i:02d}": {"images": [f"imagesTr/case_{i:02d}_{c:04d}.nii.gz" for c in (0, 1)],
                                   "label": f"labelsTr/case_{i:02d}.nii.gz"} for i in range(n_cases)}
        (raw / "dataset.json").write_text(json.dumps({**dataset, "dataset": cases}))
        (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
        saved = dep.nnUNet_raw, dep.nnUNet_preprocessed
        dep.nnUNet_raw, dep.nnUNet_preprocessed = str(Path(tmp) / "raw"), str(Path(tmp) / "pre")
        try:
            override = None if target_spacing_xyz is None else [float(s) for s in target_spacing_xyz][::-1]
            planner = dep.ExperimentPlanner(name, overwrite_target_spacing=override)
            transpose_forward, transpose_backward = planner.determine_transpose()
            spacing = planner.determine_fullres_target_spacing()
            new_shape = np.round(np.array(shape_zyx) * np.array(spacing_zyx) / spacing).astype(int)
            config = planner.get_plans_for_configuration(
                spacing[transpose_forward], new_shape[transpose_forward],
                planner.generate_data_identifier("3d_fullres"), float(np.prod(new_shape) * n_cases), {})
        finally:
            dep.nnUNet_raw, dep.nnUNet_preprocessed = saved
    config["batch_dice"] = False
    plans = {
        "dataset_name": name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(spacing_zyx[a]) for a in transpose_forward],
        "original_median_shape_after_transp": [int(shape_zyx[a]) for a in transpose_forward],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [int(a) for a in transpose_forward],
        "transpose_backward": [int(a) for a in transpose_backward],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
    }
    return json.loads(json.dumps(plans, default=_plain)), dataset


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj)}")


def write_plan_folder(out: Path, **kwargs: Any) -> Path:
    """Write ``plans.json`` and ``dataset.json`` of :func:`nnunet_default_plans` into ``out``; return ``out``."""
    plans, dataset = nnunet_default_plans(**kwargs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=1) + "\n")
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    return out


def write_random_folds(folder: Path, folds: int, mirror_axes: Sequence[int] | None = (0, 1, 2)) -> None:
    """Add ``folds`` random-weight ``fold_N/checkpoint_final.pth`` (seeded by N) to a plan folder, so the predictor
    can run the plan (memory and time benchmarks; e.g. ``benchmarks.large_ct_memory --model FOLDER``)."""
    import torch

    from model.fit import model_from_plans
    from model.network import build_network

    model, _, _ = model_from_plans(folder, "3d_fullres")
    for fold in range(folds):
        torch.manual_seed(fold)
        network = build_network(model)
        checkpoint = {"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 0,
                      "init_args": {"configuration": "3d_fullres", "fold": fold},
                      "inference_allowed_mirroring_axes": None if mirror_axes is None else tuple(mirror_axes)}
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
        log.info("wrote random-weight fold %d into %s", fold, folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, nargs=3, default=list(HANSEG_SIZE_XYZ))
    parser.add_argument("--spacing", type=float, nargs=3, default=list(HANSEG_SPACING_XYZ))
    parser.add_argument("--classes", type=int, default=31)
    parser.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="nnU-Net's -overwrite_target_spacing (default: the planner's choice)")
    parser.add_argument("--random-folds", type=int, default=0, help="also write N random-weight folds")
    parser.add_argument("--no-mirroring", action="store_true", help="random folds allow no test-time mirroring")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_plan_folder(args.out, size_xyz=args.size, spacing_xyz=args.spacing, num_classes=args.classes,
                      target_spacing_xyz=args.target_spacing)
    if args.random_folds:
        write_random_folds(args.out, args.random_folds, None if args.no_mirroring else (0, 1, 2))
    config = json.loads((args.out / "plans.json").read_text())["configurations"]["3d_fullres"]
    print(f"wrote {args.out}: 3d_fullres spacing {config['spacing']} patch {config['patch_size']} "
          f"batch {config['batch_size']} features {config['architecture']['arch_kwargs']['features_per_stage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
