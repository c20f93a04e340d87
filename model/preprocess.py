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
from preprocessing.channels import DeferredChannel
from preprocessing.cropping import nonzero_box
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


MAX_MODEL_GRID_GIB = 12.0
"""Largest working set accepted on the model grid (float32 input channels + fp16 logits per class), checked
from the CT's header geometry before anything is resampled."""


def model_grid_shape(shape_zyx: Sequence[int], spacing_xyz: Sequence[float], model: ModelFolder) -> tuple[int, ...]:
    """Shape of a whole image of ``shape_zyx`` (numpy z, y, x) at ``spacing_xyz`` (mm, SimpleITK x, y, z) once
    transposed and resampled to the model's spacing: an upper bound on the preprocessed case (cropping only
    shrinks it)."""
    transpose = list(model.transpose_forward)
    shape = tuple(int(shape_zyx[t]) for t in transpose)
    spacing_zyx = list(spacing_xyz)[::-1]
    original = tuple(float(spacing_zyx[t]) for t in transpose)
    config = model.configuration
    target = config.spacing if not config.is_2d else (original[0], *config.spacing)
    return tuple(int(n) for n in compute_new_shape(shape, original, target))


def model_grid_gib(grid_shape: Sequence[int], model: ModelFolder) -> float:
    """GiB of the network input (float32 per channel) plus summed logits (fp16 per class) on ``grid_shape``."""
    voxels = float(np.prod(grid_shape, dtype=np.float64))
    return voxels * (4 * model.num_input_channels + 2 * model.num_classes) / 2**30


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
    # One channel at a time, so that only one full-size float32 copy exists at once (HaN-Seg CTs: 0.8 GB each);
    # the channels themselves may be any dtype (the CT stays int16 until its crop is taken).
    # A DeferredChannel (a z-context channel of preprocessing.channels) is computed when read, and read twice
    # (non-zero mask, then normalisation), never kept.
    arrays = [c.transposed(transpose) if isinstance(c, DeferredChannel) else np.asarray(c).transpose(transpose)
              for c in channels]
    spacing_zyx = list(spacing_xyz)[::-1]
    original_spacing = tuple(float(spacing_zyx[t]) for t in transpose)
    shape_before = tuple(arrays[0].shape)

    mask, bbox = nonzero_box(arrays)
    shape_after = tuple(mask.shape)

    target_spacing = config.spacing if not config.is_2d else (original_spacing[0], *config.spacing)
    new_shape = compute_new_shape(shape_after, original_spacing, target_spacing)
    kwargs = config.data_resampling_kwargs
    data = np.empty((len(arrays), *new_shape), dtype=np.float32)
    for c, (array, scheme) in enumerate(zip(arrays, config.normalization_schemes)):
        props = model.intensity_properties(c) if scheme == "CTNormalization" else None
        channel = np.array(np.asarray(array)[bbox], dtype=np.float32)  # a copy: normalised in place
        channel = normalize_channel(channel, scheme, config.use_mask_for_norm[c], mask, props)
        data[c] = resample_data(
            channel[None],
            new_shape,
            original_spacing,
            target_spacing,
            order=int(kwargs.get("order", 3)),
            order_z=int(kwargs.get("order_z", 0)),
            force_separate_z=kwargs.get("force_separate_z", False),  # nnU-Net's default when unset
        )[0]
        del channel
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
