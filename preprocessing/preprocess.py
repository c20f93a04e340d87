"""Turn a case's channel images into the network's input, exactly as the model folder's plans say.

Order (nnU-Net v2's): stack channels as float32 ``(C, Z, Y, X)`` -> ``transpose_forward`` -> crop to the non-zero
bounding box -> normalise each channel -> resample to the configuration spacing. Everything needed to undo it
for export is kept in :class:`PreprocessedCase`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.model_folder import ModelFolder
from preprocessing.cropping import crop_to_nonzero
from preprocessing.normalization import normalize_channel
from preprocessing.resampling import compute_new_shape, resample_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessedCase:
    """Network input and the geometry needed to map predictions back.

    All shapes and spacings are in nnU-Net's transposed array order (z, y, x for the identity transpose);
    spacings in mm.
    """

    data: torch.Tensor
    """``(C, *spatial)`` float32 network input on the model grid."""
    original_spacing: tuple[float, ...]
    model_spacing: tuple[float, ...]
    shape_before_cropping: tuple[int, ...]
    bbox: tuple[slice, ...]
    shape_after_cropping: tuple[int, ...]
    transpose_backward: tuple[int, ...]


def preprocess_case(
    channels: Sequence[np.ndarray], spacing_xyz: Sequence[float], model: ModelFolder
) -> PreprocessedCase:
    """Preprocess one case.

    Args:
        channels: one numpy array per model input channel, in ``dataset.json`` channel order, all of the same
            shape, in SimpleITK's numpy order (z, y, x).
        spacing_xyz: the images' voxel spacing in mm, SimpleITK order (x, y, z).
        model: the model folder whose plans define the preprocessing.
    """
    if len(channels) != model.num_input_channels:
        raise ValueError(f"model expects {model.num_input_channels} channels, got {len(channels)}")
    config = model.configuration
    transpose = list(model.transpose_forward)
    data = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    data = data.transpose([0, *[t + 1 for t in transpose]])
    spacing_zyx = list(spacing_xyz)[::-1]
    original_spacing = tuple(float(spacing_zyx[t]) for t in transpose)
    shape_before = tuple(data.shape[1:])

    data, mask, bbox = crop_to_nonzero(data)
    shape_after = tuple(data.shape[1:])

    target_spacing = config.spacing if not config.is_2d else (original_spacing[0], *config.spacing)
    new_shape = compute_new_shape(shape_after, original_spacing, target_spacing)
    for c, scheme in enumerate(config.normalization_schemes):
        props = model.intensity_properties(c) if scheme == "CTNormalization" else None
        data[c] = normalize_channel(data[c], scheme, config.use_mask_for_norm[c], mask, props)
    kwargs = config.data_resampling_kwargs
    data = resample_data(
        data,
        new_shape,
        original_spacing,
        target_spacing,
        order=int(kwargs.get("order", 3)),
        order_z=int(kwargs.get("order_z", 0)),
        force_separate_z=kwargs.get("force_separate_z", False),  # nnU-Net's default when unset
    )
    log.info(
        "preprocessed: shape %s -> crop %s -> model grid %s (spacing %s -> %s mm)",
        shape_before, shape_after, tuple(data.shape[1:]), original_spacing, tuple(target_spacing),
    )
    return PreprocessedCase(
        data=torch.from_numpy(np.ascontiguousarray(data)),
        original_spacing=original_spacing,
        model_spacing=tuple(float(s) for s in target_spacing),
        shape_before_cropping=shape_before,
        bbox=bbox,
        shape_after_cropping=shape_after,
        transpose_backward=model.transpose_backward,
    )
