"""Crop to the bounding box of non-zero voxels, as nnU-Net v2 does before normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes


def nonzero_mask(data: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Voxels that are non-zero in any channel (``(C, *spatial)`` data or a list of same-shape channels), with
    enclosed holes filled."""
    mask = np.asarray(data[0]) != 0
    for channel in data[1:]:  # np.asarray: a deferred channel (preprocessing.channels) is computed here, then freed
        mask |= np.asarray(channel) != 0
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


def nonzero_box(channels: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The non-zero bounding box of same-shape channels (nnU-Net's crop), without copying any channel.

    Returns:
        the non-zero mask inside the box (``True`` inside the body/field of view; used by masked normalisation),
        and the box (spatial slices) to crop each channel with and to paste predictions back.
    """
    mask = nonzero_mask(channels)
    box = bounding_box(mask)
    return mask[box], box
