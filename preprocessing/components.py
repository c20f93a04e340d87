"""Connected components: the largest one of a mask, and the label-map post-processing that keeps only it per OAR.

``keep_largest_components`` is nnU-Net's "remove all but the largest component" post-processing, applied per OAR
on the final label map (after export to the CT grid and after the left/right split, so Parotid_L and Parotid_R are
each one organ). Which OARs it applies to is the model folder's choice (``dataset.json`` ``largest_component``),
determined on cross-validation cases by ``training.determine_postprocessing``; removed voxels become background.
Connectivity is face connectivity (6-neighbourhood in 3-D), as nnU-Net's. Arrays are numpy (z, y, x).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary array (the array itself, as bool, if it has at most one)."""
    labels, n = ndimage.label(binary)
    if n <= 1:
        return binary.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def keep_largest_components(labels: np.ndarray, values: Iterable[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Keep only the largest connected component of each label value in ``values``; the rest becomes 0.

    Args:
        labels: integer label map (any shape; numpy (z, y, x) for volumes). Not modified.
        values: the label values to post-process (values absent from the map are skipped).

    Returns:
        ``(new map, {value: voxels removed})`` (only values that lost voxels are listed). Each label is processed
        inside its own bounding box, so the cost follows the organ's size, not the image's.
    """
    out = labels.copy()
    wanted = sorted({int(v) for v in values if int(v) > 0})
    if not wanted:
        return out, {}
    boxes = ndimage.find_objects(labels, max_label=max(wanted))
    removed: dict[int, int] = {}
    for value in wanted:
        box = boxes[value - 1]
        if box is None:
            continue
        region = out[box]
        mask = region == value
        keep = largest_component(mask)
        dropped = mask & ~keep
        n = int(dropped.sum())
        if n:
            region[dropped] = 0
            removed[value] = n
    if removed:
        log.info("largest-component post-processing removed %s voxel(s)",
                 ", ".join(f"label {v}: {n}" for v, n in removed.items()))
    return out, removed
