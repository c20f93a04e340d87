"""Splitting merged left/right labels by the patient's mid-sagittal plane (the inverse of the training L/R merge).

A model trained with each lateralised pair merged into one label (``dataset.json`` ``lr_split``, e.g.
``Parotid = Parotid_L + Parotid_R``) may mirror freely in training and as test-time augmentation; the pipeline then
gives every voxel of a merged label its side from where it lies relative to the patient's mid-sagittal plane.

Side convention: DICOM / ITK patient coordinates are LPS, so physical **+x points to the patient's LEFT**. The plane
is estimated from the body outline (CT > ``BODY_HU``) rather than from the image grid, so it does not depend on how
the CT is stored (flipped or permuted axes, non-zero origin, off-centre patient):

1. the body voxels of a coarse copy of the CT (about ``GRID_MM`` mm) are taken in physical coordinates;
2. along the cranio-caudal axis (physical z), in bands of ``BAND_MM`` mm, the mid-sagittal x is the midpoint of
   the body's left-right extent (its 5th and 95th x percentiles: arms or a couch edge at one side move it little);
3. a voxel of a merged label at height z is LEFT when its x is greater than the (interpolated) midline at z.

The plane's normal is the scanner's left-right axis (no head rotation is estimated): a parotid 40-60 mm lateral
of the midline stays on its side under axial-plane rotations far beyond clinical set-up tolerances.
Units: mm; SimpleITK index order (x, y, z); numpy arrays (z, y, x).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from preprocessing.geometry import index_to_physical

log = logging.getLogger(__name__)

BODY_HU = -400.0
"""CT values above this (HU) count as body (air is ~ -1000, fat ~ -100)."""
GRID_MM = 4.0
"""Spacing of the coarse copy the body outline is taken from."""
BAND_MM = 10.0
"""Height of the cranio-caudal bands the midline is estimated in."""


def physical_points(image: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    """Physical LPS coordinates (mm, shape (N, 3), columns x, y, z) of numpy indices ``index_zyx`` (N, 3: z, y, x)."""
    return index_to_physical(image, index_zyx[:, ::-1].astype(np.float64))


def _coarse(ct: sitk.Image) -> sitk.Image:
    factors = [max(1, int(GRID_MM // s)) for s in ct.GetSpacing()]
    return sitk.Shrink(ct, factors) if any(f > 1 for f in factors) else ct


def midline_profile(ct: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The mid-sagittal x (mm) per cranio-caudal band: ``(band_centres_z_mm, midline_x_mm)``, sorted by z.

    Raises:
        ValueError: if the CT holds no body voxels (nothing to find the midline from).
    """
    coarse = _coarse(ct)
    body = sitk.GetArrayViewFromImage(coarse) > BODY_HU
    idx = np.argwhere(body)
    if len(idx) == 0:
        raise ValueError(f"no body voxels (CT > {BODY_HU:g} HU): the mid-sagittal plane cannot be found")
    pts = physical_points(coarse, idx)
    band = np.floor(pts[:, 2] / BAND_MM).astype(np.int64)
    centres, midline = [], []
    for b in np.unique(band):
        x = pts[band == b, 0]
        if len(x) < 20:  # a few stray voxels say nothing about the body's extent
            continue
        lo, hi = np.percentile(x, [5, 95])
        centres.append((b + 0.5) * BAND_MM)
        midline.append(0.5 * (lo + hi))
    if not centres:
        lo, hi = np.percentile(pts[:, 0], [5, 95])
        return np.array([np.median(pts[:, 2])]), np.array([0.5 * (lo + hi)])
    return np.asarray(centres), np.asarray(midline)


def split_left_right(labels: np.ndarray, ct: sitk.Image, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Give each voxel of a merged label its side, in place; return ``labels``.

    Args:
        labels: uint8 (z, y, x) label map on ``ct``'s grid, where each merged pair is held by its LEFT value.
        ct: the CT the labels lie on (its geometry and intensities define the mid-sagittal plane).
        pairs: HaN-Seg ``(left value, right value)`` per merged label (``contract.labels.lateral_splits``).

    Raises:
        ValueError: if ``labels`` is not on the CT grid, or the CT has no body to find the midline from.
    """
    if labels.shape != tuple(reversed(ct.GetSize())):
        raise ValueError(f"label map {labels.shape} is not on the CT grid {tuple(reversed(ct.GetSize()))}")
    if not pairs:
        return labels
    merged = np.isin(labels, [left for left, _ in pairs])
    if not merged.any():
        return labels
    z_centres, mid_x = midline_profile(ct)
    idx = np.argwhere(merged)
    pts = physical_points(ct, idx)
    right = pts[:, 0] <= np.interp(pts[:, 2], z_centres, mid_x)  # LPS: +x is the patient's left
    values = labels[tuple(idx.T)]
    for left, right_value in pairs:
        move = right & (values == left)
        labels[tuple(idx[move].T)] = right_value
    log.info("left/right split of %d merged label(s) by the mid-sagittal plane (x = %.1f..%.1f mm): %d voxels "
             "left, %d right", len(pairs), mid_x.min(), mid_x.max(), int((~right).sum()), int(right.sum()))
    return labels
