"""The ensemble predictor: preprocessed case in, HaN-Seg label array out.

For each fold: load its weights, run the Gaussian-weighted sliding window (with mirroring TTA over the model's
allowed axes); fold logits are summed in fp16 and divided by the fold count (a mean of logits, as nnU-Net does).
Then export: back to the CT grid, argmax, model labels mapped to HaN-Seg values by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from contract.errors import ModelFolderError
from contract.labels import model_to_hanseg_lookup
from model.export import labels_to_image_array, logits_to_labels
from model.model_folder import ModelFolder
from model.network import build_network, load_fold_weights
from model.sliding_window import padded_shape, sliding_window_logits, tile_slicers
from preprocessing.preprocess import PreprocessedCase, preprocess_case

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorOptions:
    """How to run inference.

    Attributes:
        use_mirroring: mirroring test-time augmentation over the model's allowed axes.
        tile_step: sliding-window step as a fraction of the patch size, in (0, 1].
        progress: show a progress bar over tiles x folds.
    """

    use_mirroring: bool = True
    tile_step: float = 0.5
    progress: bool = True


def available_cpu_threads() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Predictor:
    """Runs one model folder's folds on cases. Build once, call :meth:`predict` per case."""

    def __init__(self, model: ModelFolder, device: torch.device, options: PredictorOptions = PredictorOptions()):
        self.model = model
        self.device = device
        self.options = options
        try:
            self.lookup = model_to_hanseg_lookup(model.labels)
        except ValueError as err:
            raise ModelFolderError(model.path / "dataset.json", str(err)) from None
        self.network = build_network(model).to(device)
        load_fold_weights(self.network, model.folds[0].weights, str(model.folds[0].path))
        if device.type == "cpu":
            torch.set_num_threads(available_cpu_threads())

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return self.model.mirror_axes if self.options.use_mirroring else ()

    @torch.inference_mode()
    def predict_logits(self, case: PreprocessedCase) -> torch.Tensor:
        """Mean fp16 logits of all folds on the model grid, ``(K, *spatial)``, on the CPU."""
        config = self.model.configuration
        n_tiles = len(tile_slicers(padded_shape(case.data.shape[1:], config.patch_size), config.patch_size,
                                   self.options.tile_step))
        total = n_tiles * len(self.model.folds)
        log.info(
            "predicting: %d folds x %d tiles, patch %s, mirror axes %s", len(self.model.folds), n_tiles,
            config.patch_size, self.mirror_axes,
        )
        summed: torch.Tensor | None = None
        with tqdm(total=total, desc="tiles", unit="tile", disable=not self.options.progress, mininterval=2) as bar:
            for fold in self.model.folds:
                load_fold_weights(self.network, fold.weights, str(fold.path))
                logits = sliding_window_logits(
                    self.network,
                    case.data,
                    config.patch_size,
                    self.model.num_classes,
                    mirror_axes=self.mirror_axes,
                    step_fraction=self.options.tile_step,
                    device=self.device,
                    on_tile=bar.update,
                ).to("cpu")
                summed = logits if summed is None else summed.add_(logits)
        assert summed is not None
        if len(self.model.folds) > 1:
            summed /= len(self.model.folds)
        return summed

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float]) -> np.ndarray:
        """Segment one case.

        Args:
            channels: one array per model input channel (``dataset.json`` order), all on the CT grid, numpy
                order (z, y, x).
            spacing_xyz: CT voxel spacing in mm, SimpleITK order (x, y, z).

        Returns:
            ``uint8`` HaN-Seg label array (values 0..30) with the CT's numpy shape (z, y, x).
        """
        case = preprocess_case(channels, spacing_xyz, self.model)
        logits = self.predict_logits(case)
        kwargs = self.model.configuration.probabilities_resampling_kwargs
        labels = logits_to_labels(
            logits,
            case.shape_after_cropping,
            case.model_spacing,
            case.original_spacing,
            force_separate_z=kwargs.get("force_separate_z", False),
        )
        return labels_to_image_array(labels, case, self.lookup)
