"""Crop to the bounding box of non-zero voxels, as nnU-Net v2 does before normalisation."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels that are non-zero in any channel of ``(C, *spatial)`` data, with enclosed holes filled."""
    mask = data[0] != 0
    for channel in data[1:]:
        mask |= channel != 0
    return binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight bounding box of ``mask`` as slices; the whole array if the mask is empty."""
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Crop ``(C, *spatial)`` data to its non-zero bounding box.

    Returns:
        the cropped data, the cropped non-zero mask (``True`` inside the body/field of view; used by masked
        normalisation), and the bounding box (spatial slices) to paste predictions back.
    """
    mask = nonzero_mask(data)
    box = bounding_box(mask)
    return data[(slice(None), *box)], mask[box], box
