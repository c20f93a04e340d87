"""From model-grid logits back to a label map on the CT grid.

Steps (the reverse of preprocessing): resample the logits from the configuration spacing to the cropped CT shape
(linear; nearest on a separate coarse axis), argmax, paste into the uncropped volume, undo ``transpose_forward``,
map model label indices to HaN-Seg values by name. The resampling and argmax run in chunks along the first
axis so that the full-resolution float logits of all classes never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from preprocessing.preprocess import PreprocessedCase
from preprocessing.resampling import _nearest_indices, linear_weights, resample_axis, separate_z_axis

CHUNK_VOXELS = 16 * 1024 * 1024
"""Target number of output voxels per chunk (per class); bounds the float32 working memory."""


def _source_rows(old_size: int, new_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """For each output row along axis 0: lowest and highest source row it reads."""
    if mode == "nearest":
        idx = _nearest_indices(old_size, new_size)
        return idx, idx
    lower, upper, _ = linear_weights(old_size, new_size)
    return lower, upper


def logits_to_labels(
    logits: torch.Tensor,
    target_shape: Sequence[int],
    current_spacing: Sequence[float],
    target_spacing: Sequence[float],
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """Argmax of ``logits`` resampled to ``target_shape``, computed chunk by chunk.

    Args:
        logits: ``(K, *spatial)`` logits on the model grid (any float dtype, any device).
        target_shape: spatial shape to resample to (voxels, same axis order).
        current_spacing, target_spacing: spacings (mm) of the logits grid and the target grid.
        force_separate_z: nnU-Net's ``resampling_fn_probabilities_kwargs['force_separate_z']``.

    Returns:
        ``uint8`` (or ``uint16`` for >255 classes) array of model label indices with ``target_shape``.
    """
    target_shape = tuple(int(s) for s in target_shape)
    sep_axis = separate_z_axis(current_spacing, target_spacing, force_separate_z)
    modes = ["nearest" if a == sep_axis else "linear" for a in range(len(target_shape))]
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    out = np.zeros(target_shape, dtype=dtype)
    if tuple(logits.shape[1:]) == target_shape:
        modes = ["none"] * len(target_shape)
    plane = int(np.prod(target_shape[1:]))
    rows_per_chunk = max(1, CHUNK_VOXELS // max(plane, 1))
    first, last = _source_rows(logits.shape[1], target_shape[0], modes[0] if modes[0] != "none" else "nearest")
    for start in range(0, target_shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, target_shape[0])
        if modes[0] == "none":
            block = logits[:, start:stop].float()
        else:
            lo, hi = int(first[start:stop].min()), int(last[start:stop].max()) + 1
            slab = logits[:, lo:hi].float()
            for axis in range(1, len(target_shape)):
                slab = resample_axis(slab, axis + 1, target_shape[axis], modes[axis])
            block = _resample_rows(slab, lo, logits.shape[1], target_shape[0], start, stop, modes[0])
        # Round to fp16 before the argmax, as nnU-Net stores resampled logits in the logits' dtype: near-ties
        # then break the same way (first maximal index).
        out[start:stop] = block.half().argmax(0).cpu().numpy().astype(dtype)
    return out


def _resample_rows(
    slab: torch.Tensor, offset: int, old_size: int, new_size: int, start: int, stop: int, mode: str
) -> torch.Tensor:
    """Output rows ``start:stop`` (axis 1 of ``slab``) from source rows ``offset:offset + slab.shape[1]``."""
    if mode == "nearest":
        idx = _nearest_indices(old_size, new_size)[start:stop] - offset
        return slab.index_select(1, torch.from_numpy(idx).to(slab.device))
    lower, upper, weight = linear_weights(old_size, new_size)
    lo = torch.from_numpy(lower[start:stop] - offset).to(slab.device)
    up = torch.from_numpy(upper[start:stop] - offset).to(slab.device)
    w = torch.from_numpy(weight[start:stop]).to(slab.device, slab.dtype).reshape(1, -1, *[1] * (slab.ndim - 2))
    return torch.lerp(slab.index_select(1, lo), slab.index_select(1, up), w)


def labels_to_image_array(labels: np.ndarray, case: PreprocessedCase, lookup: Sequence[int]) -> np.ndarray:
    """Paste cropped model-index labels into the full (transposed) volume, undo the transpose and map every
    model index to its HaN-Seg value. Returns a ``uint8`` array in the CT's numpy order (z, y, x)."""
    full = np.zeros(case.shape_before_cropping, dtype=np.uint8)
    full[case.bbox] = np.asarray(lookup, dtype=np.uint8)[labels]
    return np.ascontiguousarray(full.transpose(case.transpose_backward))
