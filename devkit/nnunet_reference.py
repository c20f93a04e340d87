"""Run nnU-Net v2's own predictor (installed for tests only) on files, for side-by-side comparisons.

Tests and benchmarks call this; the inference image never imports nnunetv2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch


def nnunet_predict(
    model_dir: Path,
    channel_files: Sequence[Path],
    out_dir: Path,
    folds: Sequence[int | str],
    use_mirroring: bool = True,
    tile_step: float = 0.5,
    sequential: bool = True,
) -> np.ndarray:
    """Predict one case with ``nnUNetPredictor`` on the CPU; returns its label map (model indices, z,y,x).

    ``sequential=True`` uses ``predict_from_files_sequential`` (no worker processes); False uses
    ``predict_from_files`` with one worker each for preprocessing and export.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=tile_step,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(folds))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [[str(f) for f in channel_files]]
    target = [str(out_dir / "case")]
    if sequential:
        predictor.predict_from_files_sequential(files, target, save_probabilities=False, overwrite=True)
    else:
        predictor.predict_from_files(
            files, target, save_probabilities=False, overwrite=True,
            num_processes_preprocessing=1, num_processes_segmentation_export=1,
        )
    suffix = "".join(Path(channel_files[0]).suffixes[-2:]) if str(channel_files[0]).endswith(".nii.gz") else \
        Path(channel_files[0]).suffix
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / f"case{suffix}")))


def per_label_dice(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice per label between two label arrays; a label absent from both scores 1.0."""
    out = {}
    for label in labels:
        x, y = a == label, b == label
        denom = x.sum() + y.sum()
        out[int(label)] = 1.0 if denom == 0 else float(2 * np.logical_and(x, y).sum() / denom)
    return out
